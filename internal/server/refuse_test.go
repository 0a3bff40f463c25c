package server

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"testing"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/wire"
)

// A refusal a front decides itself is one audit record, written before
// Refuse returns: the front's name, the caller with its executable, the
// destination the front knows of, the operation, key, request id, status
// and the precise reason.
func TestSessionRefuseRecords(t *testing.T) {
	s, path := auditedServer(t, Limits{})
	ss := doSession(t, s, 1001)
	id := idOf(1001)
	id.SSHDest = "SHA256:host"
	key := bytes.Repeat([]byte{0xab}, 16)
	if err := ss.Refuse(context.Background(), id, Refusal{Op: "sign", Key: key, Request: 7,
		Status: wire.Status_STATUS_PERMISSION_DENIED, Reason: "the agent is locked"}); err != nil {
		t.Fatal(err)
	}
	var got *audit.Record
	for _, r := range auditRecords(t, path) {
		if r.Kind == audit.KindRequest && r.Op == "sign" {
			got = r
		}
	}
	if got == nil {
		t.Fatal("no record of the refusal")
	}
	self, _ := filepath.EvalSymlinks("/proc/self/exe")
	if got.Front != testFront || got.Status != "PERMISSION_DENIED" || got.Msg != "the agent is locked" || got.Request != 7 ||
		got.Key != audit.KeyID(key) || got.Caller.UID != 1001 || got.Caller.PID != id.PID || got.Caller.Exe != self ||
		got.Caller.SSHDest != "SHA256:host" || got.Conn == 0 {
		t.Fatalf("record: %+v", got)
	}
}

// A refusal that cannot be recorded is an error: the front must fail
// closed. Arguments a front must not pass are refused unrecorded.
func TestSessionRefuseFailsClosed(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(audit.Options{Path: path, Sync: audit.SyncGrouped})
	if err != nil {
		t.Fatal(err)
	}
	s := mustNew(t, Config{Audit: l})
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	ss := doSession(t, s, 1001)
	ok := Refusal{Op: "unlock", Status: wire.Status_STATUS_PERMISSION_DENIED, Reason: "wrong passphrase"}
	for _, bad := range []Refusal{
		{Op: "Sign", Status: wire.Status_STATUS_PERMISSION_DENIED},
		{Op: "", Status: wire.Status_STATUS_PERMISSION_DENIED},
		{Op: "sign", Status: wire.Status_STATUS_OK},
		{Op: "sign", Key: []byte{1, 2, 3}, Status: wire.Status_STATUS_PERMISSION_DENIED},
	} {
		if err := ss.Refuse(context.Background(), idOf(1001), bad); err == nil {
			t.Errorf("Refuse took %+v", bad)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := ss.Refuse(ctx, idOf(1001), ok); err == nil {
		t.Error("Refuse with a context done: nil error")
	}
	if err := ss.Refuse(context.Background(), idOf(1001), ok); err != nil {
		t.Fatal(err)
	}
	l.Close()
	if err := ss.Refuse(context.Background(), idOf(1001), ok); err == nil {
		t.Fatal("a refusal the audit log could not take was reported recorded")
	}
	ss.Close()
	if err := ss.Refuse(context.Background(), idOf(1001), ok); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Refuse on a closed session: %v", err)
	}
}

// A front's own operation that succeeded is recorded with status OK, and
// Refuse still takes no OK.
func TestSessionRecordsFrontSuccess(t *testing.T) {
	s, path := auditedServer(t, Limits{})
	ss := doSession(t, s, 1001)
	id := idOf(1001)
	if err := ss.Refuse(context.Background(), id, Refusal{Op: "lock", Status: wire.Status_STATUS_OK}); err == nil {
		t.Fatal("Refuse took status OK")
	}
	if err := ss.Record(context.Background(), id, Refusal{Op: "lock", Request: 3, Status: wire.Status_STATUS_OK, Reason: "locked"}); err != nil {
		t.Fatal(err)
	}
	for _, r := range auditRecords(t, path) {
		if r.Kind == audit.KindRequest && r.Op == "lock" && r.Status == "OK" && r.Msg == "locked" && r.Front == testFront && r.Caller.UID == 1001 {
			return
		}
	}
	t.Fatal("the front's lock is not in the audit log")
}

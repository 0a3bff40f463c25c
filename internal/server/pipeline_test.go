package server

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/wire"
)

// TestPipelinedRequestsRecorded: requests sent back to back on one
// connection, whose replies are held and recorded together, each get
// their reply, in order, and one record each, in order, with the caller.
func TestPipelinedRequestsRecorded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(audit.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	_, c := pair(t, Config{Audit: l})
	const n = 40
	for i := range n {
		send(t, c, uint64(1000+i), &wire.Op{Op: &wire.Op_Ping{Ping: &wire.Ping{Payload: []byte{byte(i)}}}})
	}
	for i := range n {
		rep := recv(t, c)
		if rep.Id != uint64(1000+i) || rep.Status != wire.Status_STATUS_OK || !bytes.Equal(rep.Results[0].Data, []byte{byte(i)}) {
			t.Fatalf("reply %d: id %d, %v %q", i, rep.Id, rep.Status, rep.Results[0].GetData())
		}
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var got []uint64
	audit.Scan(bytes.NewReader(b), audit.Filter{}, func(r *audit.Record) error {
		if r.Kind == audit.KindRequest && r.Op == "ping" {
			got = append(got, r.Request)
			if r.Caller.PID != int32(os.Getpid()) || r.Caller.Exe == "" {
				t.Errorf("record %d: caller %+v", r.Request, r.Caller)
			}
		}
		return nil
	})
	if len(got) != n {
		t.Fatalf("%d ping records, want %d", len(got), n)
	}
	for i, id := range got {
		if id != uint64(1000+i) {
			t.Fatalf("record %d is of request %d", i, id)
		}
	}
}

package server

import (
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// What a front says of where its client's connection leads is in the
// request's record, as given, and in no other.
func TestSSHDestRecorded(t *testing.T) {
	s, path := auditedServer(t, Limits{})
	ss := doSession(t, s, 1001)
	id := idOf(1001)
	id.SSHDest = "SHA256:hostkeyfingerprint"
	if r := do(t, ss, id, 71, ping("x")); r.Status != wire.Status_STATUS_OK {
		t.Fatal(r.Status)
	}
	if r := do(t, ss, idOf(1001), 72, ping("x")); r.Status != wire.Status_STATUS_OK {
		t.Fatal(r.Status)
	}
	got := map[uint64]string{}
	for _, rec := range auditRecords(t, path) {
		got[rec.Request] = rec.Caller.SSHDest
	}
	if got[71] != "SHA256:hostkeyfingerprint" || got[72] != "" {
		t.Fatalf("ssh_dest recorded: %v", got)
	}
}

package policy

import (
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

func TestRoles(t *testing.T) {
	r := &Roles{Self: 500, Admins: []uint32{600}, GenerationAdmins: []uint32{700}, GenerationWatchers: []uint32{800}}
	ok, denied := wire.Status_STATUS_OK, wire.Status_STATUS_PERMISSION_DENIED
	for _, tc := range []struct {
		uid         uint32
		admin, bump wire.Status
	}{
		{0, ok, ok},
		{500, ok, denied}, // the daemon's uid administers, but does not bump
		{600, ok, denied},
		{700, denied, ok},
		{800, denied, denied},
		{1000, denied, denied},
	} {
		c := Caller{UID: tc.uid, GID: tc.uid}
		if got := r.CheckAdmin(c).Status; got != tc.admin {
			t.Errorf("uid %d: CheckAdmin = %v, want %v", tc.uid, got, tc.admin)
		}
		if got := r.CheckBump(c).Status; got != tc.bump {
			t.Errorf("uid %d: CheckBump = %v, want %v", tc.uid, got, tc.bump)
		}
		if d := r.CheckAdmin(c); !d.Allowed() && d.Reason == "" {
			t.Errorf("uid %d: a refusal without its precise reason", tc.uid)
		}
	}
	for _, tc := range []struct {
		caller, w uint32
		counts    bool
	}{
		{1000, 1000, true}, {1000, 0, true}, {1000, 500, true}, {1000, 600, true}, {1000, 700, true}, {1000, 800, true},
		{1000, 1001, false}, {1001, 1000, false},
	} {
		if got := r.CountsWatcher(tc.caller, tc.w); got != tc.counts {
			t.Errorf("CountsWatcher(%d, %d) = %v, want %v", tc.caller, tc.w, got, tc.counts)
		}
	}
}

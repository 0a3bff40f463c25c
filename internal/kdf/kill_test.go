package kdf

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/wire"
)

// TestExternalKill: a worker killed with SIGKILL by another process (not
// the daemon, not the OOM killer) is reported as killed (UNAVAILABLE),
// not as out of memory, with and without a cgroup of its own; a SIGKILL
// while the machine's OOM killer killed something is reported as out of
// memory.
func TestExternalKill(t *testing.T) {
	killAfterStart := func(pid int) {
		go func() {
			time.Sleep(100 * time.Millisecond)
			unix.Kill(pid, unix.SIGKILL)
		}()
	}
	for _, c := range []struct {
		name     string
		cfg      Config
		oomKills int64 // the machine's OOM kills rise by this while the worker runs; -1: not counted
		want     *wire.Error
	}{
		{name: "own cgroup", cfg: Config{}, want: ErrKilled},
		{name: "no cgroup", cfg: Config{Cgroup: "off"}, want: ErrKilled},
		{name: "no cgroup, kernel counts no OOM kills", cfg: Config{Cgroup: "off"}, oomKills: -1, want: ErrKilled},
		{name: "no cgroup, an OOM kill meanwhile", cfg: Config{Cgroup: "off"}, oomKills: 1, want: ErrOutOfMemory},
	} {
		t.Run(c.name, func(t *testing.T) {
			var oom atomic.Int64
			oom.Store(7)
			cfg := c.cfg
			cfg.Deadline = 30 * time.Second
			cfg.oomKills = func() int64 {
				if c.oomKills < 0 {
					return -1
				}
				return oom.Load()
			}
			cfg.onStart = func(pid int) {
				oom.Add(c.oomKills)
				killAfterStart(pid)
			}
			s, logs := newSupervisor(t, cfg)
			if c.name == "own cgroup" && s.cg == nil {
				t.Skipf("no writable memory cgroup: %s", strings.TrimSpace(logs.String()))
			}
			_, err := s.Derive(context.Background(), slow, []byte("pw"), []byte("saltsalt"), 32)
			if !IsError(err, c.want) || wire.StatusOf(err) != c.want.Status {
				t.Fatalf("got %v, want %v", err, c.want)
			}
			t.Logf("%v", err)
		})
	}
}

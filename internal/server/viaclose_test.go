package server

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/wire"
)

// Identity.Via is honoured even once Via's session is closed, or while it
// closes: nothing in the core holds Via open for the request ("Via must
// stay open while the request runs" is the front's duty only). Run with
// -race: callerOf reads Via's opener.Pidfd while Close closes and clears it.
func TestViaClosedWhileNamed(t *testing.T) {
	l, err := audit.Open(audit.Options{Path: filepath.Join(t.TempDir(), "audit.log")})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	s := mustNew(t, Config{Audit: l})
	me, uid, gid := int32(os.Getpid()), uint32(os.Getuid()), uint32(os.Getgid())
	opener, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Skip(err)
	}
	conn, err := s.NewSession(context.Background(), "test", Identity{PID: me, UID: uid, GID: gid, Pidfd: opener})
	if err != nil {
		t.Fatal(err)
	}
	held, err := s.NewSession(context.Background(), "test", Identity{UID: uid, GID: gid, Pidfd: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	alive, _ := unix.PidfdOpen(os.Getpid(), 0)
	defer unix.Close(alive)
	id := Identity{PID: me, UID: uid, GID: gid, Pidfd: alive, Via: conn}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 200; i++ {
			held.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: 1, Ops: []*wire.Op{{Op: &wire.Op_Status{Status: &wire.StatusOp{}}}}})
		}
	}()
	conn.Close()
	wg.Wait()
}

package server

import (
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// onlyConn returns the server's one connection.
func onlyConn(t *testing.T, s *Server) *seqConn {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.conns) != 1 {
		t.Fatalf("%d connections, want 1", len(s.conns))
	}
	for cn := range s.conns {
		return cn
	}
	return nil
}

// waitHungUp waits until cn knows its client hung up; hold is released
// either way, so that the connection can end.
func waitHungUp(t *testing.T, cn *seqConn, hold chan struct{}) {
	t.Helper()
	// The hang-up, not the end of reading (which cancels the context too,
	// and may come first).
	for deadline := time.Now().Add(5 * time.Second); !cn.gone.Load(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			close(hold)
			t.Fatal("the connection did not notice its client hang up")
		}
	}
	close(hold)
}

func pings(n int) []*wire.Op {
	ops := make([]*wire.Op, n)
	for i := range ops {
		ops[i] = ping("p")
	}
	return ops
}

// TestHangupStopsInlineWork: a client sends a large batch and more
// requests, and hangs up while the batch runs on the connection's own
// goroutine. The daemon notices at once, though the connection is busy
// and the requests wait unread: nothing more of the batch runs, and the
// requests left in the socket are dropped.
func TestHangupStopsInlineWork(t *testing.T) {
	var ran atomic.Int32
	hold := make(chan struct{})
	cfg := Config{}
	cfg.opHook = func() {
		if ran.Add(1) == 1 {
			<-hold
		}
	}
	s, c := pair(t, cfg)
	cn := onlyConn(t, s)
	send(t, c, 1, pings(1000)...)
	for id := uint64(2); id <= 20; id++ {
		send(t, c, id, ping("queued"))
	}
	waitUntil(t, func() bool { return ran.Load() > 0 })
	c.Close()
	waitHungUp(t, cn, hold)
	waitUntil(t, func() bool { return s.connsN.Load() == 0 })
	if n := ran.Load(); n != 1 {
		t.Fatalf("%d operations ran after the client hung up", n-1)
	}
}

// TestHangupStopsConcurrentWork: a request that runs concurrently (it
// waits for a slot, a worker or the store) skips its operations once its
// client has hung up.
func TestHangupStopsConcurrentWork(t *testing.T) {
	var ran atomic.Int32
	started, hold := make(chan struct{}), make(chan struct{})
	cfg := Config{}
	cfg.heavyHook = func() {
		close(started)
		<-hold
	}
	cfg.opHook = func() { ran.Add(1) }
	s, c := pair(t, cfg)
	cn := onlyConn(t, s)
	send(t, c, 1, append(pings(100), rsaGen())...)
	<-started
	c.Close()
	waitHungUp(t, cn, hold)
	waitUntil(t, func() bool { return s.connsN.Load() == 0 })
	if n := ran.Load(); n != 0 {
		t.Fatalf("%d operations ran after the client hung up", n)
	}
}

// TestHalfCloseStillServed: a client that shut down only its sending side
// (its last request sent) still gets every reply.
func TestHalfCloseStillServed(t *testing.T) {
	_, c := pair(t, Config{})
	send(t, c, 1, pings(100)...)
	send(t, c, 2, append(pings(10), rsaGen())...)
	c.ShutdownWrite()
	got := map[uint64]int{}
	for range 2 {
		rep := recv(t, c)
		for _, r := range rep.Results {
			if r.Status == wire.Status_STATUS_OK {
				got[rep.Id]++
			}
		}
	}
	if got[1] != 100 || got[2] != 11 {
		t.Fatalf("operations done: %v", got)
	}
}

// TestConnRequestMemory: the requests one connection has running
// concurrently hold at most the memory one uid's may, counted with their
// operations, an administrator's too (the tests run as root).
func TestConnRequestMemory(t *testing.T) {
	started, hold := make(chan struct{}, 8), make(chan struct{})
	cfg := Config{Limits: Limits{MaxRequestBytesPerUID: 1 << 20}}
	cfg.heavyHook = func() {
		started <- struct{}{}
		<-hold
	}
	_, c := pair(t, cfg)
	var once sync.Once
	release := func() { once.Do(func() { close(hold) }) }
	t.Cleanup(release) // before the server's shutdown, which waits for the requests
	c.SetRecvTimeout(3 * time.Second)
	// 3,001 operations in a message of 21 KB: counted as about 790 KB.
	big := append(pings(3000), rsaGen())
	send(t, c, 1, big...)
	<-started
	send(t, c, 2, big...)
	rep := recv(t, c)
	release()
	if rep.Id != 2 || rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(rep.Message, "connection") {
		t.Fatalf("a second large request: %d %v %q", rep.Id, rep.Status, rep.Message)
	}
	if rep := recv(t, c); rep.Id != 1 || rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("the first: %d %v %q", rep.Id, rep.Status, rep.Message)
	}
}

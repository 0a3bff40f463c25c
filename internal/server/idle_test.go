package server

import (
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// waitParked waits until n connections are parked (test deadline: 10 s;
// a connection parks after parkAfter without a request).
func waitParked(t *testing.T, s *Server, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for s.ready.Waiting() != n {
		if time.Now().After(deadline) {
			t.Fatalf("%d connections parked, want %d", s.ready.Waiting(), n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func pingOK(t *testing.T, c *seqpacket.Conn, id uint64, payload string) {
	t.Helper()
	send(t, c, id, ping(payload))
	rep := recv(t, c)
	if rep.Status != wire.Status_STATUS_OK || rep.Id != id {
		t.Fatalf("ping %d: %v %q (id %d)", id, rep.Status, rep.Message, rep.Id)
	}
	if got := string(rep.Results[0].GetData()); got != payload {
		t.Fatalf("ping %d: the payload came back as %d bytes, sent %d", id, len(got), len(payload))
	}
}

// An idle connection is parked: it holds no receive buffer and no
// receiving slot, and the buffer a large request touched goes back to
// the pool without that request's pages. Woken, it serves requests of any
// size, whole, as before.
func TestIdleConnectionParks(t *testing.T) {
	s := newTestServer(t, Config{})
	c := serveAs(t, s, 1000)
	large := strings.Repeat("x", 200<<10) // beyond recvKeep: the buffer is dirty
	pingOK(t, c, 1, large)
	waitParked(t, s, 1)
	if n := s.receivers.Load(); n != 0 {
		t.Fatalf("%d receiving slots taken by a parked connection", n)
	}
	s.mu.Lock()
	for cn := range s.conns {
		if cn.connScratch != nil {
			t.Error("a parked connection holds its buffers")
		}
	}
	s.mu.Unlock()
	select {
	case sc := <-s.scratch:
		if sc.buf.dirty || sc.buf.released.Load() != 1 {
			t.Errorf("the pooled buffer keeps a large request's pages (dirty %v, released %d times)", sc.buf.dirty, sc.buf.released.Load())
		}
		s.scratch <- sc
	default:
		t.Fatal("the parked connection's buffers were not pooled")
	}

	// Woken by a message larger than anything the pooled buffer holds
	// resident, and by small ones; then parked again.
	pingOK(t, c, 2, large)
	pingOK(t, c, 3, "small")
	waitParked(t, s, 1)
	pingOK(t, c, 4, "again")

	// An oversize request gets its typed error, and the connection stays
	// healthy, parked or not.
	oversize := func(id uint64) {
		t.Helper()
		send(t, c, id, ping(strings.Repeat("y", s.lims().MaxMessageBytes+100)))
		rep := recv(t, c)
		if rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || rep.Id != id {
			t.Fatalf("oversize request: %v %q (id %d)", rep.Status, rep.Message, rep.Id)
		}
	}
	oversize(5)
	pingOK(t, c, 6, "after")
	waitParked(t, s, 1)
	oversize(7)
	pingOK(t, c, 8, large)
}

// With every receiving slot taken, connections are still served: each
// answers what it has waiting and parks again at once, and the slots
// bound the threads held in blocking receives.
func TestConnectionsBeyondReceivers(t *testing.T) {
	s := newTestServer(t, Config{})
	s.maxReceivers = 1
	const conns, rounds = 6, 50
	cs := make([]*seqpacket.Conn, conns)
	for i := range cs {
		cs[i] = serveAs(t, s, 1000)
	}
	var wg sync.WaitGroup
	errs := make(chan string, conns)
	for i, c := range cs {
		wg.Go(func() {
			buf := make([]byte, 1<<20)
			for r := range rounds {
				id := uint64(r + 1)
				b, _ := (&wire.Request{Version: 1, Id: id, Ops: []*wire.Op{ping("p"), ping("q")}}).MarshalVT()
				if err := c.Send(b); err != nil {
					errs <- err.Error()
					return
				}
				n, err := c.Recv(buf)
				if err != nil {
					errs <- err.Error()
					return
				}
				rep := new(wire.Reply)
				if err := rep.UnmarshalVT(buf[:n]); err != nil || rep.Status != wire.Status_STATUS_OK || rep.Id != id {
					errs <- "bad reply"
					return
				}
				if n := s.receivers.Load(); n > 1 {
					errs <- "more blocking receivers than slots"
					return
				}
			}
			_ = i
		})
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Fatal(e)
	}
	waitParked(t, s, conns)
}

// A connection closed by its client while parked is cleaned up: its
// handles die with it and the server forgets it.
func TestParkedConnectionHangUp(t *testing.T) {
	s := newTestServer(t, Config{})
	c := serveAs(t, s, 1000)
	pingOK(t, c, 1, "x")
	waitParked(t, s, 1)
	c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for {
		s.mu.Lock()
		n := len(s.conns)
		s.mu.Unlock()
		if n == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the server still holds a connection its client closed while parked")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

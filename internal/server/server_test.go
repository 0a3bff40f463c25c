package server

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// pair serves one end of a socket pair and returns the other.
func pair(t testing.TB, cfg Config) (*Server, *seqpacket.Conn) {
	t.Helper()
	s := mustNew(t, cfg)
	a, b, err := seqpacket.Pair()
	if err != nil {
		t.Fatal(err)
	}
	s.ServeConn(a)
	t.Cleanup(func() {
		b.Close()
		s.Shutdown(context.Background())
	})
	b.SetRecvTimeout(10 * time.Second)
	return s, b
}

func send(t testing.TB, c *seqpacket.Conn, id uint64, ops ...*wire.Op) {
	t.Helper()
	b, err := (&wire.Request{Version: 1, Id: id, Ops: ops}).MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(b); err != nil {
		t.Fatal(err)
	}
}

func recv(t testing.TB, c *seqpacket.Conn) *wire.Reply {
	t.Helper()
	buf := make([]byte, 1<<20)
	n, err := c.Recv(buf)
	if err != nil {
		t.Fatal(err)
	}
	rep := new(wire.Reply)
	if err := rep.UnmarshalVT(buf[:n]); err != nil {
		t.Fatalf("undecodable reply: %v", err)
	}
	return rep
}

func rsaGen() *wire.Op {
	return &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_RSA_2048, Ephemeral: true}}}}
}

func ping(p string) *wire.Op {
	return &wire.Op{Op: &wire.Op_Ping{Ping: &wire.Ping{Payload: []byte(p)}}}
}

// The in-flight limit counts requests executing at once; one over it is
// refused at once, the others complete.
func TestInFlightLimit(t *testing.T) {
	release := make(chan struct{})
	var once sync.Once
	cfg := Config{Limits: Limits{MaxInFlight: 2}}
	cfg.heavyHook = func() { <-release }
	_, c := pair(t, cfg)
	send(t, c, 1, rsaGen())
	send(t, c, 2, rsaGen())
	send(t, c, 3, ping("x")) // a third request while two run
	rep := recv(t, c)
	if rep.Id != 3 || rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("third request: id %d status %v, want 3 RESOURCE_EXHAUSTED", rep.Id, rep.Status)
	}
	once.Do(func() { close(release) })
	seen := map[uint64]bool{}
	for range 2 {
		rep := recv(t, c)
		if rep.Status != wire.Status_STATUS_OK || rep.Results[0].Status != wire.Status_STATUS_OK {
			t.Fatalf("request %d: %v %v", rep.Id, rep.Status, rep.Results)
		}
		seen[rep.Id] = true
	}
	if !seen[1] || !seen[2] {
		t.Fatalf("replies %v", seen)
	}
	send(t, c, 4, ping("after"))
	if rep := recv(t, c); rep.Id != 4 || string(rep.Results[0].Data) != "after" {
		t.Fatalf("after the limit: %+v", rep)
	}
}

// A request that runs concurrently does not hold up the ones after it.
func TestSlowRequestDoesNotBlock(t *testing.T) {
	release := make(chan struct{})
	cfg := Config{}
	cfg.heavyHook = func() { <-release }
	_, c := pair(t, cfg)
	send(t, c, 1, rsaGen())
	send(t, c, 2, ping("fast"))
	if rep := recv(t, c); rep.Id != 2 {
		t.Fatalf("first reply is for request %d, want the fast one (2)", rep.Id)
	}
	close(release)
	if rep := recv(t, c); rep.Id != 1 || rep.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("slow request: %+v", rep)
	}
}

// A reply that would not fit in one message leaves the remaining
// operations unexecuted, each saying so.
func TestReplyBudget(t *testing.T) {
	_, c := pair(t, Config{Limits: Limits{MaxMessageBytes: 64 << 10}})
	send(t, c, 1, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_ED25519, Ephemeral: true}}}})
	gen := recv(t, c)
	h := gen.Results[0].GetKey().GetHandle()
	if h == 0 {
		t.Fatalf("generate: %v", gen)
	}
	// Small requests, large results: 4000 public keys in PEM.
	var ops []*wire.Op
	for range 4000 {
		ops = append(ops, &wire.Op{Op: &wire.Op_PublicKey{PublicKey: &wire.PublicKey{Handle: h, Format: wire.KeyFormat_KEY_FORMAT_SPKI_PEM}}})
	}
	send(t, c, 2, ops...)
	rep := recv(t, c)
	if rep.Status != wire.Status_STATUS_OK || len(rep.Results) != 4000 {
		t.Fatalf("%v %d results", rep.Status, len(rep.Results))
	}
	done, refused := 0, 0
	for i, r := range rep.Results {
		switch r.Status {
		case wire.Status_STATUS_OK:
			if refused > 0 {
				t.Fatalf("operation %d ran after one was refused", i)
			}
			done++
		case wire.Status_STATUS_RESOURCE_EXHAUSTED:
			refused++
		default:
			t.Fatalf("operation %d: %v %s", i, r.Status, r.Message)
		}
	}
	if done == 0 || refused == 0 {
		t.Fatalf("%d done, %d refused: the budget did not apply", done, refused)
	}
}

func TestPeekRequestID(t *testing.T) {
	full, _ := (&wire.Request{Version: 1, Id: 4242, Ops: []*wire.Op{ping("abc")}}).MarshalVT()
	for n := 5; n <= len(full); n++ {
		if id := peekRequestID(full[:n]); id != 4242 {
			t.Fatalf("prefix of %d bytes: id %d", n, id)
		}
	}
	for _, b := range [][]byte{nil, {0xff}, {0x10, 0xff}, bytes.Repeat([]byte{0x80}, 20)} {
		if id := peekRequestID(b); id != 0 {
			t.Errorf("peekRequestID(%x) = %d", b, id)
		}
	}
}

func TestArena(t *testing.T) {
	var a arena
	x := a.take(10)
	x = append(x, "0123456789"...)
	y := a.take(5)
	y = append(y, "abcde"...)
	if string(x) != "0123456789" || string(y) != "abcde" {
		t.Fatalf("outputs overlap: %q %q", x, y)
	}
	big := a.take(arenaChunk * 2)
	if cap(big) < arenaChunk*2 {
		t.Fatal("large take too small")
	}
	a.wipe()
	if x[0] != 0 || y[0] != 0 {
		t.Fatal("wipe left data")
	}
	// The next request gets one chunk as large as the last one needed.
	if cap(a.buf) < arenaChunk*2 {
		t.Fatalf("arena shrank to %d", cap(a.buf))
	}
}

func TestShutdownWaitsForRequests(t *testing.T) {
	release := make(chan struct{})
	cfg := Config{}
	cfg.heavyHook = func() { <-release }
	s, c := pair(t, cfg)
	send(t, c, 1, rsaGen())
	time.Sleep(20 * time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- s.Shutdown(context.Background()) }()
	select {
	case <-done:
		t.Fatal("Shutdown returned with a request in progress")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	if rep := recv(t, c); rep.Id != 1 || rep.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("the request in progress at shutdown: %+v", rep)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// New requests are no longer read.
	if err := c.Send([]byte{}); err == nil {
		buf := make([]byte, 10)
		c.SetRecvTimeout(100 * time.Millisecond)
		if _, err := c.Recv(buf); err == nil {
			t.Fatal("a request was answered after shutdown")
		}
	}
	if err := s.Shutdown(context.Background()); err != nil && !errors.Is(err, context.Canceled) {
		t.Fatal(err)
	}
}

// mustNew is New for tests.
func mustNew(tb testing.TB, cfg Config) *Server {
	tb.Helper()
	s, err := New(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return s
}

package seqpacket

import (
	"testing"
	"time"
)

func newHangups(t *testing.T) *Hangups {
	t.Helper()
	h, err := NewHangups()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(h.Close)
	return h
}

// watch watches server and returns a channel closed when its peer hangs
// up.
func watch(t *testing.T, h *Hangups, server *Conn) (<-chan struct{}, func()) {
	t.Helper()
	hung := make(chan struct{})
	stop, err := h.Watch(server, func() { close(hung) })
	if err != nil {
		t.Fatal(err)
	}
	return hung, stop
}

// TestHangupWithRequestsQueued: a peer that sends and closes has hung up,
// though its messages still wait unread; they can still be read.
func TestHangupWithRequestsQueued(t *testing.T) {
	h := newHangups(t)
	client, server := pair(t)
	hung, stop := watch(t, h, server)
	defer stop()
	for range 3 {
		if err := client.Send([]byte("request")); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-hung:
		t.Fatal("a hang-up reported while the peer is connected")
	case <-time.After(50 * time.Millisecond):
	}
	client.Close()
	select {
	case <-hung:
	case <-time.After(5 * time.Second):
		t.Fatal("no hang-up reported")
	}
	buf := make([]byte, 16)
	if n, err := server.Recv(buf); err != nil || string(buf[:n]) != "request" {
		t.Fatalf("queued message: %q %v", buf[:n], err)
	}
}

// TestHalfCloseIsNoHangup: a peer that shut down only its sending side
// (its last request sent) waits for replies: not a hang-up. Nor is the
// server's own ShutdownRead.
func TestHalfCloseIsNoHangup(t *testing.T) {
	h := newHangups(t)
	client, server := pair(t)
	hung, stop := watch(t, h, server)
	defer stop()
	client.ShutdownWrite()
	server.ShutdownRead()
	select {
	case <-hung:
		t.Fatal("a half-close reported as a hang-up")
	case <-time.After(100 * time.Millisecond):
	}
	if err := server.Send([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 16)
	if n, err := client.Recv(buf); err != nil || string(buf[:n]) != "reply" {
		t.Fatalf("reply after a half-close: %q %v", buf[:n], err)
	}
}

// TestHangupStopped: once stopped, a watch reports nothing, and closing
// the connection then is safe; a watch of a connection whose peer is
// already gone reports at once.
func TestHangupStopped(t *testing.T) {
	h := newHangups(t)
	client, server := pair(t)
	hung, stop := watch(t, h, server)
	stop()
	client.Close()
	server.Close()
	select {
	case <-hung:
		t.Fatal("a stopped watch reported")
	case <-time.After(100 * time.Millisecond):
	}

	client2, server2 := pair(t)
	client2.Close()
	hung2, stop2 := watch(t, h, server2)
	defer stop2()
	select {
	case <-hung2:
	case <-time.After(5 * time.Second):
		t.Fatal("a peer gone before the watch not reported")
	}
	if _, err := h.Watch(client2, func() {}); err != ErrClosed {
		t.Fatalf("watching a closed connection: %v", err)
	}
}

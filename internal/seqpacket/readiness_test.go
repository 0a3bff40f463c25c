package seqpacket

import (
	"testing"
	"time"
)

func newReadiness(t *testing.T) *Readiness {
	t.Helper()
	r, err := NewReadiness()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(r.Close)
	return r
}

// A message makes the waiter call ready, once.
func TestReadinessReportsMessage(t *testing.T) {
	r := newReadiness(t)
	client, server := pair(t)
	ready := make(chan struct{}, 2)
	if err := r.Wait(server, func() { ready <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	if err := client.Send([]byte("x")); err != nil {
		t.Fatal(err)
	}
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("a waiting message was never reported")
	}
	if n := r.Waiting(); n != 0 {
		t.Fatalf("%d still waiting", n)
	}
}

// A server that closes its connections and then calls WakeAll (a forced
// shutdown) finds every waiter called, even one that was being armed
// when the connection was closed and WakeAll ran: its close takes the
// descriptor out of the epoll set, perhaps before the waiter saw it.
func TestReadinessClosedWhileArming(t *testing.T) {
	r := newReadiness(t)
	// Keep the waiter busy in another connection's ready function until
	// the wait below has returned and released (closed) the descriptor:
	// it can then only learn of it from Wait itself.
	busyClient, busy := pair(t)
	inBusy, unblock := make(chan struct{}), make(chan struct{})
	if err := r.Wait(busy, func() { close(inBusy); <-unblock }); err != nil {
		t.Fatal(err)
	}
	if err := busyClient.Send([]byte("x")); err != nil {
		t.Fatal(err)
	}
	<-inBusy
	_, server := pair(t)
	hookWait = func() {
		server.Close()
		r.WakeAll() // nothing registered yet
	}
	t.Cleanup(func() { hookWait = nil })
	ready := make(chan struct{}, 2)
	if err := r.Wait(server, func() { ready <- struct{}{} }); err != nil {
		t.Fatal(err)
	}
	hookWait = nil
	close(unblock)
	select {
	case <-ready:
	case <-time.After(10 * time.Second):
		t.Fatal("a connection closed while its wait was armed was never reported")
	}
	if n := r.Waiting(); n != 0 {
		t.Fatalf("%d still waiting", n)
	}
}

package sshagent

import (
	"bytes"
	"net"
	"testing"
	"time"
)

// A reply that once had to wait for room leaves no deadline behind: the
// connection serves later requests long after writeTimeout has passed.
func TestWaitedWriteLeavesNoDeadline(t *testing.T) {
	old := writeTimeout
	t.Cleanup(func() { writeTimeout = old })
	writeTimeout = 500 * time.Millisecond
	ta := newTestAgent(t, Config{})
	data := []byte("slow reader")
	c, pub, req := signSetup(t, ta, data)
	c.(*net.UnixConn).SetReadBuffer(4 << 10)
	const n = 300 // ~30 KiB of replies: more than the sockets hold
	werr := make(chan error, 1)
	go func() {
		_, err := c.Write(bytes.Repeat(req, n))
		werr <- err
	}()
	time.Sleep(100 * time.Millisecond) // the agent fills the socket and waits
	for i := range n {
		if _, err := readReply(c); err != nil {
			t.Fatalf("reply %d: %v", i, err)
		}
	}
	if err := <-werr; err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * writeTimeout)
	reply, err := roundTrip(c, req)
	if err != nil {
		t.Fatalf("a request after a wait for room, once writeTimeout has passed: %v", err)
	}
	checkSignReply(t, reply, pub, data)
}

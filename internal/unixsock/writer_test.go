package unixsock

import (
	"errors"
	"net"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// writerPair returns a Writer on one end of a connected stream socket
// pair and the other end.
func writerPair(t *testing.T, timeout time.Duration) (*Writer, *os.File) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[0]), "peer")
	f := os.NewFile(uintptr(fds[1]), "writer")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close(); c.Close() })
	w, err := NewWriter(c.(*net.UnixConn), timeout)
	if err != nil {
		t.Fatal(err)
	}
	return w, peer
}

// A write that had to wait for room leaves no deadline behind: a later
// write, after the timeout would have passed, goes through.
func TestWriterLeavesNoDeadline(t *testing.T) {
	const timeout = 300 * time.Millisecond
	w, peer := writerPair(t, timeout)
	big := make([]byte, 1<<20) // more than the socket holds
	drained := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for n := 0; n < len(big); {
			m, err := peer.Read(buf)
			if err != nil {
				drained <- err
				return
			}
			n += m
		}
		drained <- nil
	}()
	if err := w.Write(big); err != nil {
		t.Fatalf("a write taken in time: %v", err)
	}
	if err := <-drained; err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * timeout)
	if err := w.Write([]byte("next")); err != nil {
		t.Fatalf("the next write: %v", err)
	}
	in := make([]byte, 4)
	if _, err := peer.Read(in); err != nil || string(in) != "next" {
		t.Fatalf("read %q %v", in, err)
	}
}

// A write the peer never takes fails once the timeout has passed, with a
// timeout error, and does not hang.
func TestWriterTimesOut(t *testing.T) {
	const timeout = 200 * time.Millisecond
	w, _ := writerPair(t, timeout)
	start := time.Now()
	err := w.Write(make([]byte, 4<<20))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("a write never taken: %v; want a timeout", err)
	}
	if d := time.Since(start); d < timeout {
		t.Fatalf("gave up after %v, before the timeout of %v", d, timeout)
	}
}

// A write to a peer that has gone is an error, not a SIGPIPE.
func TestWriterPeerGone(t *testing.T) {
	w, peer := writerPair(t, time.Second)
	peer.Close()
	if err := w.Write([]byte("x")); !errors.Is(err, unix.EPIPE) {
		t.Fatalf("a write to a closed peer: %v; want EPIPE", err)
	}
}

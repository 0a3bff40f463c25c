package p11front

import (
	"encoding/binary"
	"net"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/unixsock"
)

// socketPair returns the client's end of a connected stream socket pair
// and the front's, with SO_PASSCRED as the listener gives it.
func socketPair(t *testing.T) (*os.File, *net.UnixConn) {
	t.Helper()
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.SetsockoptInt(fds[1], unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		t.Fatal(err)
	}
	peer := os.NewFile(uintptr(fds[0]), "client")
	t.Cleanup(func() { peer.Close() })
	f := os.NewFile(uintptr(fds[1]), "front")
	fc, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { fc.Close() })
	return peer, fc.(*net.UnixConn)
}

// readFrame reads one frame through r as serve does and returns its body.
func readFrame(t *testing.T, r *credReader) []byte {
	t.Helper()
	var h [frameHeader]byte
	for i := range h {
		if _, err := r.Read(h[i : i+1]); err != nil {
			t.Fatalf("read: %v", err)
		}
	}
	_, olen, blen, err := parseHeader(h[:])
	if err != nil {
		t.Fatal(err)
	}
	body := make([]byte, olen+blen)
	for n := 0; n < len(body); {
		m, err := r.Read(body[n:])
		if err != nil {
			t.Fatalf("read: %v", err)
		}
		n += m
	}
	return body[olen:]
}

// waitEmpty waits until r has found the socket empty n times.
func waitEmpty(t *testing.T, r *credReader, n int32) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); r.empty.Load() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d empty reads, want %d", r.empty.Load(), n)
		}
		time.Sleep(10 * time.Microsecond)
	}
}

// A client that sends its next request soon after its reply finds the
// front polling for it, not asleep: the read finds the socket empty
// again and again until the request comes.
func TestReadPollsForQuickClient(t *testing.T) {
	peer, uc := socketPair(t)
	var busy atomic.Int32
	r, err := newCredReader(uc, int32(os.Getpid()), &busy)
	if err != nil {
		t.Fatal(err)
	}
	r.poll.Spin, r.poll.Gap = time.Minute, time.Minute // however slow the machine, it polls until the request comes
	got := make(chan []byte, 1)
	go func() { got <- readFrame(t, r) }()
	waitEmpty(t, r, 5)
	peer.Write(appendFrame(nil, 1, []byte("request")))
	if b := <-got; string(b) != "request" {
		t.Fatalf("read %q", b)
	}
	if busy.Load() != 1 {
		t.Errorf("busy %d while the request is handled, want 1", busy.Load())
	}
	r.done()
	if busy.Load() != 0 {
		t.Errorf("busy %d once the connection is done, want 0", busy.Load())
	}
}

// A read polls only while no other connection of the front is handling
// a request: with one busy, it sleeps at once (one read that finds the
// socket empty) and wakes when the request comes.
func TestReadDoesNotPollWhileOthersBusy(t *testing.T) {
	peer, uc := socketPair(t)
	var busy atomic.Int32
	busy.Store(1)
	r, err := newCredReader(uc, int32(os.Getpid()), &busy)
	if err != nil {
		t.Fatal(err)
	}
	r.poll.Spin, r.poll.Gap = time.Minute, time.Minute
	got := make(chan []byte, 1)
	go func() { got <- readFrame(t, r) }()
	waitEmpty(t, r, 1)
	time.Sleep(20 * time.Millisecond)
	peer.Write(appendFrame(nil, 1, []byte("request")))
	if b := <-got; string(b) != "request" {
		t.Fatalf("read %q", b)
	}
	// One empty read before it sleeps; a second if the runtime woke it
	// before the request had come.
	if n := r.empty.Load(); n > 2 {
		t.Errorf("%d empty reads while another connection was busy: it polled", n)
	}
}

// A poll that finds nothing for its whole spin makes the next read sleep
// at once: a client slow to answer does not keep the front polling.
func TestReadBacksOffAfterVainPoll(t *testing.T) {
	peer, uc := socketPair(t)
	r, err := newCredReader(uc, int32(os.Getpid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.poll.Spin, r.poll.Gap = time.Millisecond, time.Minute
	got := make(chan []byte, 1)
	// The first read polls, in vain (the request comes after the spin),
	// and then sleeps until it comes.
	go func() { got <- readFrame(t, r) }()
	waitEmpty(t, r, 1)
	time.Sleep(50 * r.poll.Spin)
	peer.Write(appendFrame(nil, 1, []byte("first")))
	if b := <-got; string(b) != "first" {
		t.Fatalf("read %q", b)
	}
	if r.poll.Skipping() == 0 {
		t.Fatalf("after a vain poll of %d empty reads, no read is to skip polling", r.empty.Load())
	}
	// The next one sleeps at once.
	r.empty.Store(0)
	r.poll.Spin = time.Minute
	go func() { got <- readFrame(t, r) }()
	waitEmpty(t, r, 1)
	time.Sleep(20 * time.Millisecond)
	peer.Write(appendFrame(nil, 2, []byte("second")))
	if b := <-got; string(b) != "second" {
		t.Fatalf("read %q", b)
	}
	if n := r.empty.Load(); n > 2 {
		t.Errorf("%d empty reads after a vain poll: it polled again", n)
	}
}

// A wait that slept long, for a reason other than a vain poll (here:
// another connection was busy), does not stop the next from polling: once
// a sleep and its wake-up made one wait long, judging the client by it
// would make every later wait sleep, and wake, too.
func TestReadPollsAfterLongWait(t *testing.T) {
	peer, uc := socketPair(t)
	var busy atomic.Int32
	busy.Store(1)
	r, err := newCredReader(uc, int32(os.Getpid()), &busy)
	if err != nil {
		t.Fatal(err)
	}
	r.poll.Spin, r.poll.Gap = 10*time.Millisecond, time.Minute
	got := make(chan []byte, 1)
	go func() { got <- readFrame(t, r) }()
	waitEmpty(t, r, 1)
	time.Sleep(100 * time.Millisecond) // a wait ten times the spin
	peer.Write(appendFrame(nil, 1, []byte("first")))
	if b := <-got; string(b) != "first" {
		t.Fatalf("read %q", b)
	}
	r.done()
	busy.Store(0)
	r.empty.Store(0)
	go func() { got <- readFrame(t, r) }()
	time.Sleep(30 * time.Millisecond)
	peer.Write(appendFrame(nil, 2, []byte("second")))
	if b := <-got; string(b) != "second" {
		t.Fatalf("read %q", b)
	}
	if n := r.empty.Load(); n <= 2 {
		t.Errorf("%d empty reads after a long wait: it did not poll", n)
	}
}

// Reading a request, polls included, and writing its reply allocate
// nothing but the buffer for the sender's address that unix.Recvmsg
// makes.
func TestReadWriteAllocateNothing(t *testing.T) {
	peer, uc := socketPair(t)
	r, err := newCredReader(uc, int32(os.Getpid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	w, err := unixsock.NewWriter(uc, writeTimeout)
	if err != nil {
		t.Fatal(err)
	}
	req := appendFrame(nil, 1, []byte("request"))
	reply := appendFrame(nil, 1, []byte("reply"))
	var h [frameHeader]byte
	body := make([]byte, 7)
	in := make([]byte, len(reply))
	allocs := testing.AllocsPerRun(200, func() {
		peer.Write(req)
		for i := range h {
			if _, err := r.Read(h[i : i+1]); err != nil {
				t.Fatal(err)
			}
		}
		if n, err := r.Read(body); err != nil || n != len(body) {
			t.Fatalf("read %d %v", n, err)
		}
		if err := w.Write(reply); err != nil {
			t.Fatal(err)
		}
		if n, err := peer.Read(in); err != nil || n != len(reply) || binary.BigEndian.Uint32(in) != 1 {
			t.Fatalf("reply %x %v", in[:n], err)
		}
	})
	if allocs > 1 {
		t.Errorf("%v allocations a request", allocs)
	}
}

// A poll that loses its processor between two reads of the socket (a gap
// longer than gap) ends as one in vain: on a machine busy with other work
// polling delays that work, so the next reads sleep at once.
func TestReadBacksOffAfterGap(t *testing.T) {
	peer, uc := socketPair(t)
	r, err := newCredReader(uc, int32(os.Getpid()), nil)
	if err != nil {
		t.Fatal(err)
	}
	r.poll.Spin, r.poll.Gap = time.Minute, 0 // every gap is too long
	got := make(chan []byte, 1)
	go func() { got <- readFrame(t, r) }()
	waitEmpty(t, r, 1)
	time.Sleep(20 * time.Millisecond)
	peer.Write(appendFrame(nil, 1, []byte("request")))
	if b := <-got; string(b) != "request" {
		t.Fatalf("read %q", b)
	}
	if r.poll.Skipping() == 0 {
		t.Errorf("after a poll with a gap (%d empty reads), no read is to skip polling", r.empty.Load())
	}
	if n := r.empty.Load(); n > 3 {
		t.Errorf("%d empty reads: it went on polling after a gap", n)
	}
}

package server

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// rss returns the process's resident memory, from /proc/self/status.
func rss(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		t.Skip(err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			kb, _ := strconv.Atoi(strings.Fields(rest)[0])
			return kb << 10
		}
	}
	t.Skip("no VmRSS")
	return 0
}

// A receive buffer is wiped after each message, and after a large one it
// can give its pages back: an idle connection does not keep the memory of
// the largest request it ever received.
func TestRecvBufGivesBackPages(t *testing.T) {
	const size = 4 << 20 // large enough to see beyond the process's own changes
	r := newRecvBuf(size + 1)
	defer r.free()
	if !r.mapped {
		t.Skip("no anonymous mapping")
	}
	small := copy(r.b, "a small request")
	r.done(small)
	if string(r.b[:small]) != string(make([]byte, small)) {
		t.Fatal("not wiped")
	}
	before := rss(t)
	for i := range size {
		r.b[i] = 0xa5
	}
	touched := rss(t)
	r.done(size)
	if !r.dirty {
		t.Fatal("a large message left the buffer clean")
	}
	for _, c := range r.b[:size] {
		if c != 0 {
			t.Fatal("not wiped")
		}
	}
	r.release()
	after := rss(t)
	t.Logf("resident: %d KiB, %d KiB with a large message, %d KiB once it was handled", before>>10, touched>>10, after>>10)
	if touched-before < size/2 || touched-after < size/2 || r.dirty {
		t.Fatalf("the buffer's pages were not given back")
	}
}

// A connection that received a large message gives its buffer's pages
// back once it has been idle for recvIdle, and serves on.
func TestIdleConnectionGivesBackBuffer(t *testing.T) {
	s := newTestServer(t, Config{})
	c := serveAs(t, s, 1000)
	send(t, c, 1, ping(strings.Repeat("x", 200<<10)))
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("large ping: %v %q", rep.Status, rep.Message)
	}
	var cn *conn
	s.mu.Lock()
	for k := range s.conns {
		cn = k
	}
	s.mu.Unlock()
	time.Sleep(recvIdle + 500*time.Millisecond)
	send(t, c, 2, ping("small"))
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("ping after idle: %v %q", rep.Status, rep.Message)
	}
	if cn.buf.released.Load() != 1 {
		t.Fatal("the buffer of an idle connection still holds a large message's pages")
	}
}

package server

import (
	"os"
	"testing"
	"unsafe"

	"golang.org/x/sys/unix"
)

// mincore fills vec with the residency of b's pages (mincore(2)).
func mincore(b, vec []byte) error {
	_, _, e := unix.Syscall(unix.SYS_MINCORE, uintptr(unsafe.Pointer(unsafe.SliceData(b))), uintptr(len(b)), uintptr(unsafe.Pointer(unsafe.SliceData(vec))))
	if e != 0 {
		return e
	}
	return nil
}

// resident returns how many bytes of b's pages are in memory (mincore):
// the buffer's own, whatever the rest of the process does meanwhile.
func resident(t *testing.T, b []byte) int {
	t.Helper()
	page := os.Getpagesize()
	vec := make([]byte, (len(b)+page-1)/page)
	if err := mincore(b, vec); err != nil {
		t.Skip("mincore: ", err)
	}
	n := 0
	for _, v := range vec {
		n += int(v & 1)
	}
	return n * page
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
	before := resident(t, r.b)
	for i := range size {
		r.b[i] = 0xa5
	}
	touched := resident(t, r.b)
	r.done(size)
	if !r.dirty {
		t.Fatal("a large message left the buffer clean")
	}
	for _, c := range r.b[:size] {
		if c != 0 {
			t.Fatal("not wiped")
		}
	}
	old := r.b
	r.release()
	after := resident(t, r.b)
	page := os.Getpagesize()
	if err := mincore(old[:page], make([]byte, 1)); err != unix.ENOMEM {
		t.Fatalf("the large message's pages are still mapped (mincore: %v)", err)
	}
	t.Logf("resident: %d KiB, %d KiB with a large message, %d KiB once it was handled", before>>10, touched>>10, after>>10)
	if touched-before < size/2 || touched-after < size/2 || r.dirty {
		t.Fatalf("the buffer's pages were not given back")
	}
}

package server

import "golang.org/x/sys/unix"

// recvBuf is a connection's receive buffer. It is mapped outside the Go
// heap: an idle connection holds only the pages its messages touched
// (not the whole message limit), they do not count toward the garbage
// collector's target, and after a large message the buffer is wiped and
// mapped afresh, so that a connection that once received a large request
// does not keep its memory. Where mapping fails it is a slice of the heap.
type recvBuf struct {
	b      []byte
	mapped bool
}

// recvKeep is the size of a message after which the buffer keeps its
// pages; past it, it is mapped afresh.
const recvKeep = 64 << 10

func newRecvBuf(n int) recvBuf {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return recvBuf{b: make([]byte, n)}
	}
	return recvBuf{b: b, mapped: true}
}

// done wipes the first n bytes, what the last message used, and gives the
// pages back if they were many. Nothing may refer to the buffer after.
func (r *recvBuf) done(n int) {
	n = min(n, len(r.b))
	clear(r.b[:n])
	if n <= recvKeep || !r.mapped {
		return
	}
	size := len(r.b)
	if b, err := unix.Mmap(-1, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err == nil {
		unix.Munmap(r.b)
		r.b = b
	}
}

// free gives the buffer back; it must not be used after.
func (r *recvBuf) free() {
	if r.mapped {
		clear(r.b)
		unix.Munmap(r.b)
	}
	r.b = nil
}

package server

import (
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// recvBuf is a connection's receive buffer, of the message limit's size.
// It is mapped outside the Go heap: a connection holds only the pages its
// messages touched (not the whole message limit), and they do not count
// toward the garbage collector's target. A connection holds one only
// while it serves requests: a parked one gives it back to the server's
// pool (idle.go), which maps it afresh first if a large message touched
// it, so that no buffer keeps the memory of the largest request it ever
// received. (Not at once after every large message: touching a fresh
// buffer's pages costs more than the message's own work.) Where mapping
// fails it is a slice of the heap.
type recvBuf struct {
	b      []byte
	mapped bool
	dirty  bool // more than recvKeep bytes of it are resident
	// released counts the times the buffer was mapped afresh; it may be
	// read by any goroutine.
	released atomic.Uint32
}

// recvKeep is the size of message after which the buffer is mapped afresh
// once the connection is idle (parked).
const recvKeep = 64 << 10

func newRecvBuf(n int) recvBuf {
	b, err := unix.Mmap(-1, 0, n, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS)
	if err != nil {
		return recvBuf{b: make([]byte, n)}
	}
	return recvBuf{b: b, mapped: true}
}

// done wipes the first n bytes, what the last message used. Nothing may
// refer to the buffer after.
func (r *recvBuf) done(n int) {
	n = min(n, len(r.b))
	clear(r.b[:n])
	if n > recvKeep && r.mapped {
		r.dirty = true
	}
}

// release gives the pages of a large message back: the buffer is mapped
// afresh. It must not be in use (no receive in progress).
func (r *recvBuf) release() {
	if !r.dirty {
		return
	}
	if b, err := unix.Mmap(-1, 0, len(r.b), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS); err == nil {
		unix.Munmap(r.b)
		r.b = b
		r.dirty = false
		r.released.Add(1)
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

package server

// Idle connections (docs/performance.md, "Connections"). A connection
// that is busy waits for its next request in a blocking receive, which
// holds an OS thread: the fastest way to take a request, since the
// kernel wakes the thread directly (package seqpacket). A connection that
// had no request for parkAfter is parked instead: its goroutine returns,
// its buffers (connScratch) go back to the server's pool, and the
// server's waiter (seqpacket.Readiness, one goroutine over epoll) starts
// a goroutine for it again when its next message comes. A parked
// connection holds its socket, its Session and nothing else: no thread,
// no goroutine stack, no receive buffer.
//
// At most maxReceivers connections wait in a blocking receive at once;
// one woken while all those slots are taken answers the requests it has
// waiting and parks again at once, until a slot is free. So thousands of
// connections that each send one request now and then never make
// thousands of threads, which the Go runtime would keep.

import (
	"errors"
	"time"

	"github.com/keywarden/keywarden/internal/seqpacket"
)

const (
	// parkAfter is how long a connection waits for its next request in a
	// blocking receive before it is parked.
	parkAfter = time.Second
	// maxReceivers bounds the connections waiting in a blocking receive,
	// each holding a thread.
	maxReceivers = 256
	// scratchKeep bounds the buffers the server keeps for connections
	// that wake; more are freed as connections park.
	scratchKeep = 64
)

// armPark makes the connection's blocking receives return after
// parkAfter without a request, so that it can be parked; a connection
// that cannot be keeps its goroutine and receives without a deadline.
func (cn *seqConn) armPark() {
	if cn.s.ready == nil {
		cn.noPark = true
		return
	}
	if err := cn.c.SetRecvTimeout(parkAfter); err != nil {
		cn.log.Warn("cannot set a receive timeout: the connection keeps a thread while idle", "err", err)
		cn.noPark = true
	}
}

// takeSlot reports whether the connection may wait for its next request
// in a blocking receive, and if so counts it until dropSlot.
func (cn *seqConn) takeSlot() bool {
	for {
		n := cn.s.receivers.Load()
		if n >= cn.s.maxReceivers && !cn.noPark {
			return false
		}
		if cn.s.receivers.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

func (s *Server) dropSlot() { s.receivers.Add(-1) }

// park gives the connection's buffers back and has the server's waiter
// call wake once a message comes. It reports whether the connection is
// parked; if not, the caller serves on. After it returned true the
// caller must not touch the connection: it may already be served again.
func (cn *seqConn) park() bool {
	if cn.noPark {
		return false
	}
	cn.s.putScratch(cn.connScratch)
	cn.connScratch = nil
	if err := cn.s.ready.Wait(cn.c, cn.wake); err != nil {
		if !errors.Is(err, seqpacket.ErrClosed) {
			cn.log.Warn("cannot park the connection: it keeps a thread while idle", "err", err)
			cn.noPark = true
		}
		return false // the next receive tells whether it is closed
	}
	return true
}

// wake runs on the waiter's goroutine when a parked connection has a
// message (or was shut down, or its client hung up).
func (cn *seqConn) wake() { go cn.serve() }

// getScratch returns a connection's buffers: kept ones, or new.
func (s *Server) getScratch() *connScratch {
	select {
	case sc := <-s.scratch:
		return sc
	default:
	}
	return &connScratch{buf: newRecvBuf(s.lims().MaxMessageBytes + 1), oob: make([]byte, seqpacket.OOBSize)}
}

// putScratch takes back the buffers of a connection that parks or ends:
// they are wiped already (each request's are, once it is answered); what
// a large request made them hold is given back first.
func (s *Server) putScratch(sc *connScratch) {
	sc.buf.release()
	if cap(sc.arena.buf) > arenaChunk {
		sc.arena.buf = nil
	}
	sc.arena.spent, sc.arena.attach = nil, nil
	clear(sc.notes[:cap(sc.notes)])
	sc.notes = sc.notes[:0]
	if cap(sc.pending) > maxPending {
		sc.pending = nil
	}
	sc.pending, sc.pendingBytes = sc.pending[:0], 0
	clear(sc.bufs[:cap(sc.bufs)])
	sc.bufs = sc.bufs[:0]
	sc.packing.trim()
	select {
	case s.scratch <- sc:
	default:
		sc.buf.free()
	}
}

// freeScratch frees the kept buffers (Shutdown).
func (s *Server) freeScratch() {
	for {
		select {
		case sc := <-s.scratch:
			sc.buf.free()
		default:
			return
		}
	}
}

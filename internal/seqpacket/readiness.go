package seqpacket

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Readiness tells a server when connections it parked have a message
// waiting. A connection that waits this way holds no thread and no
// goroutine: one goroutine waits for all of them (epoll), so thousands of
// idle connections cost their sockets and the server's own state of them,
// nothing more. A server parks a connection once it has been idle for a
// while, and receives with blocking calls again once it is woken (see the
// package comment: the blocking receive is the fast path of a busy one).
type Readiness struct {
	epfd int
	wake int // eventfd: Close wakes the waiter through it (token 0)
	done chan struct{}

	// mu guards waits, next and closed.
	mu     sync.Mutex
	waits  map[uint64]func()
	next   uint64
	closed bool
}

// NewReadiness starts a waiter; Close stops it.
func NewReadiness() (*Readiness, error) {
	epfd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, opError("epoll_create1", err)
	}
	wake, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		unix.Close(epfd)
		return nil, opError("eventfd", err)
	}
	ev := unix.EpollEvent{Events: unix.EPOLLIN}
	if err := unix.EpollCtl(epfd, unix.EPOLL_CTL_ADD, wake, &ev); err != nil {
		unix.Close(wake)
		unix.Close(epfd)
		return nil, opError("epoll_ctl", err)
	}
	r := &Readiness{epfd: epfd, wake: wake, done: make(chan struct{}), waits: make(map[uint64]func()), next: 1}
	go r.run()
	return r, nil
}

func (r *Readiness) run() {
	defer close(r.done)
	evs := make([]unix.EpollEvent, 128)
	for {
		n, err := unix.EpollWait(r.epfd, evs, -1)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return
		}
		for _, ev := range evs[:n] {
			tok := uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
			if tok == 0 {
				return // Close
			}
			r.mu.Lock()
			f := r.waits[tok]
			delete(r.waits, tok)
			r.mu.Unlock()
			if f != nil {
				f()
			}
		}
	}
}

// Wait calls ready once, on the waiter's goroutine, as soon as c has a
// message waiting, or is shut down, or its peer hung up (whatever a
// receive would return at once); at once if that is so already. ready
// must not block: it typically starts a goroutine that receives. The
// caller must not receive on c until ready was called.
//
// A connection that is closed while it waits is never reported: shut it
// down first (which reports it), or call WakeAll.
func (r *Readiness) Wait(c *Conn, ready func()) error {
	if !c.acquire() {
		return ErrClosed
	}
	defer c.release()
	if hookWait != nil {
		hookWait()
	}
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return ErrClosed
	}
	tok := r.next
	r.next++
	r.waits[tok] = ready
	r.mu.Unlock()
	// Level-triggered and one-shot: a message already waiting is reported
	// at once, and each arming reports once. The descriptor stays in the
	// set, disarmed, between waits; closing it removes it.
	ev := unix.EpollEvent{Events: unix.EPOLLIN | unix.EPOLLRDHUP | unix.EPOLLONESHOT, Fd: int32(uint32(tok)), Pad: int32(uint32(tok >> 32))}
	err := unix.EpollCtl(r.epfd, unix.EPOLL_CTL_MOD, c.fd, &ev)
	if err == unix.ENOENT {
		err = unix.EpollCtl(r.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev)
	}
	if err != nil {
		r.mu.Lock()
		delete(r.waits, tok)
		r.mu.Unlock()
		return opError("epoll_ctl", err)
	}
	// Closed while being armed: a WakeAll that ran before the token was
	// registered missed it, and the close that follows our release takes
	// the descriptor out of the set, perhaps before the waiter saw it
	// ready. Report it here; whoever takes the token calls ready, once.
	// (A Close after this check comes before the server's WakeAll, which
	// finds the token.)
	if c.state.Load()&closedBit != 0 {
		r.mu.Lock()
		f := r.waits[tok]
		delete(r.waits, tok)
		r.mu.Unlock()
		if f != nil {
			f()
		}
	}
	return nil
}

// hookWait, when set by a test, runs in Wait once c is held and before
// its token is registered.
var hookWait func()

// Waiting returns how many connections wait.
func (r *Readiness) Waiting() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.waits)
}

// WakeAll calls the ready function of every connection that waits, as if
// each had a message: a server that closes connections without shutting
// them down first (or cannot be sure the waiter saw it) makes sure none
// is left waiting forever.
func (r *Readiness) WakeAll() {
	r.mu.Lock()
	fs := make([]func(), 0, len(r.waits))
	for tok, f := range r.waits {
		fs = append(fs, f)
		delete(r.waits, tok)
	}
	r.mu.Unlock()
	for _, f := range fs {
		f()
	}
}

// Close stops the waiter: no ready function is called once it returns.
// The connections that wait are left as they are.
func (r *Readiness) Close() {
	r.mu.Lock()
	if r.closed {
		r.mu.Unlock()
		return
	}
	r.closed = true
	r.waits = nil
	r.mu.Unlock()
	one := [8]byte{1}
	unix.Write(r.wake, one[:])
	<-r.done
	unix.Close(r.wake)
	unix.Close(r.epfd)
}

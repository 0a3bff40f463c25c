package seqpacket

import (
	"sync"

	"golang.org/x/sys/unix"
)

// Hangups tells a server when the peers of its connections hang up. It
// reads nothing from the sockets: a hang-up shows at once, even while
// requests the peer sent before it still wait unread in the socket, so
// the server can drop them, and stop the work it does for a peer that
// will never read the replies.
//
// A peer has hung up when it closed its end (or shut it down both ways).
// A peer that only shut down its sending side, to say it has sent its
// last request, has not: it may still read the replies.
//
// One goroutine waits for every watched connection (epoll, with no event
// but the hang-up asked for), so a watch costs no thread and no system
// call on the path of a request.
type Hangups struct {
	epfd int
	wake int // eventfd: Close wakes the watcher through it (token 0)
	done chan struct{}

	// mu guards watches, next and closed.
	mu      sync.Mutex
	watches map[uint64]func()
	next    uint64
	closed  bool
}

// NewHangups starts a watcher of hang-ups; Close stops it.
func NewHangups() (*Hangups, error) {
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
	h := &Hangups{epfd: epfd, wake: wake, done: make(chan struct{}), watches: make(map[uint64]func()), next: 1}
	go h.run()
	return h, nil
}

func (h *Hangups) run() {
	defer close(h.done)
	evs := make([]unix.EpollEvent, 64)
	for {
		n, err := unix.EpollWait(h.epfd, evs, -1)
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
			h.mu.Lock()
			f := h.watches[tok]
			delete(h.watches, tok)
			h.mu.Unlock()
			if f != nil {
				f()
			}
		}
	}
}

// Watch calls hungUp once, on the watcher's goroutine, when c's peer
// hangs up; hungUp must not block. Calling stop ends the watch (hungUp
// may still be running, or about to run, when it returns): call it before
// c is closed, since closing c shuts it down, which looks like a hang-up.
func (h *Hangups) Watch(c *Conn, hungUp func()) (stop func(), err error) {
	if !c.acquire() {
		return nil, ErrClosed
	}
	defer c.release()
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, ErrClosed
	}
	tok := h.next
	h.next++
	h.watches[tok] = hungUp
	h.mu.Unlock()
	forget := func() {
		h.mu.Lock()
		delete(h.watches, tok)
		h.mu.Unlock()
	}
	// EPOLLHUP is always reported, whatever is asked; nothing else is.
	// One-shot: a socket that stays hung up is reported once.
	ev := unix.EpollEvent{Events: unix.EPOLLONESHOT, Fd: int32(uint32(tok)), Pad: int32(uint32(tok >> 32))}
	if err := unix.EpollCtl(h.epfd, unix.EPOLL_CTL_ADD, c.fd, &ev); err != nil {
		forget()
		return nil, opError("epoll_ctl", err)
	}
	return func() {
		forget()
		// A closed descriptor has left the epoll set by itself (the
		// daemon never duplicates its sockets).
		if c.acquire() {
			unix.EpollCtl(h.epfd, unix.EPOLL_CTL_DEL, c.fd, nil)
			c.release()
		}
	}, nil
}

// Close stops the watcher: no hungUp is called once it returns. The
// watched connections are left as they are.
func (h *Hangups) Close() {
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return
	}
	h.closed = true
	h.watches = nil
	h.mu.Unlock()
	one := [8]byte{1} // any count but 0 wakes the watcher, whatever the byte order
	unix.Write(h.wake, one[:])
	<-h.done
	unix.Close(h.wake)
	unix.Close(h.epfd)
}

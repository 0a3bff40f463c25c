package sshagent

import (
	"encoding/binary"
	"net"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// writer sends a connection's replies, each framed in one buffer and
// written in one system call. A client nearly always takes its reply at
// once, so a write is tried first without a deadline or the runtime's
// poller; only a reply the socket has no room for waits, until
// writeTimeout passes.
type writer struct {
	uc *net.UnixConn
	rc syscall.RawConn
	// buf is the frame: 4 bytes of length, then the reply; a handler
	// builds its reply in buf[4:] (start), and it is sent without a copy.
	// Its length is at least 4.
	buf []byte
	// The write under way (writeSome): what is left of it, its error,
	// and whether it may wait for room.
	rest    []byte
	err     error
	wait    bool
	writeFn func(fd uintptr) bool // w.writeSome, made once
}

func newWriter(uc *net.UnixConn) (*writer, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	w := &writer{uc: uc, rc: rc, buf: make([]byte, 4, 4<<10)}
	w.writeFn = w.writeSome
	return w, nil
}

// start returns the empty slice in which a reply may be built: a reply
// that begins there, and has not outgrown it, is sent in place.
func (w *writer) start() []byte { return w.buf[4:4] }

// send frames body and writes it.
func (w *writer) send(body []byte) error {
	var frame []byte
	if len(body) > 0 && cap(w.buf) >= 4+len(body) && &body[0] == &w.buf[4:5][0] {
		frame = w.buf[:4+len(body)]
	} else {
		w.buf = append(w.buf[:4], body...)
		frame = w.buf
	}
	binary.BigEndian.PutUint32(frame, uint32(len(body)))
	return w.write(frame)
}

// write writes b whole: at once if the socket has room for it, which is
// the rule; otherwise waiting for room, for at most writeTimeout.
func (w *writer) write(b []byte) error {
	w.rest, w.err, w.wait = b, nil, false
	defer func() {
		w.rest = nil
		if w.wait {
			// The deadline was for this write only: left set, it would
			// fail every write once it passed.
			w.uc.SetWriteDeadline(time.Time{})
		}
	}()
	for {
		err := w.rc.Write(w.writeFn)
		switch {
		case err != nil:
			return err
		case w.err != nil:
			return w.err
		case len(w.rest) == 0:
			return nil
		}
		// The socket is full: the rest must be taken within writeTimeout.
		w.uc.SetWriteDeadline(time.Now().Add(writeTimeout))
		w.wait = true
	}
}

// writeSome writes w.rest on fd as far as the socket takes it; once
// w.wait is set, it has the runtime wait for room (it returns false).
func (w *writer) writeSome(fd uintptr) bool {
	for len(w.rest) > 0 {
		n, errno := sendNow(fd, w.rest)
		switch errno {
		case 0:
			w.rest = w.rest[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			return !w.wait
		default:
			w.err = errno
			return true
		}
	}
	return true
}

// sendNow is one send(2) of b that never waits, and raises no SIGPIPE.
func sendNow(fd uintptr, b []byte) (int, unix.Errno) {
	n, err := unix.SendmsgN(int(fd), b, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
	if err != nil {
		if errno, ok := err.(unix.Errno); ok {
			return 0, errno
		}
		return 0, unix.EIO
	}
	return n, 0
}

package unixsock

import (
	"net"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Writer writes a connection's replies, each in one system call when the
// socket has room for it. A client nearly always takes its reply at once,
// so a write is tried first without a deadline or the runtime's poller;
// only a reply the socket has no room for waits, for at most the
// Writer's timeout, and no deadline is left set after it (the runtime
// would refuse every later write once it passed).
type Writer struct {
	uc      *net.UnixConn
	rc      syscall.RawConn
	timeout time.Duration
	// The write under way (writeSome): what is left of it, its error,
	// and whether it may wait for room.
	rest    []byte
	err     error
	wait    bool
	writeFn func(fd uintptr) bool // w.writeSome, made once
}

// NewWriter returns a Writer on uc whose replies wait at most timeout for
// room in the socket.
func NewWriter(uc *net.UnixConn, timeout time.Duration) (*Writer, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return nil, err
	}
	w := &Writer{uc: uc, rc: rc, timeout: timeout}
	w.writeFn = w.writeSome
	return w, nil
}

// Write writes b whole: at once if the socket has room for it, which is
// the rule; otherwise waiting for room, for at most the timeout. It
// allocates nothing unless it fails.
func (w *Writer) Write(b []byte) error {
	w.rest, w.err, w.wait = b, nil, false
	defer func() {
		w.rest = nil
		if w.wait {
			w.uc.SetWriteDeadline(time.Time{})
		}
	}()
	for {
		err := w.rc.Write(w.writeFn)
		switch {
		case err != nil:
			return err
		case w.err != nil:
			return &net.OpError{Op: "write", Net: "unix", Err: os.NewSyscallError("sendmsg", w.err)}
		case len(w.rest) == 0:
			return nil
		}
		// The socket is full: the rest must be taken within the timeout.
		w.uc.SetWriteDeadline(time.Now().Add(w.timeout))
		w.wait = true
	}
}

// writeSome writes w.rest on fd as far as the socket takes it, never
// waiting and raising no SIGPIPE; once w.wait is set, it has the runtime
// wait for room (it returns false).
func (w *Writer) writeSome(fd uintptr) bool {
	for len(w.rest) > 0 {
		n, err := unix.SendmsgN(int(fd), w.rest, nil, nil, unix.MSG_DONTWAIT|unix.MSG_NOSIGNAL)
		switch err {
		case nil:
			w.rest = w.rest[n:]
		case unix.EINTR:
		case unix.EAGAIN:
			return !w.wait
		default:
			w.err = err
			return true
		}
	}
	return true
}

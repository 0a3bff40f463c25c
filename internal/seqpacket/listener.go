package seqpacket

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"sync/atomic"

	"github.com/keywarden/keywarden/internal/ownfile"

	"golang.org/x/sys/unix"
)

// Listener is a listening SOCK_SEQPACKET socket bound to a path. It holds
// an exclusive lock on path+".lock" for its lifetime, so two daemons can
// never serve the same socket path.
type Listener struct {
	path   string
	fd     int
	lockFD int
	closed atomic.Bool
	conn   *Conn // refcounting for fd, shared with Accept
	// inherited: the socket was passed to the process (FileListener).
	inherited bool
}

// ErrInUse is returned by Listen when another live process serves the
// path.
var ErrInUse = errors.New("another keywarden daemon is serving this socket")

// Listen binds a SOCK_SEQPACKET socket at path with the given permission
// bits. If a socket file is already there, Listen connects to it: a live
// server means ErrInUse; a dead one (a stale file left by a crash) is
// removed. A path that exists but is not a socket is never removed.
// SO_PASSCRED is set on the listening socket, so accepted connections
// carry credentials from their very first message.
func Listen(path string, mode fs.FileMode) (*Listener, error) {
	if len(path) >= len(unix.RawSockaddrUnix{}.Path) {
		return nil, fmt.Errorf("socket path too long (%d bytes, at most %d)", len(path), len(unix.RawSockaddrUnix{}.Path)-1)
	}
	lockFD, err := openLock(path + ".lock")
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(lockFD, unix.LOCK_EX|unix.LOCK_NB); err != nil {
		unix.Close(lockFD)
		if err == unix.EWOULDBLOCK {
			return nil, fmt.Errorf("%s: %w", path, ErrInUse)
		}
		return nil, fmt.Errorf("lock %s.lock: %w", path, err)
	}
	fail := func(err error) (*Listener, error) {
		unix.Close(lockFD)
		return nil, err
	}
	if err := removeStale(path); err != nil {
		return fail(err)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fail(opError("socket", err))
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		unix.Close(fd)
		return fail(opError("setsockopt SO_PASSCRED", err))
	}
	// Bind with a umask that leaves the socket inaccessible until chmod sets
	// the mode we want, so there is no window with wider permissions.
	old := unix.Umask(0o777)
	err = unix.Bind(fd, &unix.SockaddrUnix{Name: path})
	unix.Umask(old)
	if err != nil {
		unix.Close(fd)
		return fail(fmt.Errorf("bind %s: %w", path, err))
	}
	if err := os.Chmod(path, mode); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return fail(err)
	}
	if err := unix.Listen(fd, 128); err != nil {
		unix.Close(fd)
		os.Remove(path)
		return fail(opError("listen", err))
	}
	return &Listener{path: path, fd: fd, lockFD: lockFD, conn: newConn(fd)}, nil
}

// openLock opens (creating it if needed) the lock file beside a socket,
// never through a symbolic link, and refuses anything but a regular file
// of this process's uid or root: in a directory others may write to, such
// as /tmp, another user could have made one to hold its lock.
func openLock(path string) (int, error) {
	return ownfile.Open("lock file", path, unix.O_RDWR|unix.O_CREAT, 0o600, ", or choose a socket in a directory of your own")
}

func removeStale(path string) error {
	fi, err := os.Lstat(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0)
	if err != nil {
		return opError("socket", err)
	}
	err = unix.Connect(fd, &unix.SockaddrUnix{Name: path})
	unix.Close(fd)
	switch err {
	case nil, unix.EAGAIN:
		return fmt.Errorf("%s: %w", path, ErrInUse)
	case unix.ECONNREFUSED, unix.EPROTOTYPE:
		// Nobody listens: a stale socket from a process that died.
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove stale socket: %w", err)
		}
		return nil
	}
	return fmt.Errorf("probe existing socket %s: %w", path, err)
}

// Path returns the socket path.
func (l *Listener) Path() string { return l.path }

// Accept waits for a connection. After Close it returns ErrClosed.
func (l *Listener) Accept() (*Conn, error) {
	if !l.conn.acquire() {
		return nil, ErrClosed
	}
	defer l.conn.release()
	for {
		nfd, _, err := unix.Accept4(l.fd, unix.SOCK_CLOEXEC)
		if err == unix.EINTR || err == unix.ECONNABORTED {
			continue
		}
		if err != nil {
			if l.closed.Load() {
				return nil, ErrClosed
			}
			return nil, opError("accept", err)
		}
		if l.closed.Load() {
			unix.Close(nfd)
			return nil, ErrClosed
		}
		setBuffers(nfd)
		return newConn(nfd), nil
	}
}

// Close stops Accept, removes the socket file and releases the lock. The
// lock file itself stays: removing it would let two later daemons lock two
// different files of the same name.
func (l *Listener) Close() error {
	if l.closed.Swap(true) {
		return nil
	}
	if l.inherited {
		// The socket stays with its maker, which queues connections for
		// the next daemon it starts: shutdown(2) would break it for that
		// one too. A connection of our own wakes a blocked Accept, which
		// then sees closed and drops it.
		if fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC|unix.SOCK_NONBLOCK, 0); err == nil {
			unix.Connect(fd, &unix.SockaddrUnix{Name: l.path})
			unix.Close(fd)
		}
		l.conn.closeKeepSocket()
		return nil
	}
	// Remove the name first, so no new client connects to a dying daemon.
	err := os.Remove(l.path)
	l.conn.Close() // shutdown wakes a blocked accept
	unix.Close(l.lockFD)
	return err
}

// FileListener serves fd, a listening SOCK_SEQPACKET socket made by
// someone else (systemd's socket activation), bound at path. The socket
// file belongs to its maker: Close neither removes it nor takes its lock.
// SO_PASSCRED is set on fd; the caller should make sure it was set before
// any client connected (the socket unit's PassCredentials=yes), since
// messages sent before it carry no credentials and are refused.
func FileListener(fd int, path string) (*Listener, error) {
	typ, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_TYPE)
	if err != nil {
		return nil, opError("getsockopt SO_TYPE", err)
	}
	if typ != unix.SOCK_SEQPACKET {
		return nil, fmt.Errorf("%s: the passed socket is not SOCK_SEQPACKET (type %d)", path, typ)
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED, 1); err != nil {
		return nil, opError("setsockopt SO_PASSCRED", err)
	}
	unix.CloseOnExec(fd)
	return &Listener{path: path, fd: fd, lockFD: -1, inherited: true, conn: newConn(fd)}, nil
}

// Package unixsock is what the daemon's stream-socket fronts (ssh-agent,
// PKCS #11, the transit HTTP API, the Kubernetes KMS plugin) share: a
// listening socket made with its mode from the start, and the identity
// the kernel recorded for the process that connected.
package unixsock

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/server"
)

// Options say what Listen sets on the socket.
type Options struct {
	// PassCred sets SO_PASSCRED before anyone can connect: the kernel then
	// attaches the writer's credentials to every write on its
	// connections, from the first one on.
	PassCred bool
	// UnlinkOnClose removes the socket's file when the listener closes.
	UnlinkOnClose bool
}

// Listen makes the Unix stream socket at path, with mode, replacing a
// stale socket there (one nobody listens on), never another file. The
// socket is made without permissions, then given mode, so that no one
// connects before it has them. what names the socket in errors ("ssh-agent
// socket").
func Listen(what, path string, mode fs.FileMode, o Options) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("%s %s: a file that is not a socket is in the way", what, path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("%s %s: another process listens on it", what, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("%s %s: %w", what, path, err)
		}
	}
	old := unix.Umask(0o777)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	l.SetUnlinkOnClose(o.UnlinkOnClose)
	if o.PassCred {
		if err := PassCred(l); err != nil {
			l.Close()
			return nil, fmt.Errorf("%s: %w", what, err)
		}
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return l, nil
}

// PassCred sets SO_PASSCRED on l, which its connections inherit: the
// kernel then attaches the writer's credentials to every write on them.
// What is written before it is set carries none.
func PassCred(l *net.UnixListener) error {
	rc, err := l.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	if err := rc.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_PASSCRED, 1)
	}); err != nil {
		return err
	}
	return serr
}

// PeerIdentity is who connected: SO_PEERCRED, with a pidfd for that
// process where the kernel gives one (SO_PEERPIDFD, Linux 6.5), else -1.
func PeerIdentity(uc *net.UnixConn) (server.Identity, error) {
	rc, err := uc.SyscallConn()
	if err != nil {
		return server.Identity{}, err
	}
	id := server.Identity{Pidfd: -1}
	var serr error
	err = rc.Control(func(fd uintptr) {
		cr, err := unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if err != nil {
			serr = err
			return
		}
		id.PID, id.UID, id.GID = cr.Pid, cr.Uid, cr.Gid
		if pfd, err := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, soPeerPidfd); err == nil {
			id.Pidfd = pfd
		}
	})
	if err == nil {
		err = serr
	}
	return id, err
}

// soPeerPidfd is SO_PEERPIDFD (Linux 6.5).
const soPeerPidfd = 77

// OOBSize is the room for what a read takes besides the bytes: the
// writer's credentials (SO_PASSCRED), and descriptors a client passes,
// which WriterPID closes unused.
var OOBSize = unix.CmsgSpace(unix.SizeofUcred) + unix.CmsgSpace(16*4)

// WriterPID returns the pid in the credentials of oob (0: none), and
// closes any descriptor passed with them. It allocates nothing: it runs
// for every read of a connection.
func WriterPID(oob []byte) int32 {
	const hdr = unix.SizeofCmsghdr
	var pid int32
	for len(oob) >= hdr {
		l, level, typ := cmsgHeader(oob)
		if l < hdr || l > len(oob) {
			break
		}
		data := oob[hdr:l]
		if level == unix.SOL_SOCKET {
			switch typ {
			case unix.SCM_CREDENTIALS:
				if len(data) >= unix.SizeofUcred {
					pid = int32(binary.NativeEndian.Uint32(data[0:4]))
				}
			case unix.SCM_RIGHTS:
				for i := 0; i+4 <= len(data); i += 4 {
					unix.Close(int(int32(binary.NativeEndian.Uint32(data[i : i+4]))))
				}
			}
		}
		next := unix.CmsgSpace(l - hdr)
		if next > len(oob) {
			break
		}
		oob = oob[next:]
	}
	return pid
}

// OtherWriter is the error of a read whose bytes another process than
// the one that connected wrote (PID 0: one the daemon cannot see).
type OtherWriter struct{ PID int32 }

func (e OtherWriter) Error() string {
	return fmt.Sprintf("written by pid %d, not by the process that connected", e.PID)
}

// Accept accepts connections on l and hands each to serve, until l fails
// or closed reports that the front is closed (then it returns closedErr).
// A timeout or a shortage of descriptors is logged and retried after a
// pause, so that a burst of connections does not stop the front.
func Accept(l *net.UnixListener, closed func() bool, closedErr error, log *slog.Logger, serve func(*net.UnixConn)) error {
	for {
		uc, err := l.AcceptUnix()
		if err != nil {
			if closed() {
				return closedErr
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				log.Warn("accept failed; retrying", "err", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return err
		}
		serve(uc)
	}
}

// cmsgHeader reads a control message's header at the start of b (which
// holds at least unix.SizeofCmsghdr bytes): its length, level and type.
// The length is a size_t, so its width is the machine's word.
func cmsgHeader(b []byte) (length, level, typ int) {
	off := unix.SizeofCmsghdr - 8
	if off == 8 {
		length = int(binary.NativeEndian.Uint64(b))
	} else {
		length = int(binary.NativeEndian.Uint32(b))
	}
	return length, int(int32(binary.NativeEndian.Uint32(b[off:]))), int(int32(binary.NativeEndian.Uint32(b[off+4:])))
}

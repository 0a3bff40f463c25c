package p11front

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/server"
)

// Name is the front's name in the audit log.
const Name = "pkcs11"

// Config configures a Front. Zero values mean defaults.
type Config struct {
	// Server is the core. Required.
	Server *server.Server
	// Logger receives the front's logs; nil discards them.
	Logger *slog.Logger
	// TokenLabel is the token's label (default "keywarden").
	TokenLabel string
}

// Front serves p11-kit's RPC protocol on listeners given to Serve.
type Front struct {
	cfg Config
	log *slog.Logger
	// ctx ends at Close: the core's sessions opened for the front end.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards the fields below; never held across a request to the core
	// or I/O.
	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	wg        sync.WaitGroup // connections being served
}

// New makes a Front.
func New(cfg Config) *Front {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.TokenLabel == "" {
		cfg.TokenLabel = "keywarden"
	}
	f := &Front{cfg: cfg, log: cfg.Logger.With("front", Name),
		listeners: map[net.Listener]struct{}{}, conns: map[*conn]struct{}{}}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f
}

// Listen makes the Unix stream socket at path, with mode, replacing a
// stale socket there (one nobody listens on), never another file. The
// socket has SO_PASSCRED before anyone can connect.
func Listen(path string, mode fs.FileMode) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("pkcs11 socket %s: a file that is not a socket is in the way", path)
		}
		if c, err := net.DialTimeout("unix", path, time.Second); err == nil {
			c.Close()
			return nil, fmt.Errorf("pkcs11 socket %s: another process listens on it", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("pkcs11 socket %s: %w", path, err)
		}
	}
	old := unix.Umask(0o777)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	unix.Umask(old)
	if err != nil {
		return nil, fmt.Errorf("pkcs11 socket: %w", err)
	}
	if err := passCred(l); err != nil {
		l.Close()
		return nil, fmt.Errorf("pkcs11 socket: %w", err)
	}
	if err := os.Chmod(path, mode); err != nil {
		l.Close()
		return nil, fmt.Errorf("pkcs11 socket: %w", err)
	}
	return l, nil
}

// passCred sets SO_PASSCRED on l, which its connections inherit: the
// kernel then attaches the writer's credentials to every write.
func passCred(l *net.UnixListener) error {
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

// ErrClosed is returned by Serve once the Front is closed.
var ErrClosed = errors.New("p11front: closed")

// Serve accepts connections on l and serves each on a goroutine of its
// own until l fails or the Front is closed. It closes l.
func (f *Front) Serve(l *net.UnixListener) error {
	if err := passCred(l); err != nil {
		l.Close()
		return err
	}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	f.listeners[l] = struct{}{}
	f.mu.Unlock()
	defer func() {
		f.mu.Lock()
		delete(f.listeners, l)
		f.mu.Unlock()
		l.Close()
	}()
	for {
		uc, err := l.AcceptUnix()
		if err != nil {
			f.mu.Lock()
			closed := f.closed
			f.mu.Unlock()
			if closed {
				return ErrClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() || errors.Is(err, unix.EMFILE) || errors.Is(err, unix.ENFILE) {
				f.log.Warn("accept failed; retrying", "err", err)
				time.Sleep(50 * time.Millisecond)
				continue
			}
			return err
		}
		f.accept(uc)
	}
}

// accept opens the core's session of a new connection with the identity
// the kernel recorded for the process that connected, and serves it.
func (f *Front) accept(uc *net.UnixConn) {
	id, err := peerIdentity(uc)
	if err != nil {
		f.log.Warn("connection refused: the kernel gave no credentials", "err", err)
		uc.Close()
		return
	}
	ss, err := f.cfg.Server.NewSession(f.ctx, Name, id) // takes id.Pidfd
	if err != nil {
		f.log.Info("connection refused by the core", "uid", id.UID, "pid", id.PID, "err", err)
		uc.Close()
		return
	}
	c := newConn(f, uc, ss, id)
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		ss.Close()
		uc.Close()
		return
	}
	f.conns[c] = struct{}{}
	f.wg.Add(1)
	f.mu.Unlock()
	go func() {
		defer f.wg.Done()
		c.serve()
		f.mu.Lock()
		delete(f.conns, c)
		f.mu.Unlock()
	}()
}

// peerIdentity is who connected: SO_PEERCRED, with a pidfd for that
// process where the kernel gives one (SO_PEERPIDFD, Linux 6.5), else -1.
func peerIdentity(uc *net.UnixConn) (server.Identity, error) {
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

// Close stops serving: listeners and connections close, and with them
// the core's sessions (and the session objects they held).
func (f *Front) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	for l := range f.listeners {
		l.Close()
	}
	for c := range f.conns {
		c.c.Close()
	}
	f.mu.Unlock()
	f.cancel()
	f.wg.Wait()
}

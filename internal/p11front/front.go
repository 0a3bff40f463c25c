package p11front

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/unixsock"
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

	// busy counts the connections handling a request: a connection
	// polls its socket for the next one only while no other has work
	// (see credReader).
	busy atomic.Int32
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
	return unixsock.Listen("pkcs11 socket", path, mode, unixsock.Options{PassCred: true})
}

// ErrClosed is returned by Serve once the Front is closed.
var ErrClosed = errors.New("p11front: closed")

// Serve accepts connections on l and serves each on a goroutine of its
// own until l fails or the Front is closed. It closes l.
func (f *Front) Serve(l *net.UnixListener) error {
	if err := unixsock.PassCred(l); err != nil {
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
	return unixsock.Accept(l, func() bool {
		f.mu.Lock()
		defer f.mu.Unlock()
		return f.closed
	}, ErrClosed, f.log, f.accept)
}

// accept opens the core's session of a new connection with the identity
// the kernel recorded for the process that connected, and serves it.
func (f *Front) accept(uc *net.UnixConn) {
	id, err := unixsock.PeerIdentity(uc)
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

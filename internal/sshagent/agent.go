package sshagent

import (
	"context"
	"errors"
	"io/fs"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/unixsock"
)

// Front is the name of the front in the audit log.
const Front = "ssh-agent"

// Config configures an Agent. Zero values mean defaults.
type Config struct {
	// Server is the core. Required.
	Server *server.Server
	// Logger receives the front's logs; nil discards them.
	Logger *slog.Logger
	// Askpass is the program that confirms each use of a key added with
	// ssh-add -c (run as ssh-agent runs SSH_ASKPASS); "" refuses such uses.
	Askpass string
	// AskpassTimeout bounds how long the program may take (default 30s);
	// past it the use is refused.
	AskpassTimeout time.Duration
	// MaxAddedPerUID bounds the keys one uid has added with ssh-add
	// (default 32). Each is also one of the uid's connections to the core.
	MaxAddedPerUID int
	// Now is the clock (default time.Now).
	Now func() time.Time
}

// Agent serves the agent protocol on listeners given to Serve.
type Agent struct {
	cfg Config
	log *slog.Logger
	// ctx ends at Close: the core's sessions opened for the front end.
	ctx    context.Context
	cancel context.CancelFunc

	// askpass is the confirmation program in force (Config.Askpass until
	// SetAskpass replaces it).
	askpass atomic.Pointer[string]
	// busy counts the connections handling a message: the reads of the
	// others poll their socket only while it is 0 (reader).
	busy atomic.Int32

	// mu guards the fields below; never held across a request to the core
	// or I/O.
	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[*conn]struct{}
	users     map[uint32]*user
	wg        sync.WaitGroup // connections being served
}

// New makes an Agent.
func New(cfg Config) *Agent {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.AskpassTimeout <= 0 {
		cfg.AskpassTimeout = 30 * time.Second
	}
	if cfg.MaxAddedPerUID <= 0 {
		cfg.MaxAddedPerUID = 32
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	a := &Agent{cfg: cfg, log: cfg.Logger.With("front", Front), listeners: map[net.Listener]struct{}{},
		conns: map[*conn]struct{}{}, users: map[uint32]*user{}}
	a.ctx, a.cancel = context.WithCancel(context.Background())
	a.askpass.Store(&cfg.Askpass)
	return a
}

// SetAskpass replaces the confirmation program (a configuration reload):
// the next confirmation, and the next ssh-add -c, use it; one already
// asked goes on with the program it started. "" refuses both.
func (a *Agent) SetAskpass(prog string) { a.askpass.Store(&prog) }

// Listen makes the Unix stream socket at path, with mode, replacing a
// stale socket there (a socket nobody listens on), never another file.
func Listen(path string, mode fs.FileMode) (*net.UnixListener, error) {
	return unixsock.Listen("ssh-agent socket", path, mode, unixsock.Options{PassCred: true})
}

// ErrClosed is returned by Serve once the Agent is closed.
var ErrClosed = errors.New("sshagent: closed")

// Serve accepts connections on l and serves each on a goroutine of its
// own until l fails or the Agent is closed. It closes l. l should come
// from Listen: a listener made otherwise is given SO_PASSCRED here, and
// a client that connected and wrote before that is refused.
func (a *Agent) Serve(l *net.UnixListener) error {
	if err := unixsock.PassCred(l); err != nil {
		l.Close()
		return err
	}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	a.listeners[l] = struct{}{}
	a.mu.Unlock()
	defer func() {
		a.mu.Lock()
		delete(a.listeners, l)
		a.mu.Unlock()
		l.Close()
	}()
	return unixsock.Accept(l, func() bool {
		a.mu.Lock()
		defer a.mu.Unlock()
		return a.closed
	}, ErrClosed, a.log, a.accept)
}

// accept opens the core's session of a new connection with the identity
// the kernel recorded for the process that connected, and serves it.
func (a *Agent) accept(uc *net.UnixConn) {
	id, err := unixsock.PeerIdentity(uc)
	if err != nil {
		a.log.Warn("connection refused: the kernel gave no credentials", "err", err)
		uc.Close()
		return
	}
	ss, err := a.cfg.Server.NewSession(a.ctx, Front, id) // takes id.Pidfd
	if err != nil {
		a.log.Info("connection refused by the core", "uid", id.UID, "pid", id.PID, "err", err)
		uc.Close()
		return
	}
	c := &conn{a: a, c: uc, ss: ss, id: id, u: a.userOf(id.UID), opened: map[string]openedKey{}}
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		ss.Close()
		uc.Close()
		return
	}
	a.conns[c] = struct{}{}
	a.wg.Add(1)
	a.mu.Unlock()
	go func() {
		defer a.wg.Done()
		c.serve()
		a.mu.Lock()
		delete(a.conns, c)
		a.mu.Unlock()
	}()
}

// userOf returns uid's state, made on first use.
func (a *Agent) userOf(uid uint32) *user {
	a.mu.Lock()
	defer a.mu.Unlock()
	u := a.users[uid]
	if u == nil {
		u = &user{uid: uid}
		a.users[uid] = u
	}
	return u
}

// Close stops serving: listeners and connections close, and the keys
// added with ssh-add are destroyed, as when ssh-agent exits.
func (a *Agent) Close() {
	a.mu.Lock()
	if a.closed {
		a.mu.Unlock()
		return
	}
	a.closed = true
	for l := range a.listeners {
		l.Close()
	}
	for c := range a.conns {
		c.c.Close()
	}
	users := a.users
	a.mu.Unlock()
	// Work the connections started stops now (a confirmation waiting for
	// its program, a request waiting in the core), not after them.
	a.cancel()
	a.wg.Wait()
	for _, u := range users {
		u.removeAll()
	}
}

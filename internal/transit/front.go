package transit

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/unixsock"
)

// FrontName is the name of the front in the audit log.
const FrontName = "transit"

// Limits of the front (docs/transit.md, "Limits"). A body over MaxBody is
// answered 413; a batch_input of more than MaxBatch items 400.
const (
	// DefaultMaxBody is the largest request body taken, in bytes.
	DefaultMaxBody = 4 << 20
	// DefaultMaxBatch is the most items of one batch_input.
	DefaultMaxBatch = 1024
	// maxHeaderBytes bounds a request's header.
	maxHeaderBytes = 16 << 10
	// readHeaderTimeout: a request's header must arrive within it, and
	// readTimeout bounds a whole request, header and body; writeTimeout
	// bounds the reply. idleTimeout closes a kept-alive connection with no
	// request.
	readHeaderTimeout = 10 * time.Second
	readTimeout       = 30 * time.Second
	writeTimeout      = 60 * time.Second
	idleTimeout       = 120 * time.Second
)

// Config configures a Front. Zero values mean defaults.
type Config struct {
	// Server is the core. Required.
	Server *server.Server
	// Logger receives the front's logs; nil discards them.
	Logger *slog.Logger
	// Prefix is the mount's path, with slashes at both ends (default
	// "/v1/transit/").
	Prefix string
	// MaxBody bounds a request's body in bytes (default DefaultMaxBody).
	MaxBody int64
	// MaxBatch bounds a batch_input (default DefaultMaxBatch).
	MaxBatch int
	// MaxConnsPerAddr bounds the TCP connections open at once from one
	// network address, handshakes included (default
	// DefaultMaxConnsPerAddr); a connection past it is closed at accept.
	MaxConnsPerAddr int
	// ReadHeaderTimeout, IdleTimeout: see the constants; for tests.
	ReadHeaderTimeout, IdleTimeout time.Duration
}

// DefaultMaxConnsPerAddr is the most TCP connections one network address
// holds open at once: one peer cannot take the whole TCP connection limit.
const DefaultMaxConnsPerAddr = 64

// Front serves the transit API on listeners given to Serve.
type Front struct {
	cfg Config
	log *slog.Logger
	// ctx ends at Close: the core's sessions opened for the front end.
	ctx    context.Context
	cancel context.CancelFunc

	// mu guards the fields below; never held across a request to the core
	// or I/O.
	mu      sync.Mutex
	closed  bool
	servers map[*http.Server]struct{}
	// bodies is what the requests of each uid being served hold for
	// their bodies (holdBody).
	bodies map[uint32]int64

	// tlsConns are the TLS connections' sessions, by connection (tls.go).
	tlsConns sync.Map

	// The log lines of refusals a peer can repeat at will, each kind let
	// through once per interval with the count of those held back.
	acceptLog, certLog, remapLog, coreLog, addrLog unixsock.RateLog
}

// New makes a Front.
func New(cfg Config) (*Front, error) {
	if cfg.Server == nil {
		return nil, errors.New("transit: no server")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Prefix == "" {
		cfg.Prefix = "/v1/transit/"
	}
	if !strings.HasPrefix(cfg.Prefix, "/") || !strings.HasSuffix(cfg.Prefix, "/") || strings.Contains(cfg.Prefix, "//") {
		return nil, fmt.Errorf("transit: mount prefix %q: want a path with a slash at both ends, such as /v1/transit/", cfg.Prefix)
	}
	if cfg.MaxBody <= 0 {
		cfg.MaxBody = DefaultMaxBody
	}
	if cfg.MaxBatch <= 0 {
		cfg.MaxBatch = DefaultMaxBatch
	}
	if cfg.MaxConnsPerAddr <= 0 {
		cfg.MaxConnsPerAddr = DefaultMaxConnsPerAddr
	}
	if cfg.ReadHeaderTimeout <= 0 {
		cfg.ReadHeaderTimeout = readHeaderTimeout
	}
	if cfg.IdleTimeout <= 0 {
		cfg.IdleTimeout = idleTimeout
	}
	f := &Front{cfg: cfg, log: cfg.Logger.With("front", FrontName), servers: map[*http.Server]struct{}{}, bodies: map[uint32]int64{}}
	f.ctx, f.cancel = context.WithCancel(context.Background())
	return f, nil
}

// Listen makes the Unix stream socket at path, with mode, replacing a
// stale socket there (a socket nobody listens on), never another file.
func Listen(path string, mode fs.FileMode) (*net.UnixListener, error) {
	return unixsock.Listen("transit socket", path, mode, unixsock.Options{UnlinkOnClose: true})
}

// holdBody counts n bytes of a body to be read for uid against what the
// bodies of uid's requests being served may hold together: the core's
// limit of the request bytes of one uid, or one body if that is more.
// Bodies are read and decoded before any of them reaches the core, so
// that without this bound one uid's many connections, or the HTTP/2
// streams of one, could hold the daemon's memory. false: over it, not
// counted.
func (f *Front) holdBody(uid uint32, n int64) bool {
	share := max(f.cfg.MaxBody, int64(f.cfg.Server.Limits().MaxRequestBytesPerUID))
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bodies[uid]+n > share {
		return false
	}
	f.bodies[uid] += n
	return true
}

func (f *Front) unholdBody(uid uint32, n int64) {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.bodies[uid] -= n; f.bodies[uid] <= 0 {
		delete(f.bodies, uid)
	}
}

// ErrClosed is returned by Serve once the Front is closed.
var ErrClosed = errors.New("transit: closed")

// newHTTPServer is the HTTP server of one listener: its timeouts and
// header cap, each connection's core session bound to its context.
func (f *Front) newHTTPServer() *http.Server {
	hs := &http.Server{
		Handler:           f,
		ReadHeaderTimeout: f.cfg.ReadHeaderTimeout,
		ReadTimeout:       readTimeout,
		WriteTimeout:      writeTimeout,
		IdleTimeout:       f.cfg.IdleTimeout,
		MaxHeaderBytes:    maxHeaderBytes,
		ErrorLog:          slog.NewLogLogger(f.log.Handler(), slog.LevelDebug),
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			if ic, ok := c.(*identConn); ok {
				return context.WithValue(ctx, connKey{}, ic.cc)
			}
			return ctx
		},
		ConnState: func(c net.Conn, st http.ConnState) {
			if st != http.StateClosed && st != http.StateHijacked {
				return
			}
			if ic, ok := c.(*identConn); ok {
				ic.cc.close()
			}
		},
	}
	return hs
}

// Serve accepts connections on l, a Unix stream socket, and serves HTTP/1.1
// and HTTP/2 in cleartext with prior knowledge (h2c: a client that starts
// with HTTP/2's preface; no Upgrade from HTTP/1.1) on each until l fails or
// the Front is closed. It closes l. Each connection is one core session,
// opened with the identity the kernel recorded for the process that
// connected: every request on it, and every HTTP/2 stream, is that
// process's, whoever writes it later (a descriptor passed on keeps its
// first identity), and it lasts as long as HTTP keeps the connection alive.
func (f *Front) Serve(l *net.UnixListener) error {
	hs := f.newHTTPServer()
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	hs.Protocols = &p
	// The streams of one connection share its session's requests in
	// flight, as over TLS.
	// A connection that takes no byte for writeTimeout is closed: HTTP/2's
	// WriteTimeout is per stream, and a client that stops reading would
	// otherwise hold the connection and its streams.
	hs.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: f.cfg.Server.Limits().MaxInFlight, WriteByteTimeout: writeTimeout}
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	f.servers[hs] = struct{}{}
	f.mu.Unlock()
	err := hs.Serve(&identListener{UnixListener: l, f: f})
	f.mu.Lock()
	closed := f.closed
	delete(f.servers, hs)
	f.mu.Unlock()
	if closed || errors.Is(err, http.ErrServerClosed) {
		return ErrClosed
	}
	return err
}

// Close stops serving: listeners and connections close, and their
// sessions with them.
func (f *Front) Close() {
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		return
	}
	f.closed = true
	servers := f.servers
	f.servers = nil
	f.mu.Unlock()
	f.cancel()
	for hs := range servers {
		hs.Close()
	}
}

// identListener accepts Unix connections, each with the core session of
// the process that connected, opened before a byte of it is read.
type identListener struct {
	*net.UnixListener
	f *Front
}

func (l *identListener) Accept() (net.Conn, error) {
	for {
		uc, err := l.AcceptUnix()
		if err != nil {
			return nil, err
		}
		cc, err := l.f.open(uc)
		if err != nil {
			if ok, held := l.f.acceptLog.Allow(); ok {
				l.f.log.Info("connection refused", "err", err, "refusals_not_logged", held)
			}
			uc.Close()
			continue
		}
		return &identConn{UnixConn: uc, cc: cc}, nil
	}
}

// identConn is an accepted connection with its client's state.
type identConn struct {
	*net.UnixConn
	cc *clientConn
}

type connKey struct{}

// open opens the core's session of a new connection with the identity
// the kernel recorded for the process that connected.
func (f *Front) open(uc *net.UnixConn) (*clientConn, error) {
	id, err := unixsock.PeerIdentity(uc)
	if err != nil {
		return nil, fmt.Errorf("the kernel gave no credentials: %w", err)
	}
	ss, err := f.cfg.Server.NewSession(f.ctx, FrontName, id) // takes id.Pidfd
	if err != nil {
		return nil, fmt.Errorf("uid %d pid %d: %w", id.UID, id.PID, err)
	}
	return newClientConn(f, ss, id), nil
}

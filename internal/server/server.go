package server

import (
	"context"
	"errors"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/linuxaudit"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// Limits bounds what clients may consume. Zero fields take the defaults
// from package wire.
type Limits struct {
	MaxMessageBytes int // one request or reply
	MaxInFlight     int // requests of one connection executing at once
	MaxSessions     int // streaming sessions per connection
	MaxHandles      int // open handles per connection
	MaxKeysPerUser  int // live keys one uid may own
	MaxBatchOps     int // operations in one request
	MaxConnections  int // connections served at once
}

// DefaultMaxConnections bounds concurrent connections: each one holds an
// OS thread while it waits for a request.
const DefaultMaxConnections = 1024

// Bounds of MaxMessageBytes: a reply must have room for a minimal result
// for every operation of the largest batch; the kernel caps messages at
// twice net.core.wmem_max.
const (
	MinMessageBytes = 64 << 10
	MaxMessageBytes = 1 << 20
)

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.MaxMessageBytes, wire.DefaultMaxMessageBytes)
	def(&l.MaxInFlight, wire.DefaultMaxInFlight)
	def(&l.MaxSessions, wire.DefaultMaxSessions)
	def(&l.MaxHandles, wire.DefaultMaxHandles)
	def(&l.MaxKeysPerUser, wire.DefaultMaxKeysPerUser)
	def(&l.MaxBatchOps, wire.DefaultMaxBatchOps)
	def(&l.MaxConnections, DefaultMaxConnections)
	l.MaxMessageBytes = min(max(l.MaxMessageBytes, MinMessageBytes), MaxMessageBytes)
	return l
}

// Config configures a Server. The zero value is usable.
type Config struct {
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	Limits Limits
	// DevMode marks a daemon whose keys live in memory only.
	DevMode bool
	// Version is reported by the Status operation.
	Version string
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
	// KDF runs Argon2id in worker processes; nil means the daemon offers
	// no passphrase keys or password hashing (STATUS_UNAVAILABLE).
	KDF *kdf.Supervisor
	// Memory, if set, describes the daemon's key memory for Status.
	Memory func() *wire.MemoryStatus
	// Generation tracks the machine generation (docs/genid.md); nil means
	// a tracker with no sources, which only a bump changes, closed by
	// Shutdown.
	Generation *genid.Tracker
	// GenerationAdmins may bump the generation, besides root.
	GenerationAdmins []uint32
	// GenerationWatchers are uids whose watchers every
	// generation_wait_watchers counts, besides the administrators' and the
	// waiter's own (see watcherScope).
	GenerationWatchers []uint32

	// Store is the persistent key store, made with keystore.New over a
	// store and its master key (which may be sealed); nil means a store in
	// memory with an ephemeral master key, made by New (development mode
	// and tests).
	Store *keystore.Store
	// StateDir is where the store lives ("" for memory), for Status and
	// for the temporary file of a restore.
	StateDir string
	// Admins may run the master-key and store operations (init, unseal,
	// seal, master rotation, backup, restore, trusting wrapping keys),
	// besides root and the daemon's own uid.
	Admins []uint32

	// Audit is the audit log (docs/audit.md): every request is recorded in
	// it before its reply is sent. nil: nothing is recorded. The caller
	// owns it and closes it after Shutdown.
	Audit *audit.Log
	// AuditPublicKey, if set, is where the audit log's public checkpoint
	// key is written once the daemon has it (when it is unsealed).
	AuditPublicKey string
	// AuditLinux, if set, reports on the copies of key-management records
	// sent to the kernel's audit subsystem, for Status.
	AuditLinux func() linuxaudit.Status

	// heavyHook, if set, runs at the start of every request that is
	// executed concurrently (tests use it to hold requests in flight).
	heavyHook func()
}

// Server serves keywarden requests.
type Server struct {
	cfg     Config
	limits  Limits
	log     *slog.Logger
	store   *keystore.Store
	started time.Time
	gen     *genid.Tracker
	ownGen  bool // gen was made by New, and is closed by Shutdown

	nextConn   atomic.Uint64
	rewrapping atomic.Bool // a master-key rotation is re-wrapping records
	connsN     atomic.Int32

	done chan struct{} // closed by Shutdown

	alog        *audit.Log
	auditAlways bool // alog fsyncs every write (--audit-sync always)
	resolver    *audit.Resolver
	// auditMu guards the audit log's keys: whether it has them, for which
	// store and master-key generation (auditEpoch).
	auditMu    sync.Mutex
	auditKeyed bool
	auditStore string

	// mu guards conns and closing.
	mu      sync.Mutex
	conns   map[*conn]struct{}
	closing bool
	wg      sync.WaitGroup // one per connection goroutine
}

// New returns a Server with an empty in-memory key store.
func New(cfg Config) *Server {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	lim := cfg.Limits.withDefaults()
	// A reply larger than the socket's send buffer cannot be sent at all;
	// never promise clients more than the kernel allows.
	if m := seqpacket.ProbeMaxMessage(); m > 0 && lim.MaxMessageBytes > m {
		cfg.Logger.Warn("message size limit lowered to what the kernel's socket buffers allow (raise net.core.wmem_max to allow more)",
			"asked", lim.MaxMessageBytes, "allowed", m)
		lim.MaxMessageBytes = m
	}
	s := &Server{
		cfg:     cfg,
		limits:  lim,
		log:     cfg.Logger,
		store:   cfg.Store,
		started: cfg.Now(),
		conns:   make(map[*conn]struct{}),
		done:    make(chan struct{}),
		gen:     cfg.Generation,
		alog:    cfg.Audit,
	}
	if s.alog != nil {
		s.resolver = audit.NewResolver()
		s.auditAlways = s.alog.Status().Sync == audit.SyncAlways
	}
	if s.gen == nil {
		s.gen = genid.New(genid.Config{Logger: cfg.Logger, Now: cfg.Now})
		s.ownGen = true
	}
	if s.store == nil {
		st, err := keystore.NewDev(keystore.Config{MaxPerUser: lim.MaxKeysPerUser, Logger: cfg.Logger, Now: cfg.Now})
		if err != nil {
			// Only when no key memory can be had at all; every key
			// operation then fails with UNAVAILABLE.
			cfg.Logger.Error("cannot make the in-memory key store", "err", err)
			db := store.NewMemory()
			m, _ := seal.Open(seal.Config{Store: db, Logger: cfg.Logger})
			st = keystore.New(keystore.Config{MaxPerUser: lim.MaxKeysPerUser, DB: db, Master: m, Logger: cfg.Logger, Now: cfg.Now})
		}
		s.store = st
	}
	s.store.SetMaxPerUser(lim.MaxKeysPerUser)
	s.registerGenerationHooks()
	s.syncAuditKeys()
	return s
}

// Limits returns the limits in force.
func (s *Server) Limits() Limits { return s.limits }

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("server closed")

// Serve accepts connections on l and serves each in its own goroutine
// until Shutdown. It closes l when it returns.
func (s *Server) Serve(l *seqpacket.Listener) error {
	go func() {
		// Shutdown closes the listener through this goroutine's view of it.
		<-s.done
		l.Close()
	}()
	defer l.Close()
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosing() || errors.Is(err, seqpacket.ErrClosed) {
				return ErrServerClosed
			}
			s.log.Error("accept failed", "err", err)
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE: do not spin
			continue
		}
		s.ServeConn(c)
	}
}

// ServeConn starts serving one accepted connection in a new goroutine and
// takes ownership of c.
func (s *Server) ServeConn(c *seqpacket.Conn) {
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		c.Close()
		return
	}
	if len(s.conns) >= s.limits.MaxConnections {
		s.mu.Unlock()
		s.log.Warn("connection refused: connection limit reached", "limit", s.limits.MaxConnections)
		refuseConn(c)
		return
	}
	cn := newConn(s, c)
	// Before anything else, so that no message is received without the
	// sender's credentials. (Accepted sockets inherit SO_PASSCRED from the
	// listener; a connection handed in otherwise may not have it yet.)
	pidfd, err := c.EnableCredentials()
	if err != nil {
		s.mu.Unlock()
		s.log.Error("cannot enable credentials; dropping connection", "err", err)
		c.Close()
		return
	}
	cn.pidfd = pidfd
	s.conns[cn] = struct{}{}
	s.connsN.Store(int32(len(s.conns)))
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		cn.serve()
		s.mu.Lock()
		delete(s.conns, cn)
		s.connsN.Store(int32(len(s.conns)))
		s.mu.Unlock()
	}()
}

// refuseConn answers the first request of a connection that is over the
// limit with RESOURCE_EXHAUSTED and closes it, so the client gets a clear
// error rather than a hang.
func refuseConn(c *seqpacket.Conn) {
	go func() {
		defer c.Close()
		c.SetRecvTimeout(time.Second)
		buf := make([]byte, 64)
		if _, err := c.Recv(buf); err != nil {
			return
		}
		rep := &wire.Reply{Version: wire.ProtocolVersion, Id: peekRequestID(buf),
			Status: wire.Status_STATUS_RESOURCE_EXHAUSTED, Message: "the daemon's connection limit is reached"}
		if b, err := marshal(nil, rep); err == nil {
			c.Send(b)
		}
	}()
}

func (s *Server) isClosing() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.closing
}

// Shutdown stops accepting, stops reading new requests, lets requests in
// progress finish and send their replies until ctx is done, then closes
// every connection and wipes every key.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	if !s.closing {
		s.closing = true
		close(s.done)
	}
	for c := range s.conns {
		c.stopReading()
	}
	s.mu.Unlock()

	finished := make(chan struct{})
	go func() { s.wg.Wait(); close(finished) }()
	var err error
	select {
	case <-finished:
	case <-ctx.Done():
		err = ctx.Err()
		s.mu.Lock()
		for c := range s.conns {
			c.c.Close()
		}
		s.mu.Unlock()
		<-finished
	}
	if cerr := s.store.Close(); cerr != nil {
		s.log.Error("key memory corrupted: something wrote past the end of a key", "err", cerr)
	}
	if s.ownGen {
		s.gen.Close()
	}
	return err
}

package server

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/linuxaudit"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// Limits bounds what clients may consume. Zero fields take the defaults
// from package wire and those below.
type Limits struct {
	MaxMessageBytes int // one request or reply
	MaxInFlight     int // requests of one connection executing at once
	MaxSessions     int // streaming sessions per connection
	MaxHandles      int // open handles per connection
	MaxKeysPerUser  int // live keys one uid may own
	MaxBatchOps     int // operations in one request
	MaxConnections  int // connections served at once

	// Per uid (peruid.go): what the connections one ordinary uid opened
	// may hold at once. Administrators have no per-uid limits.
	AdminConnections      int // connection slots kept for administrators
	MaxConnectionsPerUID  int
	MaxInFlightPerUID     int // requests executing
	MaxRequestBytesPerUID int // bytes of the requests running concurrently
	MaxLongPollsPerUID    int // generation watches waiting
	MaxSessionsPerUID     int // streaming sessions open
	// MaxNamedWatchersPerUID bounds the named generation watchers of a
	// uid (the daemon's genid.Tracker must be made with the same).
	MaxNamedWatchersPerUID int
	MaxHeavyPerUID         int // RSA generations and rotations running
	// MaxComputingPerUID bounds a uid's requests computing at once (on a
	// processor, not waiting for the store, a worker or a generation
	// change): a flood leaves processors to the others.
	MaxComputingPerUID int
	// HeavySlots bounds the RSA generations and rotations of ordinary
	// uids running at once, daemon-wide: processors left for the rest.
	HeavySlots int
	// AuditBytesPerSecondPerUID and AuditBurstPerUID bound the audit
	// records one uid's requests make.
	AuditBytesPerSecondPerUID int
	AuditBurstPerUID          int
	// ShmMaxBytes bounds the shared memory one connection registers, and
	// ShmBytesPerUID what the connections of one uid register together
	// (shmem.go).
	ShmMaxBytes    int
	ShmBytesPerUID int
}

// Defaults of the per-uid limits; HeavySlots and MaxHeavyPerUID depend on
// the processors (DefaultHeavySlots).
const (
	DefaultAdminConnections          = 32 // at most a quarter of MaxConnections
	DefaultMaxConnectionsPerUID      = 64
	DefaultMaxInFlightPerUID         = 256
	DefaultMaxRequestBytesPerUID     = 16 << 20
	DefaultMaxLongPollsPerUID        = 64
	DefaultMaxSessionsPerUID         = 1024
	DefaultAuditBytesPerSecondPerUID = 1 << 20
	DefaultAuditBurstPerUID          = 4 << 20
)

// DefaultHeavySlots returns the default HeavySlots and MaxHeavyPerUID for
// a daemon with procs processors (GOMAXPROCS): one processor is always
// left to requests that are not heavy, and one uid takes at most a
// quarter of them.
func DefaultHeavySlots(procs int) (slots, perUID int) {
	return max(1, procs-1), max(1, procs/4)
}

// DefaultMaxComputingPerUID is the default MaxComputingPerUID for a
// daemon with procs processors: all but one.
func DefaultMaxComputingPerUID(procs int) int { return max(1, procs-1) }

// DefaultMaxConnections bounds concurrent connections. An idle one costs
// little (idle.go: no thread, no buffer), so a daemon may be given many
// more; each costs two descriptors (its socket and its opener's pidfd).
const DefaultMaxConnections = 1024

// Bounds of MaxMessageBytes: a reply must have room for a minimal result
// for every operation of the largest batch; the kernel caps messages at
// twice net.core.wmem_max.
const (
	MinMessageBytes = 64 << 10
	MaxMessageBytes = 1 << 20
)

// MaxShmBytes bounds the shared-memory limits (ShmMaxBytes,
// ShmBytesPerUID).
const MaxShmBytes = 1 << 30

func (l Limits) withDefaults() Limits { return l.withDefaultsFor(runtime.GOMAXPROCS(0)) }

// withDefaultsFor is withDefaults for a daemon with procs processors.
func (l Limits) withDefaultsFor(procs int) Limits {
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
	def(&l.AdminConnections, min(DefaultAdminConnections, max(1, l.MaxConnections/4)))
	def(&l.MaxConnectionsPerUID, DefaultMaxConnectionsPerUID)
	def(&l.MaxInFlightPerUID, DefaultMaxInFlightPerUID)
	def(&l.MaxRequestBytesPerUID, DefaultMaxRequestBytesPerUID)
	def(&l.MaxLongPollsPerUID, DefaultMaxLongPollsPerUID)
	def(&l.MaxSessionsPerUID, DefaultMaxSessionsPerUID)
	def(&l.MaxNamedWatchersPerUID, genid.DefaultNamedWatchersPerUID)
	slots, perUID := DefaultHeavySlots(procs)
	def(&l.HeavySlots, slots)
	def(&l.MaxHeavyPerUID, perUID)
	def(&l.MaxComputingPerUID, DefaultMaxComputingPerUID(procs))
	def(&l.AuditBytesPerSecondPerUID, DefaultAuditBytesPerSecondPerUID)
	def(&l.AuditBurstPerUID, DefaultAuditBurstPerUID)
	def(&l.ShmMaxBytes, DefaultShmMaxBytes)
	def(&l.ShmBytesPerUID, DefaultShmBytesPerUID)
	// Limits carries them as 32-bit numbers.
	l.ShmMaxBytes = min(l.ShmMaxBytes, MaxShmBytes)
	l.ShmBytesPerUID = min(l.ShmBytesPerUID, MaxShmBytes)
	l.MaxMessageBytes = min(max(l.MaxMessageBytes, MinMessageBytes), MaxMessageBytes)
	// A request that may run must fit in its uid's share.
	l.MaxRequestBytesPerUID = max(l.MaxRequestBytesPerUID, l.MaxMessageBytes)
	l.AdminConnections = min(l.AdminConnections, l.MaxConnections-1)
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
	// Metrics, if set, is told of every request the core executes or
	// refuses (package metrics).
	Metrics Metrics
	// Cluster, for a store in an etcd cluster that several daemons share,
	// describes the cluster for Status; nil otherwise.
	Cluster func(ctx context.Context) *wire.ClusterStatus
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
	// SSHAgentSockets are the paths of the ssh-agent front's sockets,
	// which status reports (docs/ssh.md).
	SSHAgentSockets []string

	// heavyHook, if set, runs at the start of every request that is
	// executed concurrently (tests use it to hold requests in flight).
	heavyHook func()
	// opHook, if set, runs before each operation (or run of operations,
	// runs.go) that a request executes.
	opHook func()
	// onceHook, if set, runs in work done within one generation
	// (generation.go) at each of its stages: stageCounted once an
	// encryption's key version is counted, or a key's budget epoch read,
	// before anything random is drawn; stageMade once the result (or the
	// key's material) is made, before the generation is checked.
	onceHook func(stage onceStage)
}

// Server serves keywarden requests.
type Server struct {
	cfg     Config
	lim     atomic.Pointer[limitSet] // the limits in force; SetLimits replaces them
	procs   int                      // GOMAXPROCS when New ran: the defaults that depend on it
	log     *slog.Logger
	store   *keystore.Store
	started time.Time
	gen     *genid.Tracker
	ownGen  bool // gen was made by New, and is closed by Shutdown

	nextConn   atomic.Uint64
	rewrapping atomic.Bool // a master-key rotation is re-wrapping records
	connsN     atomic.Int32

	roles     atomic.Pointer[policy.Roles] // who holds the privileged roles; SetRoles replaces them
	limMu     sync.Mutex                   // serializes SetLimits (the request path never takes it)
	accts     *accounts                    // per-uid limits (peruid.go)
	replyBufs sync.Pool                    // wiped buffers for large replies (getReplyBuf)
	refusing  chan struct{}                // a token per connection being refused (refuseConn)
	reported  chan struct{}                // closed when reportLimits has returned

	done chan struct{} // closed by Shutdown

	// hangups tells connections when their clients hang up; nil if the
	// kernel would not give a watcher (the work of a client that left
	// then stops only once its connection has read to the end).
	hangups *seqpacket.Hangups
	// ready wakes parked connections (idle.go); nil if the kernel would
	// not give a waiter (connections then keep their thread while idle).
	ready        *seqpacket.Readiness
	receivers    atomic.Int32      // connections in a blocking receive (takeSlot)
	maxReceivers int32             // maxReceivers; tests lower it
	scratch      chan *connScratch // buffers kept for connections that wake

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
	conns   map[*seqConn]struct{}
	closing bool
	wg      sync.WaitGroup // one per connection goroutine
}

// New returns a Server over cfg.Store, or over an empty in-memory key
// store when it is nil.
func New(cfg Config) (*Server, error) {
	if errOpTable != nil {
		return nil, errOpTable
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	procs := runtime.GOMAXPROCS(0)
	lim := cfg.Limits.withDefaultsFor(procs)
	// A reply larger than the socket's send buffer cannot be sent at all;
	// never promise clients more than the kernel allows.
	if m := seqpacket.ProbeMaxMessage(); m > 0 && lim.MaxMessageBytes > m {
		cfg.Logger.Warn("message size limit lowered to what the kernel's socket buffers allow (raise net.core.wmem_max to allow more)",
			"asked", lim.MaxMessageBytes, "allowed", m)
		lim.MaxMessageBytes = m
	}
	if cfg.Store == nil {
		st, err := keystore.NewDev(keystore.Config{MaxPerUser: lim.MaxKeysPerUser, Logger: cfg.Logger, Now: cfg.Now})
		if err != nil {
			// Only when no key memory can be had at all; every key
			// operation then fails with UNAVAILABLE.
			cfg.Logger.Error("cannot make the in-memory key store", "err", err)
			db := store.NewMemory()
			m, err := seal.Open(seal.Config{Store: db, Logger: cfg.Logger})
			if err != nil {
				return nil, fmt.Errorf("cannot open the master key of an in-memory store: %w", err)
			}
			st = keystore.New(keystore.Config{MaxPerUser: lim.MaxKeysPerUser, DB: db, Master: m, Logger: cfg.Logger, Now: cfg.Now})
		}
		cfg.Store = st
	}
	s := &Server{
		cfg:     cfg,
		procs:   procs,
		log:     cfg.Logger,
		store:   cfg.Store,
		started: cfg.Now(),
		conns:   make(map[*seqConn]struct{}),
		done:    make(chan struct{}),
		gen:     cfg.Generation,
		alog:    cfg.Audit,
	}
	s.lim.Store(newLimitSet(lim))
	s.SetRoles(cfg.Admins, cfg.GenerationAdmins, cfg.GenerationWatchers)
	s.accts = newAccounts(&s.lim, func(uid uint32) bool { return s.roles.Load().Admin(uid) }, cfg.Now)
	s.refusing = make(chan struct{}, maxRefusing)
	if h, err := seqpacket.NewHangups(); err != nil {
		cfg.Logger.Warn("cannot watch for clients hanging up: work a client leaves behind runs on", "err", err)
	} else {
		s.hangups = h
	}
	if r, err := seqpacket.NewReadiness(); err != nil {
		cfg.Logger.Warn("cannot park idle connections: each keeps a thread", "err", err)
	} else {
		s.ready = r
	}
	s.scratch = make(chan *connScratch, scratchKeep)
	s.maxReceivers = maxReceivers
	s.reported = make(chan struct{})
	if s.alog != nil {
		s.resolver = audit.NewResolver()
		s.auditAlways = s.alog.Status().Sync == audit.SyncAlways
	}
	if s.gen == nil {
		s.gen = genid.New(genid.Config{Logger: cfg.Logger, Now: cfg.Now, NamedWatchersPerUID: lim.MaxNamedWatchersPerUID})
		s.ownGen = true
	}
	s.store.SetMaxPerUser(lim.MaxKeysPerUser)
	s.registerGenerationHooks()
	s.syncAuditKeys()
	go s.reportLimits()
	return s, nil
}

// Metrics counts and times requests; its methods are called on the
// request path, so they must be cheap (atomic counters) and never block.
type Metrics interface {
	// Begin: a request starts executing.
	Begin()
	// Op: one of its operations (index in OpNames) ended with st.
	Op(op int, st wire.Status)
	// End: the request, whose first operation is op, took d.
	End(op int, d time.Duration)
	// Refused: a request was refused before it executed.
	Refused(st wire.Status)
}

// Connections returns how many connections are open.
func (s *Server) Connections() int { return int(s.connsN.Load()) }

// SetRoles replaces the administrators, generation administrators and
// generation watchers (a configuration reload). Requests decided after it
// returns use the new ones; a connection keeps the per-uid account it was
// admitted with (an administrator's exemption from per-uid limits) until
// it closes.
func (s *Server) SetRoles(admins, genAdmins, genWatchers []uint32) {
	s.roles.Store(&policy.Roles{Self: uint32(os.Geteuid()), Admins: slices.Clone(admins),
		GenerationAdmins: slices.Clone(genAdmins), GenerationWatchers: slices.Clone(genWatchers)})
}

// KeyCounts returns how many persistent keys the store holds and how many
// keys are live (ephemeral ones included).
func (s *Server) KeyCounts() (persistent, live int) { return s.store.Counts() }

// Limits returns the limits in force.
func (s *Server) Limits() Limits { return s.lims().Limits }

// lims returns the limits in force: one atomic load, no lock. A check
// reads them once and uses that set for its bound and its message.
func (s *Server) lims() *limitSet { return s.lim.Load() }

// SetLimits replaces the limits in force (a configuration reload). Zero
// fields take the defaults, as in New (those that depend on the
// processors, for as many as New saw: the daemon may raise GOMAXPROCS
// after). Three limits cannot change while
// the server runs, because something was sized by them at its start:
// MaxMessageBytes (the receive buffer of every connection, the pool of
// reply buffers, what clients were told), MaxNamedWatchersPerUID (the
// generation tracker's bound, fixed when it was made) and
// MaxComputingPerUID (each uid's computing tokens, made with its
// account). If l asks for another value of one of them (after defaults),
// SetLimits changes nothing and says which.
//
// Every check made after SetLimits returns uses the new limits, on every
// connection, those open before included: a check reads the set in force
// when it is made. A lower limit takes back nothing already held (open
// connections, requests in flight, sessions, handles, keys, heavy slots):
// it refuses the next request for more until the count is under it.
func (s *Server) SetLimits(l Limits) error {
	s.limMu.Lock()
	defer s.limMu.Unlock()
	cur := s.lims()
	next := l.withDefaultsFor(s.procs)
	// New may have lowered the message size to what the kernel allows;
	// a reload asking for the configured value asks for no change.
	if l.MaxMessageBytes == s.cfg.Limits.MaxMessageBytes {
		next.MaxMessageBytes = cur.MaxMessageBytes
		next.MaxRequestBytesPerUID = max(next.MaxRequestBytesPerUID, next.MaxMessageBytes)
	}
	var fixed []string
	if next.MaxMessageBytes != cur.MaxMessageBytes {
		fixed = append(fixed, "MaxMessageBytes")
	}
	if next.MaxNamedWatchersPerUID != cur.MaxNamedWatchersPerUID {
		fixed = append(fixed, "MaxNamedWatchersPerUID")
	}
	if next.MaxComputingPerUID != cur.MaxComputingPerUID {
		fixed = append(fixed, "MaxComputingPerUID")
	}
	if len(fixed) > 0 {
		return fmt.Errorf("limits that need a restart changed: %s", strings.Join(fixed, ", "))
	}
	s.lim.Store(newLimitSet(next))
	s.store.SetMaxPerUser(next.MaxKeysPerUser)
	s.accts.heavy[heavyCPU].resize(next.HeavySlots, next.MaxHeavyPerUID)
	return nil
}

// opLimits is the audit event that counts the requests refused for
// limits.
const opLimits = "limits"

// limitReportInterval is how often refusals for limits are reported.
const limitReportInterval = time.Second

// reportLimits writes, every limitReportInterval while there were any,
// an audit event (and a log line) that counts the requests refused for
// limits, by uid and limit: refusals are not recorded one by one, or a
// flood of them would be a flood of records.
func (s *Server) reportLimits() {
	defer close(s.reported)
	t := time.NewTicker(limitReportInterval)
	defer t.Stop()
	for {
		select {
		case <-s.done:
			return
		case <-t.C:
			s.reportRefusals()
		}
	}
}

func (s *Server) reportRefusals() {
	msg := s.accts.report()
	if msg == "" {
		return
	}
	s.log.Warn(msg)
	if err := s.RecordEvent(opLimits, statusName(wire.Status_STATUS_RESOURCE_EXHAUSTED), msg); err != nil {
		s.log.Error("audit log: cannot record the refusals for limits", "err", err)
	}
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
		if s.ready != nil {
			s.ready.WakeAll() // a parked connection closed is never reported
		}
		<-finished
	}
	if s.hangups != nil {
		s.hangups.Close()
	}
	if s.ready != nil {
		s.ready.Close()
	}
	s.freeScratch()
	<-s.reported
	s.reportRefusals()
	if cerr := s.store.Close(); cerr != nil {
		s.log.Error("key memory corrupted: something wrote past the end of a key", "err", cerr)
	}
	if s.ownGen {
		s.gen.Close()
	}
	return err
}

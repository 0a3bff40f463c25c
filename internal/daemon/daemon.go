package daemon

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/kmsv2"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/metrics"
	"github.com/keywarden/keywarden/internal/ownfile"
	"github.com/keywarden/keywarden/internal/p11front"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/sshagent"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/systemd"
	"github.com/keywarden/keywarden/internal/transit"
	"github.com/keywarden/keywarden/internal/wire"
	"github.com/keywarden/keywarden/internal/wrap"
)

// Config configures the daemon. Zero values mean defaults.
type Config struct {
	// SocketPath is where to listen. Required.
	SocketPath string
	// SocketMode is the socket file's permission bits; 0 means 0666 for a
	// daemon run as root (every local user may connect; each key decides
	// who may use it) and 0600 otherwise.
	SocketMode fs.FileMode
	// Dev keeps keys in memory only, under an ephemeral master key,
	// unsealed from the start.
	Dev bool
	// StateDir holds the key store (a bbolt file; created 0700). Required
	// unless Dev. With Etcd, it holds what stays local (the audit log).
	StateDir string
	// Etcd, if set, keeps the key store in an etcd cluster that the
	// daemons of several machines share (docs/cluster.md), not in
	// StateDir.
	Etcd *store.EtcdConfig
	// StaleBound, with Etcd, is how long the daemon uses keys without
	// confirming that it has seen every change to the store (0:
	// keystore.DefaultStaleBound).
	StaleBound time.Duration
	// UnsealPassphraseFile, if set, unseals the master key at start with
	// the passphrase in this file (for unattended starts; the file must
	// be readable by the daemon's user only).
	UnsealPassphraseFile string
	// InsecureMasterKDF, for tests only, accepts master passphrases sealed
	// with Argon2id costs below the floor (seal.MinParams).
	InsecureMasterKDF bool
	// Admins may run the master-key and store operations, besides root and
	// the daemon's own uid.
	Admins []uint32
	Limits server.Limits
	Logger *slog.Logger
	// Version is reported to clients.
	Version string
	// ShutdownGrace bounds how long requests in progress may take to finish
	// at shutdown; 0 means 10 seconds.
	ShutdownGrace time.Duration
	// Ready, if set, is called once the socket accepts connections.
	Ready func()
	// KDF configures the Argon2id workers (passphrase keys, password
	// hashing); zero values mean kdf's defaults.
	KDF kdf.Config

	// MemoryBacking forces where key bytes live: "memfd_secret" or
	// "mlock"; "" chooses memfd_secret where the kernel offers it.
	MemoryBacking string
	// MaxLockedMemory bounds the key memory; 0 means what RLIMIT_MEMLOCK
	// allows (no bound with CAP_IPC_LOCK).
	MaxLockedMemory int64
	// KeyCacheIdle is how long an unused key keeps its expanded state; 0
	// means mech.DefaultCacheIdle.
	KeyCacheIdle time.Duration

	// GenerationSources names the sources of machine generation changes
	// (genid.NewSources): "" or "auto" for every one this machine offers.
	GenerationSources string
	// GenerationAdmins may bump the generation, besides root.
	GenerationAdmins []uint32
	// GenerationWatchers are uids whose watchers generation_wait_watchers
	// counts besides the administrators' and the waiter's own.
	GenerationWatchers []uint32
	// DistrustCPURandom: the CPU's random instructions (RDSEED, RDRAND)
	// are mixed into the daemon's generator after a generation change but
	// do not confirm, on their own, that its bytes differ from a clone's.
	DistrustCPURandom bool

	// AuditLog is the audit log's path (docs/audit.md); "" means no audit
	// log, which only tests and benchmarks want.
	AuditLog string
	// AuditSync says when a record is forced to disk.
	AuditSync audit.SyncMode

	// SSHAgentSockets are Unix stream sockets on which the daemon serves
	// the OpenSSH agent protocol (docs/ssh.md), with the main socket's
	// mode: one socket for every user, each connection seeing its own
	// uid's keys.
	SSHAgentSockets []string
	// PKCS11Sockets are Unix stream sockets on which the daemon serves
	// p11-kit's RPC protocol: PKCS #11 for C programs through
	// libkeywarden-pkcs11.so (docs/pkcs11.md).
	PKCS11Sockets []string
	// SSHAskpass confirms each use of a key added with ssh-add -c; ""
	// refuses such keys.
	SSHAskpass string

	// HTTP lists where the transit-compatible HTTP API is served
	// (docs/transit.md): "unix:PATH" (with the main socket's mode), or
	// "tcp:ADDR" with mutual TLS, which needs the four files below.
	HTTP []string
	// HTTPTLSCert and HTTPTLSKey are the PEM files of the TCP listeners'
	// certificate chain and key; HTTPClientCA the PEM file of the CAs
	// that sign client certificates; HTTPPrincipals the mapping of client
	// certificates to uids (transit.ParsePrincipals).
	HTTPTLSCert, HTTPTLSKey, HTTPClientCA, HTTPPrincipals string
	// Transit configures that front; its Server is set by Run.
	Transit transit.Config

	// KMSV2 is a Unix socket on which the daemon serves the Kubernetes KMS
	// v2 plugin service (docs/kubernetes.md), with the main socket's
	// mode, encrypting with the key named KMSKey of the connecting
	// process's uid.
	KMSV2, KMSKey string
	// LogLevel, if set, is the level Logger's handler uses: a reload sets
	// it.
	LogLevel *slog.LevelVar
	// Settings is the effective configuration as text, by serve flag name:
	// a reload compares the new one with it.
	Settings map[string]string
	// Reload, if set, is called on SIGHUP: it reads the configuration
	// again. The daemon applies the settings that changed and may change
	// while it runs, and logs the others as needing a restart. Without
	// Reload, SIGHUP is logged and ignored.
	Reload func() (Config, error)
	// MetricsAddr, if set, serves Prometheus metrics there: "unix:PATH"
	// or a loopback "HOST:PORT" (see package metrics).
	MetricsAddr string
}

// gcPercent is the daemon's garbage collection target (see runtime/debug).
const gcPercent = 400

// Run serves until ctx is done or SIGTERM or SIGINT arrives.
func Run(ctx context.Context, cfg Config) error {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	// Descriptors inherited from the parent (sockets not meant for this
	// daemon, when $LISTEN_PID is another process's; whatever the parent
	// left open) must not reach the key derivation workers or the
	// askpass program.
	if err := closeOnExecInherited(); err != nil {
		return err
	}
	// A reload asked for during start-up waits until the daemon serves
	// (SIGHUP would otherwise end it).
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	// Outside systemd these find nothing and do nothing.
	notifier, err := systemd.NewNotifier()
	if err != nil {
		log.Warn("cannot notify systemd", "err", err)
	}
	defer notifier.Close()
	passed, err := takeSockets(&cfg, log)
	if err != nil {
		return err
	}
	if cfg.KMSKey != "" && cfg.KMSV2 == "" {
		return fmt.Errorf("--kms-key %s without a KMS v2 socket: give --kms-v2 PATH, or pass a socket named %q (socket activation)", cfg.KMSKey, fdNameKMS)
	}
	if cfg.Dev {
		log.Warn("development mode: keys are kept in memory only and are lost when the daemon stops",
			"socket", cfg.SocketPath, "version", cfg.Version, "pid", os.Getpid(), "uid", os.Getuid())
	} else {
		if cfg.StateDir == "" {
			return errors.New("no state directory: give --state DIR, or --dev to keep keys in memory only")
		}
		log.Info("keywarden starting", "socket", cfg.SocketPath, "state", cfg.StateDir, "version", cfg.Version, "pid", os.Getpid(), "uid", os.Getuid())
		// One daemon per state directory, checked first: everything else
		// there (the store, the audit log) would be refused after it, for
		// reasons that hide the first.
		lock, err := lockStateDir(cfg.StateDir)
		if err != nil {
			return err
		}
		defer lock.Close()
	}

	hard, err := harden(log)
	if err != nil {
		return err
	}
	arena, err := secmem.New(secmem.Options{Backing: secmem.Backing(cfg.MemoryBacking), Limit: cfg.MaxLockedMemory})
	if err != nil {
		return err
	}
	defer arena.Close()
	mech.SetArena(arena)
	mech.SetCacheIdle(cfg.KeyCacheIdle)
	st := arena.Stats()
	log.Info("key memory", "backing", string(st.Backing), "limit_bytes", st.Limit,
		"runtime_secret", secmem.RuntimeSecret, "mlockall", hard.mlockall, "dumpable", dumpable())
	if !secmem.RuntimeSecret {
		log.Warn("built without GOEXPERIMENT=runtimesecret: copies of key material made by the cryptographic libraries are not erased when freed")
	}

	// The socket's directory is checked before anything is created beside
	// the socket (with --dev, the audit log).
	if err := prepareDir(filepath.Dir(cfg.SocketPath)); err != nil {
		return err
	}
	var met *metrics.Metrics
	var onSync func(time.Duration)
	if cfg.MetricsAddr != "" {
		met = metrics.New(server.OpNames())
		onSync = met.Fsync
	}
	var alog *auditLog
	if cfg.AuditLog != "" {
		if alog, err = openAudit(cfg.AuditLog, cfg.AuditSync, cfg.Version, onSync, log); err != nil {
			return err
		}
		defer alog.close(log)
		mode := "persistent, state " + cfg.StateDir
		if cfg.Dev {
			mode = "development mode: keys in memory, an ephemeral audit key"
		}
		if err := alog.event(audit.OpStart, "", fmt.Sprintf("keywarden %s, pid %d, uid %d, %s", cfg.Version, os.Getpid(), os.Getuid(), mode)); err != nil {
			return fmt.Errorf("audit log: %w", err)
		}
	} else {
		log.Warn("no audit log: requests are not recorded")
	}

	for _, t := range []struct {
		name string
		run  func() error
	}{{"mechanisms", mech.SelfTest}, {"key wrapping", wrap.SelfTest}} {
		if err := t.run(); err != nil {
			if aerr := alog.event(audit.OpSelfTestFailure, "INTERNAL", t.name+": "+err.Error()); aerr != nil {
				log.Error("audit log: cannot record the self-test failure", "err", aerr)
			}
			return fmt.Errorf("start-up self-test failed: %w", err)
		}
	}
	log.Debug("self-tests passed")

	// The daemon's live heap is small and its garbage is per request; a
	// higher GC target trades a few MiB for much less collector work on
	// the data path. GOGC, if set, still wins.
	if os.Getenv("GOGC") == "" {
		debug.SetGCPercent(gcPercent)
	}

	memory := func() *wire.MemoryStatus {
		st := arena.Stats()
		return &wire.MemoryStatus{
			Backing:       string(st.Backing),
			LockedBytes:   uint64(st.Locked),
			InUseBytes:    uint64(st.InUse),
			LimitBytes:    uint64(st.Limit),
			Allocations:   uint64(st.Allocations),
			RuntimeSecret: secmem.RuntimeSecret,
			Mlockall:      hard.mlockall,
			Dumpable:      dumpable(),
			CachedKeys:    uint32(mech.CachedKeys()),
		}
	}
	kcfg := cfg.KDF
	kcfg.Logger = log
	kdfSup, err := kdf.New(kcfg)
	if err != nil {
		return err
	}
	defer kdfSup.Close()
	kl := kdfSup.Limits()
	log.Info("kdf: Argon2id runs in worker processes", "max_memory_kib", kl.MaxMemoryKiB, "budget_kib", kl.BudgetKiB,
		"queue", kl.Queue, "queue_per_uid", kl.QueuePerTenant, "running_per_uid", kl.RunningPerTenant, "nice", kl.Nice,
		"deadline", kl.Deadline, "watchdog", kl.Watchdog, "cgroup", kl.Cgroup)

	gen, err := newGeneration(cfg, log)
	if err != nil {
		return err
	}
	defer gen.Close()

	var keys *keystore.Store
	var cluster func(ctx context.Context) *wire.ClusterStatus
	if !cfg.Dev {
		if err := prepareStateDir(cfg.StateDir); err != nil {
			return err
		}
		db, where, err := openStore(ctx, cfg, log)
		if err != nil {
			return err
		}
		defer db.Close()
		m, err := seal.Open(seal.Config{Store: db, KDF: kdfSup, Logger: log, InsecureKDF: cfg.InsecureMasterKDF})
		if err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		if cfg.InsecureMasterKDF {
			log.Warn("--insecure-master-kdf: master passphrases may be sealed with Argon2id costs below the floor; for tests only, never for keys that matter")
		}
		kcfg := keystore.Config{MaxPerUser: cfg.Limits.MaxKeysPerUser, DB: db, Master: m, Logger: log}
		if etcd, ok := db.(*store.Etcd); ok {
			kcfg.HighWaterFile = filepath.Join(cfg.StateDir, "cluster.highwater")
			cluster = func(ctx context.Context) *wire.ClusterStatus { return clusterStatus(ctx, etcd, keys) }
		}
		keys = keystore.New(kcfg)
		keys.SetStaleBound(cfg.StaleBound)
	}
	var srvMetrics server.Metrics
	if met != nil {
		srvMetrics = met
	}
	srv, err := server.New(server.Config{Metrics: srvMetrics, Logger: log, Limits: cfg.Limits, DevMode: cfg.Dev, Version: cfg.Version, Memory: memory, KDF: kdfSup,
		Generation: gen, GenerationAdmins: cfg.GenerationAdmins, GenerationWatchers: cfg.GenerationWatchers, Store: keys, StateDir: cfg.StateDir, Admins: cfg.Admins, Cluster: cluster,
		Audit: alog.get(), AuditPublicKey: auditPubPath(cfg), AuditLinux: alog.linuxStatus, SSHAgentSockets: cfg.SSHAgentSockets})
	if err != nil {
		return err
	}
	if keys != nil {
		if err := startSealed(ctx, srv, cfg, log); err != nil {
			return err
		}
	}
	lim := srv.Limits()
	// Every connection may hold a thread while it waits; leave headroom.
	debug.SetMaxThreads(max(10000, 2*lim.MaxConnections+100))
	// Heavy work (RSA key generation) gets processors of the Go runtime's
	// own, so that it never holds one that another request is waiting
	// for: the kernel, not the runtime, then decides who runs, and heavy
	// work gives way within a short time slice (server.shortenSlice).
	// GOMAXPROCS, if set, still wins.
	if os.Getenv("GOMAXPROCS") == "" {
		runtime.GOMAXPROCS(runtime.GOMAXPROCS(0) + lim.HeavySlots)
	}

	mode := cfg.SocketMode
	if mode == 0 {
		mode = 0o600
		if os.Getuid() == 0 {
			mode = 0o666
		}
	}
	var l *seqpacket.Listener
	if passed != nil && passed.main != nil {
		l, err = seqpacket.FileListener(passed.main.FD, cfg.SocketPath)
	} else {
		l, err = seqpacket.Listen(cfg.SocketPath, mode)
	}
	if err != nil {
		return err
	}
	log.Info("listening", "socket", l.Path(), "mode", passed.modeText(l.Path(), mode),
		"max_message_bytes", lim.MaxMessageBytes, "max_in_flight", lim.MaxInFlight,
		"max_sessions", lim.MaxSessions, "max_handles", lim.MaxHandles,
		"max_keys_per_user", lim.MaxKeysPerUser, "max_connections", lim.MaxConnections)
	log.Info("per-uid limits (administrators excepted)", "admin_connections", lim.AdminConnections,
		"connections", lim.MaxConnectionsPerUID, "in_flight", lim.MaxInFlightPerUID,
		"request_bytes", lim.MaxRequestBytesPerUID, "long_polls", lim.MaxLongPollsPerUID,
		"sessions", lim.MaxSessionsPerUID, "named_watchers", lim.MaxNamedWatchersPerUID,
		"heavy", lim.MaxHeavyPerUID, "heavy_slots", lim.HeavySlots,
		"audit_bytes_per_second", lim.AuditBytesPerSecondPerUID, "audit_burst", lim.AuditBurstPerUID,
		"kdf_queue", kl.QueuePerTenant, "kdf_running", kl.RunningPerTenant)

	var agent *sshagent.Agent
	if len(cfg.SSHAgentSockets) > 0 {
		agent = sshagent.New(sshagent.Config{Server: srv, Logger: log, Askpass: cfg.SSHAskpass})
		for _, p := range cfg.SSHAgentSockets {
			if err := prepareDir(filepath.Dir(p)); err != nil {
				agent.Close()
				l.Close()
				return err
			}
			al, err := passed.agentListener(p)
			if al == nil && err == nil {
				al, err = sshagent.Listen(p, mode)
			}
			if err != nil {
				agent.Close()
				l.Close()
				return err
			}
			log.Info("serving the ssh-agent protocol", "socket", p, "mode", passed.modeText(p, mode), "askpass", cfg.SSHAskpass)
			go func() {
				if err := agent.Serve(al); err != nil && !errors.Is(err, sshagent.ErrClosed) {
					log.Error("ssh-agent socket failed", "socket", p, "err", err)
				}
			}()
		}
	}

	var p11 *p11front.Front
	// closeFronts closes the fronts started so far, and the main socket,
	// when one that follows cannot start.
	closeFronts := func() {
		if p11 != nil {
			p11.Close()
		}
		if agent != nil {
			agent.Close()
		}
		l.Close()
	}
	if len(cfg.PKCS11Sockets) > 0 {
		p11 = p11front.New(p11front.Config{Server: srv, Logger: log})
		for _, p := range cfg.PKCS11Sockets {
			if err := prepareDir(filepath.Dir(p)); err != nil {
				closeFronts()
				return err
			}
			pl, err := passed.pkcs11Listener(p)
			if pl == nil && err == nil {
				pl, err = p11front.Listen(p, mode)
			}
			if err != nil {
				closeFronts()
				return err
			}
			log.Info("serving PKCS #11 (p11-kit RPC)", "socket", p, "mode", passed.modeText(p, mode))
			go func() {
				if err := p11.Serve(pl); err != nil && !errors.Is(err, p11front.ErrClosed) {
					log.Error("pkcs11 socket failed", "socket", p, "err", err)
				}
			}()
		}
	}

	var front *transit.Front
	var tlsCfg *transit.TLSConfig // of every tcp: listener, loaded by the first
	if len(cfg.HTTP) > 0 {
		tcfg := cfg.Transit
		tcfg.Server, tcfg.Logger = srv, log
		if front, err = transit.New(tcfg); err != nil {
			closeFronts()
			return err
		}
		for _, spec := range cfg.HTTP {
			if err := serveHTTP(front, spec, passed, mode, cfg, &tlsCfg, log); err != nil {
				front.Close()
				closeFronts()
				return err
			}
		}
	}

	var plugin *kmsv2.Plugin
	if cfg.KMSV2 != "" {
		if plugin, err = serveKMS(srv, cfg, passed, mode, log); err != nil {
			if front != nil {
				front.Close()
			}
			closeFronts()
			return err
		}
	}

	ctx, stop := signal.NotifyContext(ctx, syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if met != nil {
		ml, err := startMetrics(ctx, met, cfg, srv, arena, alog, kdfSup, gen, log)
		if err != nil {
			if agent != nil {
				agent.Close()
			}
			l.Close()
			return err
		}
		defer ml.Close()
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(l) }()
	if cfg.Ready != nil {
		cfg.Ready()
	}
	if err := notifier.Ready(statusLine(srv, cfg.Dev)); err != nil {
		log.Warn("cannot notify systemd", "err", err)
	}
	if notifier != nil {
		go notifyLoop(ctx, notifier, srv, cfg.Dev, log)
	}

	rt := &running{srv: srv, agent: agent}
	if tlsCfg != nil {
		rt.principals = tlsCfg.Principals
	}
wait:
	for {
		select {
		case <-ctx.Done():
			log.Info("shutting down", "reason", context.Cause(ctx))
			break wait
		case err := <-served:
			if !errors.Is(err, server.ErrServerClosed) {
				log.Error("serving failed", "err", err)
			}
			break wait
		case <-hup:
			notifier.Reloading()
			reload(&cfg, rt, log)
			notifier.Ready(statusLine(srv, cfg.Dev))
		}
	}
	notifier.Stopping()
	grace := cfg.ShutdownGrace
	if grace <= 0 {
		grace = 10 * time.Second
	}
	sctx, cancel := context.WithTimeout(context.Background(), grace)
	defer cancel()
	// Derivations still running when the grace period ends are killed,
	// so that their requests can finish.
	context.AfterFunc(sctx, kdfSup.Close)
	if agent != nil {
		// Its connections end, and the keys ssh-add gave it are destroyed.
		agent.Close()
		for _, p := range cfg.SSHAgentSockets {
			if !passed.isPassed(p) { // systemd's stay
				os.Remove(p)
			}
		}
	}
	if p11 != nil {
		p11.Close()
		for _, p := range cfg.PKCS11Sockets {
			if !passed.isPassed(p) { // systemd's stay
				os.Remove(p)
			}
		}
	}
	if front != nil {
		front.Close()
	}
	if plugin != nil {
		plugin.Close()
	}
	err = srv.Shutdown(sctx)
	kdfSup.Close()
	l.Close()
	if err != nil {
		log.Warn("shutdown grace period expired; connections closed with requests in progress")
	}
	log.Info("stopped; every key has been wiped")
	return nil
}

// newGeneration starts tracking the machine generation (docs/genid.md).
// On a change the daemon's random generator is re-keyed first (and the
// kernel's re-seeded where the daemon may): every random value the daemon
// uses comes from it.
func newGeneration(cfg Config, log *slog.Logger) (*genid.Tracker, error) {
	srcs, err := genid.NewSources(cfg.GenerationSources)
	if err != nil {
		return nil, err
	}
	who := "root"
	for _, uid := range cfg.GenerationAdmins {
		who += fmt.Sprintf(", uid %d", uid)
	}
	srcs = append(srcs, genid.NewRequestSource("keywarden generation bump, by "+who))
	src := random.Default()
	if cfg.DistrustCPURandom {
		src = random.New(random.Config{DistrustHardware: true})
		random.SetDefault(src)
	}
	gen := genid.New(genid.Config{Sources: srcs, Logger: log, NamedWatchersPerUID: cfg.Limits.MaxNamedWatchersPerUID})
	gen.Register("random generator", genid.NewRandomHook(genid.RandomConfig{Source: src, Logger: log}))
	gen.Start()
	cpu := random.HardwareName()
	if cfg.DistrustCPURandom {
		cpu += " (not trusted to confirm fresh randomness)"
	}
	log.Info("machine generation tracked", "generation", gen.Current(), "sources", gen.ActiveSources(), "cpu_random", cpu)
	return gen, nil
}

// prepareDir creates the socket's directory if needed (0700, or 0755 for
// root, so that every user reaches the system socket) and refuses one that
// someone else could tamper with (see checkDir); a sticky directory such as
// /tmp is accepted, since every file the daemon keeps beside its socket is
// opened without following links and only if it is the daemon's own.
func prepareDir(dir string) error {
	perm := fs.FileMode(0o700)
	if os.Getuid() == 0 {
		perm = 0o755
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return fmt.Errorf("create socket directory: %w", err)
	}
	return checkDir("socket directory", dir, true)
}

// lockStateDir prepares the state directory and takes its lock (the file
// "lock" in it, holding the pid of the daemon that has it).
func lockStateDir(dir string) (*os.File, error) {
	if err := prepareStateDir(dir); err != nil {
		return nil, err
	}
	f, err := lockOwn("state directory lock", filepath.Join(dir, "lock"))
	var held *errLocked
	if errors.As(err, &held) {
		return nil, fmt.Errorf("the state directory %s is in use by another keywarden daemon (pid %s): stop it first, or give this one another --state", dir, held.pid)
	}
	return f, err
}

// prepareStateDir creates the state directory if needed (0700) and refuses
// one that someone else could tamper with.
func prepareStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state directory: %w", err)
	}
	return checkDir("state directory", dir, false)
}

// serveHTTP serves the transit front on spec ("unix:PATH" or
// "tcp:ADDR"). The TCP listeners share one TLS configuration, *tc,
// loaded by the first (a reload replaces its principals). A socket
// systemd passed for spec is served rather than one made.
func serveHTTP(front *transit.Front, spec string, passed *passed, mode fs.FileMode, cfg Config, tc **transit.TLSConfig, log *slog.Logger) error {
	pl, err := passed.httpListener(spec)
	if err != nil {
		return err
	}
	if addr, ok := strings.CutPrefix(spec, "tcp:"); ok {
		if *tc == nil {
			loaded, err := loadTLS(cfg)
			if err != nil {
				return fmt.Errorf("--http %s: %w", spec, err)
			}
			*tc = &loaded
		}
		l := pl
		if l == nil {
			l, err = net.Listen("tcp", addr)
		}
		if err != nil {
			return fmt.Errorf("--http %s: %w", spec, err)
		}
		log.Info("serving the transit HTTP API over mutual TLS", "address", l.Addr().String(), "principals", cfg.HTTPPrincipals)
		go func() {
			if err := front.ServeTLS(l, **tc); err != nil && !errors.Is(err, transit.ErrClosed) {
				log.Error("transit TCP listener failed", "address", addr, "err", err)
			}
		}()
		return nil
	}
	path, ok := strings.CutPrefix(spec, "unix:")
	if !ok || !filepath.IsAbs(path) {
		return fmt.Errorf("--http %q: want unix:PATH with an absolute path, or tcp:ADDR", spec)
	}
	var hl *net.UnixListener
	if pl != nil {
		hl = pl.(*net.UnixListener)
	} else {
		if err := prepareDir(filepath.Dir(path)); err != nil {
			return err
		}
		if hl, err = transit.Listen(path, mode); err != nil {
			return err
		}
	}
	log.Info("serving the transit HTTP API", "socket", path, "mode", passed.modeText(path, mode))
	go func() {
		if err := front.Serve(hl); err != nil && !errors.Is(err, transit.ErrClosed) {
			log.Error("transit socket failed", "socket", path, "err", err)
		}
	}()
	return nil
}

// loadTLS reads the files of the transit front's TCP listeners: there is
// no TCP listener without all four.
func loadTLS(cfg Config) (transit.TLSConfig, error) {
	var tc transit.TLSConfig
	if cfg.HTTPTLSCert == "" || cfg.HTTPTLSKey == "" || cfg.HTTPClientCA == "" || cfg.HTTPPrincipals == "" {
		return tc, errors.New("a TCP listener needs --http-tls-cert, --http-tls-key, --http-client-ca and --http-principals: it serves only mutual TLS")
	}
	cert, err := tls.LoadX509KeyPair(cfg.HTTPTLSCert, cfg.HTTPTLSKey)
	if err != nil {
		return tc, err
	}
	caPEM, err := ownfile.ReadTrusted("client CA file", cfg.HTTPClientCA,
		"another user could add a CA of theirs, whose certificates would then act as the uids the principals map")
	if err != nil {
		return tc, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return tc, fmt.Errorf("%s: no PEM certificate", cfg.HTTPClientCA)
	}
	pr, err := loadPrincipals(cfg.HTTPPrincipals, cfg.Admins)
	if err != nil {
		return tc, err
	}
	return transit.TLSConfig{Certificate: cert, ClientCAs: pool, Principals: pr}, nil
}

// loadPrincipals reads the transit front's mapping of client certificates
// from path, and refuses one that maps a certificate to an administrator
// of the daemon (its own uid, or one of admins): an administrator has no
// per-uid limits, and takes the connections kept for administrators.
func loadPrincipals(path string, admins []uint32) (*transit.Principals, error) {
	// It says which uid each certificate acts as: another user who could
	// write it would map their certificate to a uid of their choice.
	b, err := ownfile.ReadTrusted("principals file", path, "another user could choose the uid a certificate acts as")
	if err != nil {
		return nil, err
	}
	pr, err := transit.ParsePrincipals(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if err := principalsNotAdmin(pr, admins); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return pr, nil
}

// principalsNotAdmin refuses a mapping under which a certificate acts as
// the daemon's uid or one of admins.
func principalsNotAdmin(pr *transit.Principals, admins []uint32) error {
	for _, p := range pr.All() {
		if p.UID == uint32(os.Getuid()) || slices.Contains(admins, p.UID) {
			return fmt.Errorf("%s: uid %d is an administrator of the daemon (its own uid, or an --admin uid): a certificate never acts as one",
				p.Name, p.UID)
		}
	}
	return nil
}

// serveKMS serves the KMS v2 plugin on cfg.KMSV2, the socket systemd
// passed if there is one.
func serveKMS(srv *server.Server, cfg Config, passed *passed, mode fs.FileMode, log *slog.Logger) (*kmsv2.Plugin, error) {
	if !filepath.IsAbs(cfg.KMSV2) {
		return nil, fmt.Errorf("--kms-v2 %q: give an absolute path", cfg.KMSV2)
	}
	if cfg.KMSKey == "" {
		return nil, errors.New("--kms-v2 needs --kms-key NAME: the AES-256-GCM key, owned by the API server's uid, that encrypts")
	}
	p, err := kmsv2.New(kmsv2.Config{Server: srv, Key: cfg.KMSKey, Logger: log})
	if err != nil {
		return nil, err
	}
	kl, err := passed.kmsListener()
	if err != nil {
		p.Close()
		return nil, err
	}
	if kl == nil {
		if err := prepareDir(filepath.Dir(cfg.KMSV2)); err != nil {
			p.Close()
			return nil, err
		}
		if kl, err = kmsv2.Listen(cfg.KMSV2, mode); err != nil {
			p.Close()
			return nil, err
		}
	}
	log.Info("serving the Kubernetes KMS v2 plugin", "socket", cfg.KMSV2, "mode", passed.modeText(cfg.KMSV2, mode), "key", cfg.KMSKey)
	go func() {
		if err := p.Serve(kl); err != nil {
			log.Error("KMS v2 socket failed", "socket", cfg.KMSV2, "err", err)
		}
	}()
	return p, nil
}

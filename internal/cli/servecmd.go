package cli

import (
	"context"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/daemon"
	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/metrics"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/transit"
)

func runServe(e *env, args []string) error {
	cfg, check, err := serveConfig(e, args)
	if err != nil {
		return err
	}
	if check != "" {
		fmt.Fprint(e.stdout, check)
		return nil
	}
	cfg.Reload = func() (daemon.Config, error) {
		c, _, err := serveConfig(e, args)
		return c, err
	}
	return daemon.Run(context.Background(), cfg)
}

// serveConfig makes the daemon's configuration from the command line and
// the config file it names. With --check-config, check is the effective
// configuration to print instead of serving.
func serveConfig(e *env, args []string) (cfg daemon.Config, check string, err error) {
	f := newFlags("serve", e)
	configPath := f.String("config", "", "read settings from this TOML `file` (e.g. "+DefaultConfigPath+"): its keys are these flags' names; flags given here win")
	checkConfig := f.Bool("check-config", false, "check the command line and the config file, print the effective configuration, and exit")
	dev := f.Bool("dev", false, "development mode: keys in memory only, under an ephemeral master key, lost when the daemon stops")
	state := f.String("state", "", "the state `directory` holding the key store (default "+DefaultStateDir()+")")
	unsealFile := f.String("unseal-passphrase-file", "", "unseal at start with the master passphrase in this `file` (mode 0600), for unattended starts")
	insecureKDF := f.Bool("insecure-master-kdf", false, "TESTS ONLY: let init and master rotate seal the master key under a passphrase with Argon2id costs below the floor (3 passes over 64 MiB)")
	var admins uidList
	f.Var(&admins, "admin", "a `uid` that may init, unseal, seal, back up and restore besides root and the daemon's uid (repeatable)")
	level := f.String("log-level", "info", "log `level`: debug, info, warn, error")
	format := f.String("log-format", "text", "log `format`: text or json")
	mode := f.String("socket-mode", "", "socket permission bits in `octal` (default 0666 as root, else 0600)")
	var lim server.Limits
	f.IntVar(&lim.MaxMessageBytes, "max-message-bytes", 0, "largest request or reply, in `bytes` (default 262144)")
	f.IntVar(&lim.MaxInFlight, "max-in-flight", 0, "requests in flight per connection (default 64)")
	f.IntVar(&lim.MaxSessions, "max-sessions", 0, "streaming sessions per connection (default 64)")
	f.IntVar(&lim.MaxHandles, "max-handles", 0, "open handles per connection (default 4096)")
	f.IntVar(&lim.MaxKeysPerUser, "max-keys-per-user", 0, "live keys per uid (default 10000)")
	f.IntVar(&lim.MaxBatchOps, "max-batch-ops", 0, "operations per request (default 4096)")
	f.IntVar(&lim.MaxConnections, "max-connections", 0, "connections served at once (default 1024)")
	// Per-uid limits: what the connections one ordinary uid opened may
	// hold at once (docs/security.md, "Limits").
	f.IntVar(&lim.AdminConnections, "admin-connections", 0, "connection slots kept for administrators (default 32, at most a quarter of --max-connections)")
	f.IntVar(&lim.MaxConnectionsPerUID, "max-connections-per-uid", 0, "connections of one uid (default 64)")
	f.IntVar(&lim.MaxInFlightPerUID, "max-in-flight-per-uid", 0, "requests of one uid in flight (default 256)")
	f.Var((*sizeFlag)(&lim.MaxRequestBytesPerUID), "max-request-memory-per-uid", "`bytes` of one uid's requests running concurrently, e.g. 16M (default 16M)")
	f.IntVar(&lim.MaxLongPollsPerUID, "max-long-polls-per-uid", 0, "generation watches of one uid waiting (default 64)")
	f.IntVar(&lim.MaxSessionsPerUID, "max-sessions-per-uid", 0, "streaming sessions of one uid (default 1024)")
	f.IntVar(&lim.MaxNamedWatchersPerUID, "max-named-watchers-per-uid", 0, "named generation watchers of one uid (default 64)")
	heavySlots, heavyPerUID := server.DefaultHeavySlots(runtime.GOMAXPROCS(0))
	f.IntVar(&lim.HeavySlots, "heavy-slots", 0, fmt.Sprintf("RSA key generations and rotations of ordinary uids running at once (default %d: the processors but one)", heavySlots))
	f.IntVar(&lim.MaxHeavyPerUID, "max-heavy-per-uid", 0, fmt.Sprintf("RSA key generations and rotations of one uid running at once (default %d: a quarter of the processors)", heavyPerUID))
	f.IntVar(&lim.MaxComputingPerUID, "max-computing-per-uid", 0, fmt.Sprintf("requests of one uid computing at once (default %d: the processors but one)", server.DefaultMaxComputingPerUID(runtime.GOMAXPROCS(0))))
	f.Var((*sizeFlag)(&lim.AuditBytesPerSecondPerUID), "audit-rate-per-uid", "`bytes` of audit records one uid's requests may make per second, e.g. 1M (default 1M)")
	f.Var((*sizeFlag)(&lim.AuditBurstPerUID), "audit-burst-per-uid", "`bytes` of audit records one uid's requests may make at once (default 4M)")
	f.Var((*sizeFlag)(&lim.ShmMaxBytes), "shm-max-bytes", "`bytes` of shared memory one connection may register for large messages, at most 1G (default 64M)")
	f.Var((*sizeFlag)(&lim.ShmBytesPerUID), "shm-bytes-per-uid", "`bytes` of shared memory the connections of one uid may register together, at most 1G (default 256M)")
	kcfg := kdfServeFlags(f)
	backing := f.String("memory-backing", "", "where key bytes live: memfd_secret or mlock (default: memfd_secret where the kernel offers it)")
	maxLocked := f.String("max-locked-memory", "", "bound the key memory, e.g. 64M (default: what RLIMIT_MEMLOCK allows; none with CAP_IPC_LOCK)")
	cacheIdle := f.Duration("key-cache-idle", 0, "how long an unused key keeps its expanded state (key schedules, parsed keys) before only its locked copy is left (default 1s)")
	genSources := f.String("generation-sources", "auto", "how the daemon learns of VM snapshot restores and clones: auto, none, or a list of kmsg,vmclock,uevent,guid")
	var genAdmins uidList
	f.Var(&genAdmins, "generation-admin", "a `uid` that may bump the generation besides root (repeatable)")
	var genWatchers uidList
	f.Var(&genWatchers, "generation-watcher", "a `uid` whose generation watchers every wait-watchers waits for, besides administrators' and the waiter's own (repeatable)")
	budget := f.String("generation-budget-policy", "", "removed: a generation change now closes every key version for encryption (docs/genid.md)")
	distrustCPU := f.Bool("distrust-cpu-random", false, "after a generation change, do not count the CPU's random instructions (RDSEED, RDRAND) as confirming fresh randomness")
	auditLog := f.String("audit-log", "", "the audit log's `path`, or off (default audit.log in the state directory; with --dev, SOCKET.audit.log beside the socket)")
	auditSync := f.String("audit-sync", "grouped", "when audit records reach the disk: grouped (written before the reply, fsync grouped every few ms) or always (fsync before the reply)")
	var agentSockets stringList
	f.Var(&agentSockets, "ssh-agent", "serve the OpenSSH agent protocol on a Unix socket at `PATH` (repeatable; \"keywarden ssh-agent\" prints it for SSH_AUTH_SOCK)")
	askpass := f.String("ssh-askpass", "", "a `program` that confirms each use of a key added with ssh-add -c, as SSH_ASKPASS (default: such keys are refused)")
	var pkcs11Sockets stringList
	f.Var(&pkcs11Sockets, "pkcs11", "serve PKCS #11 (p11-kit's RPC protocol, for libkeywarden-pkcs11.so) on a Unix socket at `PATH` (repeatable; docs/pkcs11.md)")
	// The transit HTTP API (docs/transit.md).
	var httpListen stringList
	f.Var(&httpListen, "http", "serve the transit-compatible HTTP API on `unix:PATH`, or on tcp:ADDR with mutual TLS (repeatable; docs/transit.md)")
	httpCert := f.String("http-tls-cert", "", "the PEM `file` of the certificate chain of --http tcp: listeners")
	httpKey := f.String("http-tls-key", "", "the PEM `file` of the key of --http tcp: listeners")
	httpCA := f.String("http-client-ca", "", "the PEM `file` of the CAs that sign the client certificates --http tcp: listeners require")
	httpPrincipals := f.String("http-principals", "", "the `file` mapping client certificates (uri:, dns:, email:, cn:) to the uids they act as")
	httpPrefix := f.String("http-prefix", "/v1/transit/", "the transit mount's path `prefix`")
	var httpMaxBody sizeFlag
	f.Var(&httpMaxBody, "http-max-body", fmt.Sprintf("largest transit request body in `bytes`, e.g. 4M (default %d)", transit.DefaultMaxBody))
	httpMaxBatch := f.Int("http-max-batch", 0, fmt.Sprintf("most items of one transit batch_input (default %d)", transit.DefaultMaxBatch))
	httpMaxConnsPerAddr := f.Int("http-max-conns-per-addr", 0, fmt.Sprintf("most TCP connections open at once from one network address on --http tcp: listeners (default %d)", transit.DefaultMaxConnsPerAddr))
	// The Kubernetes KMS v2 plugin (docs/kubernetes.md).
	kmsSocket := f.String("kms-v2", "", "serve the Kubernetes KMS v2 plugin service on a Unix socket at `PATH`")
	kmsKey := f.String("kms-key", "", "the `name` of the AES-256-GCM key, owned by the API server's uid, that --kms-v2 encrypts with")
	// (Flags of other subsystems go in one block here: the config file
	// reads every flag by its name, so a new flag needs nothing more.)
	// Operations: systemd, reload, metrics.
	metricsAddr := f.String("metrics", "", "serve Prometheus metrics at `ADDR`: unix:PATH, or a loopback HOST:PORT such as 127.0.0.1:9613 (default: none)")

	// The key store's backend (docs/cluster.md).
	storeKind := f.String("store", "bolt", "where the key store lives: bolt (one file in the state directory) or etcd (a cluster that several daemons share)")
	etcdEndpoints := f.String("etcd-endpoints", "", "with --store etcd: the cluster's client `URLs`, comma-separated (https://a:2379,https://b:2379)")
	etcdPrefix := f.String("etcd-prefix", "/keywarden/", "with --store etcd: the etcd key `prefix` of the store")
	etcdCert := f.String("etcd-cert", "", "with --store etcd: the client certificate `file` (PEM)")
	etcdKey := f.String("etcd-key", "", "with --store etcd: the client certificate's key `file` (PEM)")
	etcdCA := f.String("etcd-ca", "", "with --store etcd: the CA certificate `file` (PEM) that signed the members' certificates")
	etcdTimeout := f.Duration("etcd-timeout", 5*time.Second, "with --store etcd: how long one request to the cluster may take before it fails as UNAVAILABLE")
	etcdMaxOps := f.Int("etcd-max-txn-ops", 0, "with --store etcd: the cluster's --max-txn-ops (default 128, etcd's)")
	etcdMaxBytes := f.Int("etcd-max-request-bytes", 0, "with --store etcd: the cluster's --max-request-bytes (default 1572864, etcd's 1.5 MiB); transactions are kept below it")
	staleBound := f.Duration("etcd-stale-bound", 0, "with --store etcd: how long keys are used without confirming that every change to the store was seen; past it, keys are refused with UNAVAILABLE (default 1s)")
	pos, err := f.parse(args)
	if err != nil {
		return cfg, "", err
	}
	if err := want(pos, 0, ""); err != nil {
		return cfg, "", err
	}
	source := "command line only"
	if *configPath != "" {
		set := map[string]bool{}
		f.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
		if err := applyConfigFile(f.FlagSet, *configPath, set); err != nil {
			return cfg, "", err
		}
		source = "file " + *configPath + ", with the command line's flags over it"
	}
	if *metricsAddr != "" {
		if err := metrics.CheckAddr(*metricsAddr); err != nil {
			return cfg, "", usagef("invalid --metrics %q: %v", *metricsAddr, err)
		}
	}
	for _, p := range pkcs11Sockets {
		if !filepath.IsAbs(p) {
			return cfg, "", usagef("--pkcs11 %q: give an absolute path", p)
		}
	}
	var etcdCfg *store.EtcdConfig
	switch *storeKind {
	case "bolt":
		if *etcdEndpoints != "" || *etcdCert != "" || *etcdKey != "" || *etcdCA != "" {
			return cfg, "", usagef("--etcd-* flags need --store etcd")
		}
	case "etcd":
		if *dev {
			return cfg, "", usagef("--dev keeps keys in memory: it takes no --store")
		}
		if *etcdEndpoints == "" {
			return cfg, "", usagef("--store etcd needs --etcd-endpoints")
		}
		if !strings.HasSuffix(*etcdPrefix, "/") {
			return cfg, "", usagef("--etcd-prefix %q: end it with /", *etcdPrefix)
		}
		if *staleBound != 0 && *staleBound < 2*store.FollowConfirmEvery {
			// The cluster confirms every FollowConfirmEvery: a shorter
			// bound would refuse keys between confirmations.
			return cfg, "", usagef("--etcd-stale-bound %s: give at least %s", *staleBound, 2*store.FollowConfirmEvery)
		}
		etcdCfg = &store.EtcdConfig{Endpoints: strings.Split(*etcdEndpoints, ","), Prefix: *etcdPrefix,
			CertFile: *etcdCert, KeyFile: *etcdKey, CAFile: *etcdCA, Timeout: *etcdTimeout, MaxTxnOps: *etcdMaxOps,
			MaxRequestBytes: *etcdMaxBytes}
	default:
		return cfg, "", usagef("unknown --store %q (want bolt or etcd)", *storeKind)
	}
	for _, p := range agentSockets {
		if !filepath.IsAbs(p) {
			return cfg, "", usagef("--ssh-agent %q: give an absolute path", p)
		}
	}
	if *askpass != "" && !filepath.IsAbs(*askpass) {
		return cfg, "", usagef("--ssh-askpass %q: give an absolute path", *askpass)
	}
	for _, h := range httpListen {
		switch {
		case strings.HasPrefix(h, "unix:") && filepath.IsAbs(h[len("unix:"):]):
		case strings.HasPrefix(h, "tcp:"):
			if *httpCert == "" || *httpKey == "" || *httpCA == "" || *httpPrincipals == "" {
				return cfg, "", usagef("--http %s needs --http-tls-cert, --http-tls-key, --http-client-ca and --http-principals: TCP is served only with mutual TLS", h)
			}
		default:
			return cfg, "", usagef("--http %q: want unix:PATH (an absolute path) or tcp:ADDR", h)
		}
	}
	// --kms-key alone serves a KMS v2 socket systemd passes (the daemon
	// refuses it without one).
	if *kmsSocket != "" && *kmsKey == "" {
		return cfg, "", usagef("--kms-v2 PATH needs --kms-key NAME")
	}
	if *kmsSocket != "" && !filepath.IsAbs(*kmsSocket) {
		return cfg, "", usagef("--kms-v2 %q: give an absolute path", *kmsSocket)
	}
	syncMode, err := audit.ParseSyncMode(*auditSync)
	if err != nil {
		return cfg, "", usagef("invalid --audit-sync %q: want grouped or always", *auditSync)
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return cfg, "", usagef("unknown log level %q", *level)
	}
	levelVar := new(slog.LevelVar)
	levelVar.Set(lvl)
	hopts := &slog.HandlerOptions{Level: levelVar}
	var log *slog.Logger
	switch *format {
	case "text":
		log = slog.New(slog.NewTextHandler(e.stderr, hopts))
	case "json":
		log = slog.New(slog.NewJSONHandler(e.stderr, hopts))
	default:
		return cfg, "", usagef("unknown log format %q (want text or json)", *format)
	}
	var sockMode fs.FileMode
	if *mode != "" {
		m, err := strconv.ParseUint(*mode, 8, 32)
		if err != nil || m > 0o777 {
			return cfg, "", usagef("invalid --socket-mode %q: want octal permission bits such as 0660", *mode)
		}
		sockMode = fs.FileMode(m)
	}
	if lim.MaxMessageBytes != 0 && (lim.MaxMessageBytes < 64<<10 || lim.MaxMessageBytes > 1<<20) {
		return cfg, "", usagef("--max-message-bytes must be between 65536 and 1048576")
	}
	var locked int64
	if *maxLocked != "" {
		if locked, err = parseSize(*maxLocked); err != nil {
			return cfg, "", usagef("invalid --max-locked-memory %q: %v", *maxLocked, err)
		}
	}
	switch *backing {
	case "", "memfd_secret", "mlock":
	default:
		return cfg, "", usagef("unknown --memory-backing %q (want memfd_secret or mlock)", *backing)
	}
	if _, err := genid.NewSources(*genSources); err != nil {
		return cfg, "", usagef("invalid --generation-sources: %v", err)
	}
	if *budget != "" {
		return cfg, "", usagef("--generation-budget-policy no longer exists: a generation change closes every key version for encryption, " +
			"and each key makes a new version at its next encryption (docs/genid.md, \"Nonce budgets\"); remove the flag")
	}
	path := f.socket
	if path == "" {
		if path = e.getenv(keywarden.SocketEnv); path == "" {
			path = keywarden.DefaultServeSocketPath()
		}
	}
	stateDir := *state
	if *dev {
		if stateDir != "" || *unsealFile != "" || *insecureKDF {
			return cfg, "", usagef("--dev keeps keys in memory: it takes neither --state, --unseal-passphrase-file nor --insecure-master-kdf")
		}
	} else if stateDir == "" {
		stateDir = DefaultStateDir()
	}
	alog := *auditLog
	switch {
	case alog == "off":
		alog = ""
	case alog != "":
	case *dev:
		alog = path + ".audit.log"
	default:
		alog = filepath.Join(stateDir, "audit.log")
	}
	cfg = daemon.Config{
		AuditLog: alog, AuditSync: syncMode,
		SocketPath: path, SocketMode: sockMode, Dev: *dev, Limits: lim, Logger: log, Version: Version,
		StateDir: stateDir, UnsealPassphraseFile: *unsealFile, InsecureMasterKDF: *insecureKDF, Admins: admins,
		KDF:           *kcfg,
		MemoryBacking: *backing, MaxLockedMemory: locked, KeyCacheIdle: *cacheIdle,
		GenerationSources: *genSources, GenerationAdmins: genAdmins, GenerationWatchers: genWatchers, DistrustCPURandom: *distrustCPU,
		SSHAgentSockets: agentSockets, SSHAskpass: *askpass,
		PKCS11Sockets: pkcs11Sockets,
		HTTP:          httpListen, HTTPTLSCert: *httpCert, HTTPTLSKey: *httpKey, HTTPClientCA: *httpCA, HTTPPrincipals: *httpPrincipals, KMSV2: *kmsSocket, KMSKey: *kmsKey, Transit: transit.Config{Prefix: *httpPrefix, MaxBody: int64(httpMaxBody), MaxBatch: *httpMaxBatch, MaxConnsPerAddr: *httpMaxConnsPerAddr},
		Etcd: etcdCfg, StaleBound: *staleBound,
		LogLevel: levelVar, Settings: effectiveSettings(f.FlagSet), MetricsAddr: *metricsAddr,
	}
	if *checkConfig {
		check = writeSettings(f.FlagSet, source)
		resolved := func(v string) string {
			if v == "" {
				return "none"
			}
			return v
		}
		check += fmt.Sprintf("# resolved defaults: socket %s, state directory %s, audit log %s\n",
			path, resolved(stateDir), resolved(alog))
	}
	return cfg, check, nil
}

// DefaultStateDir is where the daemon keeps its store unless --state says
// otherwise: /var/lib/keywarden for root, else $XDG_STATE_HOME/keywarden
// (by default ~/.local/state/keywarden).
func DefaultStateDir() string {
	if os.Geteuid() == 0 {
		return "/var/lib/keywarden"
	}
	if d := os.Getenv("XDG_STATE_HOME"); d != "" {
		return filepath.Join(d, "keywarden")
	}
	if h, err := os.UserHomeDir(); err == nil {
		return filepath.Join(h, ".local", "state", "keywarden")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("keywarden-%d", os.Geteuid()))
}

// sizeFlag is an int flag of bytes, with an optional K, M or G suffix.
type sizeFlag int

func (s *sizeFlag) String() string { return strconv.Itoa(int(*s)) }
func (s *sizeFlag) Set(v string) error {
	if v == "" {
		return errors.New("want a number of bytes, optionally with K, M or G")
	}
	n, err := parseSize(v)
	if err != nil {
		return err
	}
	if n > math.MaxInt32 {
		return errors.New("at most 2G")
	}
	*s = sizeFlag(n)
	return nil
}

// parseSize parses a byte count with an optional K, M or G suffix
// (powers of 1024).
func parseSize(s string) (int64, error) {
	mult := int64(1)
	switch strings.ToUpper(s[len(s)-1:]) {
	case "K":
		mult = 1 << 10
	case "M":
		mult = 1 << 20
	case "G":
		mult = 1 << 30
	}
	if mult > 1 {
		s = s[:len(s)-1]
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 {
		return 0, errors.New("want a number of bytes, optionally with K, M or G")
	}
	return n * mult, nil
}

func runStatus(e *env, args []string) error {
	f := newFlags("status", e)
	wait := f.Duration("wait", 0, "wait up to `duration` for the daemon to come up")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	var c *keywarden.Client
	var ctx context.Context
	deadline := time.Now().Add(*wait)
	for {
		var done func()
		ctx, c, done, err = f.dial()
		if err == nil {
			defer done()
			break
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
	st, err := c.Status(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, map[string]any{
			"socket":           f.socketPath(),
			"server_version":   st.ServerVersion,
			"protocol_version": st.ProtocolVersion,
			"dev_mode":         st.DevMode,
			"started":          st.Started.UTC().Format(time.RFC3339Nano),
			"keys":             st.Keys,
			"connections":      st.Connections,
			"caller":           map[string]any{"uid": st.CallerUID, "gid": st.CallerGID, "pid": st.CallerPID, "pidfd": st.CallerPidfd},
			"memory": map[string]any{
				"backing": st.Memory.Backing, "locked_bytes": st.Memory.LockedBytes, "in_use_bytes": st.Memory.InUseBytes,
				"limit_bytes": st.Memory.LimitBytes, "allocations": st.Memory.Allocations,
				"runtime_secret": st.Memory.RuntimeSecret, "mlockall": st.Memory.Mlockall,
				"dumpable": st.Memory.Dumpable, "cached_keys": st.Memory.CachedKeys,
			},
			"generation": generationToJSON(&st.Generation),
			"sealed":     st.Seal.Sealed,
			"seal":       sealToJSON(st.Seal),
			"audit":      auditToJSON(st.Audit),
			"limits": map[string]int{
				"max_message_bytes": st.Limits.MaxMessageBytes, "max_in_flight": st.Limits.MaxInFlight,
				"max_sessions": st.Limits.MaxSessions, "max_handles": st.Limits.MaxHandles,
				"max_keys_per_user": st.Limits.MaxKeysPerUser, "max_batch_ops": st.Limits.MaxBatchOps,
				"max_connections": st.Limits.MaxConnections, "admin_connections": st.Limits.AdminConnections,
			},
			"per_uid_limits": perUIDToJSON(st.Limits.PerUID),
		})
	}
	mode := "persistent"
	if st.DevMode {
		mode = "development (keys in memory only)"
	}
	fmt.Fprintf(e.stdout, "socket:       %s\n", f.socketPath())
	fmt.Fprintf(e.stdout, "version:      %s (protocol %d)\n", st.ServerVersion, st.ProtocolVersion)
	fmt.Fprintf(e.stdout, "mode:         %s\n", mode)
	fmt.Fprintf(e.stdout, "up since:     %s\n", st.Started.UTC().Format(time.RFC3339))
	fmt.Fprintf(e.stdout, "master key:   %s\n", sealLine(st.Seal))
	if st.Seal.Cluster != nil {
		for i, l := range clusterLines(st.Seal.Cluster) {
			label := "cluster:      "
			if i > 0 {
				label = "              "
			}
			fmt.Fprintf(e.stdout, "%s%s\n", label, l)
		}
	}
	fmt.Fprintf(e.stdout, "audit log:    %s\n", auditLine(st.Audit))
	fmt.Fprintf(e.stdout, "keys:         %d persistent (ephemeral keys are not counted)\n", st.Keys)
	fmt.Fprintf(e.stdout, "connections:  %d\n", st.Connections)
	fmt.Fprintf(e.stdout, "you are:      uid %d gid %d pid %d (pidfd: %s)\n", st.CallerUID, st.CallerGID, st.CallerPID, yesNo(st.CallerPidfd))
	m := st.Memory
	limit := "none"
	if m.LimitBytes > 0 {
		limit = fmt.Sprintf("%d bytes", m.LimitBytes)
	}
	fmt.Fprintf(e.stdout, "key memory:   %s, %d bytes locked (%d in use by %d buffers: keys in memory, one per version, ephemeral ones and the daemon's own master and audit keys included), limit %s\n",
		m.Backing, m.LockedBytes, m.InUseBytes, m.Allocations, limit)
	fmt.Fprintf(e.stdout, "hardening:    runtime/secret %s, mlockall %s, dumpable %s; %d keys with cached expanded state\n",
		yesNo(m.RuntimeSecret), yesNo(m.Mlockall), yesNo(m.Dumpable), m.CachedKeys)
	fmt.Fprintf(e.stdout, "generation:   %s\n", generationLine(&st.Generation))
	fmt.Fprintf(e.stdout, "gen. sources: %s\n", sourcesLine(&st.Generation))
	if r := st.Generation.Randomness; r != "" {
		fmt.Fprintf(e.stdout, "randomness:   %s\n", r)
	}
	l := st.Limits
	fmt.Fprintf(e.stdout, "limits:       message %d bytes, %d in flight, %d sessions, %d handles per connection; %d keys per user; %d ops per batch\n",
		l.MaxMessageBytes, l.MaxInFlight, l.MaxSessions, l.MaxHandles, l.MaxKeysPerUser, l.MaxBatchOps)
	if u := l.PerUID; u.Connections > 0 {
		fmt.Fprintf(e.stdout, "per uid:      %d connections (%d of %d kept for administrators), %d in flight, %d bytes of requests, %d computing, %d heavy (%d slots), %d watches, %d sessions, %d named watchers, %d derivations waiting, %d running; audit %d bytes/s (burst %d)\n",
			u.Connections, l.AdminConnections, l.MaxConnections, u.InFlight, u.RequestBytes, u.Computing, u.Heavy, u.HeavySlots,
			u.LongPolls, u.Sessions, u.NamedWatchers, u.KDFQueue, u.KDFRunning, u.AuditBytesPerSecond, u.AuditBurst)
	}
	return nil
}

func perUIDToJSON(u keywarden.PerUIDLimits) map[string]int {
	return map[string]int{
		"connections": u.Connections, "in_flight": u.InFlight, "request_bytes": u.RequestBytes,
		"long_polls": u.LongPolls, "sessions": u.Sessions, "named_watchers": u.NamedWatchers,
		"computing": u.Computing, "heavy": u.Heavy, "heavy_slots": u.HeavySlots,
		"audit_bytes_per_second": u.AuditBytesPerSecond, "audit_burst": u.AuditBurst,
		"kdf_queue": u.KDFQueue, "kdf_running": u.KDFRunning,
	}
}

func sealToJSON(s keywarden.SealStatus) map[string]any {
	return map[string]any{
		"initialized": s.Initialized, "sealed": s.Sealed, "generation": s.Generation,
		"passphrase": s.Passphrase, "threshold": s.Threshold, "shares": s.Shares, "shares_held": s.SharesHeld,
		"retry_after_ms": s.RetryAfter.Milliseconds(), "rotating": s.Rotating,
		"rotation_done": s.RotationDone, "rotation_total": s.RotationTotal,
		"state_dir": s.StateDir, "persistent": s.Persistent, "quarantined": s.Quarantined,
		"cluster": clusterToJSON(s.Cluster),
	}
}

func clusterToJSON(c *keywarden.ClusterStatus) any {
	if c == nil {
		return nil
	}
	var eps []map[string]any
	for _, e := range c.Endpoints {
		eps = append(eps, map[string]any{"url": e.URL, "member_id": fmt.Sprintf("%x", e.MemberID), "version": e.Version,
			"revision": e.Revision, "leader": e.Leader, "error": e.Err})
	}
	return map[string]any{"prefix": c.Prefix, "endpoints": eps, "leader": fmt.Sprintf("%x", c.Leader), "revision": c.Revision,
		"following": c.Following, "followed_revision": c.FollowedRevision, "lag_ms": c.Lag.Milliseconds(),
		"bound_ms": c.Bound.Milliseconds(), "refused": c.Refused}
}

// clusterLines describes a shared store's cluster for status.
func clusterLines(c *keywarden.ClusterStatus) []string {
	leader := "none (no quorum?)"
	if c.Leader != 0 {
		leader = fmt.Sprintf("%x", c.Leader)
	}
	lines := []string{fmt.Sprintf("etcd, prefix %s; leader %s, revision %d", c.Prefix, leader, c.Revision)}
	for _, e := range c.Endpoints {
		if e.Err != "" {
			lines = append(lines, fmt.Sprintf("  %s: %s", e.URL, e.Err))
			continue
		}
		role := "follower"
		if e.Leader {
			role = "leader"
		}
		lines = append(lines, fmt.Sprintf("  %s: member %x, etcd %s, %s, revision %d", e.URL, e.MemberID, e.Version, role, e.Revision))
	}
	switch {
	case c.Refused != "":
		lines = append(lines, "  KEYS REFUSED: "+c.Refused)
	case c.Following:
		lines = append(lines, fmt.Sprintf("  following: every change seen up to revision %d, confirmed %s ago (bound %s)",
			c.FollowedRevision, c.Lag.Round(time.Millisecond), c.Bound))
	}
	return lines
}

func auditToJSON(a *keywarden.AuditStatus) any {
	if a == nil {
		return nil
	}
	m := map[string]any{
		"path": a.Path, "sync": a.Sync, "healthy": a.Healthy, "refused": a.Refused, "seq": a.Seq,
		"file_bytes": a.FileBytes, "keyed": a.Keyed, "public_key": hex.EncodeToString(a.PublicKey),
		"last_checkpoint": a.LastCheckpoint,
		"linux":           map[string]any{"enabled": a.LinuxEnabled, "reason": a.LinuxReason, "sent": a.LinuxSent, "dropped": a.LinuxDropped},
	}
	if a.Error != "" {
		m["error"] = a.Error
		if !a.FailedSince.IsZero() {
			m["failed_since"] = a.FailedSince.UTC().Format(time.RFC3339Nano)
		}
	}
	return m
}

// auditLine says in one line what the audit log's state is.
func auditLine(a *keywarden.AuditStatus) string {
	if a == nil {
		return "NONE: requests are not recorded"
	}
	state := "writing"
	if !a.Healthy {
		state = "FAILING (every request is refused): " + a.Error
		if a.Refused > 0 {
			state += fmt.Sprintf("; %d refused", a.Refused)
		}
	}
	keyed := "no MACs yet (sealed)"
	if a.Keyed {
		keyed = "MACs and signed checkpoints"
	}
	linux := "Linux audit off (" + a.LinuxReason + ")"
	if a.LinuxEnabled {
		linux = fmt.Sprintf("Linux audit on (%d sent, %d dropped)", a.LinuxSent, a.LinuxDropped)
	}
	return fmt.Sprintf("%s, %s, seq %d, sync %s, %s; %s", a.Path, state, a.Seq, a.Sync, keyed, linux)
}

// sealLine says in one line what the master key's state is.
func sealLine(s keywarden.SealStatus) string {
	if !s.Initialized {
		return "none yet (run \"keywarden init\")"
	}
	state := "unsealed"
	if s.Sealed {
		state = "SEALED (run \"keywarden unseal\")"
	}
	var by []string
	if s.Passphrase {
		by = append(by, "passphrase")
	}
	if s.Shares > 0 {
		by = append(by, fmt.Sprintf("%d of %d shares", s.Threshold, s.Shares))
	}
	if !s.Persistent {
		by = append(by, "ephemeral, in memory")
	}
	line := fmt.Sprintf("%s, generation %d, sealed by %s", state, s.Generation, strings.Join(by, " or "))
	if s.Sealed && s.SharesHeld > 0 {
		line += fmt.Sprintf("; %d of %d shares submitted", s.SharesHeld, s.Threshold)
	}
	if s.RetryAfter > 0 {
		line += fmt.Sprintf("; unseal refused for %s after failed attempts", s.RetryAfter.Round(time.Second))
	}
	if s.Rotating {
		line += fmt.Sprintf("; rotation re-wrapping keys: %d of %d", s.RotationDone, s.RotationTotal)
	}
	if s.Quarantined > 0 {
		line += fmt.Sprintf("; %d key records failed their integrity check (refused or set aside)", s.Quarantined)
	}
	if s.StateDir != "" {
		line += "; store in " + s.StateDir
	}
	return line
}

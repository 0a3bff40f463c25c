package cli

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/daemon"
	"github.com/keywarden/keywarden/internal/server"
)

func runServe(e *env, args []string) error {
	f := newFlags("serve", e)
	dev := f.Bool("dev", false, "development mode: keys in memory only, lost when the daemon stops")
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
	kcfg := kdfServeFlags(f)
	backing := f.String("memory-backing", "", "where key bytes live: memfd_secret or mlock (default: memfd_secret where the kernel offers it)")
	maxLocked := f.String("max-locked-memory", "", "bound the key memory, e.g. 64M (default: what RLIMIT_MEMLOCK allows; none with CAP_IPC_LOCK)")
	cacheIdle := f.Duration("key-cache-idle", 0, "how long an unused key keeps its expanded state (key schedules, parsed keys) before only its locked copy is left (default 1s)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	var lvl slog.Level
	if err := lvl.UnmarshalText([]byte(*level)); err != nil {
		return usagef("unknown log level %q", *level)
	}
	hopts := &slog.HandlerOptions{Level: lvl}
	var log *slog.Logger
	switch *format {
	case "text":
		log = slog.New(slog.NewTextHandler(e.stderr, hopts))
	case "json":
		log = slog.New(slog.NewJSONHandler(e.stderr, hopts))
	default:
		return usagef("unknown log format %q (want text or json)", *format)
	}
	var sockMode fs.FileMode
	if *mode != "" {
		m, err := strconv.ParseUint(*mode, 8, 32)
		if err != nil || m > 0o777 {
			return usagef("invalid --socket-mode %q: want octal permission bits such as 0660", *mode)
		}
		sockMode = fs.FileMode(m)
	}
	if lim.MaxMessageBytes != 0 && (lim.MaxMessageBytes < 64<<10 || lim.MaxMessageBytes > 1<<20) {
		return usagef("--max-message-bytes must be between 65536 and 1048576")
	}
	var locked int64
	if *maxLocked != "" {
		if locked, err = parseSize(*maxLocked); err != nil {
			return usagef("invalid --max-locked-memory %q: %v", *maxLocked, err)
		}
	}
	switch *backing {
	case "", "memfd_secret", "mlock":
	default:
		return usagef("unknown --memory-backing %q (want memfd_secret or mlock)", *backing)
	}
	path := f.socket
	if path == "" {
		if path = e.getenv(keywarden.SocketEnv); path == "" {
			path = keywarden.DefaultServeSocketPath()
		}
	}
	err = daemon.Run(context.Background(), daemon.Config{
		SocketPath: path, SocketMode: sockMode, Dev: *dev, Limits: lim, Logger: log, Version: Version,
		KDF:           *kcfg,
		MemoryBacking: *backing, MaxLockedMemory: locked, KeyCacheIdle: *cacheIdle,
	})
	if errors.Is(err, daemon.ErrPersistenceUnavailable) {
		return usagef("%v", err)
	}
	return err
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
			"limits": map[string]int{
				"max_message_bytes": st.Limits.MaxMessageBytes, "max_in_flight": st.Limits.MaxInFlight,
				"max_sessions": st.Limits.MaxSessions, "max_handles": st.Limits.MaxHandles,
				"max_keys_per_user": st.Limits.MaxKeysPerUser, "max_batch_ops": st.Limits.MaxBatchOps,
			},
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
	fmt.Fprintf(e.stdout, "keys:         %d\n", st.Keys)
	fmt.Fprintf(e.stdout, "connections:  %d\n", st.Connections)
	fmt.Fprintf(e.stdout, "you are:      uid %d gid %d pid %d (pidfd: %s)\n", st.CallerUID, st.CallerGID, st.CallerPID, yesNo(st.CallerPidfd))
	m := st.Memory
	limit := "none"
	if m.LimitBytes > 0 {
		limit = fmt.Sprintf("%d bytes", m.LimitBytes)
	}
	fmt.Fprintf(e.stdout, "key memory:   %s, %d bytes locked (%d in use by %d keys), limit %s\n",
		m.Backing, m.LockedBytes, m.InUseBytes, m.Allocations, limit)
	fmt.Fprintf(e.stdout, "hardening:    runtime/secret %s, mlockall %s, dumpable %s; %d keys with cached expanded state\n",
		yesNo(m.RuntimeSecret), yesNo(m.Mlockall), yesNo(m.Dumpable), m.CachedKeys)
	l := st.Limits
	fmt.Fprintf(e.stdout, "limits:       message %d bytes, %d in flight, %d sessions, %d handles per connection; %d keys per user; %d ops per batch\n",
		l.MaxMessageBytes, l.MaxInFlight, l.MaxSessions, l.MaxHandles, l.MaxKeysPerUser, l.MaxBatchOps)
	return nil
}

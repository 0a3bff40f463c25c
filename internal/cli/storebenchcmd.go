package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/bench"
	"github.com/keywarden/keywarden/internal/bench/storebench"
)

// storeBenchFlags are the flags of "keywarden bench --create" and
// "keywarden bench --startup" (docs/performance.md).
type storeBenchFlags struct {
	create   bool
	startup  bool
	clients  string
	runs     int
	dir      string
	state    string
	keys     int
	firstUse int
	cold     bool
	etcd     string
}

func (s *storeBenchFlags) register(f *flags) {
	f.BoolVar(&s.create, "create", false, "measure the creation of persistent keys (durable) through a daemon with a store on disk, and in-process")
	f.BoolVar(&s.startup, "startup", false, "measure a daemon's start-up, unseal, memory and first key use on a store of --keys keys")
	f.StringVar(&s.clients, "clients", "1,16", "comma-separated `list` of numbers of concurrent clients, each on its own connection: alone, measure how throughput scales with them (e.g. 1,2,4,8,16); with --idle-conns, the active clients (default 16); with --create, --audit, --ssh-agent or --http, theirs (default with --ssh-agent: 1,4,16; with --http: 1,8)")
	f.IntVar(&s.runs, "runs", 3, "with --clients, --idle-conns, --resident-keys, --create, --startup, --audit or --ssh-agent: repeat each measurement `N` times and report the medians")
	f.StringVar(&s.dir, "dir", "", "with --create, --audit or --ssh-agent: make the stores or audit logs in this `directory` (default: the temporary directory)")
	f.StringVar(&s.state, "state", "", "with --startup: the store's state `directory`; made there with --keys keys if it holds none, and kept (default: a temporary one, removed after)")
	f.IntVar(&s.keys, "keys", 1000000, "with --startup: the number of keys in the store")
	f.IntVar(&s.firstUse, "first-use", 200, "with --startup: time the first use of this many keys per run")
	f.BoolVar(&s.cold, "cold", false, "with --startup: empty the kernel's page cache before each start (root only)")
	f.StringVar(&s.etcd, "etcd-endpoints", "", "with --create: the daemons' stores are in this etcd cluster (client `URLs`, comma-separated; plain http), each under a new prefix, with no in-process baseline")
}

func runStoreBench(e *env, f *flags, st *storeBenchFlags, duration time.Duration, explicit map[string]bool) error {
	switch {
	case st.create && st.startup:
		return usagef("give --create or --startup, not both")
	case st.startup && f.socket != "":
		return usagef("--startup starts a daemon of its own: --socket does not apply")
	case st.create && f.socket != "" && st.etcd != "":
		return usagef("--etcd-endpoints names the store of the daemons --create starts: it does not apply with --socket")
	case st.create && f.socket != "" && st.dir != "":
		return usagef("--dir names where --create makes its daemons' stores: it does not apply with --socket")
	case st.runs < 1:
		return usagef("--runs must be at least 1")
	case st.startup && st.keys < 1:
		return usagef("--keys must be at least 1")
	case st.startup && st.firstUse < 1:
		return usagef("--first-use must be at least 1")
	}
	for _, name := range []string{"ops", "modes", "batch", "pipeline"} {
		if explicit[name] {
			return usagef("--%s does not apply to --create and --startup", name)
		}
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if f.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	var progress io.Writer
	if !f.json {
		progress = e.stderr
	}
	if st.create {
		return runCreateBench(ctx, e, f, st, duration, progress)
	}
	return runStartupBench(ctx, e, f, st, progress)
}

func benchArgon2() keywarden.Argon2Params {
	p := storebench.Params
	return keywarden.Argon2Params{Time: p.Time, MemoryKiB: p.MemoryKiB, Threads: p.Threads}
}

// clientCounts parses --clients.
func (s *storeBenchFlags) clientCounts() ([]int, error) {
	var clients []int
	for _, c := range strings.Split(s.clients, ",") {
		if c = strings.TrimSpace(c); c == "" {
			continue
		}
		n, err := strconv.Atoi(c)
		if err != nil || n < 1 || n > 1024 {
			return nil, usagef("--clients: %q is not a number from 1 to 1024", c)
		}
		clients = append(clients, n)
	}
	return clients, nil
}

// createSockets parses --socket with --create: a comma-separated list of
// the sockets of running daemons, each named once.
func createSockets(s string) ([]string, error) {
	var socks []string
	for _, p := range strings.Split(s, ",") {
		if p = strings.TrimSpace(p); p == "" {
			continue
		}
		if slices.Contains(socks, p) {
			return nil, usagef("--socket: %q is named twice", p)
		}
		socks = append(socks, p)
	}
	if len(socks) == 0 {
		return nil, usagef("--socket: no socket named")
	}
	return socks, nil
}

func runCreateBench(ctx context.Context, e *env, f *flags, st *storeBenchFlags, duration time.Duration, progress io.Writer) error {
	clients, err := st.clientCounts()
	if err != nil {
		return err
	}
	var sockets []string
	if f.socket != "" {
		if sockets, err = createSockets(f.socket); err != nil {
			return err
		}
	}
	cfg := bench.CreateConfig{
		Clients: clients, Duration: duration, Runs: st.runs, Dir: st.dir,
		Passphrase: []byte(storebench.Passphrase), Argon2: benchArgon2(),
		InProcess: func(ctx context.Context, dir string, clients int, warmup, d time.Duration) (int, time.Duration, []int64, error) {
			c, err := storebench.MeasureCreates(ctx, dir, clients, warmup, d)
			return c.Ops, c.Elapsed, c.Lat, err
		},
		Count: func(dir string) (int, error) {
			s, _, err := storebench.Open(dir)
			if err != nil {
				return 0, err
			}
			defer s.Close()
			n, _ := s.Counts()
			return n, nil
		},
	}
	if st.etcd != "" {
		// Each daemon's store under a prefix of its own, named for its
		// state directory (new for each measurement).
		cfg.InProcess, cfg.Count = nil, nil
		cfg.StoreArgs = func(state string) []string {
			return []string{"--store", "etcd", "--etcd-endpoints", st.etcd, "--etcd-prefix", "/keywarden-bench" + filepath.Dir(state) + "/"}
		}
	}
	if sockets != nil {
		// Running daemons, unsealed, in a store of their own.
		cfg.Sockets, cfg.InProcess, cfg.Count = sockets, nil, nil
	}
	results, err := bench.RunCreate(ctx, cfg, progress)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, results)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "OP\tMODE\tDAEMONS\tCLIENTS\tOPS/S\tP50(µs)\tP99(µs)\t×INPROC\tRUNS (OPS/S)")
	for _, r := range results {
		runs := make([]string, len(r.RunsOpsPerSec))
		for i, v := range r.RunsOpsPerSec {
			runs[i] = fmt.Sprintf("%.0f", v)
		}
		daemons, ratio := "-", "-"
		if r.Daemons > 0 {
			daemons = strconv.Itoa(r.Daemons)
		}
		if r.RatioToInProcess > 0 {
			ratio = fmt.Sprintf("%.2f", r.RatioToInProcess)
		}
		fmt.Fprintf(w, "%s\t%s\t%s\t%d\t%.0f\t%s\t%s\t%s\t%s\n", r.Op, r.Mode, daemons, r.Clients, r.OpsPerSec,
			micros(r.P50us), micros(r.P99us), ratio, strings.Join(runs, " "))
	}
	return w.Flush()
}

func runStartupBench(ctx context.Context, e *env, f *flags, st *storeBenchFlags, progress io.Writer) error {
	say := func(format string, args ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", args...)
		}
	}
	state := st.state
	if state == "" {
		tmp, err := os.MkdirTemp("", "keywarden-bench-store-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(tmp)
		state = tmp + "/state"
	}
	if err := prepareStartupStore(ctx, state, st.keys, say); err != nil {
		return err
	}
	res, err := bench.RunStartup(ctx, bench.StartupConfig{
		State: state, Keys: st.keys, KeyName: storebench.KeyName, Passphrase: []byte(storebench.Passphrase),
		Runs: st.runs, FirstUse: st.firstUse, Cold: st.cold,
		InProcess: func(dir string, names []string) (time.Duration, []int64, error) {
			return storebench.MeasureLoads(dir, uint32(os.Getuid()), names)
		},
	}, progress)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, res)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	row := func(name, format string, args ...any) {
		fmt.Fprintf(w, "%s\t"+format+"\n", append([]any{name}, args...)...)
	}
	if res.StoreMiB >= 1 {
		row("keys", "%d (store file %.0f MiB)", res.Keys, res.StoreMiB)
	} else {
		row("keys", "%d (store file %.0f KiB)", res.Keys, res.StoreMiB*1024)
	}
	if res.Cold {
		row("runs", "%d (medians), each from an empty page cache", res.Runs)
	} else {
		row("runs", "%d (medians)", res.Runs)
	}
	row("start until serving (sealed)", "%s ms", millis(res.ServingMs))
	row("unseal (Argon2id and verification)", "%s ms", millis(res.UnsealMs))
	if res.VerifyInProcessMs > 0 {
		row("verification in-process", "%s ms", millis(res.VerifyInProcessMs))
	}
	row("memory sealed", "%.1f MiB resident", res.SealedRSSMiB)
	row("memory unsealed", "%.1f MiB resident: %.1f MiB anonymous, %.1f MiB file-backed (the executable and the store); peak %.1f MiB; %.1f MiB locked", res.UnsealedRSSMiB, res.UnsealedAnonMiB, res.UnsealedFileMiB, res.UnsealedPeakMiB, res.UnsealedLockedMiB)
	row("memory after first use", "%.1f MiB resident, %.1f MiB anonymous; keys loaded: %d (%.1f KiB of key memory)", res.AfterUseRSSMiB, res.AfterUseAnonMiB, res.LoadedAfterUse, res.LockedKeyMemKiB)
	row("first use: open", "p50 %s µs, p99 %s µs", micros(res.OpenP50us), micros(res.OpenP99us))
	if res.LoadInProcessP50us > 0 {
		row("first use in-process: load", "p50 %s µs, p99 %s µs", micros(res.LoadInProcessP50us), micros(res.LoadInProcessP99us))
	}
	row("first use: first encryption", "p50 %s µs, p99 %s µs", micros(res.FirstEncP50us), micros(res.FirstEncP99us))
	row("first use: open and first encryption", "p50 %s µs, p99 %s µs", micros(res.FirstUseP50us), micros(res.FirstUseP99us))
	row("second encryption", "p50 %s µs, p99 %s µs", micros(res.SecondEncP50us), micros(res.SecondEncP99us))
	return w.Flush()
}

// millis formats milliseconds with three significant digits or more.
func millis(ms float64) string { return micros(ms) }

// prepareStartupStore makes a store of keys keys in state unless it holds
// one, and checks that a store there has that many.
func prepareStartupStore(ctx context.Context, state string, keys int, say func(string, ...any)) error {
	if storebench.Exists(state) {
		say("checking the store in %s...", state)
		s, _, err := storebench.Open(state)
		if err != nil {
			return fmt.Errorf("%s: %w (was it made by keywarden bench?)", state, err)
		}
		n, _ := s.Counts()
		if err := s.Close(); err != nil {
			return err
		}
		if n != keys {
			return fmt.Errorf("%s holds a store of %d keys, not %d: give --keys %d, or another --state", state, n, keys, n)
		}
		return nil
	}
	say("making a store of %d keys in %s...", keys, state)
	s, err := storebench.Init(state)
	if err != nil {
		return err
	}
	t0 := time.Now()
	err = storebench.Fill(ctx, s, 0, keys, uint32(os.Getuid()), 1024, func(done int) {
		say("  %d keys (%.0f/s)", done, float64(done)/time.Since(t0).Seconds())
	})
	if cerr := s.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(s.Path()) // not a store of keys keys: not to be reused
		return fmt.Errorf("making the store: %w", err)
	}
	say("made %d keys in %v", keys, time.Since(t0).Round(time.Second))
	return nil
}

package bench

// Scaling measurements (docs/performance.md, "Connections and scaling"):
// throughput against the number of concurrent clients (RunScaling), ping
// latency of active clients among many idle connections and what an idle
// connection costs the daemon (RunIdle), and an AES-GCM round trip with
// many keys resident (RunResident). Each compares with a baseline taken in
// the same run: in-process goroutines, no idle connections, one resident
// key.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keywarden/keywarden"
)

// ScaleResult is one figure of RunScaling, RunIdle or RunResident:
// medians over the runs.
type ScaleResult struct {
	// Kind is "scaling", "idle" or "resident".
	Kind string `json:"kind"`
	Op   string `json:"op"`
	// Mode is ModeInProcess (goroutines of this process, the standard
	// library) or ModeRoundTrip (each client its own connection, one
	// request at a time).
	Mode    string `json:"mode"`
	Clients int    `json:"clients"`
	// IdleConns is the number of idle connections open while measured;
	// ResidentKeys the number of keys live in the daemon; Key, for
	// resident, whether every operation used the same key ("same") or a
	// random one of them ("random").
	IdleConns    int    `json:"idle_conns"`
	ResidentKeys int    `json:"resident_keys,omitempty"`
	Key          string `json:"key,omitempty"`
	Runs         int    `json:"runs"`

	OpsPerSec          float64   `json:"ops_per_sec"`
	RunsOpsPerSec      []float64 `json:"runs_ops_per_sec"`
	OpsPerSecPerClient float64   `json:"ops_per_sec_per_client"`
	P50us              float64   `json:"p50_us"`
	P99us              float64   `json:"p99_us"`

	// RatioToInProcess (scaling): OpsPerSec over the in-process figure
	// with as many goroutines, paired by run. Speedup: OpsPerSec over
	// that of the first client count in the same mode.
	RatioToInProcess float64 `json:"ratio_to_inprocess,omitempty"`
	Speedup          float64 `json:"speedup,omitempty"`
	// P50RatioToBaseline and P99RatioToBaseline (idle, resident): the
	// latency over that of the baseline (no idle connections; one
	// resident key), median of the runs' ratios.
	P50RatioToBaseline float64 `json:"p50_ratio_to_baseline,omitempty"`
	P99RatioToBaseline float64 `json:"p99_ratio_to_baseline,omitempty"`

	// The daemon's memory (idle, resident): its resident set and threads
	// while measured (threads: median over the runs), and the resident
	// memory each idle connection or resident key added, in the first run
	// (later ones reuse memory the daemon kept from the previous).
	DaemonRSSBytes      int64 `json:"daemon_rss_bytes,omitempty"`
	DaemonThreads       int   `json:"daemon_threads,omitempty"`
	RSSPerIdleConnBytes int64 `json:"rss_per_idle_conn_bytes,omitempty"`
	RSSPerKeyBytes      int64 `json:"rss_per_key_bytes,omitempty"`
	// KeysPerSec (resident) is how fast the keys were made resident.
	KeysPerSec float64 `json:"keys_per_sec,omitempty"`
}

// ScaleConfig configures RunScaling, RunIdle and RunResident. Zero values
// mean defaults.
type ScaleConfig struct {
	// Socket is the daemon RunScaling measures; empty means a private one.
	// RunIdle and RunResident always start their own.
	Socket string
	// Clients are the numbers of concurrent clients: RunScaling measures
	// each (default 1, 2, 4, 8, 16); RunIdle uses the first as its active
	// clients (default 16); RunResident ignores it.
	Clients []int
	// Ops are the operations RunScaling measures; empty means ping and
	// aes256-gcm-seal-256.
	Ops []string
	// IdleConns is RunIdle's number of idle connections (default 10000);
	// ResidentKeys RunResident's number of keys (default 1000000).
	IdleConns    int
	ResidentKeys int
	// Duration is each measurement's length (default 2 s); Runs how many
	// times each is repeated for medians (default 3).
	Duration time.Duration
	Runs     int
	// Executable and Env are as in Config.
	Executable string
	Env        []string
}

func (c ScaleConfig) withDefaults(defClients []int) ScaleConfig {
	if len(c.Clients) == 0 {
		c.Clients = defClients
	}
	if len(c.Ops) == 0 {
		c.Ops = []string{"ping", "aes256-gcm-seal-256"}
	}
	if c.IdleConns <= 0 {
		c.IdleConns = 10000
	}
	if c.ResidentKeys <= 0 {
		c.ResidentKeys = 1000000
	}
	if c.Duration <= 0 {
		c.Duration = 2 * time.Second
	}
	if c.Runs <= 0 {
		c.Runs = 3
	}
	return c
}

func sayTo(progress io.Writer) func(string, ...any) {
	return func(format string, args ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", args...)
		}
	}
}

// cellKey names one figure while runs are collected.
type cellKey struct {
	op, mode string
	clients  int
	variant  string
}

type cells struct {
	order []cellKey
	ms    map[cellKey][]measurement
	extra map[cellKey][]float64 // per-run figures beside the measurement
}

func newCells() *cells {
	return &cells{ms: map[cellKey][]measurement{}, extra: map[cellKey][]float64{}}
}

func (c *cells) add(k cellKey, m measurement) {
	if _, ok := c.ms[k]; !ok {
		c.order = append(c.order, k)
	}
	c.ms[k] = append(c.ms[k], m)
}

// result turns k's runs into a ScaleResult of kind.
func (c *cells) result(kind string, k cellKey) ScaleResult {
	r := medianResult(c.ms[k], k.op, k.mode)
	return ScaleResult{Kind: kind, Op: k.op, Mode: k.mode, Clients: k.clients, Runs: r.Runs,
		OpsPerSec: r.OpsPerSec, RunsOpsPerSec: r.RunsOpsPerSec, OpsPerSecPerClient: r.OpsPerSec / float64(max(1, k.clients)),
		P50us: r.P50us, P99us: r.P99us}
}

// latRatios is the median over runs of the ratio of each run's p50 and
// p99 to the baseline's of the same run.
func latRatios(ms, base []measurement) (p50, p99 float64) {
	var r50, r99 []float64
	for i := range ms {
		if i >= len(base) {
			break
		}
		a, b := ms[i].result(operation{}, ""), base[i].result(operation{}, "")
		if b.P50us > 0 && b.P99us > 0 {
			r50 = append(r50, a.P50us/b.P50us)
			r99 = append(r99, a.P99us/b.P99us)
		}
	}
	return median(r50), median(r99)
}

// RunScaling measures cfg.Ops with each number of cfg.Clients concurrent
// clients, each on its own connection doing one request at a time, and
// in-process with as many goroutines: how throughput grows with clients
// on this machine. Runs alternate over everything, so a drift of the
// machine's load touches every figure alike.
func RunScaling(ctx context.Context, cfg ScaleConfig, progress io.Writer) (_ []ScaleResult, err error) {
	cfg = cfg.withDefaults([]int{1, 2, 4, 8, 16})
	say := sayTo(progress)
	ops, err := lookupOps(cfg.Ops)
	if err != nil {
		return nil, err
	}
	socket := cfg.Socket
	if socket == "" {
		say("starting a private daemon")
		d, derr := startDaemon(ctx, cfg.Executable, cfg.Env)
		if derr != nil {
			return nil, derr
		}
		defer func() {
			if serr := d.stop(); err == nil && serr != nil {
				err = serr
			}
		}()
		socket = d.socket
	}
	if err := raiseNoFile(slices.Max(cfg.Clients)+64, 0); err != nil {
		return nil, err
	}
	cs := newCells()
	for run := range cfg.Runs {
		for _, op := range ops {
			for _, n := range cfg.Clients {
				if op.local != nil {
					say("run %d: %s in-process, %d goroutines", run+1, op.name, n)
					m, err := measureLocalClients(ctx, op, n, cfg.Duration)
					if err != nil {
						return nil, fmt.Errorf("%s in-process: %w", op.name, err)
					}
					cs.add(cellKey{op.name, ModeInProcess, n, ""}, m)
				}
				say("run %d: %s, %d clients", run+1, op.name, n)
				m, err := measureRemoteClients(ctx, socket, op, n, cfg.Duration)
				if err != nil {
					return nil, fmt.Errorf("%s, %d clients: %w", op.name, n, err)
				}
				cs.add(cellKey{op.name, ModeRoundTrip, n, ""}, m)
			}
		}
	}
	var out []ScaleResult
	for _, k := range cs.order {
		r := cs.result("scaling", k)
		first := cellKey{k.op, k.mode, cfg.Clients[0], ""}
		if f := median(runsOf(cs.ms[first])); f > 0 {
			r.Speedup = r.OpsPerSec / f
		}
		if k.mode == ModeRoundTrip {
			if local, ok := cs.ms[cellKey{k.op, ModeInProcess, k.clients, ""}]; ok {
				r.RatioToInProcess = pairedRatio(runsOf(cs.ms[k]), runsOf(local))
			}
		}
		out = append(out, r)
	}
	return out, nil
}

// runsOf returns each measurement's operations per second.
func runsOf(ms []measurement) []float64 {
	v := make([]float64, len(ms))
	for i, m := range ms {
		if m.elapsed > 0 {
			v[i] = float64(m.ops) / m.elapsed.Seconds()
		}
	}
	return v
}

// measureLocalClients runs op in-process on n goroutines, each with its
// own state, for d after a short warm-up.
func measureLocalClients(ctx context.Context, op operation, n int, d time.Duration) (measurement, error) {
	ones := make([]func(context.Context) error, n)
	for i := range ones {
		fn, err := op.local()
		if err != nil {
			return measurement{}, err
		}
		ones[i] = func(context.Context) error { return fn() }
	}
	runtime.GC()
	if _, err := measureClients(ctx, ones, min(maxWarmup, d)); err != nil {
		return measurement{}, err
	}
	return measureClients(ctx, ones, d)
}

// measureRemoteClients runs op through the daemon at socket from n
// clients, each on its own connection, for d after a short warm-up.
func measureRemoteClients(ctx context.Context, socket string, op operation, n int, d time.Duration) (measurement, error) {
	ones := make([]func(context.Context) error, n)
	for i := range ones {
		c, err := keywarden.Dial(ctx, socket)
		if err != nil {
			return measurement{}, err
		}
		defer c.Close()
		r, err := op.remote(ctx, c)
		if err != nil {
			return measurement{}, err
		}
		defer r.close(ctx)
		ones[i] = r.one
	}
	runtime.GC()
	if _, err := measureClients(ctx, ones, min(maxWarmup, d)); err != nil {
		return measurement{}, err
	}
	return measureClients(ctx, ones, d)
}

// raiseNoFile makes sure this process, and the daemons it starts after
// (which inherit its limits), may open self descriptors, and daemon for
// each daemon: RLIMIT_NOFILE is raised as far as needed, its hard limit
// too when this process may (root). It says what to do when it cannot.
func raiseNoFile(self, daemon int) error {
	need := uint64(max(self, daemon))
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return err
	}
	if rl.Cur >= need {
		return nil
	}
	want := rl
	want.Cur = need
	if want.Max < need {
		want.Max = need
	}
	// syscall.Setrlimit, not x/sys: the daemons started after inherit the
	// new limit rather than the one this process started with.
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
		return fmt.Errorf("need %d open descriptors, and RLIMIT_NOFILE allows %d (hard %d): %v; raise it (ulimit -Hn %d, or LimitNOFILE= in a unit) or ask for fewer", need, rl.Cur, rl.Max, err, need)
	}
	return nil
}

// procStatus reads numeric fields of /proc/PID/status, in bytes for those
// given in kB.
func procStatus(pid int) (map[string]int64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	out := map[string]int64{}
	for line := range strings.Lines(string(b)) {
		name, rest, ok := strings.Cut(line, ":")
		f := strings.Fields(rest)
		if !ok || len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n <<= 10
		}
		out[name] = n
	}
	return out, nil
}

// idleSettle is how long RunIdle lets new idle connections be before it
// measures: the daemon parks a connection after a second without a
// request (docs/performance.md).
const idleSettle = 2500 * time.Millisecond

// RunIdle measures ping round trips from cfg.Clients[0] active clients
// with no other connection open (the baseline), then with cfg.IdleConns
// idle connections open besides (each made one request, as Dial does, and
// then waits), and the daemon's resident memory and threads before and
// after they were opened. It starts a private daemon allowed that many
// connections, and raises RLIMIT_NOFILE for it and for itself as needed.
func RunIdle(ctx context.Context, cfg ScaleConfig, progress io.Writer) (_ []ScaleResult, err error) {
	cfg = cfg.withDefaults([]int{16})
	say := sayTo(progress)
	active, idle := cfg.Clients[0], cfg.IdleConns
	// The daemon: a socket and its opener's pidfd per connection.
	if err := raiseNoFile(idle+active+128, 2*(idle+active)+128); err != nil {
		return nil, err
	}
	conns := strconv.Itoa(idle + active + 64)
	say("starting a private daemon allowing %s connections", conns)
	d, err := startServe(ctx, serveSpec{executable: cfg.Executable, env: cfg.Env,
		args: []string{"--dev", "--max-connections", conns, "--max-connections-per-uid", conns}})
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := d.stop(); err == nil && serr != nil {
			err = serr
		}
	}()
	ping := operations[slices.IndexFunc(operations, func(o operation) bool { return o.name == "ping" })]
	cs := newCells()
	base, with := cellKey{"ping", ModeRoundTrip, active, "0"}, cellKey{"ping", ModeRoundTrip, active, "idle"}
	var rssBase, rssWith, threads, perConn []float64
	for run := range cfg.Runs {
		say("run %d: ping, %d clients, no idle connections", run+1, active)
		m, err := measureRemoteClients(ctx, d.socket, ping, active, cfg.Duration)
		if err != nil {
			return nil, err
		}
		cs.add(base, m)
		time.Sleep(idleSettle) // the measuring connections are gone, or parked
		before, err := procStatus(d.pid())
		if err != nil {
			return nil, err
		}
		fdsBefore := countFDs(d.pid())
		say("run %d: opening %d idle connections", run+1, idle)
		idlers, err := openIdle(ctx, d.socket, idle)
		if err != nil {
			return nil, err
		}
		time.Sleep(idleSettle)
		after, err := procStatus(d.pid())
		if err != nil {
			closeAll(idlers)
			return nil, err
		}
		say("run %d: ping, %d clients, %d idle connections", run+1, active, idle)
		m, err = measureRemoteClients(ctx, d.socket, ping, active, cfg.Duration)
		closeAll(idlers)
		if err != nil {
			return nil, err
		}
		cs.add(with, m)
		rssBase = append(rssBase, float64(before["VmRSS"]))
		rssWith = append(rssWith, float64(after["VmRSS"]))
		threads = append(threads, float64(after["Threads"]))
		perConn = append(perConn, float64(after["VmRSS"]-before["VmRSS"])/float64(idle))
		// The daemon has closed them all before the next run (or its stop,
		// which would otherwise wait for thousands of them on a busy
		// machine).
		deadline := time.Now().Add(time.Minute)
		for countFDs(d.pid()) > fdsBefore+64 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		time.Sleep(idleSettle)
	}
	// Memory is the first run's: later runs open their connections in a
	// daemon that kept (and reuses) the memory of the previous run's, and
	// would understate what they cost.
	b := cs.result("idle", base)
	b.DaemonRSSBytes = int64(rssBase[0])
	w := cs.result("idle", with)
	w.IdleConns = idle
	w.P50RatioToBaseline, w.P99RatioToBaseline = latRatios(cs.ms[with], cs.ms[base])
	w.DaemonRSSBytes, w.DaemonThreads = int64(rssWith[0]), int(median(threads))
	w.RSSPerIdleConnBytes = int64(perConn[0])
	return []ScaleResult{b, w}, nil
}

// countFDs returns how many descriptors process pid has open.
func countFDs(pid int) int {
	es, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	return len(es)
}

// openIdle opens n connections to socket, each of which makes one
// request (Dial asks the daemon for its status) and then waits.
func openIdle(ctx context.Context, socket string, n int) ([]*keywarden.Client, error) {
	cs := make([]*keywarden.Client, 0, n)
	for range n {
		c, err := keywarden.Dial(ctx, socket)
		if err != nil {
			closeAll(cs)
			return nil, fmt.Errorf("idle connection %d of %d: %w", len(cs)+1, n, err)
		}
		cs = append(cs, c)
	}
	return cs, nil
}

func closeAll(cs []*keywarden.Client) {
	for _, c := range cs {
		c.Close()
	}
}

// residentPerConn is how many of RunResident's keys one connection
// holds: the daemon's default handles per connection.
const residentPerConn = 4096

// RunResident measures AES-256-GCM encryptions of 256 bytes, one per
// round trip, on a daemon holding one key (the baseline) and on one
// holding cfg.ResidentKeys ephemeral keys, made for the run from
// connections that each hold up to 4,096 of them: always on the same key,
// and on a random one of them each time. The two daemons are measured in
// turn, run after run.
func RunResident(ctx context.Context, cfg ScaleConfig, progress io.Writer) (_ []ScaleResult, err error) {
	cfg = cfg.withDefaults([]int{1})
	say := sayTo(progress)
	keys := cfg.ResidentKeys
	holders := (keys + residentPerConn - 1) / residentPerConn
	if err := raiseNoFile(holders+256, 2*holders+256); err != nil {
		return nil, err
	}
	var daemons []*daemon
	defer func() {
		for _, d := range daemons {
			// Wiping a million keys, on a busy machine, takes longer than
			// the usual stop allows.
			if serr := d.stopWithin(residentStop); err == nil && serr != nil {
				err = serr
			}
		}
	}()
	say("starting two private daemons")
	one, err := startDaemon(ctx, cfg.Executable, cfg.Env)
	if err != nil {
		return nil, err
	}
	daemons = append(daemons, one)
	lim := strconv.Itoa(keys + 1000)
	many, err := startServe(ctx, serveSpec{executable: cfg.Executable, env: cfg.Env,
		args: []string{"--dev", "--max-keys-per-user", lim, "--max-connections", strconv.Itoa(holders + 64),
			"--max-connections-per-uid", strconv.Itoa(holders + 64)}})
	if err != nil {
		return nil, err
	}
	daemons = append(daemons, many)

	empty, err := procStatus(many.pid())
	if err != nil {
		return nil, err
	}
	say("making %d keys resident (%d connections)", keys, holders)
	start := time.Now()
	held, err := makeResident(ctx, many.socket, keys)
	if err != nil {
		return nil, err
	}
	defer func() {
		for _, h := range held {
			h.c.Close()
		}
	}()
	keysPerSec := float64(keys) / time.Since(start).Seconds()
	time.Sleep(idleSettle) // the holders park
	full, err := procStatus(many.pid())
	if err != nil {
		return nil, err
	}
	say("%d keys resident in %.1f s; the daemon's RSS went from %d to %d MiB", keys, float64(keys)/keysPerSec, empty["VmRSS"]>>20, full["VmRSS"]>>20)

	seal := operations[slices.IndexFunc(operations, func(o operation) bool { return o.name == "aes256-gcm-seal-256" })]
	pt := message(aeadSize)
	randomKey := func(ctx context.Context) error {
		h := held[rand.IntN(len(held))]
		_, err := h.keys[rand.IntN(len(h.keys))].Encrypt(ctx, pt, nil)
		return err
	}
	cs := newCells()
	base := cellKey{seal.name, ModeRoundTrip, 1, "one"}
	same := cellKey{seal.name, ModeRoundTrip, 1, "same"}
	random := cellKey{seal.name, ModeRoundTrip, 1, "random"}
	for run := range cfg.Runs {
		say("run %d: one resident key", run+1)
		m, err := measureRemoteClients(ctx, one.socket, seal, 1, cfg.Duration)
		if err != nil {
			return nil, err
		}
		cs.add(base, m)
		say("run %d: %d resident keys, the same key", run+1, keys)
		if m, err = measureRemoteClients(ctx, many.socket, seal, 1, cfg.Duration); err != nil {
			return nil, err
		}
		cs.add(same, m)
		say("run %d: %d resident keys, a random key each time", run+1, keys)
		runtime.GC()
		if _, err := measureRoundTrip(ctx, randomKey, min(maxWarmup, cfg.Duration)); err != nil {
			return nil, err
		}
		if m, err = measureRoundTrip(ctx, randomKey, cfg.Duration); err != nil {
			return nil, err
		}
		cs.add(random, m)
	}
	b := cs.result("resident", base)
	b.ResidentKeys, b.Key = 1, "same"
	out := []ScaleResult{b}
	for _, k := range []cellKey{same, random} {
		r := cs.result("resident", k)
		r.ResidentKeys, r.Key = keys, k.variant
		r.P50RatioToBaseline, r.P99RatioToBaseline = latRatios(cs.ms[k], cs.ms[base])
		r.DaemonRSSBytes = full["VmRSS"]
		r.RSSPerKeyBytes = (full["VmRSS"] - empty["VmRSS"]) / int64(keys)
		r.KeysPerSec = keysPerSec
		out = append(out, r)
	}
	return out, nil
}

// residentStop is how long a daemon with RunResident's keys may take to
// stop.
const residentStop = 2 * time.Minute

// stopWithin is stop, allowing the daemon timeout to stop after SIGTERM.
func (d *daemon) stopWithin(timeout time.Duration) error {
	select {
	case <-d.exited:
		return d.stop()
	default:
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-d.exited:
	case <-time.After(timeout):
	}
	return d.stop() // reaps it, or kills it and says so
}

// holder is a connection holding resident keys.
type holder struct {
	c    *keywarden.Client
	keys []*keywarden.Key
}

// makeResident makes n ephemeral AES-256-GCM keys on the daemon at
// socket, residentPerConn per connection, each connection generating its
// keys from several goroutines so that its requests are pipelined.
func makeResident(ctx context.Context, socket string, n int) ([]*holder, error) {
	var hs []*holder
	fail := func(err error) ([]*holder, error) {
		for _, h := range hs {
			h.c.Close()
		}
		return nil, err
	}
	for left := n; left > 0; left -= residentPerConn {
		c, err := keywarden.Dial(ctx, socket)
		if err != nil {
			return fail(err)
		}
		hs = append(hs, &holder{c: c, keys: make([]*keywarden.Key, min(left, residentPerConn))})
	}
	// A few connections at a time, each with as many goroutines as it
	// may have requests in flight.
	const conc = 4
	var wg sync.WaitGroup
	var mu sync.Mutex
	var first error
	sem := make(chan struct{}, conc)
	for _, h := range hs {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			workers := max(1, min(16, h.c.Limits().MaxInFlight))
			var inner sync.WaitGroup
			for w := range workers {
				inner.Go(func() {
					for i := w; i < len(h.keys); i += workers {
						k, err := ephemeral(ctx, h.c, keywarden.AES256GCM)
						if err != nil {
							mu.Lock()
							if first == nil {
								first = err
							}
							mu.Unlock()
							return
						}
						h.keys[i] = k
					}
				})
			}
			inner.Wait()
		})
	}
	wg.Wait()
	if first != nil {
		return fail(fmt.Errorf("making keys resident: %w", first))
	}
	if len(hs) == 0 {
		return fail(errors.New("no keys to make"))
	}
	return hs, nil
}

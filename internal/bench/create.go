package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden"
)

// OpCreate names the creation of a persistent key in the results of
// RunCreate: a 256-bit AES-GCM key, durable before the reply.
const OpCreate = "create-aes256-gcm"

// ModeDaemon is a measurement through a daemon with a persistent store,
// from as many clients as Result.Clients, each on its own connection.
const ModeDaemon = "daemon"

// CreateConfig configures RunCreate. Zero values mean defaults.
type CreateConfig struct {
	// Clients lists the numbers of concurrent clients to measure with;
	// empty means 1 and 16.
	Clients []int
	// Duration is how long each measurement lasts, after a warm-up of a
	// tenth of it (at most a second); 0 means five seconds.
	Duration time.Duration
	// Runs is how many times each measurement is made; the results are
	// the medians. 0 means three.
	Runs int
	// Dir is where the stores are made, each in a new directory removed
	// after its measurement; empty means the system's temporary
	// directory. Put it on the file system a daemon's state would be on:
	// on a file system in memory (tmpfs) a durable write costs nothing.
	Dir string
	// Passphrase and Argon2 seal the master key of the private daemons'
	// stores.
	Passphrase []byte
	Argon2     keywarden.Argon2Params
	// InProcess measures the same creations in this process, with the
	// daemon's key store code on a store in state directory dir (which
	// does not exist yet) from clients goroutines, for d after a warm-up
	// of warmup, and returns the number made, the time taken and each
	// one's latency in nanoseconds. Nil means no in-process baseline.
	InProcess func(ctx context.Context, dir string, clients int, warmup, d time.Duration) (ops int, elapsed time.Duration, lat []int64, err error)
	// Count, if not nil, opens the store in state directory dir once the
	// daemon has stopped, verifies it as an unseal does, and returns the
	// number of keys it holds: every creation the daemon acknowledged
	// must be there.
	Count func(dir string) (int, error)
	// Executable and Env are as in Config.
	Executable string
	Env        []string
	// StoreArgs, if not nil, gives the serve flags of the store of the
	// daemon whose state directory is state (an etcd cluster's, under a
	// prefix of its own); nil: the daemon's store is in its state
	// directory.
	StoreArgs func(state string) []string
	// Sockets, if not empty, are the sockets of running daemons to
	// measure instead of private ones (several of them sharing one etcd
	// store, say): each must be unsealed, and serve the caller's uid.
	// The clients are spread over them in turn (ClientSockets); the keys
	// they create stay in the daemons' store. There is no new store, no
	// in-process baseline and no count of the store's keys after.
	Sockets []string
}

// ClientSockets returns the socket each of clients clients connects to:
// the sockets in turn, client i to sockets[i%len(sockets)].
func ClientSockets(sockets []string, clients int) []string {
	out := make([]string, clients)
	for i := range out {
		out[i] = sockets[i%len(sockets)]
	}
	return out
}

func (c CreateConfig) withDefaults() CreateConfig {
	if len(c.Clients) == 0 {
		c.Clients = []int{1, 16}
	}
	if c.Duration <= 0 {
		c.Duration = 5 * time.Second
	}
	if c.Runs <= 0 {
		c.Runs = 3
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	return c
}

// RunCreate measures the creation of persistent keys through a private
// daemon serving a store on disk, and in this process with
// cfg.InProcess, with each number of clients in cfg.Clients, cfg.Runs
// times each. A creation is Generate of a persistent AES-256-GCM key,
// which the daemon makes durable before it replies, followed by Close of
// the new handle; each client has its own connection and makes one
// creation at a time. Each measurement gets a new daemon and store. It
// returns, per number of clients, the in-process Result (if any) and
// the daemon's, each holding the medians over the runs.
func RunCreate(ctx context.Context, cfg CreateConfig, progress io.Writer) ([]Result, error) {
	cfg = cfg.withDefaults()
	say := sayer(progress)
	if fs := fsName(cfg.Dir); fs != "" {
		say("warning: %s is on %s: durable writes cost nothing there", cfg.Dir, fs)
	}
	warmup := min(time.Second, cfg.Duration/10)
	var results []Result
	for _, n := range cfg.Clients {
		if n < 1 {
			return nil, fmt.Errorf("clients must be at least 1, not %d", n)
		}
		var inproc, daemon []measurement
		for run := 1; run <= cfg.Runs; run++ {
			if cfg.InProcess != nil && len(cfg.Sockets) == 0 {
				say("measuring %s %s, %d clients, run %d of %d...", OpCreate, ModeInProcess, n, run, cfg.Runs)
				m, err := inProcessCreates(ctx, cfg, n, warmup)
				if err != nil {
					return nil, fmt.Errorf("%s %s: %w", OpCreate, ModeInProcess, err)
				}
				inproc = append(inproc, m)
			}
			say("measuring %s %s, %d clients, run %d of %d...", OpCreate, ModeDaemon, n, run, cfg.Runs)
			create := daemonCreates
			if len(cfg.Sockets) > 0 {
				create = socketsCreates
			}
			m, err := create(ctx, cfg, n, warmup)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", OpCreate, ModeDaemon, err)
			}
			daemon = append(daemon, m)
		}
		var base float64
		if len(inproc) > 0 {
			r := medianResult(inproc, OpCreate, ModeInProcess)
			r.RatioToInProcess, base = 1, r.OpsPerSec
			results = append(results, r)
		}
		r := medianResult(daemon, OpCreate, ModeDaemon)
		r.Daemons = 1
		if len(cfg.Sockets) > 0 {
			r.Daemons = min(n, len(cfg.Sockets))
		}
		if base > 0 {
			r.RatioToInProcess = r.OpsPerSec / base
		}
		results = append(results, r)
	}
	return results, nil
}

func sayer(progress io.Writer) func(string, ...any) {
	return func(format string, args ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", args...)
		}
	}
}

// newStateDir returns a new directory name under parent for a store.
func newStateDir(parent string) (string, func(), error) {
	tmp, err := os.MkdirTemp(parent, "keywarden-bench-store-")
	if err != nil {
		return "", nil, err
	}
	return filepath.Join(tmp, "state"), func() { os.RemoveAll(tmp) }, nil
}

func inProcessCreates(ctx context.Context, cfg CreateConfig, clients int, warmup time.Duration) (measurement, error) {
	dir, cleanup, err := newStateDir(cfg.Dir)
	if err != nil {
		return measurement{}, err
	}
	defer cleanup()
	ops, elapsed, lat, err := cfg.InProcess(ctx, dir, clients, warmup, cfg.Duration)
	return measurement{ops: ops, elapsed: elapsed, lat: lat, clients: clients}, err
}

// daemonCreates starts a daemon on a new store, initialises it, and
// measures creations from clients connections.
func daemonCreates(ctx context.Context, cfg CreateConfig, clients int, warmup time.Duration) (m measurement, err error) {
	state, cleanup, err := newStateDir(cfg.Dir)
	if err != nil {
		return m, err
	}
	defer cleanup()
	args := []string{"--state", state, "--insecure-master-kdf", "--max-keys-per-user", strconv.Itoa(1 << 30)}
	if cfg.StoreArgs != nil {
		args = append(args, cfg.StoreArgs(state)...)
	}
	d, err := startServe(ctx, serveSpec{executable: cfg.Executable, env: cfg.Env, args: args})
	if err != nil {
		return m, err
	}
	stopped := false
	defer func() {
		if !stopped {
			if serr := d.stop(); err == nil && serr != nil {
				err = serr
			}
		}
	}()
	cs := make([]*keywarden.Client, clients)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i := range cs {
		if cs[i], err = keywarden.Dial(ctx, d.socket); err != nil {
			return m, err
		}
	}
	pass := slices.Clone(cfg.Passphrase)
	if _, err := cs[0].Admin().Init(ctx, keywarden.MasterSealing{Passphrase: pass, Argon2: cfg.Argon2}, nil); err != nil {
		return m, fmt.Errorf("init: %w", err)
	}
	ones := createOnes(cs)
	w, err := measureClients(ctx, ones, warmup)
	if err != nil {
		return m, err
	}
	if m, err = measureClients(ctx, ones, cfg.Duration); err != nil {
		return m, err
	}
	st, err := cs[0].Status(ctx)
	if err != nil {
		return m, err
	}
	made := w.ops + m.ops
	if st.Keys != uint64(made) {
		return m, fmt.Errorf("the daemon holds %d keys after %d creations", st.Keys, made)
	}
	if cfg.Count != nil {
		for i, c := range cs {
			c.Close()
			cs[i] = nil
		}
		stopped = true
		if err := d.stop(); err != nil {
			return m, err
		}
		n, err := cfg.Count(state)
		if err != nil {
			return m, fmt.Errorf("the daemon's store: %w", err)
		}
		if n != made {
			return m, fmt.Errorf("the daemon's store holds %d keys after %d acknowledged creations", n, made)
		}
	}
	return m, nil
}

// socketsCreates measures creations from clients connections to the
// daemons at cfg.Sockets, spread over them in turn.
func socketsCreates(ctx context.Context, cfg CreateConfig, clients int, warmup time.Duration) (m measurement, err error) {
	cs := make([]*keywarden.Client, clients)
	defer func() {
		for _, c := range cs {
			if c != nil {
				c.Close()
			}
		}
	}()
	for i, sock := range ClientSockets(cfg.Sockets, clients) {
		if cs[i], err = keywarden.Dial(ctx, sock); err != nil {
			return m, fmt.Errorf("%s: %w", sock, err)
		}
	}
	ones := createOnes(cs)
	if _, err := measureClients(ctx, ones, warmup); err != nil {
		return m, err
	}
	return measureClients(ctx, ones, cfg.Duration)
}

// measureClients calls each of ones in a loop on a goroutine of its own
// for d, timing each call.
func measureClients(ctx context.Context, ones []func(context.Context) error, d time.Duration) (measurement, error) {
	var (
		wg       sync.WaitGroup
		stop     atomic.Bool
		errOnce  sync.Once
		firstErr error
	)
	n := len(ones)
	counts := make([]int, n)
	samplers := make([]*sampler, n)
	start := time.Now()
	for g, one := range ones {
		samplers[g] = newSampler(maxSamples / n)
		wg.Go(func() {
			s := samplers[g]
			for !stop.Load() {
				t0 := time.Now()
				if err := one(ctx); err != nil {
					errOnce.Do(func() { firstErr = err })
					stop.Store(true)
					return
				}
				t1 := time.Now()
				counts[g]++
				s.add(t1.Sub(t0))
				if t1.Sub(start) >= d {
					return
				}
			}
		})
	}
	wg.Wait()
	m := measurement{elapsed: time.Since(start), clients: n}
	if firstErr != nil {
		return m, firstErr
	}
	for g := range n {
		m.ops += counts[g]
		m.lat = append(m.lat, samplers[g].ns...)
	}
	return m, nil
}

// medianResult turns the measurements of several runs into one Result:
// the median of each figure over the runs.
func medianResult(ms []measurement, op, mode string) Result {
	var rs []Result
	for _, m := range ms {
		rs = append(rs, m.result(operation{name: op}, mode))
	}
	r := rs[0]
	r.Runs = len(rs)
	pick := func(f func(Result) float64) float64 {
		v := make([]float64, len(rs))
		for i := range rs {
			v[i] = f(rs[i])
		}
		return median(v)
	}
	r.OpsPerSec = pick(func(r Result) float64 { return r.OpsPerSec })
	r.P50us = pick(func(r Result) float64 { return r.P50us })
	r.P99us = pick(func(r Result) float64 { return r.P99us })
	r.Ops = int(pick(func(r Result) float64 { return float64(r.Ops) }))
	r.Seconds = pick(func(r Result) float64 { return r.Seconds })
	for _, x := range rs {
		r.RunsOpsPerSec = append(r.RunsOpsPerSec, x.OpsPerSec)
	}
	return r
}

// median returns the median of v (the mean of the middle two if even);
// it sorts v.
func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	slices.Sort(v)
	if len(v)%2 == 1 {
		return v[len(v)/2]
	}
	return (v[len(v)/2-1] + v[len(v)/2]) / 2
}

// createOnes returns, for each client, one persistent creation: a key
// generated, checked to be in the store, and closed.
func createOnes(cs []*keywarden.Client) []func(context.Context) error {
	ones := make([]func(context.Context) error, len(cs))
	for i, c := range cs {
		ones[i] = func(ctx context.Context) error {
			k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM})
			if err != nil {
				return err
			}
			if k.Info().Ephemeral {
				return errors.New("a daemon made an ephemeral key: its store is not persistent")
			}
			return k.Close(ctx)
		}
	}
	return ones
}

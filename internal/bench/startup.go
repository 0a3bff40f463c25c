package bench

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keywarden/keywarden"
)

// StartupConfig configures RunStartup.
type StartupConfig struct {
	// State is the state directory of an initialised store holding Keys
	// persistent keys, named by KeyName, owned by the measuring process's
	// uid and sealed under Passphrase. RunStartup starts daemons on it
	// and leaves it as it was.
	State      string
	Keys       int
	KeyName    func(i int) string
	Passphrase []byte
	// Runs is how many times the daemon is started; the results are the
	// medians. 0 means three.
	Runs int
	// FirstUse is how many keys, chosen at random, are used once in each
	// run to time a first use; 0 means 200.
	FirstUse int
	// InProcess, if not nil, opens the store in this process, unseals it
	// and verifies it as the daemon's unseal does, loads the keys named
	// (as the daemon does when a client first opens one), closes it, and
	// returns how long the verification took and each load's latency in
	// nanoseconds. It runs once per run, after the daemon has stopped,
	// with as many keys as the daemon's first uses but others.
	InProcess func(dir string, names []string) (verify time.Duration, loads []int64, err error)
	// Cold empties the kernel's page cache (which needs root) before each
	// daemon starts and before each in-process verification, so that
	// they read the store, and the daemon its executable, from the disk.
	Cold bool
	// Executable and Env are as in Config.
	Executable string
	Env        []string
}

// Startup is what RunStartup measured: medians over the runs, times in
// milliseconds, latencies in microseconds, memory in MiB.
type Startup struct {
	Keys       int     `json:"keys"`
	StoreMiB   float64 `json:"store_mib"`
	Runs       int     `json:"runs"`
	Cold       bool    `json:"cold,omitempty"`
	FirstUse   int     `json:"first_use_keys"`
	FileSystem string  `json:"file_system,omitempty"`

	// ServingMs: from starting the daemon's process until it answers a
	// status request (sealed).
	ServingMs float64 `json:"serving_ms"`
	// UnsealMs: the unseal request with the passphrase, which derives the
	// passphrase key (Argon2id) and verifies the whole store.
	UnsealMs float64 `json:"unseal_ms"`
	// VerifyInProcessMs: the same verification in this process, with the
	// daemon's code (the in-process baseline).
	VerifyInProcessMs float64 `json:"verify_inprocess_ms,omitempty"`
	// LoadInProcess: a key's first use in this process, with the daemon's
	// code (what an open does in the daemon, without the round trip).
	LoadInProcessP50us float64 `json:"load_inprocess_p50_us,omitempty"`
	LoadInProcessP99us float64 `json:"load_inprocess_p99_us,omitempty"`

	// The daemon's memory (its /proc/PID/status), sealed and once
	// unsealed: resident in all, anonymous (the Go heap and stacks), and
	// file-backed (pages of the executable and of the store file, which
	// the daemon maps).
	SealedRSSMiB    float64 `json:"sealed_rss_mib"`
	UnsealedRSSMiB  float64 `json:"unsealed_rss_mib"`
	UnsealedAnonMiB float64 `json:"unsealed_anon_mib"`
	UnsealedFileMiB float64 `json:"unsealed_file_mib"`
	UnsealedPeakMiB float64 `json:"unsealed_peak_mib"`
	// UnsealedLockedMiB is the daemon's locked resident memory once
	// unsealed (Locked in smaps_rollup): with mlockall, its heap, stacks
	// and key memory, not the store file.
	UnsealedLockedMiB float64   `json:"unsealed_locked_mib"`
	AfterUseRSSMiB    float64   `json:"after_use_rss_mib"`
	AfterUseAnonMiB   float64   `json:"after_use_anon_mib"`
	LoadedAfterUse    int       `json:"loaded_after_use"`
	LockedKeyMemKiB   float64   `json:"locked_key_memory_kib"`
	RunsServingMs     []float64 `json:"runs_serving_ms"`
	RunsUnsealMs      []float64 `json:"runs_unseal_ms"`
	RunsVerifyProcMs  []float64 `json:"runs_verify_inprocess_ms,omitempty"`

	// First use of a key not in memory: Open by name (the daemon reads
	// the record, checks its MAC, opens its blob) and the first
	// encryption (256 bytes; an AES-GCM key's first encryption also
	// reserves a block of its budget, durably); then a second
	// encryption, for comparison.
	OpenP50us      float64 `json:"open_p50_us"`
	OpenP99us      float64 `json:"open_p99_us"`
	FirstEncP50us  float64 `json:"first_encrypt_p50_us"`
	FirstEncP99us  float64 `json:"first_encrypt_p99_us"`
	SecondEncP50us float64 `json:"second_encrypt_p50_us"`
	SecondEncP99us float64 `json:"second_encrypt_p99_us"`
	FirstUseP50us  float64 `json:"first_use_p50_us"`
	FirstUseP99us  float64 `json:"first_use_p99_us"`
}

// RunStartup measures a daemon's start-up on the store in cfg.State: the
// time until it serves (sealed), the unseal, its memory, and the first
// use of keys, cfg.Runs times, each with a new daemon process. The
// daemons write their audit logs to their temporary directories, not to
// cfg.State.
func RunStartup(ctx context.Context, cfg StartupConfig, progress io.Writer) (*Startup, error) {
	if cfg.Runs <= 0 {
		cfg.Runs = 3
	}
	if cfg.FirstUse <= 0 {
		cfg.FirstUse = 200
	}
	cfg.FirstUse = min(cfg.FirstUse, cfg.Keys)
	say := sayer(progress)
	fi, err := os.Stat(filepath.Join(cfg.State, "keywarden.db"))
	if err != nil {
		return nil, err
	}
	out := &Startup{Keys: cfg.Keys, StoreMiB: mib(fi.Size()), Runs: cfg.Runs, Cold: cfg.Cold, FirstUse: cfg.FirstUse, FileSystem: fsName(cfg.State)}
	var runs []startupRun
	var inLoads [][]int64
	for run := 1; run <= cfg.Runs; run++ {
		if cfg.Cold {
			if err := dropCaches(); err != nil {
				return nil, err
			}
		}
		say("starting a daemon on the store, run %d of %d...", run, cfg.Runs)
		r, err := startupOnce(ctx, cfg)
		if err != nil {
			return nil, err
		}
		runs = append(runs, r)
		out.RunsServingMs = append(out.RunsServingMs, r.serving)
		out.RunsUnsealMs = append(out.RunsUnsealMs, r.unseal)
		if cfg.InProcess != nil {
			if cfg.Cold {
				if err := dropCaches(); err != nil {
					return nil, err
				}
			}
			say("verifying the store in-process, run %d of %d...", run, cfg.Runs)
			v, loads, err := cfg.InProcess(cfg.State, pickNames(cfg))
			if err != nil {
				return nil, fmt.Errorf("in-process: %w", err)
			}
			out.RunsVerifyProcMs = append(out.RunsVerifyProcMs, ms(v))
			slices.Sort(loads)
			inLoads = append(inLoads, loads)
		}
	}
	pick := func(f func(r startupRun) float64) float64 {
		v := make([]float64, len(runs))
		for i, r := range runs {
			v[i] = f(r)
		}
		return median(v)
	}
	out.ServingMs = median(slices.Clone(out.RunsServingMs))
	out.UnsealMs = median(slices.Clone(out.RunsUnsealMs))
	out.VerifyInProcessMs = median(slices.Clone(out.RunsVerifyProcMs))
	if len(inLoads) > 0 {
		p50, p99 := make([]float64, len(inLoads)), make([]float64, len(inLoads))
		for i, l := range inLoads {
			p50[i], p99[i] = percentile(l, 0.50, 1), percentile(l, 0.99, 1)
		}
		out.LoadInProcessP50us, out.LoadInProcessP99us = median(p50), median(p99)
	}
	out.SealedRSSMiB = pick(func(r startupRun) float64 { return r.sealed.rss })
	out.UnsealedRSSMiB = pick(func(r startupRun) float64 { return r.unsealed.rss })
	out.UnsealedLockedMiB = pick(func(r startupRun) float64 { return r.unsealed.lck })
	out.UnsealedAnonMiB = pick(func(r startupRun) float64 { return r.unsealed.anon })
	out.UnsealedFileMiB = pick(func(r startupRun) float64 { return r.unsealed.file })
	out.UnsealedPeakMiB = pick(func(r startupRun) float64 { return r.unsealed.hwm })
	out.AfterUseRSSMiB = pick(func(r startupRun) float64 { return r.afterUse.rss })
	out.AfterUseAnonMiB = pick(func(r startupRun) float64 { return r.afterUse.anon })
	out.LoadedAfterUse = int(pick(func(r startupRun) float64 { return float64(r.loaded) }))
	out.LockedKeyMemKiB = pick(func(r startupRun) float64 { return r.lockedKiB })
	out.OpenP50us = pick(func(r startupRun) float64 { return percentile(r.open, 0.50, 1) })
	out.OpenP99us = pick(func(r startupRun) float64 { return percentile(r.open, 0.99, 1) })
	out.FirstEncP50us = pick(func(r startupRun) float64 { return percentile(r.first, 0.50, 1) })
	out.FirstEncP99us = pick(func(r startupRun) float64 { return percentile(r.first, 0.99, 1) })
	out.SecondEncP50us = pick(func(r startupRun) float64 { return percentile(r.second, 0.50, 1) })
	out.SecondEncP99us = pick(func(r startupRun) float64 { return percentile(r.second, 0.99, 1) })
	out.FirstUseP50us = pick(func(r startupRun) float64 { return percentile(r.use, 0.50, 1) })
	out.FirstUseP99us = pick(func(r startupRun) float64 { return percentile(r.use, 0.99, 1) })
	return out, nil
}

// startupRun is one run's observations.
type startupRun struct {
	serving, unseal            float64 // ms
	sealed, unsealed, afterUse procMem
	loaded                     int
	lockedKiB                  float64
	// sorted latencies, ns
	open, first, second, use []int64
}

func startupOnce(ctx context.Context, cfg StartupConfig) (r startupRun, err error) {
	d, err := startServe(ctx, serveSpec{executable: cfg.Executable, env: cfg.Env,
		args: []string{"--state", cfg.State, "--insecure-master-kdf"},
		// Each run's audit log is its own: the store's directory is left
		// as it was, and every run starts alike.
		privateAudit: true,
		poll:         time.Millisecond,
		ready: func(ctx context.Context, c *keywarden.Client) error {
			st, err := c.Status(ctx)
			if err != nil {
				return err
			}
			if !st.Seal.Initialized || !st.Seal.Sealed {
				return errors.New("the daemon is not sealed with a master key")
			}
			return nil
		}})
	if err != nil {
		return r, err
	}
	defer func() {
		if serr := d.stop(); err == nil && serr != nil {
			err = serr
		}
	}()
	r.serving = ms(d.ready.Sub(d.started))
	if r.sealed, err = readProcMem(d.pid()); err != nil {
		return r, err
	}
	c, err := keywarden.Dial(ctx, d.socket)
	if err != nil {
		return r, err
	}
	defer c.Close()
	t0 := time.Now()
	if err := c.Admin().Unseal(ctx, slices.Clone(cfg.Passphrase), nil); err != nil {
		return r, fmt.Errorf("unseal: %w", err)
	}
	r.unseal = ms(time.Since(t0))
	if r.unsealed, err = readProcMem(d.pid()); err != nil {
		return r, err
	}
	st, err := c.Status(ctx)
	if err != nil {
		return r, err
	}
	if st.Keys != uint64(cfg.Keys) {
		return r, fmt.Errorf("the daemon holds %d keys, not %d", st.Keys, cfg.Keys)
	}

	msg := message(aeadSize)
	for _, name := range pickNames(cfg) {
		t0 := time.Now()
		k, err := c.Open(ctx, name)
		if err != nil {
			return r, fmt.Errorf("open %s: %w", name, err)
		}
		t1 := time.Now()
		if _, err := k.Encrypt(ctx, msg, nil); err != nil {
			return r, fmt.Errorf("%s: encrypt: %w", name, err)
		}
		t2 := time.Now()
		if _, err := k.Encrypt(ctx, msg, nil); err != nil {
			return r, fmt.Errorf("%s: encrypt: %w", name, err)
		}
		t3 := time.Now()
		r.open = append(r.open, int64(t1.Sub(t0)))
		r.first = append(r.first, int64(t2.Sub(t1)))
		r.second = append(r.second, int64(t3.Sub(t2)))
		r.use = append(r.use, int64(t2.Sub(t0)))
		// Kept open: the keys stay in memory, for the memory figure.
	}
	for _, l := range [][]int64{r.open, r.first, r.second, r.use} {
		slices.Sort(l)
	}
	if st, err = c.Status(ctx); err != nil {
		return r, err
	}
	r.lockedKiB = float64(st.Memory.InUseBytes) / 1024
	r.loaded = cfg.FirstUse
	if r.afterUse, err = readProcMem(d.pid()); err != nil {
		return r, err
	}
	return r, nil
}

// pickNames returns the names of cfg.FirstUse keys chosen at random.
func pickNames(cfg StartupConfig) []string {
	var names []string
	for _, i := range rand.Perm(cfg.Keys)[:cfg.FirstUse] {
		names = append(names, cfg.KeyName(i))
	}
	return names
}

// procMem is a process's memory from /proc/PID/status, in MiB.
type procMem struct {
	rss, anon, file, hwm, lck float64
}

func readProcMem(pid int) (procMem, error) {
	var m procMem
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return m, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		fs := strings.Fields(val)
		if len(fs) != 2 || fs[1] != "kB" {
			continue
		}
		kb, err := strconv.ParseFloat(fs[0], 64)
		if err != nil {
			continue
		}
		switch name {
		case "VmRSS":
			m.rss = kb / 1024
		case "RssAnon":
			m.anon = kb / 1024
		case "RssFile":
			m.file = kb / 1024
		case "VmHWM":
			m.hwm = kb / 1024
		}
	}
	if err := sc.Err(); err != nil {
		return m, err
	}
	// Locked resident pages: VmLck above counts whole locked mappings,
	// untouched reservations included.
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/smaps_rollup", pid)); err == nil {
		for line := range strings.Lines(string(b)) {
			if v, ok := strings.CutPrefix(line, "Locked:"); ok {
				if fs := strings.Fields(v); len(fs) == 2 {
					kb, _ := strconv.ParseFloat(fs[0], 64)
					m.lck = kb / 1024
				}
			}
		}
	}
	return m, nil
}

// dropCaches writes dirty pages out and empties the page cache.
func dropCaches() error {
	syscall.Sync()
	if err := os.WriteFile("/proc/sys/vm/drop_caches", []byte("3\n"), 0); err != nil {
		return fmt.Errorf("emptying the page cache (root only): %w", err)
	}
	return nil
}

func ms(d time.Duration) float64 { return float64(d) / 1e6 }
func mib(n int64) float64        { return float64(n) / (1 << 20) }

package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"time"

	"github.com/keywarden/keywarden"
)

// The audit settings RunAudit compares: no log, the default, and an fsync
// before every reply.
const (
	AuditOff     = "off"
	AuditGrouped = "grouped"
	AuditAlways  = "always"
)

// The request kinds RunAudit measures.
const (
	// AuditRequests: one AES-GCM encryption of 256 bytes per request, each
	// client one request at a time.
	AuditRequests = "requests"
	// AuditBatched: batches of Config.BatchSize encryptions, each client
	// one batch at a time.
	AuditBatched = "batched"
)

// AuditConfig configures RunAudit. Zero values mean defaults.
type AuditConfig struct {
	// Clients are the numbers of concurrent clients, each on its own
	// connection; empty means 1 and 16.
	Clients []int
	// Settings are the audit settings compared; empty means off, grouped
	// and always.
	Settings []string
	// Duration is how long each measurement lasts; 0 means two seconds.
	Duration time.Duration
	// Runs repeats every measurement and reports medians; 0 means 3.
	Runs int
	// BatchSize is the number of operations per batch; 0 means 512.
	BatchSize int
	// Dir is where the private daemons' sockets and audit logs go; empty
	// means the temporary directory. It should be on the disk the audit
	// log would be on in use (not a tmpfs, where fsync costs nothing).
	Dir string
	// Executable and Env are as in Config.
	Executable string
	Env        []string
}

func (c AuditConfig) withDefaults() AuditConfig {
	if len(c.Clients) == 0 {
		c.Clients = []int{1, 16}
	}
	if len(c.Settings) == 0 {
		c.Settings = []string{AuditOff, AuditGrouped, AuditAlways}
	}
	if c.Duration <= 0 {
		c.Duration = 2 * time.Second
	}
	if c.Runs <= 0 {
		c.Runs = 3
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 512
	}
	return c
}

// AuditResult is one measurement of RunAudit: medians over the runs.
type AuditResult struct {
	Audit   string `json:"audit"` // off, grouped or always
	Kind    string `json:"kind"`  // requests or batched
	Clients int    `json:"clients"`
	Batch   int    `json:"batch,omitempty"`
	Runs    int    `json:"runs"`
	// OpsPerSec counts operations (an encryption each); for requests it is
	// also requests per second.
	OpsPerSec     float64   `json:"ops_per_sec"`
	RunsOpsPerSec []float64 `json:"runs_ops_per_sec"`
	// P50us and P99us are the latency of one request (one batch, for
	// batched), in microseconds, over every client's requests.
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	// RatioToOff compares with the same kind and clients with no audit
	// log: the median over the runs of each run's ratio, OpsPerSec over
	// that of no audit log measured just before it; 0 if that was not
	// measured. Ratios of measurements taken moments apart vary less than
	// a ratio of medians when the machine's speed drifts.
	RatioToOff float64 `json:"ratio_to_off"`
}

// RunAudit measures what the audit log costs: for each setting it starts
// a private development daemon with that audit configuration and, for
// each number of clients, measures requests and batches of AES-GCM
// encryptions. The runs alternate between the settings, in one order and
// then the other, so that a change in the machine's load affects them
// alike.
func RunAudit(ctx context.Context, cfg AuditConfig, progress io.Writer) (_ []AuditResult, err error) {
	cfg = cfg.withDefaults()
	say := func(format string, args ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", args...)
		}
	}
	for _, s := range cfg.Settings {
		if s != AuditOff && s != AuditGrouped && s != AuditAlways {
			return nil, fmt.Errorf("unknown audit setting %q (want off, grouped or always)", s)
		}
	}
	dir := cfg.Dir
	if dir == "" {
		dir = os.TempDir()
	}
	if fs := fsName(dir); fs != "" {
		say("warning: %s is a %s: fsync costs nothing there, and the figures say nothing of a disk (--dir)", dir, fs)
	}
	daemons := map[string]*daemon{}
	defer func() {
		for _, d := range daemons {
			if serr := d.stop(); err == nil && serr != nil {
				err = serr
			}
		}
	}()
	for _, s := range cfg.Settings {
		logDir, err := os.MkdirTemp(dir, "keywarden-bench-audit-")
		if err != nil {
			return nil, err
		}
		defer os.RemoveAll(logDir)
		args := []string{"--dev", "--audit-log", "off"}
		if s != AuditOff {
			args = []string{"--dev", "--audit-log", filepath.Join(logDir, "audit.log"), "--audit-sync", s}
		}
		say("starting a private daemon, audit %s", s)
		d, err := startServe(ctx, serveSpec{executable: cfg.Executable, env: cfg.Env, args: args})
		if err != nil {
			return nil, fmt.Errorf("audit %s: %w", s, err)
		}
		daemons[s] = d
	}

	type cell struct {
		runs []float64
		lat  []int64
	}
	cells := map[[3]any]*cell{}
	get := func(s, kind string, n int) *cell {
		k := [3]any{s, kind, n}
		if cells[k] == nil {
			cells[k] = &cell{}
		}
		return cells[k]
	}
	for run := range cfg.Runs {
		// Odd runs take the settings in reverse order, so that a drift of
		// the machine's speed within a run favours none of them.
		order := slices.Clone(cfg.Settings)
		if run%2 == 1 {
			slices.Reverse(order)
		}
		for _, n := range cfg.Clients {
			for _, kind := range []string{AuditRequests, AuditBatched} {
				for _, s := range order {
					say("run %d: audit %s, %d clients, %s", run+1, s, n, kind)
					m, err := measureAuditClients(ctx, daemons[s].socket, n, kind, cfg.BatchSize, cfg.Duration)
					if err != nil {
						return nil, fmt.Errorf("audit %s, %d clients, %s: %w", s, n, kind, err)
					}
					c := get(s, kind, n)
					c.runs = append(c.runs, float64(m.ops)/m.elapsed.Seconds())
					c.lat = append(c.lat, m.lat...)
				}
			}
		}
	}

	var out []AuditResult
	for _, n := range cfg.Clients {
		for _, kind := range []string{AuditRequests, AuditBatched} {
			var off float64
			for _, s := range cfg.Settings {
				c := get(s, kind, n)
				slices.Sort(c.lat)
				r := AuditResult{Audit: s, Kind: kind, Clients: n, Runs: cfg.Runs, RunsOpsPerSec: c.runs,
					OpsPerSec: median(slices.Clone(c.runs)), P50us: percentile(c.lat, 0.50, 1), P99us: percentile(c.lat, 0.99, 1)}
				if kind == AuditBatched {
					r.Batch = cfg.BatchSize
				}
				if s == AuditOff {
					off = r.OpsPerSec
				}
				out = append(out, r)
			}
			offRuns := get(AuditOff, kind, n).runs
			for i := range out {
				if o := &out[i]; o.Kind == kind && o.Clients == n && off > 0 {
					o.RatioToOff = pairedRatio(o.RunsOpsPerSec, offRuns)
				}
			}
		}
	}
	return out, nil
}

// measureAuditClients runs n clients, each on its own connection with its
// own ephemeral AES key, for d after a short warm-up: each sends one
// request (or one batch of size encryptions) at a time. Latencies are per
// request or per batch.
func measureAuditClients(ctx context.Context, socket string, n int, kind string, size int, d time.Duration) (measurement, error) {
	ones := make([]func(context.Context) error, n)
	for i := range ones {
		c, err := keywarden.Dial(ctx, socket)
		if err != nil {
			return measurement{}, err
		}
		defer c.Close()
		op, err := remoteSeal(ctx, c)
		if err != nil {
			return measurement{}, err
		}
		defer op.close(ctx)
		ones[i] = op.one
		if kind == AuditBatched {
			b, res := c.NewBatch(), make([]*keywarden.BatchResult, size)
			ones[i] = func(ctx context.Context) error {
				b.Reset()
				for j := range res {
					res[j] = op.queue(b)
				}
				if err := b.Do(ctx); err != nil {
					return err
				}
				for _, r := range res {
					if err := r.Err(); err != nil {
						return fmt.Errorf("an operation of the batch failed: %w", err)
					}
				}
				return nil
			}
		}
	}
	runtime.GC()
	if _, err := measureClients(ctx, ones, min(maxWarmup, d)); err != nil {
		return measurement{}, err
	}
	m, err := measureClients(ctx, ones, d)
	if kind == AuditBatched {
		m.ops *= size
	}
	return m, err
}

// pairedRatio is the median of runs[i]/base[i]: of ratios of measurements
// taken in the same run.
func pairedRatio(runs, base []float64) float64 {
	var ratios []float64
	for i, v := range runs {
		if i < len(base) && base[i] > 0 {
			ratios = append(ratios, v/base[i])
		}
	}
	return median(ratios)
}

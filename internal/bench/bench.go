package bench

import (
	"context"
	"fmt"
	"io"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/keywarden/keywarden"
)

// The modes in which every operation is measured.
const (
	// ModeInProcess is the operation done by the Go standard library in the
	// measuring process, one goroutine: the yardstick.
	ModeInProcess = "inprocess"
	// ModeRoundTrip is one operation per request, one request at a time,
	// from one goroutine.
	ModeRoundTrip = "roundtrip"
	// ModePipelined is one operation per request from Config.Pipeline
	// goroutines sharing one Client, which pipelines their requests on its
	// one connection.
	ModePipelined = "pipelined"
	// ModeBatched is Config.BatchSize operations queued on a Batch and sent
	// with one Do, from one goroutine; Do splits them into as many
	// requests as the daemon's limits need and keeps several in flight.
	ModeBatched = "batched"
)

// Modes returns the modes in the order they are measured.
func Modes() []string { return []string{ModeInProcess, ModeRoundTrip, ModePipelined, ModeBatched} }

// Config configures a run. Zero values mean defaults.
type Config struct {
	// Socket is the daemon to measure. Empty means: start a private daemon
	// for the run, as a separate process, and stop it at the end.
	Socket string
	// Duration is how long each operation is measured in each mode, after
	// a short warm-up; 0 means one second.
	Duration time.Duration
	// Ops names the operations to measure (see Operations); empty means
	// all of them.
	Ops []string
	// Modes names the modes to measure them in (see Modes; ping's floor
	// goes with its round trip); empty means all of them. Without the
	// in-process mode, no ratio to it is given.
	Modes []string
	// BatchSize is the number of operations per Do in the batched mode;
	// 0 means 512.
	BatchSize int
	// Pipeline is the number of concurrent requests in the pipelined mode;
	// 0 means 16.
	Pipeline int
	// Executable is the keywarden binary to start as the private daemon;
	// empty means the running executable (os.Executable).
	Executable string
	// Env is added to the private daemon's environment, as "KEY=value"
	// entries. The daemon otherwise inherits this process's environment.
	Env []string
}

func (c Config) withDefaults() Config {
	if c.Duration <= 0 {
		c.Duration = time.Second
	}
	if len(c.Ops) == 0 {
		c.Ops = Operations()
	}
	if len(c.Modes) == 0 {
		c.Modes = Modes()
	}
	if c.BatchSize <= 0 {
		c.BatchSize = 512
	}
	if c.Pipeline <= 0 {
		c.Pipeline = 16
	}
	return c
}

// maxWarmup bounds the warm-up before each measurement; a shorter Duration
// shortens it too.
const maxWarmup = 100 * time.Millisecond

// Result is the measurement of one operation in one mode.
type Result struct {
	Op   string `json:"op"`
	Mode string `json:"mode"`
	// Ops is the number of operations completed in the measured interval,
	// Seconds its length.
	Ops     int     `json:"ops"`
	Seconds float64 `json:"seconds"`
	// Bytes is the payload of one operation: the message encrypted,
	// decrypted, authenticated, signed or hashed; 0 for ping.
	Bytes int64 `json:"size_bytes"`
	// Batch is the number of operations per Do in the batched mode;
	// Pipeline the number of concurrent requests in the pipelined mode.
	Batch    int `json:"batch,omitempty"`
	Pipeline int `json:"pipeline,omitempty"`
	// Clients is the number of concurrent clients, each on its own
	// connection, in RunCreate's results.
	Clients int `json:"clients,omitempty"`
	// Daemons is the number of daemons the clients of a RunCreate result
	// were spread over (CreateConfig.Sockets), else 1.
	Daemons int `json:"daemons,omitempty"`
	// Runs is the number of runs whose medians a RunCreate result holds,
	// and RunsOpsPerSec each run's OpsPerSec.
	Runs          int       `json:"runs,omitempty"`
	RunsOpsPerSec []float64 `json:"runs_ops_per_sec,omitempty"`

	OpsPerSec float64 `json:"ops_per_sec"`
	// MBPerSec is OpsPerSec × Bytes / 10⁶.
	MBPerSec float64 `json:"mb_per_sec"`
	// P50us and P99us are per-operation latencies in microseconds. In the
	// batched mode they are a batch's latency divided by Batch; in the
	// in-process mode, the time of a group of operations (enough for about
	// ten microseconds) divided by the group's size.
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	// BatchP50us and BatchP99us are the latency of one batch in the
	// batched mode: queuing Batch operations and Do.
	BatchP50us float64 `json:"batch_p50_us,omitempty"`
	BatchP99us float64 `json:"batch_p99_us,omitempty"`
	// RatioToInProcess is OpsPerSec divided by the in-process OpsPerSec of
	// the same operation in the same run; 0 where there is no in-process
	// equivalent (ping).
	RatioToInProcess float64 `json:"ratio_to_inprocess"`
	// OverFloorP50us is, for ping's round trip, its p50 less the p50 of
	// the machine's floor (ModeFloor) in the same run: what the daemon and
	// the client library add to the bare exchange of two messages.
	OverFloorP50us float64 `json:"p50_over_floor_us,omitempty"`
	// CPUSeconds and DaemonCPUSeconds are, in RunStream's results, the
	// processor time (user and system) of the side that reads and writes
	// the files (this process, or the keywarden command) and of the
	// daemon, medians over the runs.
	CPUSeconds       float64 `json:"cpu_seconds,omitempty"`
	DaemonCPUSeconds float64 `json:"daemon_cpu_seconds,omitempty"`
	// CPUusPerOp and DaemonCPUusPerOp are, in Run's modes through the
	// daemon, the processor time (user and system) per operation of this
	// process, the client, and of the private daemon (none for a daemon
	// Run did not start), in microseconds: what each process spends,
	// which the machine's other work disturbs less than the throughput.
	CPUusPerOp       float64 `json:"cpu_us_per_op,omitempty"`
	DaemonCPUusPerOp float64 `json:"daemon_cpu_us_per_op,omitempty"`
}

// Run measures cfg.Ops in every mode and returns one Result per operation
// and mode, in order: operations as named, modes as Modes lists them.
// Operations without an in-process equivalent (ping) have no in-process
// Result; ping has a ModeFloor Result instead, first. If progress is not nil, Run writes a line to it before each
// measurement.
//
// Run measures one thing at a time; on a machine doing other work the
// figures say more about that work than about keywarden.
func Run(ctx context.Context, cfg Config, progress io.Writer) (_ []Result, err error) {
	cfg = cfg.withDefaults()
	ops, err := lookupOps(cfg.Ops)
	if err != nil {
		return nil, err
	}
	say := func(format string, args ...any) {
		if progress != nil {
			fmt.Fprintf(progress, format+"\n", args...)
		}
	}
	socket := cfg.Socket
	daemonPID := 0
	if socket == "" {
		say("starting a private daemon")
		d, derr := startDaemon(ctx, cfg.Executable, cfg.Env)
		if derr != nil {
			return nil, derr
		}
		daemonPID = d.pid()
		defer func() {
			if serr := d.stop(); err == nil && serr != nil {
				err = serr
			}
		}()
		socket = d.socket
	}
	c, err := keywarden.Dial(ctx, socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()

	var results []Result
	for _, op := range ops {
		rs, err := runOp(ctx, cfg, c, op, daemonPID, say)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", op.name, err)
		}
		results = append(results, rs...)
	}
	return results, nil
}

// Operations returns the names of the operations Run can measure, in the
// order it measures them.
func Operations() []string {
	names := make([]string, len(operations))
	for i, op := range operations {
		names[i] = op.name
	}
	return names
}

func lookupOps(names []string) ([]operation, error) {
	var out []operation
	for _, n := range names {
		i := slices.IndexFunc(operations, func(op operation) bool { return op.name == n })
		if i < 0 {
			return nil, fmt.Errorf("unknown operation %q (want one of %s)", n, strings.Join(Operations(), ", "))
		}
		out = append(out, operations[i])
	}
	return out, nil
}

// runOp measures one operation in every mode. daemonPID is the daemon's
// process, whose processor time is measured too, or 0.
func runOp(ctx context.Context, cfg Config, c *keywarden.Client, op operation, daemonPID int, say func(string, ...any)) ([]Result, error) {
	warmup := min(maxWarmup, cfg.Duration)
	var results []Result
	add := func(mode string, m measurement) {
		results = append(results, m.result(op, mode))
	}

	measured := func(mode string) bool { return slices.Contains(cfg.Modes, mode) }
	if op.local != nil && measured(ModeInProcess) {
		say("measuring %s %s...", op.name, ModeInProcess)
		fn, err := op.local()
		if err != nil {
			return nil, err
		}
		m, err := measureInProcess(ctx, fn, warmup, cfg.Duration)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ModeInProcess, err)
		}
		add(ModeInProcess, m)
	}
	if op.floor && measured(ModeRoundTrip) {
		say("measuring %s %s...", op.name, ModeFloor)
		m, err := measureFloor(ctx, cfg.Executable, cfg.Env, warmup, cfg.Duration)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", ModeFloor, err)
		}
		add(ModeFloor, m)
	}

	r, err := op.remote(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("setting up: %w", err)
	}
	defer r.close(ctx)
	modes := []struct {
		name    string
		measure func(time.Duration) (measurement, error)
	}{
		{ModeRoundTrip, func(d time.Duration) (measurement, error) { return measureRoundTrip(ctx, r.one, d) }},
		{ModePipelined, func(d time.Duration) (measurement, error) {
			return measurePipelined(ctx, r.one, cfg.Pipeline, d)
		}},
		{ModeBatched, func(d time.Duration) (measurement, error) {
			return measureBatched(ctx, c, r.queue, cfg.BatchSize, d)
		}},
	}
	for _, md := range modes {
		if md.name != ModeRoundTrip && r.queue == nil || !measured(md.name) {
			// Large messages: each is a stream of requests already,
			// measured one at a time.
			continue
		}
		say("measuring %s %s...", op.name, md.name)
		runtime.GC()
		if _, err := md.measure(warmup); err != nil {
			return nil, fmt.Errorf("%s: %w", md.name, err)
		}
		self0, dmn0 := selfCPU(), time.Duration(0)
		if daemonPID > 0 {
			dmn0 = procCPU(daemonPID)
		}
		m, err := md.measure(cfg.Duration)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", md.name, err)
		}
		add(md.name, m)
		if r := &results[len(results)-1]; m.ops > 0 {
			r.CPUusPerOp = float64((selfCPU() - self0).Nanoseconds()) / 1e3 / float64(m.ops)
			if daemonPID > 0 {
				r.DaemonCPUusPerOp = float64((procCPU(daemonPID) - dmn0).Nanoseconds()) / 1e3 / float64(m.ops)
			}
		}
	}

	if len(results) > 1 && results[0].Mode == ModeFloor && results[1].Mode == ModeRoundTrip {
		results[1].OverFloorP50us = max(0, results[1].P50us-results[0].P50us)
	}
	if len(results) > 0 && results[0].Mode == ModeInProcess && results[0].OpsPerSec > 0 {
		base := results[0].OpsPerSec
		for i := range results {
			results[i].RatioToInProcess = results[i].OpsPerSec / base
		}
	}
	return results, nil
}

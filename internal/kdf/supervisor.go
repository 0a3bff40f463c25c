package kdf

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/wire"
)

// Config configures a Supervisor. Zero values mean the defaults below.
type Config struct {
	// Executable is the program started as a worker; default
	// "/proc/self/exe", the daemon's own binary (even if the file was
	// replaced or removed since the daemon started).
	Executable string
	// Args is the worker's argv; default {"keywarden", "kdf-worker"},
	// which IsWorker recognizes.
	Args []string
	// MaxMemoryKiB bounds the memory of one derivation; default
	// DefaultMaxMemoryKiB, or less when half the machine's RAM is less.
	MaxMemoryKiB uint32
	// BudgetKiB bounds the sum of the costs of the derivations that run
	// at once (a derivation costs its memory plus WorkerOverheadKiB);
	// default: one derivation of MaxMemoryKiB.
	BudgetKiB uint64
	// Queue bounds the derivations waiting for room in the budget;
	// default DefaultQueue. One more gets ErrQueueFull.
	Queue int
	// QueuePerTenant bounds the derivations of one tenant (ForTenant: a
	// uid) waiting, and RunningPerTenant those running; defaults
	// DefaultQueuePerTenant and DefaultRunningPerTenant. Tenants take
	// turns (see budget).
	QueuePerTenant   int
	RunningPerTenant int
	// Nice, if 1 to 19, is the scheduling priority (nice value) of the
	// workers of derivations other than Priority ones; default 0: the
	// daemon's own. (Such workers always get the shortest time slice and
	// all processors but one: see SetBackground.) A worker whose priority
	// is much lower than the machine's other work is slow, and may hit the
	// deadline; the watchdog does not take it for stopped (liveness).
	Nice int
	// Deadline bounds one worker, from start to reply; default
	// DefaultDeadline.
	Deadline time.Duration
	// Watchdog is the liveness period: every half period the daemon
	// checks that its last challenge was answered. A worker late with an
	// answer is judged by its progress, not the clock (liveness): it is
	// killed if it neither ran nor waited for a processor since the last
	// check, so one that stops is killed at most one period later, while
	// one that only waits for a processor on a busy machine is not.
	// Default DefaultWatchdog.
	Watchdog time.Duration
	// Cgroup is "auto" (default: a memory cgroup per worker where the
	// machine allows one) or "off".
	Cgroup string
	// CgroupRoot is where the cgroup file system is mounted; default
	// /sys/fs/cgroup.
	CgroupRoot string
	// Logger receives the supervisor's logs; nil discards them.
	Logger *slog.Logger

	// Test hooks.
	onStart     func(pid int)           // called with each worker's pid once it runs
	oomKills    func() int64            // the machine's OOM kills (machineOOMKills)
	cellLimit   func(cost uint64) int64 // a worker cgroup's limit in bytes
	v2Unlimited bool                    // v2 without the memory controller: placement only
}

// Defaults.
const (
	DefaultMaxMemoryKiB   = 1 << 20 // 1 GiB, as cryptsetup caps Argon2
	DefaultQueue          = 64
	DefaultQueuePerTenant = 8
	DefaultDeadline       = time.Minute
	DefaultWatchdog       = time.Second
	// WorkerOverheadKiB is what a worker costs besides Argon2's memory:
	// the Go runtime, the binary's pages, buffers. A worker peaks at about
	// 8 MiB resident at tiny parameters, and 9-10 MiB above its Argon2
	// memory at 256 MiB-1 GiB (docs/performance.md).
	WorkerOverheadKiB = 16 << 10
	// MinWatchdog and MinDeadline bound the configuration from below.
	MinWatchdog = 20 * time.Millisecond
	MinDeadline = 100 * time.Millisecond
)

// DefaultRunningPerTenant is the default RunningPerTenant on a machine
// with procs processors: half of them.
func DefaultRunningPerTenant(procs int) int { return max(1, procs/2) }

// cellSlack is what a worker's cgroup allows beyond its cost: page
// tables, the kernel's own accounting, the runtime's rounding.
func cellSlack(memKiB uint64) uint64 { return 16<<10 + memKiB/32 }

// Limits are the settings in force.
type Limits struct {
	MaxMemoryKiB     uint32
	BudgetKiB        uint64
	Queue            int
	QueuePerTenant   int
	RunningPerTenant int
	Nice             int // of background workers; 0: the daemon's own
	Deadline         time.Duration
	Watchdog         time.Duration
	// Cgroup is "v2", "v1" or "off".
	Cgroup string
}

// Supervisor runs derivations in worker processes. Its methods are safe
// for concurrent use.
type Supervisor struct {
	cfg    Config
	log    *slog.Logger
	budget budget
	cg     *cgroups // nil: workers run without a memory cgroup

	ctx    context.Context // ends at Close: running workers are killed
	cancel context.CancelFunc
	// running counts workers between start and reap; Close waits for 0.
	running sync.WaitGroup
	// mu guards closed, and orders Add on running after Close's check.
	mu        sync.Mutex
	closed    bool
	closeOnce sync.Once
}

// New returns a Supervisor. It validates cfg, fills defaults, and sets up
// memory cgroups where it can (logging what it found). It starts no
// worker.
func New(cfg Config) (*Supervisor, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if cfg.Executable == "" {
		cfg.Executable = "/proc/self/exe"
	}
	if len(cfg.Args) == 0 {
		cfg.Args = []string{"keywarden", WorkerArg}
	}
	halfRAM := memTotalKiB() / 2
	if cfg.MaxMemoryKiB == 0 {
		cfg.MaxMemoryKiB = DefaultMaxMemoryKiB
		if halfRAM > 0 && uint64(cfg.MaxMemoryKiB)+WorkerOverheadKiB > halfRAM && halfRAM > 2*WorkerOverheadKiB {
			cfg.MaxMemoryKiB = uint32(halfRAM - WorkerOverheadKiB)
		}
		if cfg.BudgetKiB != 0 && uint64(cfg.MaxMemoryKiB)+WorkerOverheadKiB > cfg.BudgetKiB && cfg.BudgetKiB > WorkerOverheadKiB+8 {
			cfg.MaxMemoryKiB = uint32(min(cfg.BudgetKiB-WorkerOverheadKiB, uint64(cfg.MaxMemoryKiB)))
		}
	}
	if cfg.MaxMemoryKiB < 8 {
		return nil, fmt.Errorf("kdf: the maximum memory per derivation must be at least 8 KiB")
	}
	if cfg.BudgetKiB == 0 {
		cfg.BudgetKiB = uint64(cfg.MaxMemoryKiB) + WorkerOverheadKiB
	}
	if cfg.BudgetKiB < uint64(cfg.MaxMemoryKiB)+WorkerOverheadKiB {
		return nil, fmt.Errorf("kdf: a memory budget of %d KiB cannot run one derivation of the maximum %d KiB (which costs %d KiB with the worker's overhead)",
			cfg.BudgetKiB, cfg.MaxMemoryKiB, uint64(cfg.MaxMemoryKiB)+WorkerOverheadKiB)
	}
	if cfg.Queue == 0 {
		cfg.Queue = DefaultQueue
	}
	if cfg.Queue < 0 {
		return nil, errors.New("kdf: the queue length must not be negative")
	}
	if cfg.QueuePerTenant == 0 {
		cfg.QueuePerTenant = min(DefaultQueuePerTenant, cfg.Queue)
	}
	if cfg.RunningPerTenant == 0 {
		cfg.RunningPerTenant = DefaultRunningPerTenant(runtime.NumCPU())
	}
	if cfg.QueuePerTenant < 0 || cfg.RunningPerTenant < 0 {
		return nil, errors.New("kdf: the per-tenant limits must not be negative")
	}
	if cfg.Nice < 0 || cfg.Nice > 19 {
		return nil, errors.New("kdf: a nice value is 0 to 19")
	}
	if cfg.Deadline == 0 {
		cfg.Deadline = DefaultDeadline
	}
	if cfg.Watchdog == 0 {
		cfg.Watchdog = DefaultWatchdog
	}
	if cfg.Deadline < MinDeadline || cfg.Watchdog < MinWatchdog {
		return nil, fmt.Errorf("kdf: the deadline must be at least %v and the watchdog period at least %v", MinDeadline, MinWatchdog)
	}
	if cfg.CgroupRoot == "" {
		cfg.CgroupRoot = "/sys/fs/cgroup"
	}
	s := &Supervisor{cfg: cfg, log: log}
	s.budget = budget{total: cfg.BudgetKiB, maxQueue: cfg.Queue,
		perTenantQueue: cfg.QueuePerTenant, perTenantRunning: cfg.RunningPerTenant}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	switch cfg.Cgroup {
	case "", "auto":
		total := int64(cfg.BudgetKiB+cellSlack(cfg.BudgetKiB)) << 10
		var err error
		if cfg.v2Unlimited {
			var self string
			if self, err = ownCgroup(""); err == nil {
				s.cg, err = setupV2(cfg.CgroupRoot, self, total, false)
			}
		} else {
			s.cg, err = setupCgroups(cfg.CgroupRoot, total)
		}
		if err != nil {
			log.Warn("kdf: workers run without a memory cgroup; an Argon2 worker that runs out of memory is left to the kernel's OOM killer (workers are its first choice, oom_score_adj 1000)",
				"reason", err.Error())
		} else {
			log.Info("kdf: each worker runs in its own memory cgroup", "cgroup", s.cg.version(), "parent", s.cg.parent)
		}
	case "off":
		log.Info("kdf: memory cgroups are off; workers are the OOM killer's first choice (oom_score_adj 1000)")
	default:
		return nil, fmt.Errorf("kdf: unknown cgroup mode %q (want auto or off)", cfg.Cgroup)
	}
	return s, nil
}

// Limits returns the settings in force.
func (s *Supervisor) Limits() Limits {
	cg := "off"
	if s.cg != nil {
		cg = s.cg.version()
	}
	return Limits{MaxMemoryKiB: s.cfg.MaxMemoryKiB, BudgetKiB: s.cfg.BudgetKiB, Queue: s.cfg.Queue,
		QueuePerTenant: s.cfg.QueuePerTenant, RunningPerTenant: s.cfg.RunningPerTenant, Nice: s.cfg.Nice,
		Deadline: s.cfg.Deadline, Watchdog: s.cfg.Watchdog, Cgroup: cg}
}

// Stats returns the admission state.
func (s *Supervisor) Stats() Stats { return s.budget.stats() }

// Close refuses new derivations, fails queued ones with ErrClosed, kills
// running workers and waits until every worker is reaped and its cgroup
// removed.
// Close may be called more than once.
func (s *Supervisor) Close() {
	s.closeOnce.Do(func() {
		s.mu.Lock()
		s.closed = true
		s.mu.Unlock()
		s.budget.close()
		s.cancel()
		s.running.Wait()
		if s.cg != nil {
			s.cg.close()
		}
	})
}

// Derive returns keyLen bytes of Argon2id(password, salt, p), computed in
// a worker. The caller owns (and must wipe) the result.
func (s *Supervisor) Derive(ctx context.Context, p Params, password, salt []byte, keyLen int) ([]byte, error) {
	if keyLen < 1 || keyLen > MaxKeyLen {
		return nil, invalid("argon2: output length must be 1 to %d bytes", MaxKeyLen)
	}
	res, err := s.do(ctx, &request{op: opDerive, params: p, keyLen: uint32(keyLen), salt: salt, password: password})
	if err != nil {
		return nil, err
	}
	if len(res.out) != keyLen {
		clear(res.out)
		return nil, ErrFailed.WithDetail("worker returned %d bytes, want %d", len(res.out), keyLen)
	}
	return res.out, nil
}

// Verify reports whether Argon2id(password, salt, p) equals expected. The
// worker compares in constant time; only the verdict comes back.
func (s *Supervisor) Verify(ctx context.Context, p Params, password, salt, expected []byte) (bool, error) {
	if len(expected) < MinVerifyHashLen || len(expected) > MaxVerifyHashLen {
		return false, invalid("argon2: hash length out of range")
	}
	res, err := s.do(ctx, &request{op: opVerify, params: p, salt: salt, password: password, expected: expected})
	if err != nil {
		return false, err
	}
	if len(res.out) != 1 {
		return false, ErrFailed.WithDetail("worker returned a verdict of %d bytes", len(res.out))
	}
	return res.out[0] == 1, nil
}

// Measurement is what Measure found.
type Measurement struct {
	// Elapsed is how long Argon2id took in the worker.
	Elapsed time.Duration
	// Total is from starting the worker to its reply.
	Total time.Duration
	// MaxRSSKiB is the worker's peak resident set.
	MaxRSSKiB uint64
}

// Measure runs Argon2id with p on a fixed input in a worker and reports
// how long it took.
func (s *Supervisor) Measure(ctx context.Context, p Params) (Measurement, error) {
	salt := []byte("keywarden-calibration")
	start := time.Now()
	res, err := s.do(ctx, &request{op: opMeasure, params: p, salt: salt, password: []byte("keywarden calibration")})
	if err != nil {
		return Measurement{}, err
	}
	return Measurement{Elapsed: res.elapsed, Total: time.Since(start), MaxRSSKiB: res.maxRSSKiB}, nil
}

// do validates r, waits for room in the budget and runs one worker.
func (s *Supervisor) do(ctx context.Context, r *request) (result, error) {
	if err := r.params.Check(s.cfg.MaxMemoryKiB); err != nil {
		return result{}, err
	}
	if err := CheckSalt(r.salt); err != nil {
		return result{}, err
	}
	if err := CheckPassword(r.password); err != nil {
		return result{}, err
	}
	cost := uint64(r.params.MemoryKiB) + WorkerOverheadKiB
	// A derivation whose caller has gone (its client hung up) starts no
	// worker, whether it ended before the derivation queued or while it
	// was being admitted.
	if err := ctx.Err(); err != nil {
		return result{}, ErrClosed.WithDetail("%w", context.Cause(ctx))
	}
	if err := s.budget.acquire(ctx, cost); err != nil {
		if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
			return result{}, ErrClosed.WithDetail("%w", err)
		}
		return result{}, err
	}
	defer s.budget.release(ctx, cost)
	if err := ctx.Err(); err != nil {
		return result{}, ErrClosed.WithDetail("%w", context.Cause(ctx))
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return result{}, ErrClosed
	}
	s.running.Add(1)
	s.mu.Unlock()
	defer s.running.Done()
	rand.Read(r.seed[:])
	return s.run(ctx, r, cost, !claimOf(ctx).priority)
}

// event is a frame (or the end of the stream) read from a worker.
type event struct {
	typ     byte
	answer  [challengeLen]byte
	payload []byte // the result or error frame; the reader's buffer
	err     error
}

// maxReplyFrame bounds a frame from a worker: a result carries at most
// MaxKeyLen bytes after 18 bytes of fixed fields.
const maxReplyFrame = max(challengeLen, maxErrorLen, 18+MaxKeyLen)

// stderrLimit bounds what is kept of a worker's stderr.
const stderrLimit = 4 << 10

// run starts one worker for r and supervises it to the end: deadline,
// watchdog, result, reaping, cgroup removal.
func (s *Supervisor) run(ctx context.Context, r *request, cost uint64, background bool) (result, error) {
	if !background {
		return s.runWorker(ctx, r, cost, false)
	}
	// A background worker starts from a thread of its own, which is never
	// given back (runWorker): not the caller's.
	type outcome struct {
		res result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := s.runWorker(ctx, r, cost, true)
		done <- outcome{res, err}
	}()
	o := <-done
	return o.res, o.err
}

// runWorker is run on the calling goroutine: it spawns the worker, has
// it supervised, and reaps it, whatever happens, before it returns.
func (s *Supervisor) runWorker(ctx context.Context, r *request, cost uint64, background bool) (res result, err error) {
	// PR_SET_PDEATHSIG fires when the thread that started the child
	// exits, not the process: keep this goroutine on its thread until
	// the worker is reaped, so a Go runtime thread exit never kills it.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if background {
		s.backgroundThread()
	}
	cl := s.workerCell(r, cost)
	if cl != nil {
		defer cl.remove()
	}
	w, err := s.spawn(r, cl, background)
	if err != nil {
		return result{}, err
	}
	// Whatever happens, the worker is reaped before run returns.
	defer func() { err = s.reap(w, r, res, err) }()
	if err := s.admit(w, r, cost, background); err != nil {
		return result{}, err
	}
	return s.supervise(ctx, w, r, background)
}

// backgroundThread makes the calling thread, which starts a background
// worker, background itself.
func (s *Supervisor) backgroundThread() {
	// A background worker is made background from its start (fork and
	// exec, and the runtime's start, already cost): it inherits its
	// priority from this thread. This thread cannot be given its priority
	// back (an unprivileged process may not raise one), so it is never
	// given back: locked once more, it ends with its goroutine.
	runtime.LockOSThread()
	if err := SetBackground(unix.Gettid(), s.cfg.Nice); err != nil {
		s.log.Debug("kdf: cannot lower the priority of a worker's parent thread", "err", err)
	}
	if err := LeaveOneCPU(); err != nil {
		s.log.Debug("kdf: cannot keep a worker off one processor", "err", err)
	}
}

// workerCell makes the cgroup of one worker of r, costing cost KiB; nil
// without cgroups, or if it cannot be made (the worker runs without one).
func (s *Supervisor) workerCell(r *request, cost uint64) *cell {
	if s.cg == nil {
		return nil
	}
	limit := int64(cost+cellSlack(uint64(r.params.MemoryKiB))) << 10
	if s.cfg.cellLimit != nil {
		limit = s.cfg.cellLimit(cost)
	}
	cl, err := s.cg.newCell(limit)
	if err != nil {
		s.log.Warn("kdf: cannot create a worker cgroup; running this worker without one", "err", err)
		return nil
	}
	return cl
}

// worker is one started worker process and the daemon's ends of its
// pipes.
type worker struct {
	cmd    *exec.Cmd
	pid    int
	inW    *os.File // its stdin
	outR   *os.File // its stdout
	stderr *boundedBuffer
	cl     *cell // nil: none
	// oomBefore is the machine's count of OOM kills at its start, for a
	// worker without a cgroup (-1: not read; see classify).
	oomBefore int64
	start     time.Time
	killed    bool // by the daemon
}

// kill kills the worker once: SIGKILL, through a pidfd, never another
// process.
func (w *worker) kill() {
	if !w.killed {
		w.killed = true
		w.cmd.Process.Kill()
	}
}

// spawn starts a worker for r, in cell cl if not nil, with pipes for its
// stdin and stdout.
func (s *Supervisor) spawn(r *request, cl *cell, background bool) (*worker, error) {
	inR, inW, err := os.Pipe()
	if err != nil {
		return nil, ErrFailed.WithDetail("pipe: %w", err)
	}
	outR, outW, err := os.Pipe()
	if err != nil {
		inR.Close()
		inW.Close()
		return nil, ErrFailed.WithDetail("pipe: %w", err)
	}
	stderr := &boundedBuffer{max: stderrLimit}
	// Nothing from the daemon's environment: the worker needs none. A
	// background worker leaves a processor to everything else (its parent
	// thread's affinity, LeaveOneCPU); Argon2id's lanes then share fewer
	// processors, with the same result.
	env := []string{}
	if background {
		env = []string{fmt.Sprintf("GOMAXPROCS=%d", backgroundProcs())}
	}
	newCmd := func() *exec.Cmd {
		return &exec.Cmd{
			Path:        s.cfg.Executable,
			Args:        s.cfg.Args,
			Env:         env,
			Dir:         "/",
			Stdin:       inR,
			Stdout:      outW,
			Stderr:      stderr,
			SysProcAttr: &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL},
			WaitDelay:   time.Second,
		}
	}
	cmd := newCmd()
	if cl != nil {
		cl.prepare(cmd.SysProcAttr)
	}
	// Without a cgroup of its own, the machine's count of OOM kills tells
	// whether one may have killed the worker (classify).
	oomBefore := int64(-1)
	if cl == nil {
		oomBefore = s.machineOOMKills()
	}
	start := time.Now()
	err = cmd.Start()
	if err != nil && cl != nil && cl.fd >= 0 {
		// clone3 with CLONE_INTO_CGROUP unavailable: start outside the
		// cgroup and move the worker in before it gets its request.
		s.log.Warn("kdf: cannot start a worker inside its cgroup; moving it in after start", "err", err)
		cl.closeFD()
		cmd = newCmd()
		err = cmd.Start()
	}
	inR.Close()
	outW.Close()
	if err != nil {
		inW.Close()
		outR.Close()
		return nil, ErrFailed.WithDetail("start worker: %w", err)
	}
	return &worker{cmd: cmd, pid: cmd.Process.Pid, inW: inW, outR: outR, stderr: stderr, cl: cl, oomBefore: oomBefore, start: start}, nil
}

// reap closes the worker's stdin, waits for it to exit (killing it if it
// has not within two seconds), and returns err, the outcome of its
// supervision, turned into the error its client gets (classify) if the
// worker failed.
func (s *Supervisor) reap(w *worker, r *request, res result, err error) error {
	w.inW.Close()
	waited := make(chan error, 1)
	go func() { waited <- w.cmd.Wait() }()
	var werr error
	select {
	case werr = <-waited:
	case <-time.After(2 * time.Second):
		w.kill()
		werr = <-waited
	}
	w.outR.Close()
	st := w.cmd.ProcessState
	if err == nil {
		s.log.Debug("kdf: worker done", "pid", w.pid, "op", r.op.String(), "params", r.params.String(),
			"argon2", res.elapsed, "total", time.Since(w.start), "max_rss_kib", res.maxRSSKiB)
	} else if !IsError(err, ErrClosed) {
		err = s.classify(err, werr, st, w.killed, w.cl, w.oomBefore, w.stderr)
	}
	if msg := w.stderr.String(); msg != "" {
		s.log.Warn("kdf: worker wrote to stderr", "pid", w.pid, "stderr", msg)
	}
	return err
}

// admit readies a started worker before it has its request (it computes
// nothing until then): it moves it into its cgroup if it was started
// outside, and lowers a background worker's priority (the time slice is
// not inherited).
func (s *Supervisor) admit(w *worker, r *request, cost uint64, background bool) error {
	if w.cl != nil {
		if perr := w.cl.started(w.pid); perr != nil {
			w.kill()
			return ErrFailed.WithDetail("move worker %d into its cgroup: %w", w.pid, perr)
		}
	}
	if background {
		if perr := renice(w.pid, s.cfg.Nice); perr != nil {
			s.log.Debug("kdf: cannot lower a worker's priority", "pid", w.pid, "err", perr)
		}
	}
	if s.cfg.onStart != nil {
		s.cfg.onStart(w.pid)
	}
	s.log.Debug("kdf: worker started", "pid", w.pid, "op", r.op.String(), "params", r.params.String(), "cost_kib", cost)
	return nil
}

// supervise sends the worker its request and watches it until it answers:
// the deadline, the caller's and the daemon's ends, the watchdog's
// challenges (and, when an answer is late, the worker's progress), and
// the frames it sends. The worker is killed on any failure but one: a
// stream that ends, whose exit status (reap) tells why.
func (s *Supervisor) supervise(ctx context.Context, w *worker, r *request, background bool) (result, error) {
	pid, inW, kill := w.pid, w.inW, w.kill
	deadline := w.start.Add(s.cfg.Deadline)
	inW.SetWriteDeadline(deadline)
	msg := append(magic[:0:0], magic[:]...)
	payload := appendRequest(nil, r)
	msg = appendFrame(msg, frameRequest, payload)
	clear(payload)
	_, werr := inW.Write(msg)
	clear(msg)
	if werr != nil {
		kill()
		return result{}, ErrFailed.WithDetail("send request to worker %d: %w", pid, werr)
	}

	events := make(chan event)
	stop := make(chan struct{})
	var readers sync.WaitGroup
	readers.Add(1)
	go func() {
		defer readers.Done()
		readWorker(w.outR, events, stop)
	}()
	defer func() {
		close(stop)
		w.outR.SetReadDeadline(time.Now()) // unblock the reader
		readers.Wait()
	}()

	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	tick := time.NewTicker(s.cfg.Watchdog / 2)
	defer tick.Stop()
	prev := r.seed
	var expect [challengeLen]byte
	outstanding := false
	var challenge [challengeLen]byte
	procs := runtime.NumCPU()
	if background {
		procs = backgroundProcs()
	}
	lv := liveness{pid: pid, half: s.cfg.Watchdog / 2, procs: procs, read: readProgress}
	late := false // logged once
	for {
		select {
		case <-timer.C:
			kill()
			return result{}, ErrTimeout.WithDetail("worker %d overran the deadline of %v (%s)", pid, s.cfg.Deadline, r.params)
		case <-ctx.Done():
			kill()
			return result{}, ErrClosed.WithDetail("%w", context.Cause(ctx))
		case <-s.ctx.Done():
			kill()
			return result{}, ErrClosed
		case <-tick.C:
			if outstanding {
				// Late, which on a busy machine is not stopped: judge the
				// worker by its progress (liveness).
				if why := lv.late(); why != "" {
					kill()
					return result{}, ErrStopped.WithDetail("worker %d %s", pid, why)
				}
				if !late {
					late = true
					s.log.Debug("kdf: a worker is late with its watchdog answer but making progress", "pid", pid,
						"cpu", lv.last.cpu, "threads", lv.last.states)
				}
				break
			}
			rand.Read(challenge[:])
			expect = chain(&prev, challenge[:])
			inW.SetWriteDeadline(time.Now().Add(s.cfg.Watchdog / 2))
			if _, werr := inW.Write(appendFrame(nil, frameChallenge, challenge[:])); werr != nil {
				kill()
				return result{}, ErrStopped.WithDetail("send a watchdog challenge to worker %d: %w", pid, werr)
			}
			outstanding = true
			lv.challenged()
		case ev := <-events:
			switch {
			case ev.err != nil:
				if !errors.Is(ev.err, io.EOF) && !errors.Is(ev.err, io.ErrUnexpectedEOF) {
					// Not a worker dying (whose exit status tells why): a
					// broken or foreign stream.
					kill()
				}
				return result{}, ErrFailed.WithDetail("worker %d closed its output without a result: %w", pid, ev.err)
			case ev.typ == frameAnswer:
				if !outstanding || ev.answer != expect {
					kill()
					return result{}, ErrFailed.WithDetail("worker %d answered the watchdog wrongly", pid)
				}
				prev, outstanding = expect, false
			case ev.typ == frameResult:
				res, derr := decodeResult(ev.payload)
				if derr != nil {
					clear(ev.payload)
					kill()
					return result{}, ErrFailed.WithDetail("worker %d: %w", pid, derr)
				}
				res.out = bytes.Clone(res.out)
				clear(ev.payload)
				return res, nil
			case ev.typ == frameError:
				text := sanitize(string(ev.payload))
				kill()
				return result{}, ErrFailed.WithDetail("worker %d refused: %s", pid, text)
			default:
				kill()
				return result{}, ErrFailed.WithDetail("worker %d sent an unexpected frame %q", pid, ev.typ)
			}
		}
	}
}

// classify turns the failure of a worker into the error the client gets,
// once it has been reaped.
// oomBefore is the machine's count of OOM kills when the worker started,
// for a worker without a cgroup (-1: not read or not counted).
//
// A SIGKILL the daemon did not send is the kernel's OOM killer (workers
// are its first choice) or another process (an administrator, a service
// manager). The kernel counts an OOM kill in the victim's memory cgroup,
// whatever the OOM was (the cgroup's limit or the whole machine), so a
// worker with a cell of its own was killed for memory exactly when the
// cell counted one. Without a cell, an OOM kill on the machine while the
// worker ran makes it the likely victim; none means it was not.
func (s *Supervisor) classify(err, waitErr error, st *os.ProcessState, killed bool, cl *cell, oomBefore int64, stderr *boundedBuffer) error {
	status := "status unknown"
	if st != nil {
		status = st.String()
	}
	cellKills := int64(-1)
	if cl != nil {
		cellKills = cl.oomKills()
	}
	machineKills := int64(-1)
	if cl == nil && oomBefore >= 0 {
		if n := s.machineOOMKills(); n >= oomBefore {
			machineKills = n - oomBefore
		}
	}
	sigkill := st != nil && !killed && signaled(st, syscall.SIGKILL)
	var why string
	switch {
	case cellKills > 0:
		why = "killed by the kernel's OOM killer (its " + cl.g.version() + " cgroup counted an OOM kill)"
	case sigkill && machineKills > 0:
		why = fmt.Sprintf("killed by SIGKILL, not sent by the daemon, while the kernel's OOM killer killed %d process(es) on the machine: most likely it", machineKills)
	case sigkill:
		// Not the daemon, and not the OOM killer as far as the kernel's
		// counts tell: report that it was killed, not that it ran out.
		seen := "its cgroup counted no OOM kill"
		switch {
		case cl == nil && machineKills == 0:
			seen = "the kernel's OOM killer killed nothing on the machine meanwhile"
		case cellKills < 0 && machineKills < 0:
			seen = "this kernel does not count OOM kills, so an OOM kill cannot be told apart"
		}
		return ErrKilled.WithDetail("worker killed by SIGKILL, not sent by the daemon (%s; %s); %s", seen, status, detailOf(err))
	case strings.Contains(stderr.String(), "out of memory"):
		why = "its runtime ran out of memory"
	}
	if why != "" {
		return ErrOutOfMemory.WithDetail("worker %s (%s); %s", why, status, detailOf(err))
	}
	if killed {
		return err
	}
	return ErrFailed.WithDetail("%s (worker %s)", detailOf(err), status)
}

// machineOOMKills reads the machine's count of OOM kills, or the test
// hook's.
func (s *Supervisor) machineOOMKills() int64 {
	if s.cfg.oomKills != nil {
		return s.cfg.oomKills()
	}
	return machineOOMKills()
}

// detailOf is the log's reason of err.
func detailOf(err error) string {
	var we *wire.Error
	if errors.As(err, &we) && we.Detail != "" {
		return we.Detail
	}
	return err.Error()
}

func signaled(st *os.ProcessState, sig syscall.Signal) bool {
	ws, ok := st.Sys().(syscall.WaitStatus)
	return ok && ws.Signaled() && ws.Signal() == sig
}

// readWorker reads the worker's stream and passes each frame on until the
// stream ends, a result or error arrives, or stop is closed.
func readWorker(r io.Reader, events chan<- event, stop <-chan struct{}) {
	send := func(ev event) bool {
		select {
		case events <- ev:
			return true
		case <-stop:
			clear(ev.payload)
			return false
		}
	}
	if err := readMagic(r); err != nil {
		send(event{err: fmt.Errorf("no worker greeting: %w", err)})
		return
	}
	var buf []byte
	for {
		typ, payload, nb, err := readFrame(r, buf, maxReplyFrame)
		buf = nb
		if err != nil {
			send(event{err: err})
			clear(buf)
			return
		}
		switch typ {
		case frameAnswer:
			ev := event{typ: typ}
			if len(payload) != challengeLen {
				send(event{err: errors.New("malformed watchdog answer")})
				return
			}
			copy(ev.answer[:], payload)
			if !send(ev) {
				return
			}
		default:
			// A result or an error ends the stream: hand over the buffer.
			send(event{typ: typ, payload: payload})
			return
		}
	}
}

// boundedBuffer keeps the first max bytes written to it.
type boundedBuffer struct {
	mu  sync.Mutex
	b   []byte
	max int
}

func (w *boundedBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if room := w.max - len(w.b); room > 0 {
		w.b = append(w.b, p[:min(room, len(p))]...)
	}
	return len(p), nil
}

func (w *boundedBuffer) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return sanitize(string(w.b))
}

// sanitize keeps printable ASCII of s, on one line.
func sanitize(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r == '\n' || r == '\t':
			b.WriteString(" | ")
		case r >= 0x20 && r < 0x7f:
			b.WriteRune(r)
		}
	}
	return strings.TrimSuffix(strings.TrimSpace(b.String()), " |")
}

// BackgroundSlice is the time slice of background threads (see
// SetBackground).
const BackgroundSlice = 100 * time.Microsecond

// SetBackground schedules thread tid as background work: where the kernel
// takes one (Linux 6.12 and later, EEVDF), the shortest time slice, so
// that a thread that wakes up (a request arriving) waits at most that
// long for a background thread to give way; and, if nice is 1 to 19, that
// priority (0: the thread's own). Background threads still get their
// share of the processors: under load they slow down, never stop. The
// supervisor's workers for ordinary uids run so, and the daemon's threads
// that generate RSA keys for them (with their own priority: a thread of
// the daemon that waited long to run would hold up the garbage
// collector's stops of the world).
func SetBackground(tid, nice int) error {
	if nice <= 0 {
		prio, err := unix.Getpriority(unix.PRIO_PROCESS, tid)
		if err != nil {
			return err
		}
		nice = 20 - prio // the raw value of getpriority(2) is 20 - nice
	}
	attr := &unix.SchedAttr{Policy: unix.SCHED_NORMAL, Nice: int32(nice), Runtime: uint64(BackgroundSlice)}
	err := unix.SchedSetAttr(tid, attr, 0)
	if err == unix.EINVAL || err == unix.ENOSYS {
		err = unix.Setpriority(unix.PRIO_PROCESS, tid, nice)
	}
	return err
}

// backgroundProcs is the GOMAXPROCS of a background worker: the
// processors it may run on (all but one, LeaveOneCPU), but at least 2, so
// that the goroutine that answers the watchdog never waits long for one
// (Argon2id's loops do not give way to it quickly).
func backgroundProcs() int { return max(2, runtime.NumCPU()-1) }

// LeaveOneCPU takes one processor (the last) out of the calling thread's
// affinity, if it has more than one: the workers it starts inherit it.
// Background work kept off one processor leaves it to the threads that
// answer requests, whatever the priorities.
func LeaveOneCPU() error {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return err
	}
	if set.Count() < 2 {
		return nil
	}
	for cpu := len(set)*64 - 1; cpu >= 0; cpu-- {
		if set.IsSet(cpu) {
			set.Clear(cpu)
			break
		}
	}
	return unix.SchedSetaffinity(0, &set)
}

// renice schedules every thread of process pid as background work. A
// thread inherits the scheduling of the thread that makes it, so once
// every thread has it, the ones made later have it too; a pass that finds
// no new thread ends it.
func renice(pid, nice int) error {
	done := map[int]bool{}
	for range 8 {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			return err
		}
		fresh := false
		for _, e := range ents {
			tid, err := strconv.Atoi(e.Name())
			if err != nil || done[tid] {
				continue
			}
			done[tid], fresh = true, true
			if err := SetBackground(tid, nice); err != nil && err != unix.ESRCH {
				return err
			}
		}
		if !fresh {
			return nil
		}
	}
	return nil
}

// TenantFull reports whether a derivation for the tenant ctx names (see
// ForTenant) would now be refused for its share of the queue: a caller
// can refuse it early, before it does any work for it.
func (s *Supervisor) TenantFull(ctx context.Context) bool { return s.budget.tenantFull(claimOf(ctx)) }

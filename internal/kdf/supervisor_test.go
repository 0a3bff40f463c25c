package kdf

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/wire"
)

// tiny are parameters that take well under a millisecond.
var tiny = Params{Time: 1, MemoryKiB: 64, Threads: 1}

// slow are parameters that take minutes with little memory: the
// deadline or the watchdog ends them.
var slow = Params{Time: 1 << 20, MemoryKiB: 1024, Threads: 1}

// logBuffer collects a supervisor's logs.
type logBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

func newSupervisor(t *testing.T, cfg Config) (*Supervisor, *logBuffer) {
	t.Helper()
	logs := &logBuffer{}
	cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	if raceEnabled && cfg.cellLimit == nil && !cfg.v2Unlimited {
		// The race detector's shadow memory does not fit the cgroups
		// sized for real workers.
		cfg.Cgroup = "off"
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		s.Close()
		noZombies(t)
		if strings.Contains(logs.String(), "hunter2") || strings.Contains(logs.String(), "correct horse") {
			t.Errorf("a password reached the log:\n%s", logs)
		}
	})
	return s, logs
}

func TestDeriveMatchesArgon2(t *testing.T) {
	s, _ := newSupervisor(t, Config{})
	for _, p := range []Params{tiny, {2, 256, 2}, {1, 8 << 10, 4}, {3, 1 << 10, 3}} {
		for _, n := range []int{16, 32, 64} {
			got, err := s.Derive(context.Background(), p, []byte("correct horse"), []byte("saltsalt"), n)
			if err != nil {
				t.Fatal(err)
			}
			want := argon2.IDKey([]byte("correct horse"), []byte("saltsalt"), p.Time, p.MemoryKiB, p.Threads, uint32(n))
			if !bytes.Equal(got, want) {
				t.Fatalf("%v, %d bytes: worker %x, in-process %x", p, n, got, want)
			}
		}
	}
}

func TestVerify(t *testing.T) {
	s, _ := newSupervisor(t, Config{})
	h, err := ParsePHC(referenceHashes[2].phc) // m=256
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		pw   string
		want bool
	}{{"password", true}, {"Password", false}, {"password ", false}} {
		ok, err := s.Verify(context.Background(), h.Params, []byte(c.pw), h.Salt, h.Hash)
		if err != nil || ok != c.want {
			t.Errorf("%q: %v, %v", c.pw, ok, err)
		}
	}
}

// TestInvalidBeforeWorker: bad arguments are refused with
// INVALID_ARGUMENT and no worker starts.
func TestInvalidBeforeWorker(t *testing.T) {
	var started atomic.Int32
	s, _ := newSupervisor(t, Config{MaxMemoryKiB: 1 << 10, onStart: func(int) { started.Add(1) }})
	ctx := context.Background()
	pw, salt := []byte("pw"), []byte("saltsalt")
	for name, err := range map[string]error{
		"time 0":        func() error { _, err := s.Derive(ctx, Params{0, 64, 1}, pw, salt, 32); return err }(),
		"threads 0":     func() error { _, err := s.Derive(ctx, Params{1, 64, 0}, pw, salt, 32); return err }(),
		"memory < 8p":   func() error { _, err := s.Derive(ctx, Params{1, 31, 4}, pw, salt, 32); return err }(),
		"memory > max":  func() error { _, err := s.Derive(ctx, Params{1, 1<<10 + 1, 1}, pw, salt, 32); return err }(),
		"time > max":    func() error { _, err := s.Derive(ctx, Params{MaxTime + 1, 64, 1}, pw, salt, 32); return err }(),
		"short salt":    func() error { _, err := s.Derive(ctx, tiny, pw, []byte("salt"), 32); return err }(),
		"long salt":     func() error { _, err := s.Derive(ctx, tiny, pw, make([]byte, MaxSaltLen+1), 32); return err }(),
		"no password":   func() error { _, err := s.Derive(ctx, tiny, nil, salt, 32); return err }(),
		"long password": func() error { _, err := s.Derive(ctx, tiny, make([]byte, MaxPasswordLen+1), salt, 32); return err }(),
		"key length 0":  func() error { _, err := s.Derive(ctx, tiny, pw, salt, 0); return err }(),
		"short hash":    func() error { _, err := s.Verify(ctx, tiny, pw, salt, []byte{1, 2, 3}); return err }(),
		"calib target":  func() error { _, err := s.Calibrate(ctx, 0, 0, 1, nil, 0); return err }(),
		"calib prev": func() error {
			_, err := s.Calibrate(ctx, time.Second, 0, 1, &Trial{Params: Params{1, 1 << 30, 1}}, 1)
			return err
		}(),
	} {
		if wire.StatusOf(err) != wire.Status_STATUS_INVALID_ARGUMENT {
			t.Errorf("%s: %v", name, err)
		}
	}
	if n := started.Load(); n != 0 {
		t.Fatalf("%d workers started for invalid requests", n)
	}
}

func TestDeadline(t *testing.T) {
	s, logs := newSupervisor(t, Config{Deadline: 300 * time.Millisecond})
	start := time.Now()
	_, err := s.Derive(context.Background(), slow, []byte("hunter2"), []byte("saltsalt"), 32)
	took := time.Since(start)
	if !IsError(err, ErrTimeout) {
		t.Fatalf("got %v, want %v", err, ErrTimeout)
	}
	if wire.StatusOf(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("status %v", wire.StatusOf(err))
	}
	if took > 2*time.Second {
		t.Fatalf("took %v for a 300ms deadline", took)
	}
	t.Logf("killed after %v: %v", took, err)
	// Still serving.
	if _, err := s.Derive(context.Background(), tiny, []byte("pw"), []byte("saltsalt"), 32); err != nil {
		t.Fatal(err, logs)
	}
}

// TestWatchdogSIGSTOP: a worker stopped with SIGSTOP answers no more
// challenges and is killed within about one watchdog period, long before
// its deadline.
func TestWatchdogSIGSTOP(t *testing.T) {
	const period = 200 * time.Millisecond
	for attempt := 1; ; attempt++ {
		var stoppedAt atomic.Int64
		var worker atomic.Int32
		s, _ := newSupervisor(t, Config{Deadline: 30 * time.Second, Watchdog: period, onStart: func(pid int) {
			worker.Store(int32(pid))
			go func() {
				time.Sleep(3 * period) // let it answer a few challenges first
				stoppedAt.Store(time.Now().UnixNano())
				unix.Kill(pid, unix.SIGSTOP)
			}()
		}})
		_, err := s.Derive(context.Background(), slow, []byte("hunter2"), []byte("saltsalt"), 32)
		if !IsError(err, ErrStopped) {
			t.Fatalf("got %v, want %v", err, ErrStopped)
		}
		if stoppedAt.Load() == 0 && attempt < 3 {
			// A machine so loaded that the worker missed a challenge before
			// it was stopped: the watchdog did its job; try again.
			t.Logf("attempt %d: killed before SIGSTOP: %v", attempt, err)
			continue
		}
		detected := time.Since(time.Unix(0, stoppedAt.Load()))
		if detected > period+150*time.Millisecond {
			t.Fatalf("detected %v after SIGSTOP, want within about %v", detected, period)
		}
		t.Logf("stopped worker killed %v after SIGSTOP: %v", detected, err)
		if err := unix.Kill(int(worker.Load()), 0); err != unix.ESRCH {
			t.Fatalf("worker %d still exists (%v)", worker.Load(), err)
		}
		return
	}
}

// TestOOMKilled: a worker whose cgroup is too small for its Argon2
// memory is killed by the kernel; the caller gets RESOURCE_EXHAUSTED and
// the supervisor serves on.
func TestOOMKilled(t *testing.T) {
	s, logs := newSupervisor(t, Config{cellLimit: func(uint64) int64 { return 24 << 20 }})
	if s.cg == nil {
		t.Skipf("no writable memory cgroup on this machine (cgroup v2 with the memory controller delegated, or v1 memory): %s",
			strings.TrimSpace(logs.String()))
	}
	_, err := s.Derive(context.Background(), Params{Time: 1, MemoryKiB: 64 << 10, Threads: 1}, []byte("pw"), []byte("saltsalt"), 32)
	if !IsError(err, ErrOutOfMemory) || wire.StatusOf(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("got %v, want %v", err, ErrOutOfMemory)
	}
	t.Logf("%s cgroup: %v", s.cg.version(), err)
	if _, err := s.Derive(context.Background(), tiny, []byte("pw"), []byte("saltsalt"), 32); err != nil {
		t.Fatal(err)
	}
	ents, _ := filepath.Glob(filepath.Join(s.cg.parent, "w-*"))
	if len(ents) != 0 {
		t.Fatalf("worker cgroups left: %v", ents)
	}
}

// TestBudgetConcurrency: 20 derivations under a budget that fits 2 run
// at most 2 at a time, and all complete.
func TestBudgetConcurrency(t *testing.T) {
	p := Params{Time: 2, MemoryKiB: 8 << 10, Threads: 1}
	cost := uint64(p.MemoryKiB) + WorkerOverheadKiB
	// The kernel's view: at each worker's start, the workers alive.
	var peakLive atomic.Int32
	s, _ := newSupervisor(t, Config{BudgetKiB: 2*cost + cost/2, onStart: func(int) {
		n := int32(len(liveWorkers(t)))
		for {
			old := peakLive.Load()
			if n <= old || peakLive.CompareAndSwap(old, n) {
				break
			}
		}
	}})
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Derive(context.Background(), p, []byte(fmt.Sprint("pw", i)), []byte("saltsalt"), 32)
			errs <- err
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	st := s.Stats()
	t.Logf("peak admitted %d, peak live workers %d", st.Peak, peakLive.Load())
	if st.Peak != 2 || peakLive.Load() > 2 {
		t.Fatalf("peak %d admitted, %d live; want 2", st.Peak, peakLive.Load())
	}
	if st.Running != 0 || st.UsedKiB != 0 || st.Queued != 0 {
		t.Fatalf("left over: %+v", st)
	}
}

func TestQueueFull(t *testing.T) {
	p := Params{Time: 1 << 20, MemoryKiB: 64, Threads: 1}
	s, _ := newSupervisor(t, Config{BudgetKiB: WorkerOverheadKiB + 1<<10, MaxMemoryKiB: 1 << 10, Queue: 2,
		Deadline: 2 * time.Second})
	var wg sync.WaitGroup
	var full, timedOut atomic.Int32
	for i := 0; i < 5; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			_, err := s.Derive(context.Background(), p, []byte("pw"), []byte("saltsalt"), 32)
			switch {
			case IsError(err, ErrQueueFull):
				full.Add(1)
			case IsError(err, ErrTimeout), IsError(err, ErrClosed):
				timedOut.Add(1)
			default:
				t.Errorf("unexpected %v", err)
			}
		}()
		time.Sleep(50 * time.Millisecond) // arrive in order
	}
	time.Sleep(100 * time.Millisecond)
	if st := s.Stats(); st.Running != 1 || st.Queued != 2 {
		t.Errorf("stats %+v, want 1 running and 2 queued", st)
	}
	s.Close() // fails the queued ones, kills the running one
	wg.Wait()
	if full.Load() != 2 {
		t.Fatalf("%d refused with a full queue, want 2", full.Load())
	}
}

func TestCloseKillsAndRefuses(t *testing.T) {
	var worker atomic.Int32
	s, _ := newSupervisor(t, Config{BudgetKiB: WorkerOverheadKiB + 1<<10, MaxMemoryKiB: 1 << 10, onStart: func(pid int) { worker.Store(int32(pid)) }})
	errs := make(chan error, 2)
	for i := 0; i < 2; i++ {
		go func() {
			_, err := s.Derive(context.Background(), slow, []byte("pw"), []byte("saltsalt"), 32)
			errs <- err
		}()
	}
	for worker.Load() == 0 {
		time.Sleep(5 * time.Millisecond)
	}
	time.Sleep(50 * time.Millisecond)
	s.Close()
	for i := 0; i < 2; i++ {
		if err := <-errs; !IsError(err, ErrClosed) {
			t.Fatalf("got %v, want %v", err, ErrClosed)
		}
	}
	if _, err := s.Derive(context.Background(), tiny, []byte("pw"), []byte("saltsalt"), 32); !IsError(err, ErrClosed) {
		t.Fatalf("after Close: %v", err)
	}
	if err := unix.Kill(int(worker.Load()), 0); err != unix.ESRCH {
		t.Fatalf("worker survived Close")
	}
}

// TestNotAWorker: a program that does not speak the protocol is killed
// and reported, without hanging.
func TestNotAWorker(t *testing.T) {
	for _, c := range []struct {
		exe  string
		args []string
	}{
		{"/bin/sh", []string{"sh", "-c", "echo hello; exec sleep 30"}},
		{"/bin/sh", []string{"sh", "-c", "exit 0"}},
		{"/bin/sh", []string{"sh", "-c", "printf 'KWK\\001'; exec sleep 30"}},
		{"/nonexistent/keywarden", nil},
	} {
		s, _ := newSupervisor(t, Config{Executable: c.exe, Args: c.args, Deadline: 5 * time.Second, Watchdog: 200 * time.Millisecond})
		start := time.Now()
		_, err := s.Derive(context.Background(), tiny, []byte("pw"), []byte("saltsalt"), 32)
		if wire.StatusOf(err) == wire.Status_STATUS_OK || time.Since(start) > 4*time.Second {
			t.Errorf("%v: %v after %v", c.args, err, time.Since(start))
		}
		t.Logf("%v: %v (%v)", c.args, err, time.Since(start).Round(time.Millisecond))
	}
}

// TestCleanEnvironment: the worker gets no environment (but the number of
// processors a background worker may use) and its argv holds no secret.
func TestCleanEnvironment(t *testing.T) {
	t.Setenv("KEYWARDEN_SECRET_ENV", "hunter2")
	type seen struct{ env, cmdline []byte }
	got := make(chan seen, 1)
	s, _ := newSupervisor(t, Config{Deadline: 5 * time.Second, Watchdog: 100 * time.Millisecond, onStart: func(pid int) {
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		got <- seen{env, cmd}
	}})
	s.Derive(context.Background(), Params{Time: 200, MemoryKiB: 1024, Threads: 1}, []byte("hunter2"), []byte("saltsalt"), 32)
	g := <-got
	if want := fmt.Sprintf("GOMAXPROCS=%d\x00", backgroundProcs()); string(g.env) != want {
		t.Errorf("worker environment: %q, want %q", g.env, want)
	}
	if string(g.cmdline) != "keywarden\x00kdf-worker\x00" {
		t.Errorf("worker cmdline: %q", g.cmdline)
	}
}

// selfExec runs this test binary with args and env.
func selfExec(t *testing.T, env []string, args ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("/proc/self/exe", args...)
	cmd.Args[0] = "keywarden"
	cmd.Env = env
	return cmd
}

func TestWorkerHardening(t *testing.T) {
	out, err := selfExec(t, []string{helperEnv + "=harden"}).Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.TrimSpace(string(out)); got != "dumpable=0 core=0 oom_score_adj=1000" {
		t.Fatalf("hardened worker: %s", got)
	}
}

// workerConn drives a real worker process directly.
type workerConn struct {
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
}

func startWorker(t *testing.T) *workerConn {
	t.Helper()
	cmd := selfExec(t, []string{}, WorkerArg)
	in, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	w := &workerConn{cmd: cmd, in: in, out: bufio.NewReader(out)}
	if err := readMagic(w.out); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *workerConn) send(t *testing.T, typ byte, payload []byte) {
	t.Helper()
	if _, err := w.in.Write(appendFrame(nil, typ, payload)); err != nil {
		t.Fatal(err)
	}
}

func (w *workerConn) exitCode(t *testing.T) int {
	t.Helper()
	w.cmd.Wait()
	return w.cmd.ProcessState.ExitCode()
}

// TestWorkerOneRequest: a second request to the same worker is refused
// and the worker exits without serving either.
func TestWorkerOneRequest(t *testing.T) {
	w := startWorker(t)
	w.in.Write(magic[:])
	r := request{op: opDerive, params: Params{Time: 200, MemoryKiB: 1024, Threads: 1}, keyLen: 32, salt: []byte("saltsalt"), password: []byte("pw")}
	w.send(t, frameRequest, appendRequest(nil, &r))
	w.send(t, frameRequest, appendRequest(nil, &r))
	typ, p, _, err := readFrame(w.out, nil, maxReplyFrame)
	if err != nil || typ != frameError || !strings.Contains(string(p), "one request") {
		t.Fatalf("got %c %q %v", typ, p, err)
	}
	if code := w.exitCode(t); code != exitRefused {
		t.Fatalf("exit %d, want %d", code, exitRefused)
	}
}

// TestWorkerProtocol exercises the worker's side: watchdog answers
// chained on the seed, then the result; a malformed request; stdin
// closed early.
func TestWorkerProtocol(t *testing.T) {
	t.Run("answers", func(t *testing.T) {
		w := startWorker(t)
		w.in.Write(magic[:])
		r := request{op: opDerive, params: Params{Time: 30, MemoryKiB: 1024, Threads: 1}, keyLen: 32, salt: []byte("saltsalt"), password: []byte("pw")}
		r.seed[0] = 42
		w.send(t, frameRequest, appendRequest(nil, &r))
		prev := r.seed
		for i := 0; i < 3; i++ {
			c := bytes.Repeat([]byte{byte(i)}, challengeLen)
			w.send(t, frameChallenge, c)
			typ, p, _, err := readFrame(w.out, nil, maxReplyFrame)
			want := chain(&prev, c)
			if err != nil || typ != frameAnswer || !bytes.Equal(p, want[:]) {
				t.Fatalf("challenge %d: %c %x %v", i, typ, p, err)
			}
			prev = want
		}
		typ, p, _, err := readFrame(w.out, nil, maxReplyFrame)
		if err != nil || typ != frameResult {
			t.Fatalf("%c %v", typ, err)
		}
		res, err := decodeResult(p)
		want := argon2.IDKey([]byte("pw"), []byte("saltsalt"), 30, 1024, 1, 32)
		if err != nil || !bytes.Equal(res.out, want) || res.elapsed <= 0 {
			t.Fatalf("%+v %v", res, err)
		}
		w.in.Close()
		if code := w.exitCode(t); code != exitServed {
			t.Fatalf("exit %d", code)
		}
	})
	t.Run("malformed", func(t *testing.T) {
		w := startWorker(t)
		w.in.Write(magic[:])
		w.send(t, frameRequest, []byte("garbage"))
		typ, _, _, err := readFrame(w.out, nil, maxReplyFrame)
		if err != nil || typ != frameError {
			t.Fatalf("%c %v", typ, err)
		}
		if code := w.exitCode(t); code != exitFailed {
			t.Fatalf("exit %d", code)
		}
	})
	t.Run("abandoned", func(t *testing.T) {
		w := startWorker(t)
		w.in.Write(magic[:])
		r := request{op: opMeasure, params: slow, salt: []byte("saltsalt"), password: []byte("pw")}
		w.send(t, frameRequest, appendRequest(nil, &r))
		time.Sleep(50 * time.Millisecond)
		w.in.Close()
		done := make(chan int, 1)
		go func() { done <- w.exitCode(t) }()
		select {
		case code := <-done:
			if code != exitAbandoned {
				t.Fatalf("exit %d", code)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("a worker whose daemon went away keeps running")
		}
	})
}

// TestPdeathsig: a worker dies with the daemon that started it, even if
// the daemon is killed outright.
func TestPdeathsig(t *testing.T) {
	helper := selfExec(t, []string{helperEnv + "=pdeathsig"})
	out, err := helper.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := helper.Start(); err != nil {
		t.Fatal(err)
	}
	var pid int
	if _, err := fmt.Fscanf(bufio.NewReader(out), "worker %d\n", &pid); err != nil {
		helper.Process.Kill()
		helper.Wait()
		t.Fatal(err)
	}
	if st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err != nil || procState(string(st)) == "Z" {
		t.Fatalf("worker %d not running before its daemon is killed", pid)
	}
	helper.Process.Kill()
	helper.Wait()
	// Once killed, the orphan is reaped by init in its own time: gone or
	// a zombie both mean it is dead.
	for i := 0; i < 200; i++ {
		st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || procState(string(st)) == "Z" {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("worker %d outlived its daemon", pid)
}

// unifiedRoot finds a writable cgroup v2 mount, for the placement tests.
func unifiedRoot(t *testing.T) string {
	t.Helper()
	for _, root := range []string{"/sys/fs/cgroup", "/sys/fs/cgroup/unified"} {
		var st unix.Statfs_t
		if unix.Statfs(root, &st) == nil && st.Type == cgroup2Magic && unix.Access(root, unix.W_OK) == nil {
			return root
		}
	}
	t.Skip("no writable cgroup v2 hierarchy")
	return ""
}

// TestCgroupV2Placement: on a cgroup v2 hierarchy, a worker starts inside
// its own cell (CLONE_INTO_CGROUP) and the cells are removed. Where the
// hierarchy has no memory controller (hybrid systems), only placement is
// checked.
func TestCgroupV2Placement(t *testing.T) {
	root := unifiedRoot(t)
	var cg string
	s, _ := newSupervisor(t, Config{CgroupRoot: root, v2Unlimited: true, onStart: func(pid int) {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
		cg = unifiedPath(string(b))
	}})
	if s.cg == nil || !s.cg.v2 {
		t.Fatal("no v2 cgroup set up")
	}
	if _, err := s.Derive(context.Background(), tiny, []byte("pw"), []byte("saltsalt"), 32); err != nil {
		t.Fatal(err)
	}
	rel, _ := filepath.Rel(root, s.cg.parent)
	if !strings.HasPrefix(cg, "/"+rel+"/w-") {
		t.Fatalf("worker ran in %q, want a cell of %q", cg, "/"+rel)
	}
	parent := s.cg.parent
	s.Close()
	if _, err := os.Stat(parent); !os.IsNotExist(err) {
		t.Fatalf("parent cgroup %s left behind (%v)", parent, err)
	}
}

// TestCgroupV2Leaf: a daemon in a non-root v2 cgroup moves itself into a
// leaf "daemon" so that it may give "kdf" cells the memory controller,
// and its workers start in kdf/w-N.
func TestCgroupV2Leaf(t *testing.T) {
	root := unifiedRoot(t)
	own := filepath.Join(root, fmt.Sprintf("keywarden-test-%d", os.Getpid()))
	if err := os.Mkdir(own, 0o755); err != nil {
		t.Skipf("cannot create a cgroup: %v", err)
	}
	t.Cleanup(func() {
		os.Remove(filepath.Join(own, "kdf"))
		os.Remove(filepath.Join(own, "daemon"))
		os.Remove(own)
	})
	fd, err := unix.Open(own, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	helper := selfExec(t, []string{helperEnv + "=v2layout", "KEYWARDEN_KDF_TEST_CGROUP_ROOT=" + root})
	helper.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	out, err := helper.CombinedOutput()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	name := "/" + filepath.Base(own)
	want := fmt.Sprintf("self=%s/daemon worker=%s/kdf/w-1 err=<nil> parent_removed=true", name, name)
	if got := strings.TrimSpace(string(out)); got != want {
		t.Fatalf("got  %s\nwant %s", got, want)
	}
}

// procState returns the state field of /proc/PID/stat text.
func procState(stat string) string {
	i := strings.LastIndexByte(stat, ')')
	if f := strings.Fields(stat[i+1:]); i >= 0 && len(f) > 0 {
		return f[0]
	}
	return ""
}

// liveWorkers returns this process's children that are running workers
// (not zombies).
func liveWorkers(t testing.TB) []int {
	all, zombies := children(t)
	var out []int
	for _, pid := range all {
		if slices.Contains(zombies, pid) {
			continue
		}
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); string(cmd) == "keywarden\x00kdf-worker\x00" {
			out = append(out, pid)
		}
	}
	return out
}

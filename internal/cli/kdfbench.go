package cli

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/keywarden/keywarden"
)

// kdf bench measures what docs/performance.md ("Argon2id") reports: the
// resident memory of a daemon before and after many derivations, beside
// a Go program that runs the same derivations in its own process; and the
// fixed cost of a worker (spawn to reply) against an in-process
// derivation at tiny parameters.

type kdfBenchResult struct {
	Time      uint32 `json:"time"`
	MemoryKiB uint32 `json:"memory_kib"`
	Threads   uint8  `json:"threads"`
	Count     int    `json:"count"`

	DaemonRSSBeforeKiB uint64  `json:"daemon_rss_before_kib"`
	DaemonRSSAfterKiB  uint64  `json:"daemon_rss_after_kib"`
	DaemonPeakKiB      uint64  `json:"daemon_peak_kib"`
	DaemonMedianMS     float64 `json:"daemon_median_ms"`

	InProcess inProcessResult `json:"in_process"`

	FixedCount        int     `json:"fixed_count"`
	FixedDaemonMS     float64 `json:"fixed_daemon_median_ms"`
	FixedInProcessMS  float64 `json:"fixed_in_process_median_ms"`
	FixedMemoryKiB    uint32  `json:"fixed_memory_kib"`
	FixedDifferenceMS float64 `json:"fixed_difference_ms"`
}

type inProcessResult struct {
	RSSBeforeKiB uint64  `json:"rss_before_kib"`
	RSSAfterKiB  uint64  `json:"rss_after_kib"`
	PeakKiB      uint64  `json:"peak_kib"`
	MedianMS     float64 `json:"median_ms"`
	// FirstMS is the first derivation, in a fresh process: its memory is
	// faulted in as a worker's is every time.
	FirstMS float64 `json:"first_ms"`
}

// fixedParams are the tiny parameters of the fixed-cost measurement.
var fixedParams = keywarden.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}

func runKDFBench(e *env, args []string) error {
	f := newFlags("kdf bench", e)
	count := f.Int("count", 100, "derivations in the memory measurement")
	var a argon2Flags
	a.register(f)
	fixed := f.Int("fixed-count", 50, "derivations at m=64 KiB, t=1, p=1 in the fixed-cost measurement")
	cgroup := f.String("kdf-cgroup", "auto", "the private daemon's --kdf-cgroup `mode`")
	child := f.Bool("in-process", false, "only run the in-process half and print it as JSON (what the command starts itself as)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if a.time == 0 {
		a.time = 1
	}
	if a.memory == 0 {
		a.memory = 256 << 10
	}
	if a.threads == 0 {
		a.threads = 1
	}
	p, err := a.params()
	if err != nil {
		return err
	}
	if *count < 1 || *fixed < 1 {
		return usagef("--count and --fixed-count must be at least 1")
	}
	if *child {
		r := inProcessRSS(p, *count)
		return json.NewEncoder(e.stdout).Encode(r)
	}
	res, err := kdfBench(e, f, p, *count, *fixed, *cgroup)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, res)
	}
	mib := func(k uint64) string { return fmt.Sprintf("%.1f MiB", float64(k)/1024) }
	fmt.Fprintf(e.stdout, "Argon2id m=%d KiB, t=%d, p=%d, %d derivations one after another\n\n", p.MemoryKiB, p.Time, p.Threads, *count)
	fmt.Fprintf(e.stdout, "%-28s %12s %12s %12s %14s\n", "", "RSS before", "RSS after", "peak RSS", "median each")
	fmt.Fprintf(e.stdout, "%-28s %12s %12s %12s %11.1f ms\n", "daemon (Argon2 in workers)", mib(res.DaemonRSSBeforeKiB),
		mib(res.DaemonRSSAfterKiB), mib(res.DaemonPeakKiB), res.DaemonMedianMS)
	ip := res.InProcess
	fmt.Fprintf(e.stdout, "%-28s %12s %12s %12s %11.1f ms (the first: %.1f ms)\n", "Go program, in-process", mib(ip.RSSBeforeKiB),
		mib(ip.RSSAfterKiB), mib(ip.PeakKiB), ip.MedianMS, ip.FirstMS)
	fmt.Fprintf(e.stdout, "\ndaemon RSS grew by %s\n", mib(res.DaemonRSSAfterKiB-min(res.DaemonRSSBeforeKiB, res.DaemonRSSAfterKiB)))
	fmt.Fprintf(e.stdout, "fixed cost at m=%d KiB, t=1, p=1 (%d runs, medians): through the daemon %.2f ms, in-process %.3f ms, difference %.2f ms\n",
		res.FixedMemoryKiB, res.FixedCount, res.FixedDaemonMS, res.FixedInProcessMS, res.FixedDifferenceMS)
	return nil
}

func kdfBench(e *env, f *flags, p keywarden.Argon2Params, count, fixed int, cgroup string) (*kdfBenchResult, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "keywarden-kdf-bench-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "kw.sock")
	dargs := []string{"serve", "--dev", "--socket", sock, "--log-level", "error", "--kdf-cgroup", cgroup}
	if p.MemoryKiB > 1<<20 {
		dargs = append(dargs, "--kdf-max-memory", strconv.FormatUint(uint64(p.MemoryKiB), 10))
	}
	d := exec.Command(exe, dargs...)
	d.Env = os.Environ()
	var dlog bytes.Buffer
	d.Stderr = &dlog
	d.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := d.Start(); err != nil {
		return nil, fmt.Errorf("start the daemon: %w", err)
	}
	defer func() {
		d.Process.Signal(syscall.SIGTERM)
		d.Wait()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), f.timeout)
	defer cancel()
	var c *keywarden.Client
	for start := time.Now(); ; time.Sleep(20 * time.Millisecond) {
		if c, err = keywarden.Dial(ctx, sock); err == nil {
			break
		}
		if time.Since(start) > 10*time.Second {
			return nil, fmt.Errorf("the daemon did not come up: %v: %s", err, dlog.String())
		}
	}
	defer c.Close()
	pw := make([]byte, 16)
	// Warm up: one derivation, so that "before" includes the connection
	// and the first worker's bookkeeping.
	if _, err := c.HashPassword(ctx, pw, fixedParams); err != nil {
		return nil, err
	}
	time.Sleep(200 * time.Millisecond)
	res := &kdfBenchResult{Time: p.Time, MemoryKiB: p.MemoryKiB, Threads: p.Threads, Count: count,
		FixedCount: fixed, FixedMemoryKiB: fixedParams.MemoryKiB}
	res.DaemonRSSBeforeKiB = procStatusKiB(d.Process.Pid, "VmRSS:")
	lat := make([]time.Duration, 0, count)
	for i := 0; i < count; i++ {
		rand.Read(pw)
		t0 := time.Now()
		if _, err := c.HashPassword(ctx, pw, p); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
		if !f.json && (i+1)%10 == 0 {
			fmt.Fprintf(e.stderr, "%d/%d derivations through the daemon\n", i+1, count)
		}
	}
	res.DaemonRSSAfterKiB = procStatusKiB(d.Process.Pid, "VmRSS:")
	res.DaemonPeakKiB = procStatusKiB(d.Process.Pid, "VmHWM:")
	res.DaemonMedianMS = medianMS(lat)

	lat = lat[:0]
	for i := 0; i < fixed; i++ {
		t0 := time.Now()
		if _, err := c.HashPassword(ctx, pw, fixedParams); err != nil {
			return nil, err
		}
		lat = append(lat, time.Since(t0))
	}
	res.FixedDaemonMS = medianMS(lat)
	lat = lat[:0]
	salt := make([]byte, 16)
	for i := 0; i < fixed; i++ {
		t0 := time.Now()
		argon2.IDKey(pw, salt, fixedParams.Time, fixedParams.MemoryKiB, fixedParams.Threads, 32)
		lat = append(lat, time.Since(t0))
	}
	res.FixedInProcessMS = medianMS(lat)
	res.FixedDifferenceMS = res.FixedDaemonMS - res.FixedInProcessMS

	if !f.json {
		fmt.Fprintf(e.stderr, "running %d derivations in a separate Go process\n", count)
	}
	ch := exec.CommandContext(ctx, exe, "kdf", "bench", "--in-process", "--count", strconv.Itoa(count),
		"--time", strconv.FormatUint(uint64(p.Time), 10), "--memory", strconv.FormatUint(uint64(p.MemoryKiB), 10),
		"--threads", strconv.Itoa(int(p.Threads)))
	ch.Env = os.Environ()
	ch.Stderr = e.stderr
	out, err := ch.Output()
	if err != nil {
		return nil, fmt.Errorf("in-process run: %w", err)
	}
	if err := json.Unmarshal(out, &res.InProcess); err != nil {
		return nil, fmt.Errorf("in-process run: %w", err)
	}
	return res, nil
}

// inProcessRSS runs count derivations in this process and reports its
// resident memory before and after.
func inProcessRSS(p keywarden.Argon2Params, count int) inProcessResult {
	self := os.Getpid()
	r := inProcessResult{RSSBeforeKiB: procStatusKiB(self, "VmRSS:")}
	pw, salt := make([]byte, 16), make([]byte, 16)
	lat := make([]time.Duration, 0, count)
	for i := 0; i < count; i++ {
		rand.Read(pw)
		t0 := time.Now()
		argon2.IDKey(pw, salt, p.Time, p.MemoryKiB, p.Threads, 32)
		lat = append(lat, time.Since(t0))
	}
	r.RSSAfterKiB = procStatusKiB(self, "VmRSS:")
	r.PeakKiB = procStatusKiB(self, "VmHWM:")
	r.MedianMS = medianMS(lat)
	r.FirstMS = float64(lat[0]) / float64(time.Millisecond)
	return r
}

func medianMS(d []time.Duration) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	slices.Sort(s)
	return float64(s[len(s)/2]) / float64(time.Millisecond)
}

// procStatusKiB reads a "Name: N kB" line of /proc/PID/status.
func procStatusKiB(pid int, name string) uint64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

package kdf

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestLivenessJudgement: a worker late with its watchdog answer is given
// time while it runs or waits for a processor, and killed when it does
// neither, when it runs long without answering, or when its progress
// cannot be read.
func TestLivenessJudgement(t *testing.T) {
	const half = 100 * time.Millisecond
	run := func(p progress) progress { p.runnable = true; p.states = "R"; return p }
	for _, c := range []struct {
		name   string
		checks []progress // the challenge, then each late check
		kill   string     // "" : never killed
	}{
		{"waits for a processor, no processor time", []progress{{}, run(progress{}), run(progress{}), run(progress{})}, ""},
		{"runs a little, asleep at the checks", []progress{{}, {cpu: 10 * time.Millisecond, states: "S"}, {cpu: 20 * time.Millisecond, states: "S"}}, ""},
		{"stopped", []progress{{cpu: time.Second}, {cpu: time.Second, states: "T"}}, "neither ran nor waited"},
		{"ran, then stopped", []progress{{}, {cpu: 10 * time.Millisecond, states: "T"}, {cpu: 10 * time.Millisecond, states: "T"}}, "neither ran nor waited"},
		{"asleep for good", []progress{{}, {states: "S"}}, "threads S"},
		{"runs without answering", []progress{{}, run(progress{cpu: half}), run(progress{cpu: 2 * half})}, "without answering"},
	} {
		t.Run(c.name, func(t *testing.T) {
			i := 0
			l := liveness{pid: 1, half: half, procs: 2, read: func(int) (progress, error) {
				p := c.checks[min(i, len(c.checks)-1)]
				i++
				return p, nil
			}}
			l.challenged()
			why := ""
			for range len(c.checks) - 1 {
				if why = l.late(); why != "" {
					break
				}
			}
			switch {
			case c.kill == "" && why != "":
				t.Fatalf("killed: %s", why)
			case c.kill != "" && !strings.Contains(why, c.kill):
				t.Fatalf("got %q, want a kill saying %q", why, c.kill)
			}
		})
	}
	t.Run("unreadable", func(t *testing.T) {
		l := liveness{pid: 1, half: half, procs: 2, read: func(int) (progress, error) { return progress{}, errors.New("no /proc") }}
		l.challenged()
		if why := l.late(); !strings.Contains(why, "unanswered") {
			t.Fatalf("a late worker whose progress cannot be read: %q", why)
		}
	})
}

// TestReadProgress: the kernel's view of a running, a stopped and a
// sleeping process.
func TestReadProgress(t *testing.T) {
	before, err := readProgress(os.Getpid())
	if err != nil || !before.runnable {
		t.Fatalf("this process: %+v, %v", before, err)
	}
	for p := before; p.cpu < before.cpu+2*clockTick; p, _ = readProgress(os.Getpid()) {
		spin++ // until the processor time grows
	}
	cmd := exec.Command("/bin/sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	pid := cmd.Process.Pid
	waitState(t, pid, "S")
	if p, err := readProgress(pid); err != nil || p.runnable || p.states != "S" {
		t.Fatalf("sleeping: %+v, %v", p, err)
	}
	unix.Kill(pid, unix.SIGSTOP)
	waitState(t, pid, "T")
	if p, err := readProgress(pid); err != nil || p.runnable || p.states != "T" {
		t.Fatalf("stopped: %+v, %v", p, err)
	}
}

// TestWatchdogWaitsForProcessor: a worker that gets a processor for two
// milliseconds in every half second (CFS bandwidth control, as on a busy
// machine) answers its challenges late but makes progress; it is not
// killed, and its derivation completes. Stopped, it is killed.
//
// A worker needs more than twice the quota to start and derive, so it is
// throttled at least twice; the second throttle starts as the quota is
// refilled and lasts nearly half a second, in which at least two
// challenges go out and one of them is answered later than half a
// watchdog period. (With a shorter throttle, whether a challenge falls in
// it was a matter of phase.)
func TestWatchdogWaitsForProcessor(t *testing.T) {
	const period = 200 * time.Millisecond
	throttled := cpuThrottle(t, 500*time.Millisecond, 2*time.Millisecond)
	// On a machine so busy that the supervisor's own checks run late, a
	// run may see every answer in time: it is tried again, up to three
	// times, before the test says it could not slow the worker down.
	for attempt := 1; ; attempt++ {
		s, logs := newSupervisor(t, Config{Deadline: 30 * time.Second, Watchdog: period, onStart: throttled})
		start := time.Now()
		_, err := s.Derive(context.Background(), tiny, []byte("pw"), []byte("saltsalt"), 32)
		if err != nil {
			t.Fatalf("a throttled worker: %v\n%s", err, logs)
		}
		took := time.Since(start)
		if strings.Contains(logs.String(), "late with its watchdog answer but making progress") {
			t.Logf("a throttled worker served in %v", took.Round(time.Millisecond))
			break
		}
		if attempt == 3 {
			t.Fatalf("the worker answered every challenge within %v (took %v): the test did not slow it down\n%s", period/2, took, logs)
		}
	}

	// Throttled and stopped: no progress, killed.
	var stoppedAt atomic.Int64
	s, _ := newSupervisor(t, Config{Deadline: 30 * time.Second, Watchdog: period, onStart: func(pid int) {
		throttled(pid)
		go func() {
			time.Sleep(period)
			unix.Kill(pid, unix.SIGSTOP)
			// A throttled process stops only once it next gets a
			// processor, up to a throttle period later: the watchdog's
			// time counts from when the kernel shows it stopped.
			sent := time.Now()
			for time.Since(sent) < 2*time.Second {
				b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
				if st := procState(string(b)); err != nil || st == "T" || st == "Z" {
					break
				}
				time.Sleep(time.Millisecond)
			}
			stoppedAt.Store(time.Now().UnixNano())
		}()
	}})
	_, err := s.Derive(context.Background(), slow, []byte("pw"), []byte("saltsalt"), 32)
	if !IsError(err, ErrStopped) || stoppedAt.Load() == 0 {
		t.Fatalf("a throttled worker, stopped: %v", err)
	}
	if d := time.Since(time.Unix(0, stoppedAt.Load())); d > period+300*time.Millisecond {
		t.Fatalf("killed %v after SIGSTOP; the period is %v", d, period)
	}
	t.Logf("throttled and stopped: %v", err)
}

// TestWatchdogMuteWorker: a worker that computes but answers no
// challenge is killed once it has run for half a period on each of its
// processors (on a busy machine that takes longer: what counts is its
// processor time), before its deadline.
func TestWatchdogMuteWorker(t *testing.T) {
	const period = 200 * time.Millisecond
	s, _ := newSupervisor(t, Config{Args: []string{"keywarden", WorkerArg, "mute"}, Deadline: time.Minute, Watchdog: period})
	start := time.Now()
	_, err := s.Derive(context.Background(), tiny, []byte("pw"), []byte("saltsalt"), 32)
	if !IsError(err, ErrStopped) || !strings.Contains(err.Error(), "without answering") {
		t.Fatalf("got %v, want %v for running without answering", err, ErrStopped)
	}
	t.Logf("%v after %v", err, time.Since(start).Round(time.Millisecond))
}

// cpuThrottle returns a function that limits a process to quota of
// processor time in every period, with CFS bandwidth control in a cgroup
// v1 cpu hierarchy; it skips the test where there is none to write.
func cpuThrottle(t *testing.T, period, quota time.Duration) func(pid int) {
	t.Helper()
	root := "/sys/fs/cgroup/cpu"
	var st unix.Statfs_t
	if unix.Statfs(root, &st) != nil || st.Type != cgroup1Magic {
		t.Skip("no cgroup v1 cpu hierarchy to throttle a worker with")
	}
	dir := filepath.Join(root, fmt.Sprintf("keywarden-test-throttle-%d", os.Getpid()))
	if err := os.Mkdir(dir, 0o755); err != nil && !os.IsExist(err) {
		t.Skipf("cannot create a cpu cgroup: %v", err)
	}
	t.Cleanup(func() {
		for range 100 {
			if err := os.Remove(dir); err == nil || os.IsNotExist(err) {
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	})
	if err := writeFile(filepath.Join(dir, "cpu.cfs_period_us"), strconv.FormatInt(period.Microseconds(), 10)); err != nil {
		t.Skipf("no CFS bandwidth control: %v", err)
	}
	if err := writeFile(filepath.Join(dir, "cpu.cfs_quota_us"), strconv.FormatInt(quota.Microseconds(), 10)); err != nil {
		t.Skipf("no CFS bandwidth control: %v", err)
	}
	return func(pid int) {
		if err := writeFile(filepath.Join(dir, "cgroup.procs"), strconv.Itoa(pid)); err != nil {
			t.Errorf("throttle worker %d: %v", pid, err)
		}
	}
}

// waitState waits until process pid is in state st.
func waitState(t *testing.T, pid int, st string) {
	t.Helper()
	for range 500 {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if procState(string(b)) == st {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
	t.Fatalf("process %d never in state %s", pid, st)
}

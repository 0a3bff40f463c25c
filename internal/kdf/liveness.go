package kdf

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"time"
)

// liveness judges a worker that has left a watchdog challenge unanswered
// at a check (the checks are half a period apart). A late answer is not a
// stopped worker: on a busy machine a worker may wait for a processor for
// longer than that, and a background worker (low priority, shortest time
// slice) waits longest. So the watchdog measures the worker's progress,
// not the wall clock. While a challenge is unanswered the worker is given
// time as long as, between two checks, it ran (its processor time grew)
// or one of its threads is waiting for a processor (runnable). It is
// killed when
//
//   - it neither ran nor waited for a processor since the last check:
//     it is stopped (SIGSTOP, a debugger), asleep for good (a wedged
//     runtime) or stuck in the kernel (thrashing); or
//   - it ran for half a period on each processor it may use without
//     answering: it runs, but its answering is broken; or
//   - its progress cannot be read (no /proc): then, as without this, a
//     challenge unanswered at a check is enough.
//
// The deadline bounds a slow worker in any case.
type liveness struct {
	pid   int
	half  time.Duration // between checks: half the watchdog period
	procs int           // the processors the worker may use (its GOMAXPROCS)
	read  func(pid int) (progress, error)

	at    progress // when the challenge was sent
	atErr error
	last  progress // at the previous check, or the challenge
}

// progress is what a worker has done, as the kernel sees it.
type progress struct {
	cpu      time.Duration // processor time of all its threads, ended ones included
	runnable bool          // one of its threads is running or waiting for a processor
	states   string        // its threads' distinct states (ps(1) letters), for the log
}

// challenged notes the worker's progress when a challenge is sent.
func (l *liveness) challenged() {
	l.at, l.atErr = l.read(l.pid)
	l.last = l.at
}

// late is a check with the challenge unanswered: it returns why the
// worker must be killed, or "" if it is making progress.
func (l *liveness) late() string {
	p, err := l.read(l.pid)
	if err == nil {
		err = l.atErr
	}
	if err != nil {
		return fmt.Sprintf("left a watchdog challenge unanswered for %v (its progress cannot be read: %v)", l.half, err)
	}
	ran := p.cpu - l.at.cpu
	switch {
	case ran >= l.half*time.Duration(max(1, l.procs)):
		return fmt.Sprintf("ran for %v of processor time without answering a watchdog challenge", ran)
	case p.cpu > l.last.cpu || p.runnable:
		l.last = p
		return ""
	}
	return fmt.Sprintf("made no progress in %v with a watchdog challenge unanswered: it neither ran nor waited for a processor (threads %s)", l.half, p.states)
}

// clockTick is the unit of the processor times in /proc/PID/stat
// (USER_HZ, 100 on every Linux architecture).
const clockTick = 10 * time.Millisecond

// readProgress reads process pid's progress from /proc: the processor
// time of the whole process (/proc/PID/stat counts ended threads too) and
// the state of each thread.
func readProgress(pid int) (progress, error) {
	f, err := statFields(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return progress{}, err
	}
	// After the command: state is field 3, utime 14, stime 15 (proc(5)).
	if len(f) < 13 {
		return progress{}, errors.New("short /proc stat")
	}
	utime, err1 := strconv.ParseUint(f[11], 10, 64)
	stime, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return progress{}, errors.New("malformed /proc stat")
	}
	p := progress{cpu: time.Duration(utime+stime) * clockTick}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return progress{}, err
	}
	for _, t := range tasks {
		tf, err := statFields(fmt.Sprintf("/proc/%d/task/%s/stat", pid, t.Name()))
		if err != nil || len(tf) == 0 {
			continue // the thread ended meanwhile
		}
		st := tf[0]
		if st == "R" {
			p.runnable = true
		}
		if !strings.Contains(p.states, st) {
			p.states += st
		}
	}
	return p, nil
}

// statFields returns the fields of a /proc stat file after the command
// (which may hold spaces and parentheses), the state first.
func statFields(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return nil, errors.New("malformed /proc stat")
	}
	return strings.Fields(s[i+1:]), nil
}

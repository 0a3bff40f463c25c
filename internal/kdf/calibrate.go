package kdf

import (
	"bufio"
	"context"
	"math"
	"os"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Calibration finds Argon2id parameters that take a target time on this
// machine, as cryptsetup's --iter-time does: memory first, up to a cap,
// then passes (RFC 9106 prefers memory to passes). Each step measures one
// candidate in a worker; the steps are driven by the client, one request
// each, so that it can show progress (docs/kdf.md, "Calibration").
const (
	// MaxCalibrationSteps bounds the measurements of one calibration.
	MaxCalibrationSteps = 8
	// MaxCalibrationTarget bounds the target time.
	MaxCalibrationTarget = time.Minute
	// calibrationProbeKiB is the memory of the first measurement.
	calibrationProbeKiB = 16 << 10
)

// Trial is one measured candidate.
type Trial struct {
	Params  Params
	Elapsed time.Duration
}

// Next returns the candidate to measure after prev (nil before the first
// measurement), or done when prev is the answer: it took the target
// within 10 % under the cap, or no better candidate exists, or step
// reached MaxCalibrationSteps. capKiB bounds the memory and threads is
// fixed.
func Next(target time.Duration, capKiB uint32, threads uint8, prev *Trial, step int) (next Params, done bool) {
	minMem := 8 * uint32(threads)
	if prev == nil {
		return Params{Time: 1, MemoryKiB: roundMemory(min(capKiB, calibrationProbeKiB), minMem, threads), Threads: threads}, false
	}
	e := max(prev.Elapsed, time.Microsecond)
	onTarget := math.Abs(float64(e-target)) <= float64(target)/10 && prev.Params.MemoryKiB <= capKiB
	if onTarget || step >= MaxCalibrationSteps {
		return prev.Params, true
	}
	// Argon2's time grows about linearly with passes × memory.
	work := float64(prev.Params.Time) * float64(prev.Params.MemoryKiB) * float64(target) / float64(e)
	if work <= float64(capKiB) {
		next = Params{Time: 1, MemoryKiB: roundMemory(uint32(work), minMem, threads), Threads: threads}
	} else {
		t := math.Round(work / float64(capKiB))
		next = Params{Time: uint32(min(max(t, 1), MaxTime)), MemoryKiB: roundMemory(capKiB, minMem, threads), Threads: threads}
	}
	if next == prev.Params {
		return prev.Params, true
	}
	return next, false
}

// roundMemory rounds m down to whole MiB above 1 MiB (or to a multiple of
// 4 KiB per lane below), and to at least min.
func roundMemory(m, min uint32, threads uint8) uint32 {
	if m >= 1<<10 {
		m &^= 1<<10 - 1
	} else if q := 4 * uint32(threads); q > 0 {
		m -= m % q
	}
	return max(m, min)
}

// MemoryCap returns the most memory a calibrated derivation may use: the
// smallest of want (0: no wish), the configured maximum per derivation,
// half of the machine's RAM and half of the memory available now.
func (s *Supervisor) MemoryCap(want uint32) uint32 {
	c := uint64(s.cfg.MaxMemoryKiB)
	if want > 0 {
		c = min(c, uint64(want))
	}
	if t := memTotalKiB(); t > 0 {
		c = min(c, t/2)
	}
	if a := memAvailableKiB(); a > 0 {
		c = min(c, a/2)
	}
	return uint32(c)
}

// DefaultCalibrationThreads is the lanes a calibration uses unless told:
// min(4, CPUs), as cryptsetup does.
func DefaultCalibrationThreads() uint8 { return uint8(min(4, runtime.NumCPU())) }

// CalibrationStep is the outcome of one calibration request.
type CalibrationStep struct {
	Trial Trial
	Done  bool
	// CapKiB is the memory cap in force.
	CapKiB uint32
	// Step is the number of measurements made so far, counting this one.
	Step int
}

// Calibrate performs one step of a calibration: it picks the candidate
// after prev (see Next) and measures it in a worker, or, when prev is
// already the answer, returns it without measuring.
func (s *Supervisor) Calibrate(ctx context.Context, target time.Duration, maxMemoryKiB uint32, threads uint8, prev *Trial, step int) (CalibrationStep, error) {
	if target < time.Millisecond || target > MaxCalibrationTarget {
		return CalibrationStep{}, invalid("calibration: the target time must be 1 ms to %v", MaxCalibrationTarget)
	}
	if target > s.cfg.Deadline/2 {
		return CalibrationStep{}, invalid("calibration: the target time must be at most half the daemon's KDF deadline (%v)", s.cfg.Deadline)
	}
	if threads == 0 {
		threads = DefaultCalibrationThreads()
	}
	capKiB := s.MemoryCap(maxMemoryKiB)
	if capKiB < 8*uint32(threads) {
		return CalibrationStep{}, invalid("calibration: the memory cap of %d KiB is too small for %d threads", capKiB, threads)
	}
	if step < 0 || step > MaxCalibrationSteps || (prev == nil) != (step == 0) {
		return CalibrationStep{}, invalid("calibration: bad step")
	}
	if prev != nil {
		// Not checked against the cap, which moves with the memory
		// available: Next keeps the next candidate under it.
		if prev.Params.Threads != threads || prev.Params.Check(s.cfg.MaxMemoryKiB) != nil {
			return CalibrationStep{}, invalid("calibration: the previous measurement does not belong to this calibration")
		}
	}
	next, done := Next(target, capKiB, threads, prev, step)
	if done {
		return CalibrationStep{Trial: *prev, Done: true, CapKiB: capKiB, Step: step}, nil
	}
	m, err := s.Measure(ctx, next)
	if err != nil {
		return CalibrationStep{}, err
	}
	t := Trial{Params: next, Elapsed: m.Elapsed}
	step++
	// Done already if this one is on target or the last allowed.
	_, done = Next(target, capKiB, threads, &t, step)
	return CalibrationStep{Trial: t, Done: done, CapKiB: capKiB, Step: step}, nil
}

func memTotalKiB() uint64     { return meminfo("MemTotal:") }
func memAvailableKiB() uint64 { return meminfo("MemAvailable:") }

// meminfo reads one "Name: N kB" line of /proc/meminfo; 0 if absent.
func meminfo(name string) uint64 {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name); ok {
			n, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return 0
}

package kdf

import (
	"context"
	"testing"
	"time"
)

// model is a machine on which Argon2id takes rate per KiB per pass.
func model(p Params, perKiB time.Duration) time.Duration {
	return time.Duration(p.Time) * time.Duration(p.MemoryKiB) * perKiB
}

func TestNextConverges(t *testing.T) {
	for _, c := range []struct {
		target time.Duration
		cap    uint32
		perKiB time.Duration
		want   Params // roughly
	}{
		// Plenty of memory: t=1, memory grows to the target.
		{time.Second, 4 << 20, time.Microsecond, Params{1, 1000 << 10 &^ (1<<10 - 1), 2}},
		// Memory capped: passes grow.
		{2 * time.Second, 256 << 10, time.Microsecond, Params{8, 256 << 10, 2}},
		// A tiny target on a slow machine: less memory than the probe.
		{10 * time.Millisecond, 1 << 20, time.Microsecond, Params{1, 10 << 10, 2}},
	} {
		var prev *Trial
		var got Params
		steps := 0
		for step := 0; ; step++ {
			next, done := Next(c.target, c.cap, 2, prev, step)
			if done {
				got = next
				break
			}
			if next.Check(c.cap) != nil {
				t.Fatalf("candidate %v breaks the cap %d", next, c.cap)
			}
			prev = &Trial{Params: next, Elapsed: model(next, c.perKiB)}
			steps++
		}
		el := model(got, c.perKiB)
		if el < c.target*9/10 || el > c.target*11/10 {
			t.Errorf("target %v: %v takes %v", c.target, got, el)
		}
		if got.Time != c.want.Time || got.MemoryKiB > c.cap {
			t.Errorf("target %v cap %d: got %v, want about %v", c.target, c.cap, got, c.want)
		}
		if steps > MaxCalibrationSteps {
			t.Errorf("%d steps", steps)
		}
		t.Logf("target %v, cap %d KiB: %v in %d measurements (%v)", c.target, c.cap, got, steps, el)
	}
}

// TestNextStops: a machine whose time does not follow the model still
// ends within MaxCalibrationSteps.
func TestNextStops(t *testing.T) {
	var prev *Trial
	for step := 0; step <= MaxCalibrationSteps+1; step++ {
		next, done := Next(time.Second, 1<<20, 1, prev, step)
		if done {
			return
		}
		el := 10 * time.Millisecond
		if step%2 == 1 {
			el = 10 * time.Second
		}
		prev = &Trial{Params: next, Elapsed: el}
	}
	t.Fatal("calibration did not stop")
}

func TestCalibrateStep(t *testing.T) {
	s, _ := newSupervisor(t, Config{MaxMemoryKiB: 64 << 10})
	st, err := s.Calibrate(context.Background(), 30*time.Millisecond, 32<<10, 1, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	if st.Step != 1 || st.CapKiB != 32<<10 || st.Trial.Params.MemoryKiB != 16<<10 || st.Trial.Elapsed <= 0 {
		t.Fatalf("first step: %+v", st)
	}
	for !st.Done {
		prev := st.Trial
		if st, err = s.Calibrate(context.Background(), 30*time.Millisecond, 32<<10, 1, &prev, st.Step); err != nil {
			t.Fatal(err)
		}
		if st.Trial.Params.MemoryKiB > 32<<10 {
			t.Fatalf("over the cap: %+v", st)
		}
	}
	t.Logf("30 ms within 32 MiB: %v, %v, %d steps", st.Trial.Params, st.Trial.Elapsed, st.Step)
	if c := s.MemoryCap(0); c > 64<<10 || c == 0 {
		t.Fatalf("cap %d", c)
	}
}

func TestBudgetFIFO(t *testing.T) {
	b := &budget{total: 10, maxQueue: 10}
	ctx := context.Background()
	if err := b.acquire(ctx, 8); err != nil {
		t.Fatal(err)
	}
	order := make(chan int, 3)
	// A large waiter first, then a small one that would fit now (8+2):
	// the small one must not overtake.
	go func() { b.acquire(ctx, 9); order <- 9 }()
	time.Sleep(20 * time.Millisecond)
	go func() { b.acquire(ctx, 2); order <- 2 }()
	time.Sleep(20 * time.Millisecond)
	select {
	case n := <-order:
		t.Fatalf("%d admitted before room was made", n)
	default:
	}
	b.release(ctx, 8)
	if n := <-order; n != 9 {
		t.Fatalf("admitted %d first, want 9", n)
	}
	time.Sleep(20 * time.Millisecond)
	if st := b.stats(); st.Queued != 1 || st.Running != 1 || st.UsedKiB != 9 {
		t.Fatalf("%+v", st)
	}
	b.release(ctx, 9)
	if n := <-order; n != 2 {
		t.Fatalf("admitted %d", n)
	}
	// A waiter whose context ends leaves the queue.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := b.acquire(cctx, 9); err == nil {
		t.Fatal("admitted over the budget")
	}
	b.release(ctx, 2)
	if st := b.stats(); st.Queued != 0 || st.Running != 0 || st.UsedKiB != 0 {
		t.Fatalf("%+v", st)
	}
}

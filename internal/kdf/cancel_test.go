package kdf

import (
	"context"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestCancelStopsQueuedAndRunning: when the caller's context ends (its
// client hung up), its running derivation's worker is killed and its
// queued ones end, at once, and none of them starts a worker; nor does a
// derivation asked for with a context already ended, though the budget
// has room for it.
func TestCancelStopsQueuedAndRunning(t *testing.T) {
	var started, worker atomic.Int32
	s, _ := newSupervisor(t, Config{BudgetKiB: WorkerOverheadKiB + 1<<10, MaxMemoryKiB: 1 << 10,
		onStart: func(pid int) { started.Add(1); worker.Store(int32(pid)) }})
	ctx, cancel := context.WithCancel(ForTenant(context.Background(), 1000, false))
	errs := make(chan error, 3)
	for range 3 {
		go func() {
			_, err := s.Derive(ctx, slow, []byte("pw"), []byte("saltsalt"), 32)
			errs <- err
		}()
	}
	for deadline := time.Now().Add(10 * time.Second); started.Load() == 0 || s.Stats().Queued != 2; {
		if time.Now().After(deadline) {
			t.Fatalf("not one running and two queued: %+v", s.Stats())
		}
		time.Sleep(5 * time.Millisecond)
	}
	cancel()
	begun := time.Now()
	for range 3 {
		if err := <-errs; !IsError(err, ErrClosed) {
			t.Fatalf("got %v, want %v", err, ErrClosed)
		}
	}
	if took := time.Since(begun); took > time.Second {
		t.Fatalf("derivations ended %v after their context", took)
	}
	if err := unix.Kill(int(worker.Load()), 0); err != unix.ESRCH {
		t.Fatalf("the running worker outlived its context: %v", err)
	}
	if _, err := s.Derive(ctx, tiny, []byte("pw"), []byte("saltsalt"), 32); !IsError(err, ErrClosed) {
		t.Fatalf("with an ended context: %v", err)
	}
	if n := started.Load(); n != 1 {
		t.Fatalf("%d workers started, want 1: a derivation whose context had ended started one", n)
	}
	if st := s.Stats(); st.Running != 0 || st.Queued != 0 {
		t.Fatalf("left over: %+v", st)
	}
}

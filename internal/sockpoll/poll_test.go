package sockpoll

import (
	"sync/atomic"
	"testing"
	"time"
)

// vain runs one wait of p that polls until its spin has passed.
func vain(t *testing.T, p *Poll) {
	t.Helper()
	p.Start()
	if !p.Polling() {
		t.Fatal("the wait does not poll")
	}
	for p.Again() {
	}
	p.Done()
}

// found runs one wait of p whose first read finds the request, and
// reports whether it polled.
func found(p *Poll) bool {
	p.Start()
	polling := p.Polling()
	p.Done()
	return polling
}

// A poll in vain makes the next waits sleep at once, twice as many after
// each vain poll, up to maxBackoff; a poll that finds its request lets
// the next waits poll again.
func TestPollBacksOffAfterVainPolls(t *testing.T) {
	p := Poll{Spin: time.Microsecond, Gap: time.Minute}
	for _, want := range []int{1, 2, 4, 8, 16, 32, 64, 64} {
		vain(t, &p)
		for i := range want {
			if found(&p) {
				t.Fatalf("wait %d of %d after a vain poll polls", i+1, want)
			}
		}
	}
	p.Spin = time.Minute
	if !found(&p) {
		t.Fatal("the wait after the backoff does not poll")
	}
	if !found(&p) || p.Skipping() != 0 {
		t.Fatal("a poll that found its request leaves a backoff")
	}
}

// A wait whose reads are further apart than Gap (the goroutine lost its
// processor) ends its poll as one in vain.
func TestPollGapIsVain(t *testing.T) {
	p := Poll{Spin: time.Minute, Gap: time.Millisecond}
	p.Start()
	time.Sleep(5 * time.Millisecond)
	if p.Again() {
		t.Fatal("a poll goes on after a gap")
	}
	p.Done()
	if p.Skipping() != 1 {
		t.Fatalf("%d waits to sleep at once after a gap, want 1", p.Skipping())
	}
}

// A wait polls only while no other connection is busy, and stops as soon
// as one is; such a wait, however long, leaves no backoff.
func TestPollOnlyWhileIdle(t *testing.T) {
	var busy atomic.Int32
	p := Poll{Spin: time.Minute, Gap: time.Minute, Busy: &busy}
	busy.Store(1)
	p.Start()
	if p.Polling() || p.Again() {
		t.Fatal("a wait polls while another connection is busy")
	}
	time.Sleep(time.Millisecond) // a long sleep
	p.Done()
	busy.Store(0)
	p.Start()
	if !p.Again() {
		t.Fatal("the wait after a long sleep does not poll")
	}
	busy.Store(1)
	if p.Again() {
		t.Fatal("a poll goes on once another connection is busy")
	}
	p.Done()
	if p.Skipping() != 0 {
		t.Fatal("a poll stopped by another's work leaves a backoff")
	}
}

// A Poll with no spin never polls.
func TestPollZeroSpinNeverPolls(t *testing.T) {
	var p Poll
	p.Start()
	if p.Polling() || p.Again() {
		t.Fatal("a Poll without a spin polls")
	}
	p.Done()
}

// Polling allocates nothing.
func TestPollAllocatesNothing(t *testing.T) {
	var busy atomic.Int32
	p := New(&busy)
	allocs := testing.AllocsPerRun(100, func() {
		p.Start()
		for range 20 {
			p.Again()
		}
		p.Done()
	})
	if allocs != 0 {
		t.Errorf("%v allocations a wait", allocs)
	}
}

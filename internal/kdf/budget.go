package kdf

import (
	"context"
	"sync"
)

// budget admits derivations while the sum of their memory costs fits,
// and queues the others in arrival order. The queue is strictly first in,
// first out: a small derivation never overtakes a large one waiting at
// the head, so a large one cannot starve.
type budget struct {
	// mu guards every field below; it is never held while waiting.
	mu       sync.Mutex
	total    uint64 // KiB
	used     uint64 // KiB, of the derivations admitted
	running  int
	peak     int // most derivations admitted at once
	queue    []*waiter
	maxQueue int
	closed   bool
}

type waiter struct {
	cost  uint64
	ready chan struct{} // closed when admitted
	// admitted is set under budget.mu when the waiter leaves the queue
	// with its cost counted.
	admitted bool
}

// acquire admits a derivation of cost KiB, waiting in the queue if the
// budget is taken. It fails with ErrQueueFull when the queue is full,
// ErrClosed once the budget is closed, and ctx's error if ctx ends first.
// Every successful acquire must be paired with one release(cost).
func (b *budget) acquire(ctx context.Context, cost uint64) error {
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	if len(b.queue) == 0 && b.used+cost <= b.total {
		b.admitLocked(cost)
		b.mu.Unlock()
		return nil
	}
	if len(b.queue) >= b.maxQueue {
		b.mu.Unlock()
		return ErrQueueFull
	}
	w := &waiter{cost: cost, ready: make(chan struct{})}
	b.queue = append(b.queue, w)
	b.mu.Unlock()

	select {
	case <-w.ready:
		if w.admitted {
			return nil
		}
		return ErrClosed
	case <-ctx.Done():
		b.mu.Lock()
		defer b.mu.Unlock()
		if w.admitted {
			// Admitted just as ctx ended: give the room back.
			b.releaseLocked(cost)
		} else {
			b.removeLocked(w)
			b.grantLocked() // the head may have changed
		}
		return ctx.Err()
	}
}

func (b *budget) admitLocked(cost uint64) {
	b.used += cost
	b.running++
	b.peak = max(b.peak, b.running)
}

// release returns the room of a derivation that acquire admitted.
func (b *budget) release(cost uint64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.releaseLocked(cost)
}

func (b *budget) releaseLocked(cost uint64) {
	b.used -= cost
	b.running--
	b.grantLocked()
}

// grantLocked admits waiters from the head of the queue while they fit.
func (b *budget) grantLocked() {
	for len(b.queue) > 0 && !b.closed {
		w := b.queue[0]
		if b.used+w.cost > b.total {
			return
		}
		b.queue[0] = nil
		b.queue = b.queue[1:]
		b.admitLocked(w.cost)
		w.admitted = true
		close(w.ready)
	}
}

func (b *budget) removeLocked(w *waiter) {
	for i, q := range b.queue {
		if q == w {
			b.queue = append(b.queue[:i], b.queue[i+1:]...)
			return
		}
	}
}

// close refuses new derivations and fails every waiting one with
// ErrClosed. Admitted ones still release normally.
func (b *budget) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for _, w := range b.queue {
		close(w.ready)
	}
	b.queue = nil
}

// Stats is a snapshot of the supervisor's admission state.
type Stats struct {
	// Running derivations (admitted; their workers start or run).
	Running int
	// Peak is the most derivations that ran at once since start.
	Peak int
	// Queued derivations waiting for room in the budget.
	Queued int
	// UsedKiB of BudgetKiB is taken by the running derivations.
	UsedKiB, BudgetKiB uint64
}

func (b *budget) stats() Stats {
	b.mu.Lock()
	defer b.mu.Unlock()
	return Stats{Running: b.running, Peak: b.peak, Queued: len(b.queue), UsedKiB: b.used, BudgetKiB: b.total}
}

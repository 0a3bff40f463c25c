package kdf

import (
	"context"
	"sync"
)

// budget admits derivations while the sum of their memory costs fits,
// and queues the others.
//
// Derivations are queued by who asks (ForTenant: the daemon's uids), and
// the tenants take turns: when room is made, it goes to the head of the
// next tenant's queue, whatever the length of the others', so that a
// tenant who floods the queue delays another by at most one derivation
// of its own. A tenant may have at most perTenantRunning derivations
// running and perTenantQueue waiting (exempt tenants: any). Within the
// turns the order is strict: the derivation whose turn it is waits for
// room even if a smaller one would fit, so a large one cannot starve.
//
// Priority derivations (Priority: unsealing the master key) go before
// every tenant's: they wait only for room, which the derivations already
// running make, and while one waits no other is admitted.
type budget struct {
	// mu guards every field below; it is never held while waiting.
	mu               sync.Mutex
	total            uint64 // KiB
	used             uint64 // KiB, of the derivations admitted
	running          int
	peak             int // most derivations admitted at once
	maxQueue         int // waiting derivations of tenants, all together
	perTenantQueue   int // 0: no limit
	perTenantRunning int // 0: no limit
	queued           int // waiting derivations of tenants
	priority         []*waiter
	tenants          map[claim]*tenant
	ring             []*tenant // tenants with derivations waiting, in turn order
	next             int       // ring index of the next tenant's turn
	closed           bool
}

// tenant is the queue of one tenant.
type tenant struct {
	claim   claim
	running int
	queue   []*waiter
}

type waiter struct {
	cost  uint64
	t     *tenant       // nil: priority
	ready chan struct{} // closed when admitted
	// admitted is set under budget.mu when the waiter leaves the queue
	// with its cost counted.
	admitted bool
}

// claim is who asks for a derivation, as the context says.
type claim struct {
	id       uint32
	exempt   bool // no per-tenant limits
	priority bool
}

type claimKey struct{}

// ForTenant returns a context for derivations asked for by tenant id (a
// uid): each tenant queues apart from the others and they take turns.
// An exempt tenant (an administrator) is not held to the limits of one
// tenant. Derivations whose context names no tenant share one exempt
// tenant.
func ForTenant(ctx context.Context, id uint32, exempt bool) context.Context {
	return context.WithValue(ctx, claimKey{}, claim{id: id, exempt: exempt})
}

// Priority returns a context for derivations that go before every
// tenant's (unsealing the master key): they wait only for the derivations
// already running, and their workers run at the daemon's own priority.
func Priority(ctx context.Context) context.Context {
	return context.WithValue(ctx, claimKey{}, claim{priority: true})
}

// noTenant is the tenant of derivations whose context names none.
var noTenant = claim{id: ^uint32(0), exempt: true}

func claimOf(ctx context.Context) claim {
	if c, ok := ctx.Value(claimKey{}).(claim); ok {
		return c
	}
	return noTenant
}

// acquire admits a derivation of cost KiB for the claim in ctx, waiting
// in its queue if need be. It fails with ErrQueueFull when the queue (or
// the tenant's share of it) is full, ErrClosed once the budget is closed,
// and ctx's error if ctx ends first. Every successful acquire must be
// paired with one release(ctx, cost), with the same ctx.
func (b *budget) acquire(ctx context.Context, cost uint64) error {
	c := claimOf(ctx)
	b.mu.Lock()
	if b.closed {
		b.mu.Unlock()
		return ErrClosed
	}
	w := &waiter{cost: cost, ready: make(chan struct{})}
	if c.priority {
		b.priority = append(b.priority, w)
	} else {
		t := b.tenants[c]
		if t == nil {
			t = &tenant{claim: c}
			if b.tenants == nil {
				b.tenants = make(map[claim]*tenant)
			}
			b.tenants[c] = t
		}
		if b.queued >= b.maxQueue || (!c.exempt && b.perTenantQueue > 0 && len(t.queue) >= b.perTenantQueue) {
			// Nothing waits now that could not: the turn order lets a
			// derivation run at once whenever it can.
			if !b.fitsNowLocked(t, cost) {
				b.dropIdleLocked(t)
				b.mu.Unlock()
				return ErrQueueFull
			}
		}
		w.t = t
		if len(t.queue) == 0 {
			b.ring = append(b.ring, t)
		}
		t.queue = append(t.queue, w)
		b.queued++
	}
	b.grantLocked()
	admitted := w.admitted
	b.mu.Unlock()
	if admitted {
		return nil
	}

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
			b.releaseLocked(w.t, cost)
		} else if !b.closed {
			b.removeLocked(w)
			b.grantLocked() // the head may have changed
		}
		return ctx.Err()
	}
}

// fitsNowLocked reports whether a derivation of t costing cost would be
// admitted at once: nothing waits before it.
func (b *budget) fitsNowLocked(t *tenant, cost uint64) bool {
	return len(b.priority) == 0 && len(t.queue) == 0 && b.queued == 0 && b.used+cost <= b.total &&
		(t.claim.exempt || b.perTenantRunning <= 0 || t.running < b.perTenantRunning)
}

func (b *budget) admitLocked(w *waiter) {
	b.used += w.cost
	b.running++
	b.peak = max(b.peak, b.running)
	if w.t != nil {
		w.t.running++
	}
	w.admitted = true
	close(w.ready)
}

// release returns the room of a derivation that acquire admitted.
func (b *budget) release(ctx context.Context, cost uint64) {
	c := claimOf(ctx)
	b.mu.Lock()
	defer b.mu.Unlock()
	var t *tenant
	if !c.priority {
		t = b.tenants[c]
	}
	b.releaseLocked(t, cost)
}

func (b *budget) releaseLocked(t *tenant, cost uint64) {
	b.used -= cost
	b.running--
	if t != nil {
		t.running--
		b.dropIdleLocked(t)
	}
	b.grantLocked()
}

// dropIdleLocked forgets t if it has nothing running or waiting.
func (b *budget) dropIdleLocked(t *tenant) {
	if t.running == 0 && len(t.queue) == 0 && b.tenants[t.claim] == t {
		delete(b.tenants, t.claim)
	}
}

// grantLocked admits priority waiters, then the tenants' in turn, while
// they fit.
func (b *budget) grantLocked() {
	if b.closed {
		return
	}
	for len(b.priority) > 0 {
		w := b.priority[0]
		if b.used+w.cost > b.total {
			return // nothing else goes before it
		}
		b.priority[0] = nil
		b.priority = b.priority[1:]
		b.admitLocked(w)
	}
	for len(b.ring) > 0 {
		j := -1
		for i := range b.ring {
			k := (b.next + i) % len(b.ring)
			t := b.ring[k]
			if t.claim.exempt || b.perTenantRunning <= 0 || t.running < b.perTenantRunning {
				j = k
				break
			}
		}
		if j < 0 {
			return // every tenant waiting has its share running
		}
		t := b.ring[j]
		w := t.queue[0]
		if b.used+w.cost > b.total {
			b.next = j // its turn stays
			return
		}
		t.queue[0] = nil
		t.queue = t.queue[1:]
		b.queued--
		b.admitLocked(w)
		if len(t.queue) == 0 {
			b.ring = append(b.ring[:j], b.ring[j+1:]...)
			b.next = j
		} else {
			b.next = j + 1
		}
		if len(b.ring) > 0 {
			b.next %= len(b.ring)
		} else {
			b.next = 0
		}
	}
}

// removeLocked takes a waiter that was not admitted out of its queue.
func (b *budget) removeLocked(w *waiter) {
	if w.t == nil {
		for i, q := range b.priority {
			if q == w {
				b.priority = append(b.priority[:i], b.priority[i+1:]...)
				return
			}
		}
		return
	}
	t := w.t
	for i, q := range t.queue {
		if q == w {
			t.queue = append(t.queue[:i], t.queue[i+1:]...)
			b.queued--
			break
		}
	}
	if len(t.queue) == 0 {
		for j, r := range b.ring {
			if r == t {
				b.ring = append(b.ring[:j], b.ring[j+1:]...)
				if b.next > j {
					b.next--
				}
				break
			}
		}
		if len(b.ring) > 0 {
			b.next %= len(b.ring)
		} else {
			b.next = 0
		}
		b.dropIdleLocked(t)
	}
}

// close refuses new derivations and fails every waiting one with
// ErrClosed. Admitted ones still release normally.
func (b *budget) close() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.closed = true
	for _, w := range b.priority {
		close(w.ready)
	}
	for _, t := range b.ring {
		for _, w := range t.queue {
			close(w.ready)
		}
		t.queue = nil
	}
	b.priority, b.ring, b.queued = nil, nil, 0
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
	return Stats{Running: b.running, Peak: b.peak, Queued: b.queued + len(b.priority), UsedKiB: b.used, BudgetKiB: b.total}
}

// tenantFull reports whether c's share of the queue is full.
func (b *budget) tenantFull(c claim) bool {
	if c.priority || c.exempt || b.perTenantQueue <= 0 {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	t := b.tenants[c]
	return t != nil && len(t.queue) >= b.perTenantQueue
}

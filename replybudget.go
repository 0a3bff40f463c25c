package keywarden

import (
	"context"
	"sync"
)

// replyBytes is the reply bytes the batches of one Client leave
// outstanding at once, together: at most Client.replyBudget. Each batch
// keeping its own replies within the budget is not enough: several
// goroutines each sending a batch of large operations on one Client could
// otherwise fill the socket with requests while the daemon, blocked
// sending replies nobody reads, reads none of them.
//
// Batches sent with Batch.Send and not yet waited for hold their share
// of the budget until Wait, which their goroutine may reach only after
// waiting for room here itself; the replies of requests whose caller gave
// up waiting hold theirs until some later caller happens to read them.
// Those shares are parked, and a caller with nothing of its own
// outstanding does not wait for them (see take).
type replyBytes struct {
	mu     sync.Mutex
	used   int
	parked int           // of used, that no one may free soon
	wake   chan struct{} // closed when used shrinks
}

// tryTake reserves n bytes if they fit, or if nothing is outstanding (a
// single reply larger than the budget must still be possible).
func (r *replyBytes) tryTake(n, budget int) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.used > 0 && r.used+n > budget {
		return false
	}
	r.used += n
	return true
}

// take reserves n bytes, waiting until they fit; for a caller with
// nothing of its own outstanding, whose wait other batches' replies end.
// It does not wait for parked bytes, which the caller's own goroutine
// may hold: past them it takes room for one request at a time, so what
// is outstanding stays within the budget and one request's reply.
func (r *replyBytes) take(ctx context.Context, n, budget int) error {
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		r.mu.Lock()
		if r.used == r.parked || r.used+n <= budget {
			r.used += n
			r.mu.Unlock()
			return nil
		}
		if r.wake == nil {
			r.wake = make(chan struct{})
		}
		w := r.wake
		r.mu.Unlock()
		select {
		case <-w:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// give returns n bytes reserved.
func (r *replyBytes) give(n int) {
	r.mu.Lock()
	r.used -= n
	if r.wake != nil {
		close(r.wake)
		r.wake = nil
	}
	r.mu.Unlock()
}

// park marks n bytes taken as held by a batch sent and not waited for,
// or by a request given up on; unpark ends that.
func (r *replyBytes) park(n int) { r.addParked(n) }

func (r *replyBytes) unpark(n int) { r.addParked(-n) }

func (r *replyBytes) addParked(n int) {
	r.mu.Lock()
	r.parked += n
	if r.wake != nil {
		close(r.wake)
		r.wake = nil
	}
	r.mu.Unlock()
}

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
type replyBytes struct {
	mu   sync.Mutex
	used int
	wake chan struct{} // closed when used shrinks
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
func (r *replyBytes) take(ctx context.Context, n, budget int) error {
	for {
		r.mu.Lock()
		if r.used == 0 || r.used+n <= budget {
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

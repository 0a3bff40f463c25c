package unixsock

import (
	"sync"
	"time"
)

// RateLog lets one line of a kind of log through per interval and counts
// the ones it holds back, so that a peer that makes the daemon refuse it
// over and over (a uid past its connection limit, a TLS client without a
// certificate) cannot fill the daemon's log. What is refused is counted
// elsewhere (the core's audit event for refusals by limits); the log
// line is only a hint to the operator.
type RateLog struct {
	// Interval is the least time between two lines (default 10 s).
	Interval time.Duration
	// Now is the clock (default time.Now); for tests.
	Now func() time.Time

	// mu guards the fields below.
	mu      sync.Mutex
	last    time.Time
	started bool
	held    int
}

// Allow reports whether a line may be logged now, and how many were held
// back since the last one let through (to be logged with it).
func (r *RateLog) Allow() (ok bool, held int) {
	now := time.Now
	if r.Now != nil {
		now = r.Now
	}
	interval := r.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	t := now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.started && t.Sub(r.last) < interval {
		r.held++
		return false, 0
	}
	r.started, r.last = true, t
	held, r.held = r.held, 0
	return true, held
}

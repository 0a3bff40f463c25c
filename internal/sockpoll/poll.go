// Package sockpoll is the policy by which a reader of a Unix socket (the
// daemon's native socket and its client, the ssh-agent and PKCS #11
// fronts) polls its socket before it sleeps.
package sockpoll

import (
	"runtime"
	"sync/atomic"
	"time"
)

// Poll is the policy by which a reader polls its socket before it
// sleeps: reading again, while the socket is empty, for up to Spin.
//
// Sleeping costs a wake-up when the request comes, and on a virtual
// machine waking a sleeping thread can cost more than a whole round trip;
// a client that sends its next request within microseconds of its reply
// (one call after another) finds the reader still running. Polling is
// worth it only while it finds requests, and only while nobody else needs
// the processor:
//
//   - a wait polls only while no other connection of the front is
//     handling a request (Busy is 0): otherwise the polling takes a
//     processor from that work, and the runtime finds the request anyway;
//   - a poll that finds nothing for Spin (the client was slow, or idle),
//     or that loses its processor for longer than Gap between two reads
//     (a machine busy with other work, which the polling delays), is in
//     vain, and makes the next waits sleep at once: 1, 2, 4, ... up to
//     maxBackoff of them, until a poll finds a request again;
//   - a wait that slept for any other reason (others were busy, or it was
//     one of those that sleep at once) does not stop the next from
//     polling: how long a wait took says as much of the wake-up as of
//     the client, and once one sleep makes the next wait long, judging by
//     it would make every later wait sleep too.
//
// A reader calls Start before its first read of a wait, Again after each
// read that finds the socket empty (true: read again; false: sleep until
// the socket is readable), and Done once the wait is over. Neither
// allocates. A Poll is used by one goroutine at a time.
type Poll struct {
	// Spin is how long a wait may poll; 0 never polls.
	Spin time.Duration
	// Gap is the longest time between two reads of a poll before it
	// counts as in vain.
	Gap time.Duration
	// Busy counts the front's connections handling a request (nil: none
	// is counted).
	Busy *atomic.Int32

	skip, backoff int
	// The wait under way: when it started, when its last read was (since
	// start), how many reads it made, whether it polls, whether it
	// polled in vain.
	start  time.Time
	prev   time.Duration
	polls  int
	on     bool
	missed bool
}

// DefaultSpin and DefaultGap are a reader's defaults: a spin a few times
// a request's round trip, and a gap a few reads long.
const (
	DefaultSpin = 100 * time.Microsecond
	DefaultGap  = 20 * time.Microsecond
)

const (
	// maxBackoff bounds the waits that sleep at once after a vain poll.
	maxBackoff = 64
	// yieldEvery is the reads between two runtime.Gosched of a poll:
	// polling must not keep other goroutines from the processor for
	// long, but yielding at every read hands the goroutine from one
	// thread to another, a wake-up more than it saves.
	yieldEvery = 16
)

// New returns a Poll with the defaults, counting busy.
func New(busy *atomic.Int32) Poll {
	return Poll{Spin: DefaultSpin, Gap: DefaultGap, Busy: busy}
}

// Start begins a wait for the socket.
func (p *Poll) Start() {
	p.start = time.Now()
	p.prev, p.polls, p.missed = 0, 0, false
	if p.skip > 0 {
		p.skip--
		p.on = false
		return
	}
	p.on = p.Spin > 0 && p.idle()
}

// Again is called after a read of the wait found the socket empty: it
// reports whether to read again rather than sleep.
func (p *Poll) Again() bool {
	if !p.on {
		return false
	}
	now := time.Since(p.start)
	if now > p.Spin || now-p.prev > p.Gap {
		p.on, p.missed = false, true
		return false
	}
	p.prev = now
	if !p.idle() {
		p.on = false
		return false
	}
	if p.polls++; p.polls%yieldEvery == 0 {
		runtime.Gosched()
	}
	return true
}

// Done ends the wait: a poll in vain makes the next waits sleep at once,
// one that found the request lets them poll.
func (p *Poll) Done() {
	switch {
	case p.missed:
		p.backoff = min(max(2*p.backoff, 1), maxBackoff)
		p.skip = p.backoff
	case p.on:
		p.backoff = 0
	}
	p.on = false
}

// Polling reports whether the wait under way polls (for the tests of
// readers).
func (p *Poll) Polling() bool { return p.on }

// Skipping reports how many waits are still to sleep at once.
func (p *Poll) Skipping() int { return p.skip }

func (p *Poll) idle() bool { return p.Busy == nil || p.Busy.Load() == 0 }

package genid

import (
	"context"
	"strings"
	"time"
)

// A Watcher is a party that learns of changes and acknowledges them: a
// connection that watched (sysgenid's open file), or a named watcher of a
// uid that outlives connections. A watcher whose last acknowledged
// generation is below the current one is outdated. Every watcher belongs
// to a uid: the named watcher's, or the uid that made a connection a
// watcher; a Scope counts watchers by it.
type Watcher struct {
	t     *Tracker
	uid   uint32
	key   namedKey // zero for a connection's watcher
	named bool
	acked uint64 // under t.mu
	gone  bool   // under t.mu: removed
}

// A Scope says whose watchers count: a watcher counts when the Scope
// returns true for its uid. The nil Scope counts every watcher.
//
// Anyone who can connect may register watchers, so waiting for every
// watcher lets any user stall the wait with a watcher that never
// acknowledges; a Scope limits the wait to the users whose watchers the
// waiter relies on.
type Scope func(uid uint32) bool

func (sc Scope) counts(w *Watcher) bool { return sc == nil || sc(w.uid) }

// NewWatcher registers an anonymous watcher of uid (a connection's), up to
// date with the current generation, as a sysgenid watcher is when opened.
func (t *Tracker) NewWatcher(uid uint32) *Watcher {
	t.mu.Lock()
	defer t.mu.Unlock()
	w := &Watcher{t: t, uid: uid, acked: t.gen.Load()}
	t.watchers[w] = struct{}{}
	return w
}

// UID returns the uid the watcher belongs to.
func (w *Watcher) UID() uint32 { return w.uid }

// NamedWatcher returns uid's watcher of that name, registering it (up to
// date) if it does not exist.
func (t *Tracker) NamedWatcher(uid uint32, name string) (*Watcher, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	k := namedKey{uid, name}
	if w := t.named[k]; w != nil {
		return w, nil
	}
	if t.perUID[uid] >= t.cfg.NamedWatchersPerUID {
		return nil, ErrTooManyWatchers
	}
	k.name = strings.Clone(name) // name may point into a reused buffer
	w := &Watcher{t: t, uid: uid, key: k, named: true, acked: t.gen.Load()}
	t.named[k] = w
	t.perUID[uid]++
	t.watchers[w] = struct{}{}
	return w, nil
}

// Ack records that the watcher has adjusted to generation gen. A
// generation the daemon has not reached is ErrAhead; an older one than
// the watcher already acknowledged changes nothing. Acknowledging revives
// a watcher that was removed.
func (w *Watcher) Ack(gen uint64) error {
	t := w.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if gen > t.gen.Load() {
		return ErrAhead
	}
	if w.gone {
		w.gone = false
		w.acked = gen
		t.watchers[w] = struct{}{}
		if w.named {
			t.named[w.key] = w
			t.perUID[w.key.uid]++
		}
	}
	w.acked = max(w.acked, gen)
	t.wakeAckedLocked()
	return nil
}

// Acked returns the last generation the watcher acknowledged.
func (w *Watcher) Acked() uint64 {
	w.t.mu.Lock()
	defer w.t.mu.Unlock()
	return w.acked
}

// Remove unregisters the watcher: it no longer counts, outdated or not.
func (w *Watcher) Remove() {
	t := w.t
	t.mu.Lock()
	defer t.mu.Unlock()
	if w.gone {
		return
	}
	w.gone = true
	delete(t.watchers, w)
	if w.named && t.named[w.key] == w {
		delete(t.named, w.key)
		if t.perUID[w.key.uid]--; t.perUID[w.key.uid] <= 0 {
			delete(t.perUID, w.key.uid)
		}
	}
	t.wakeAckedLocked()
}

func (t *Tracker) wakeAckedLocked() {
	close(t.acked)
	t.acked = make(chan struct{})
}

func (t *Tracker) outdatedLocked() int {
	_, n := t.countLocked(nil)
	return n
}

// countLocked returns how many watchers sc counts, and how many of them
// are outdated.
func (t *Tracker) countLocked(sc Scope) (watchers, outdated int) {
	g := t.gen.Load()
	for w := range t.watchers {
		if !sc.counts(w) {
			continue
		}
		watchers++
		if w.acked < g {
			outdated++
		}
	}
	return watchers, outdated
}

// Outdated returns the number of watchers and of outdated watchers.
func (t *Tracker) Outdated() (watchers, outdated int) { return t.OutdatedIn(nil) }

// OutdatedIn returns the number of watchers sc counts, and of outdated
// ones among them.
func (t *Tracker) OutdatedIn(sc Scope) (watchers, outdated int) {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.countLocked(sc)
}

// WaitWatchers returns when no watcher that sc counts is outdated, when
// timeout has passed or when stop is closed, with the number of them
// still outdated. Watchers sc does not count neither delay it nor show in
// its answer.
func (t *Tracker) WaitWatchers(timeout time.Duration, sc Scope, stop <-chan struct{}) (outdated int, stopped bool) {
	var timer *time.Timer
	var expired <-chan time.Time
	for {
		t.Check()
		t.mu.Lock()
		_, n := t.countLocked(sc)
		acked, changed := t.acked, t.changed
		t.mu.Unlock()
		if n == 0 || timeout <= 0 {
			return n, false
		}
		if timer == nil {
			timer = time.NewTimer(timeout)
			defer timer.Stop()
			expired = timer.C
		}
		select {
		case <-acked:
		case <-changed:
		case <-expired:
			_, n := t.OutdatedIn(sc)
			return n, false
		case <-stop:
			_, n := t.OutdatedIn(sc)
			return n, true
		}
	}
}

// requestSource is the privileged request as a Source: it never reports
// by itself (Tracker.Bump does), but status lists it with who may use it.
type requestSource struct{ detail string }

// NewRequestSource returns the Source that stands for privileged bumps in
// status; detail says who may bump.
func NewRequestSource(detail string) Source { return requestSource{detail} }

func (r requestSource) Name() string                            { return RequestSource }
func (r requestSource) Open() (string, error)                   { return r.detail, nil }
func (r requestSource) Run(ctx context.Context, _ func(string)) { <-ctx.Done() }
func (r requestSource) Close() error                            { return nil }

package genid

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/random"
)

// A Source learns that the machine's generation changed.
type Source interface {
	// Name is the short name status shows ("kmsg", "vmclock", ...).
	Name() string
	// Open prepares the source and takes its baseline: only changes after
	// Open count. An error means the source is not active on this machine;
	// its text says why. detail says what an active source watches.
	Open() (detail string, err error)
	// Run reports every change it sees until ctx is done. report is safe
	// to call from any goroutine.
	Run(ctx context.Context, report func(detail string))
	// Close releases what Open took. It is called after Run returned.
	Close() error
}

// A Checker is a Source that can also be checked synchronously, cheaply
// enough (a read of mapped memory, no system call) to run at the start of
// every request. Check reports a change once.
type Checker interface {
	Source
	Check() (changed bool, detail string)
}

// A Hook is told of a change before any request can see the new
// generation: the server then serves nothing from the old one. Hooks run
// one at a time, in the order they were registered; requests that start
// meanwhile wait for them. They must not call the Tracker's Bump, Check or
// Wait.
type Hook interface {
	GenerationChanged(Change)
}

// A Confirmer is a Hook that is also told of the reports that confirm the
// last change rather than make a new one (another source reporting it
// within the coalescing window): the randomness hook learns from them that
// the kernel re-seeded, or sees the new VM generation ID. It is called
// like GenerationChanged, one at a time, but requests do not wait for it.
type Confirmer interface {
	Hook
	GenerationConfirmed(c Change, r Report)
}

// Report is what one source reported.
type Report struct {
	Source string
	Detail string
	// Fresh is what the report vouches for about randomness (see
	// Attester).
	Fresh random.Freshness
}

// An Attester is a Source whose reports also vouch for randomness: the
// kernel log line and the uevent come after the kernel re-seeded its
// generator (random.Kernel), a new VM generation ID is unique to this
// machine (random.Unique). Other sources vouch for nothing.
type Attester interface {
	Attests() random.Freshness
}

func attests(s Source) random.Freshness {
	if a, ok := s.(Attester); ok {
		return a.Attests()
	}
	return random.Unconfirmed
}

// HookFunc adapts a function to Hook.
type HookFunc func(Change)

func (f HookFunc) GenerationChanged(c Change) { f(c) }

// Change is one increase of the generation.
type Change struct {
	From, To uint64
	At       time.Time
	// Sources that reported it: one at first; sources that report the
	// same change within the coalescing window are added to the Tracker's
	// record of it (see Tracker.Status), not to this value.
	Sources []string
	// Detail is what the first source saw (a log line, a counter value, a
	// GUID, the uid that asked).
	Detail string
	// Fresh is what the first source vouches for about randomness (see
	// Attester and Bump).
	Fresh random.Freshness
	// Entropy are the bytes a bump carried (see Bump), nil otherwise.
	Entropy []byte
}

// RequestSource is the name of the privileged request as a source.
const RequestSource = "request"

// DefaultCoalesce is how long after a change the reports of other sources
// count as the same change (a restore typically makes the kernel log,
// vmclock and the GUID all report within milliseconds).
const DefaultCoalesce = time.Second

// Config configures a Tracker. The zero value tracks no source (only
// Bump changes the generation).
type Config struct {
	Sources []Source
	// Logger receives the changes and source problems; nil discards.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
	// Coalesce is the window of DefaultCoalesce; 0 means the default, a
	// negative value disables coalescing.
	Coalesce time.Duration
	// NamedWatchersPerUID bounds the named watchers one uid may have; 0
	// means DefaultNamedWatchersPerUID.
	NamedWatchersPerUID int
}

// DefaultNamedWatchersPerUID bounds the named watchers of one uid.
const DefaultNamedWatchersPerUID = 64

// Tracker holds the generation counter, its sources, hooks and watchers.
// Its methods are safe for concurrent use.
//
// Lock order: bumpMu, then mu. Hooks run under bumpMu only.
type Tracker struct {
	cfg     Config
	log     *slog.Logger
	started time.Time

	gen      atomic.Uint64
	changing atomic.Bool                    // a change's hooks are running
	begun    atomic.Uint64                  // changes begun (see Mark)
	checkers atomic.Pointer[[]*sourceState] // sources that are Checkers, set by Start
	page     *page                          // nil if no page could be made
	pageErr  error

	// bumpMu serializes changes and guards hooks.
	bumpMu sync.Mutex
	hooks  []namedHook

	// mu guards the fields below.
	mu       sync.Mutex
	last     Change        // Sources grows as other sources confirm it
	changed  chan struct{} // closed at the next change
	acked    chan struct{} // closed at the next ack or watcher removal
	watchers map[*Watcher]struct{}
	named    map[namedKey]*Watcher
	perUID   map[uint32]int
	sources  []*sourceState
	running  bool
	closed   bool

	cancel context.CancelFunc
	wg     sync.WaitGroup
}

type namedHook struct {
	name string
	h    Hook
}

type namedKey struct {
	uid  uint32
	name string
}

// sourceState is a source and what status says of it; the fields after
// src are guarded by Tracker.mu.
type sourceState struct {
	src        Source
	checker    Checker // src as a Checker, or nil
	active     bool
	detail     string
	lastSeen   time.Time
	lastReport string
}

// New returns a Tracker at generation 0 and makes its generation page. A
// failure to make the page is not fatal: PageFD then reports it.
func New(cfg Config) *Tracker {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Coalesce == 0 {
		cfg.Coalesce = DefaultCoalesce
	}
	if cfg.NamedWatchersPerUID <= 0 {
		cfg.NamedWatchersPerUID = DefaultNamedWatchersPerUID
	}
	t := &Tracker{
		cfg:      cfg,
		log:      cfg.Logger,
		started:  cfg.Now(),
		changed:  make(chan struct{}),
		acked:    make(chan struct{}),
		watchers: make(map[*Watcher]struct{}),
		named:    make(map[namedKey]*Watcher),
		perUID:   make(map[uint32]int),
	}
	for _, s := range cfg.Sources {
		st := &sourceState{src: s, detail: "not started"}
		st.checker, _ = s.(Checker)
		t.sources = append(t.sources, st)
	}
	t.page, t.pageErr = newPage(t.started)
	if t.pageErr != nil {
		t.log.Warn("generation page unavailable: clients must ask for the generation", "err", t.pageErr)
	}
	return t
}

// Register adds a hook, run on every later change.
func (t *Tracker) Register(name string, h Hook) {
	t.bumpMu.Lock()
	defer t.bumpMu.Unlock()
	t.hooks = append(t.hooks, namedHook{name, h})
}

// Start opens every source and runs the active ones until Close. Sources
// that cannot be opened are logged and stay inactive.
func (t *Tracker) Start() {
	t.mu.Lock()
	if t.running || t.closed {
		t.mu.Unlock()
		return
	}
	t.running = true
	t.mu.Unlock()
	ctx, cancel := context.WithCancel(context.Background())
	t.cancel = cancel
	var checkers []*sourceState
	for _, st := range t.sources {
		detail, err := st.src.Open()
		t.mu.Lock()
		st.active = err == nil
		if err != nil {
			st.detail = err.Error()
		} else {
			st.detail = detail
		}
		t.mu.Unlock()
		if err != nil {
			t.log.Info("generation source not active", "source", st.src.Name(), "reason", err.Error())
			continue
		}
		t.log.Info("generation source active", "source", st.src.Name(), "watches", detail)
		if st.checker != nil {
			checkers = append(checkers, st)
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			st.src.Run(ctx, func(detail string) { t.report(st, detail) })
		}()
	}
	if len(checkers) > 0 {
		t.checkers.Store(&checkers)
	}
}

// Close stops the sources, marks the generation page as no longer live
// and releases it.
func (t *Tracker) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.mu.Unlock()
	t.checkers.Store(nil)
	if t.cancel != nil {
		t.cancel()
	}
	t.wg.Wait()
	var errs []error
	for _, st := range t.sources {
		if st.active {
			errs = append(errs, st.src.Close())
		}
	}
	if t.page != nil {
		errs = append(errs, t.page.close())
	}
	return errors.Join(errs...)
}

// Current returns the current generation.
func (t *Tracker) Current() uint64 { return t.gen.Load() }

// Check runs the synchronous checks of the sources that offer one (the
// vmclock page) and returns the current generation. While a change is
// being made (its hooks run) it waits for the change to be published. The
// server calls it at the start of every request; with no change under way
// and no synchronous source it is two atomic loads.
func (t *Tracker) Check() uint64 {
	if cs := t.checkers.Load(); cs != nil {
		for _, st := range *cs {
			if changed, detail := st.checker.Check(); changed {
				t.report(st, detail)
			}
		}
	}
	// The generation is read before the flag: a change stores the new
	// generation while the flag is set and clears it only once the change
	// is published, so a value read with the flag clear after it is
	// published everywhere (page, Changed channel, watchers' state).
	for {
		g := t.gen.Load()
		if !t.changing.Load() {
			return g
		}
		t.bumpMu.Lock() // held until the change is published
		t.bumpMu.Unlock()
	}
}

// A Mark stands for the moment it was taken, in the terms of changes:
// Unchanged reports whether a change has begun since.
type Mark uint64

// Mark returns a Mark of now, and false if a change is under way (its
// hooks run): work that must be done within one generation cannot begin
// then. Work that draws on state a change repairs (random bytes, the
// nonce budgets of key versions) takes a Mark before it uses any of it,
// and checks Unchanged once it has made its result, before anyone sees
// that result: a change begins before its first hook runs, so a result
// that any hook's repair reached, or that a change begun meanwhile
// should have failed, finds the Mark changed. Both are an atomic load.
func (t *Tracker) Mark() (Mark, bool) {
	m := t.begun.Load()
	if t.changing.Load() {
		return 0, false
	}
	return Mark(m), true
}

// Unchanged reports whether no change has begun since m was taken.
func (t *Tracker) Unchanged(m Mark) bool { return t.begun.Load() == uint64(m) }

// report records a change seen by a source: a new generation, unless it
// confirms the change another source reported within the coalescing
// window.
func (t *Tracker) report(st *sourceState, detail string) {
	name := st.src.Name()
	t.bumpMu.Lock()
	defer t.bumpMu.Unlock()
	now := t.cfg.Now()
	t.mu.Lock()
	st.lastSeen, st.lastReport = now, detail
	if t.closed {
		t.mu.Unlock()
		return
	}
	if t.cfg.Coalesce > 0 && !t.last.At.IsZero() && now.Sub(t.last.At) < t.cfg.Coalesce && !slices.Contains(t.last.Sources, name) {
		t.last.Sources = append(slices.Clip(t.last.Sources), name)
		last := t.last
		t.mu.Unlock()
		t.log.Info("generation change confirmed by another source", "generation", last.To, "source", name, "detail", detail)
		r := Report{Source: name, Detail: detail, Fresh: attests(st.src)}
		for _, h := range t.hooks {
			if c, ok := h.h.(Confirmer); ok {
				t.runHook(h, func() { c.GenerationConfirmed(last, r) })
			}
		}
		return
	}
	t.mu.Unlock()
	t.change(Report{Source: name, Detail: detail, Fresh: attests(st.src)}, nil)
}

// Bump is a privileged request to increase the generation.
type Bump struct {
	// Detail says who asked.
	Detail string
	// Entropy are bytes the requester vouches are unique to this machine
	// (from outside it, or read after its kernel re-seeded): mixed into the
	// daemon's random generator, at least MinBumpEntropy of them confirm
	// fresh randomness (random.Unique).
	Entropy []byte
	// KernelReseeded: the requester made the kernel re-seed its generator
	// (RNDRESEEDCRNG, which needs CAP_SYS_ADMIN) just before it asked,
	// which confirms fresh randomness (random.Kernel).
	KernelReseeded bool
}

// MinBumpEntropy is the fewest bytes of Bump.Entropy that confirm fresh
// randomness; MaxBumpEntropy the most a bump may carry.
const (
	MinBumpEntropy = 16
	MaxBumpEntropy = 64
)

// Bump increases the generation unconditionally: a privileged request from
// an orchestrator that knows of a restore. detail says who asked.
func (t *Tracker) Bump(detail string) Change { return t.BumpWith(Bump{Detail: detail}) }

// BumpWith is Bump with what the requester knows of randomness. Entropy
// beyond MaxBumpEntropy bytes is ignored.
func (t *Tracker) BumpWith(b Bump) Change {
	t.bumpMu.Lock()
	defer t.bumpMu.Unlock()
	t.mu.Lock()
	for _, st := range t.sources {
		if st.src.Name() == RequestSource {
			st.lastSeen, st.lastReport = t.cfg.Now(), b.Detail
		}
	}
	t.mu.Unlock()
	if len(b.Entropy) > MaxBumpEntropy {
		b.Entropy = b.Entropy[:MaxBumpEntropy]
	}
	r := Report{Source: RequestSource, Detail: b.Detail}
	switch {
	case b.KernelReseeded:
		r.Fresh = random.Kernel
	case len(b.Entropy) >= MinBumpEntropy:
		r.Fresh = random.Unique
	}
	return t.change(r, slices.Clone(b.Entropy))
}

// change runs the hooks, then publishes the new generation. bumpMu is held.
func (t *Tracker) change(r Report, entropy []byte) Change {
	source, detail := r.Source, r.Detail
	from := t.gen.Load()
	c := Change{From: from, To: from + 1, At: t.cfg.Now(), Sources: []string{source}, Detail: detail,
		Fresh: r.Fresh, Entropy: entropy}
	// Requests that start from now on wait in Check until it is published,
	// and work under a Mark taken before fails its Unchanged.
	t.changing.Store(true)
	defer t.changing.Store(false)
	t.begun.Add(1)
	for _, h := range t.hooks {
		t.runHook(h, func() { h.h.GenerationChanged(c) })
	}
	// The counter first, then the page: a client that read the new value
	// from the page never finds the daemon still in the old generation.
	t.gen.Store(c.To)
	if t.page != nil {
		t.page.publish(c.To, c.At)
	}
	t.mu.Lock()
	t.last = c
	t.last.Sources = slices.Clone(c.Sources)
	close(t.changed)
	t.changed = make(chan struct{})
	outdated := t.outdatedLocked()
	t.mu.Unlock()
	t.log.Warn("machine generation changed: sessions from the old generation fail, watchers are told",
		"from", c.From, "to", c.To, "source", source, "detail", detail, "outdated_watchers", outdated)
	return c
}

func (t *Tracker) runHook(h namedHook, fn func()) {
	defer func() {
		if p := recover(); p != nil {
			t.log.Error("generation hook panicked", "hook", h.name, "panic", fmt.Sprint(p))
		}
	}()
	fn()
}

// Changed returns a channel that is closed at the next change.
func (t *Tracker) Changed() <-chan struct{} {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.changed
}

// Wait returns when the generation exceeds after, when timeout has
// passed, or when stop is closed (stopped true). It returns the
// generation then.
func (t *Tracker) Wait(after uint64, timeout time.Duration, stop <-chan struct{}) (gen uint64, stopped bool) {
	var timer *time.Timer
	var expired <-chan time.Time
	for {
		t.mu.Lock()
		ch := t.changed
		t.mu.Unlock()
		if g := t.Check(); g > after || timeout <= 0 {
			return g, false
		}
		if timer == nil {
			timer = time.NewTimer(timeout)
			defer timer.Stop()
			expired = timer.C
		}
		select {
		case <-ch:
		case <-expired:
			return t.gen.Load(), false
		case <-stop:
			return t.gen.Load(), true
		}
	}
}

// ErrAhead is returned when a client names a generation the daemon has
// not reached.
var ErrAhead = errors.New("generation is ahead of the daemon's")

// ErrTooManyWatchers is returned when a uid has too many named watchers.
var ErrTooManyWatchers = errors.New("too many named watchers")

// Status is a snapshot of the Tracker for the status operation.
type Status struct {
	Generation uint64
	// Changed is when the last change was seen (zero: none since start).
	Changed time.Time
	// ChangedBy are the sources that reported it.
	ChangedBy []string
	// Watchers and Outdated count the watchers of the Scope asked for.
	Watchers int
	Outdated int
	Sources  []SourceStatus
}

// SourceStatus says whether a source is active and what it saw last.
type SourceStatus struct {
	Name   string
	Active bool
	// Detail says what an active source watches, or why it is inactive.
	Detail   string
	LastSeen time.Time
	// LastReport is what it reported then.
	LastReport string
}

// Status returns the current state, sources included, counting every
// watcher.
func (t *Tracker) Status() Status { return t.StatusIn(nil) }

// StatusIn is Status counting the watchers sc counts.
func (t *Tracker) StatusIn(sc Scope) Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.statusLocked(sc)
	for _, st := range t.sources {
		s.Sources = append(s.Sources, SourceStatus{Name: st.src.Name(), Active: st.active, Detail: st.detail,
			LastSeen: st.lastSeen, LastReport: st.lastReport})
	}
	return s
}

// Brief returns the state without the sources, counting the watchers sc
// counts (nil: every watcher).
func (t *Tracker) Brief(sc Scope) Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.statusLocked(sc)
}

func (t *Tracker) statusLocked(sc Scope) Status {
	w, o := t.countLocked(sc)
	return Status{
		Generation: t.gen.Load(),
		Changed:    t.last.At,
		ChangedBy:  slices.Clone(t.last.Sources),
		Watchers:   w,
		Outdated:   o,
	}
}

// ActiveSources names the active sources, for logs.
func (t *Tracker) ActiveSources() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	var names []string
	for _, st := range t.sources {
		if st.active {
			names = append(names, st.src.Name())
		}
	}
	return strings.Join(names, ",")
}

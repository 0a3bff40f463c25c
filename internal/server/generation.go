package server

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// The machine generation (docs/genid.md). The ordering guarantee: every
// request calls genid.Tracker.Check before it runs, a request that names
// an expected generation is refused when it is not the current one, and
// every session step compares the generation the session was opened in
// with the current one. A change runs its hooks before the new generation
// is published, and requests that start meanwhile wait in Check, so once a
// change is under way nothing of the old generation is served.

// maxLongPolls bounds the generation_watch and generation_wait_watchers
// operations one connection may have waiting at once.
const maxLongPolls = 8

// maxPollTimeout bounds the timeout of one long poll.
const maxPollTimeout = time.Hour

// maxWatcherName bounds a named watcher's name.
const maxWatcherName = 64

var (
	errTooManyPolls = wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
		"too many generation watches waiting on this connection (limit %d)", maxLongPolls)
	errPollTimeout = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
		"timeout_ms must be at most %d", maxPollTimeout.Milliseconds())
	errNoPage = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the generation page is not available")
)

// registerGenerationHooks makes a generation change close every key
// version for encryption before any request of the new generation runs
// (keystore.Store.CloseBudgets): after a clone, every copy would spend
// what is left of each budget. The daemon registered the randomness hook
// before these: the audit log's new segment needs fresh random bytes.
func (s *Server) registerGenerationHooks() {
	if s.alog != nil {
		// The log records the change and starts a new segment with a fresh
		// nonce: two clones' logs diverge visibly from there. The nonce
		// waits for fresh randomness (package random), as long as it takes;
		// a later change, which re-keys the generator, starts its own
		// segment instead.
		s.gen.Register("audit log", genid.HookFunc(func(c genid.Change) {
			if err := s.auditEvent(audit.OpGeneration, fmt.Sprintf("generation %d -> %d (%s)", c.From, c.To, strings.Join(c.Sources, ", "))); err != nil {
				s.log.Error("audit log: cannot record the generation change", "err", err)
			}
			if s.startSegment(c.To) {
				return
			}
			s.log.Info("audit log: the new segment waits for fresh randomness", "generation", c.To)
			epoch := random.Default().Status().Epoch
			go func() {
				for random.Default().WaitFresh(s.done) && random.Default().Status().Epoch == epoch {
					if s.startSegment(c.To) {
						return
					}
				}
			}()
		}))
	}
	s.gen.Register("nonce budgets", genid.HookFunc(func(c genid.Change) {
		e, err := s.store.CloseBudgets()
		if err != nil {
			s.log.Error("key versions closed for encryption after a generation change, but the store could not record it: "+
				"new versions are refused until it can", "generation", c.To, "budget_epoch", e, "err", err)
			return
		}
		s.log.Warn("key versions closed for encryption after a generation change: each key makes a new version at its next encryption",
			"generation", c.To, "budget_epoch", e)
	}))
}

// startSegment starts the audit log's segment for generation gen and
// reports whether it is done (false: fresh randomness is not confirmed).
func (s *Server) startSegment(gen uint64) bool {
	err := s.alog.NewSegment(fmt.Sprintf("generation %d", gen))
	if errors.Is(err, random.ErrNotFresh) {
		return false
	}
	if err != nil {
		s.log.Error("audit log: cannot start a new segment", "err", err)
	}
	return true
}

// generationInfo describes the generation; sources only when asked. The
// watchers it counts are those sc counts (see watcherScope).
func (s *Server) generationInfo(sources bool, sc genid.Scope) *wire.GenerationInfo {
	var st genid.Status
	if sources {
		st = s.gen.StatusIn(sc)
	} else {
		st = s.gen.Brief(sc)
	}
	info := &wire.GenerationInfo{
		Generation:       st.Generation,
		ChangedBy:        st.ChangedBy,
		Watchers:         uint32(st.Watchers),
		OutdatedWatchers: uint32(st.Outdated),
	}
	if !st.Changed.IsZero() {
		info.ChangedUnixNano = st.Changed.UnixNano()
	}
	for _, src := range st.Sources {
		ws := &wire.GenerationSource{Name: src.Name, Active: src.Active, Detail: src.Detail, LastReport: src.LastReport}
		if !src.LastSeen.IsZero() {
			ws.LastSeenUnixNano = src.LastSeen.UnixNano()
		}
		info.Sources = append(info.Sources, ws)
	}
	if sources {
		rs := random.Default().Status()
		info.Randomness = rs.String()
		info.RandomnessUnconfirmed = rs.Level == random.Unconfirmed
	}
	return info
}

func (ss *Session) generationResult(sources bool, id Identity) *wire.Result {
	return &wire.Result{Value: &wire.Result_Generation{Generation: ss.s.generationInfo(sources, ss.s.watcherScope(id.UID))}}
}

// watcherScope is whose watchers count for a caller of uid: those of
// the administrators (root, the daemon's uid, --admin and
// --generation-admin uids), of the --generation-watcher uids, and the
// caller's own. generation_wait_watchers waits for these only, and every
// reply counts these only: any user may register watchers, and one that
// never acknowledges must not hold up an orchestrator that does not rely
// on it (docs/genid.md, "Whose watchers count").
func (s *Server) watcherScope(uid uint32) genid.Scope {
	return func(w uint32) bool { return s.roles.Load().CountsWatcher(uid, w) }
}

// watcher returns the watcher an operation names: the caller's named
// watcher, or this connection's, made on first use.
func (ss *Session) watcher(name string, id Identity) (*genid.Watcher, error) {
	if name != "" {
		if len(name) > maxWatcherName {
			return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a watcher name has at most %d bytes", maxWatcherName)
		}
		w, err := ss.s.gen.NamedWatcher(id.UID, name)
		if err != nil {
			return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too many named watchers for this user (limit %d)",
				ss.s.lims().MaxNamedWatchersPerUID)
		}
		return w, nil
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return nil, errConnClosing
	}
	if ss.genWatcher == nil {
		ss.genWatcher = ss.s.gen.NewWatcher(id.UID)
	}
	return ss.genWatcher, nil
}

func pollTimeout(ms uint32) (time.Duration, error) {
	d := time.Duration(ms) * time.Millisecond
	if d > maxPollTimeout {
		return 0, errPollTimeout
	}
	return d, nil
}

// longPoll counts a waiting operation against the connection's bound.
func (ss *Session) longPoll(d time.Duration) (func(), error) {
	if d <= 0 {
		return func() {}, nil
	}
	if ss.longPolls.Add(1) > maxLongPolls {
		ss.longPolls.Add(-1)
		return nil, errTooManyPolls
	}
	if max := ss.s.lims().MaxLongPollsPerUID; !ss.acct.takeLongPoll(max) {
		ss.longPolls.Add(-1)
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
			"too many generation watches waiting for this user (limit %d)", max)
	}
	return func() {
		ss.longPolls.Add(-1)
		ss.acct.dropLongPoll()
	}, nil
}

func (ss *Session) opGenerationWatch(gw *wire.GenerationWatch, id Identity) (*wire.Result, error) {
	d, err := pollTimeout(gw.TimeoutMs)
	if err != nil {
		return nil, err
	}
	if cur := ss.s.gen.Check(); gw.After > cur {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"generation %d is ahead of the daemon's (%d): did the daemon restart?", gw.After, cur)
	}
	if _, err := ss.watcher(gw.Name, id); err != nil {
		return nil, err
	}
	done, err := ss.longPoll(d)
	if err != nil {
		return nil, err
	}
	defer done()
	if _, stopped := ss.s.gen.Wait(gw.After, d, ss.stopOf(id)); stopped {
		return nil, errConnClosing
	}
	return ss.generationResult(false, id), nil
}

func (ss *Session) opGenerationAck(ga *wire.GenerationAck, id Identity) (*wire.Result, error) {
	w, err := ss.watcher(ga.Name, id)
	if err != nil {
		return nil, err
	}
	if ga.Forget {
		w.Remove()
		return ss.generationResult(false, id), nil
	}
	if err := w.Ack(ga.Generation); err != nil {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"generation %d is ahead of the daemon's (%d)", ga.Generation, ss.s.gen.Current())
	}
	return ss.generationResult(false, id), nil
}

func (ss *Session) opGenerationWaitWatchers(gw *wire.GenerationWaitWatchers, id Identity) (*wire.Result, error) {
	d, err := pollTimeout(gw.TimeoutMs)
	if err != nil {
		return nil, err
	}
	done, err := ss.longPoll(d)
	if err != nil {
		return nil, err
	}
	defer done()
	if _, stopped := ss.s.gen.WaitWatchers(d, ss.s.watcherScope(id.UID), ss.stopOf(id)); stopped {
		return nil, errConnClosing
	}
	return ss.generationResult(false, id), nil
}

func (ss *Session) opGenerationBump(gb *wire.GenerationBump, id Identity) (*wire.Result, error) {
	if len(gb.Entropy) > genid.MaxBumpEntropy {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a bump carries at most %d bytes of entropy", genid.MaxBumpEntropy)
	}
	c := ss.s.gen.BumpWith(genid.Bump{Detail: fmt.Sprintf("bump requested by uid %d pid %d", id.UID, id.PID),
		Entropy: gb.Entropy, KernelReseeded: gb.KernelReseeded})
	ss.log.Warn("generation bumped on request", "uid", id.UID, "pid", id.PID, "generation", c.To,
		"entropy_bytes", len(gb.Entropy), "kernel_reseeded", gb.KernelReseeded)
	return ss.generationResult(true, id), nil
}

func (ss *Session) opGenerationMap(a *arena) (*wire.Result, error) {
	fd, err := ss.s.gen.PageFD()
	if err != nil {
		return nil, errNoPage.WithDetail("%v", err)
	}
	if !slices.Contains(a.attach, fd) {
		a.attach = append(a.attach, fd)
	}
	return &wire.Result{Value: &wire.Result_GenerationMap{GenerationMap: &wire.GenerationMapInfo{
		Size: wire.GenPageSize, LayoutVersion: wire.GenPageLayout, Generation: ss.s.gen.Current()}}}, nil
}

// checkGeneration runs the tracker's synchronous checks before a request
// and refuses one that expects another generation.
func (ss *Session) checkGeneration(req *wire.Request) *wire.Error {
	cur := ss.s.gen.Check()
	if req.ExpectedGeneration != nil && *req.ExpectedGeneration != cur {
		return wire.Errorf(wire.Status_STATUS_GENERATION_CHANGED,
			"the machine's generation is %d, not %d", cur, *req.ExpectedGeneration)
	}
	return nil
}

// Work that draws random bytes under a key, or counts against a key
// version's nonce budget (encryptions, data keys, rewraps, wraps), is
// done within one generation, as the daemon sees it, or not at all. A
// request passes Check before it runs, but a change may begin while it
// runs: the change's hooks then re-key the random generator and close
// every key version while the request, which they do not wait for, goes
// on with a version counted before and nonces drawn before or after
// (docs/genid.md, "Nonce budgets"). So such work takes a mark
// (beginOnce) before it counts or draws anything, and checks it
// (endOnce) once its result is made and before the result is returned:
// a change begun in between fails the work with GENERATION_CHANGED, and
// its result is dropped. A change that begins after the check finds the
// work done, under a version counted and with bytes drawn before it,
// as if the snapshot had been taken after the work. The cost is two
// atomic loads.

// errChangedDuring fails work that a change of generation reached.
var errChangedDuring = wire.Errorf(wire.Status_STATUS_GENERATION_CHANGED,
	"the machine's generation changed (a VM restore or clone) during the operation: its result was discarded; do it again")

// beginOnce marks the start of work that must be done within one
// generation; it fails at once while a change is under way.
func (s *Server) beginOnce() (genid.Mark, error) {
	m, ok := s.gen.Mark()
	if !ok {
		return 0, errChangedDuring
	}
	return m, nil
}

// onceStage names a stage of work done within one generation, for tests
// (Config.onceHook).
type onceStage int

const (
	stageCounted onceStage = iota
	stageMade
)

// onceAt runs the test hook of stage, if any.
func (s *Server) onceAt(stage onceStage) {
	if h := s.cfg.onceHook; h != nil {
		h(stage)
	}
}

// endOnce reports, as an error, whether a change began since m.
func (s *Server) endOnce(m genid.Mark) error {
	if !s.gen.Unchanged(m) {
		return errChangedDuring
	}
	return nil
}

// errGenerationChanged fails a session step from an older generation.
var errGenerationChanged = wire.Errorf(wire.Status_STATUS_GENERATION_CHANGED,
	"the machine's generation changed since the session began")

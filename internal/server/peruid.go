package server

import (
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/wire"
)

// Per-uid limits (docs/security.md, "Limits"). Each ordinary uid gets a
// share of what the daemon has: connections, requests in flight, the
// memory its requests hold while they run concurrently, long polls,
// streaming sessions, slots for heavy work, and audit bytes per second.
// Everything a connection makes the daemon hold is charged to the uid
// that opened it (SO_PEERCRED at accept); the identity of each message
// still decides what that message may do. Administrators (root, the
// daemon's uid, the --admin uids) have no per-uid limits, and a reserve
// of connection slots is theirs alone, so that no flood keeps them from
// connecting, asking for the status, sealing and unsealing.
//
// All of it is counted here: one account per uid, owned by accounts.

// limitKind names the limits whose refusals are counted in the "limits"
// audit event rather than recorded one by one.
type limitKind uint8

const (
	limitDaemonConnections limitKind = iota
	limitConnections
	limitConnInFlight
	limitInFlight
	limitRequestMemory
	limitAuditRate
	limitKDFQueue
	limitConnRequestMemory
	numLimitKinds
)

var limitNames = [numLimitKinds]string{
	"connections (daemon)", "connections", "in flight (connection)", "in flight", "request memory", "audit rate", "kdf queue",
	"request memory (connection)",
}

// account is what one uid holds of the daemon. Its counters are atomics:
// the request path takes no lock for them.
type account struct {
	uid   uint32
	admin bool // no per-uid limits

	conns     int // guarded by accounts.mu
	inFlight  atomic.Int32
	reqBytes  atomic.Int64
	longPolls atomic.Int32
	sessions  atomic.Int32
	shmBytes  atomic.Int64 // registered shared memory (shmem.go)
	audit     allowance
	// computing holds a token per request (or operation) of the uid
	// computing: its capacity is MaxComputingPerUID.
	computing chan struct{}

	// Heavy work (see fairQueue), one entry per class; each guarded by
	// its queue's mu.
	running [numHeavyClasses]int
	waiting [numHeavyClasses][]*slotWaiter
}

// startComputing waits until the uid has fewer than MaxComputingPerUID
// requests computing, and counts one more; stopComputing ends it. The
// wait is for the uid's own requests, whose computations are short (heavy
// work does not count here, see fairQueue).
func (a *account) startComputing() {
	if !a.admin {
		a.computing <- struct{}{}
	}
}

func (a *account) stopComputing() {
	if !a.admin {
		<-a.computing
	}
}

// take adds 1 to c if that keeps it at most max.
func take(c *atomic.Int32, max int) bool {
	if int(c.Add(1)) > max {
		c.Add(-1)
		return false
	}
	return true
}

// enter counts a request in flight; false: over the limit, not counted.
func (a *account) enter(max int) bool {
	if a.admin {
		return true
	}
	return take(&a.inFlight, max)
}

func (a *account) leave() {
	if !a.admin {
		a.inFlight.Add(-1)
	}
}

// hold counts n bytes of a request that runs concurrently; false: over
// the limit, not counted.
func (a *account) hold(n, max int) bool {
	if a.admin {
		return true
	}
	if a.reqBytes.Add(int64(n)) > int64(max) {
		a.reqBytes.Add(-int64(n))
		return false
	}
	return true
}

func (a *account) unhold(n int) {
	if !a.admin {
		a.reqBytes.Add(-int64(n))
	}
}

// holdShm counts n bytes of registered shared memory; false: over the
// limit, not counted.
func (a *account) holdShm(n, max int) bool {
	if a.admin {
		return true
	}
	if a.shmBytes.Add(int64(n)) > int64(max) {
		a.shmBytes.Add(-int64(n))
		return false
	}
	return true
}

func (a *account) unholdShm(n int) {
	if !a.admin {
		a.shmBytes.Add(-int64(n))
	}
}

// takeLongPoll and takeSession count one more; false: over the limit.
func (a *account) takeLongPoll(max int) bool { return a.admin || take(&a.longPolls, max) }
func (a *account) dropLongPoll() {
	if !a.admin {
		a.longPolls.Add(-1)
	}
}

func (a *account) takeSession(max int) bool { return a.admin || take(&a.sessions, max) }
func (a *account) dropSessions(n int) {
	if !a.admin && n > 0 {
		a.sessions.Add(-int32(n))
	}
}

// allowance is a uid's audit bytes: it refills at a steady rate up to a
// burst, each record spends its size, and while it is spent the uid's
// requests are refused. A record is charged after it is made, so the
// allowance can go below zero by what the requests in progress record.
type allowance struct {
	mu     sync.Mutex
	tokens float64
	last   time.Time
}

// ok refills the allowance to now and reports whether any is left.
func (al *allowance) ok(now time.Time, rate, burst float64) bool {
	al.mu.Lock()
	defer al.mu.Unlock()
	al.refillLocked(now, rate, burst)
	return al.tokens > 0
}

func (al *allowance) refillLocked(now time.Time, rate, burst float64) {
	if al.last.IsZero() {
		al.tokens = burst
	} else if d := now.Sub(al.last); d > 0 {
		al.tokens = min(burst, al.tokens+d.Seconds()*rate)
	}
	al.last = now
}

func (al *allowance) spend(n int) {
	al.mu.Lock()
	al.tokens -= float64(n)
	al.mu.Unlock()
}

// full reports whether the allowance has refilled to its burst by now.
func (al *allowance) full(now time.Time, rate, burst float64) bool {
	al.mu.Lock()
	defer al.mu.Unlock()
	al.refillLocked(now, rate, burst)
	return al.tokens >= burst
}

// auditOK reports whether the uid may make more audit records now.
func (a *account) auditOK(now func() time.Time, l *Limits) bool {
	return a.admin || a.audit.ok(now(), float64(l.AuditBytesPerSecondPerUID), float64(l.AuditBurstPerUID))
}

// spendAudit charges n bytes of audit records to the uid.
func (a *account) spendAudit(n int) {
	if !a.admin {
		a.audit.spend(n)
	}
}

// accounts owns every account, the daemon's connection count, the
// refusals not yet reported, and the queues of heavy work.
type accounts struct {
	lim     *atomic.Pointer[limitSet] // the server's limits in force
	isAdmin func(uid uint32) bool
	now     func() time.Time

	// mu guards byUID, each account's conns, conns, ordinary and refused.
	mu       sync.Mutex
	byUID    map[uint32]*account
	conns    int                // all connections
	ordinary int                // connections of ordinary uids
	refused  map[refusal]uint64 // since the last report

	heavy [numHeavyClasses]fairQueue
}

// refusal is one kind of refusal of one uid.
type refusal struct {
	uid  uint32
	kind limitKind
}

func newAccounts(lim *atomic.Pointer[limitSet], isAdmin func(uint32) bool, now func() time.Time) *accounts {
	a := &accounts{lim: lim, isAdmin: isAdmin, now: now, byUID: make(map[uint32]*account), refused: make(map[refusal]uint64)}
	l := lim.Load()
	a.heavy[heavyCPU] = fairQueue{slots: l.HeavySlots, perUID: l.MaxHeavyPerUID, class: heavyCPU}
	a.heavy[heavyStore] = fairQueue{slots: storeSlots, perUID: storeSlotsPerUID, class: heavyStore}
	return a
}

// limitError is a refusal for a limit: its public message, and what it
// counts as.
type limitError struct {
	kind   limitKind
	public string
}

func (e *limitError) Error() string { return e.public }

// connect charges a new connection to uid, or refuses it: the daemon's
// connections are all taken (ordinary uids may not take the
// administrators' reserve), or the uid's are.
func (a *accounts) connect(uid uint32) (*account, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	l := a.lim.Load()
	acct := a.byUID[uid]
	if acct == nil {
		acct = &account{uid: uid, admin: a.isAdmin(uid)}
		if !acct.admin {
			acct.computing = make(chan struct{}, l.MaxComputingPerUID)
		}
	}
	switch {
	case a.conns >= l.MaxConnections:
		return nil, a.refuseLocked(uid, limitDaemonConnections, "the daemon's connection limit is reached")
	case !acct.admin && a.ordinary >= l.MaxConnections-l.AdminConnections:
		return nil, a.refuseLocked(uid, limitDaemonConnections,
			"the daemon's connection limit is reached (the rest are kept for administrators)")
	case !acct.admin && acct.conns >= l.MaxConnectionsPerUID:
		return nil, a.refuseLocked(uid, limitConnections,
			fmt.Sprintf("too many connections for this user (limit %d)", l.MaxConnectionsPerUID))
	}
	a.byUID[uid] = acct
	acct.conns++
	a.conns++
	if !acct.admin {
		a.ordinary++
	}
	return acct, nil
}

// disconnect gives back a connection's slot. Its account stays while the
// uid has connections or an audit allowance still refilling (sweep drops
// it): a uid cannot refill its allowance by reconnecting.
func (a *accounts) disconnect(acct *account) {
	a.mu.Lock()
	acct.conns--
	a.conns--
	if !acct.admin {
		a.ordinary--
	}
	a.mu.Unlock()
}

// refuse counts a refusal of uid for a limit and returns it as an error.
func (a *accounts) refuse(uid uint32, kind limitKind, public string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.refuseLocked(uid, kind, public)
}

func (a *accounts) refuseLocked(uid uint32, kind limitKind, public string) error {
	a.refused[refusal{uid, kind}]++
	return &limitError{kind: kind, public: public}
}

// maxReportedUIDs bounds the uids one report names; the others are
// summed.
const maxReportedUIDs = 32

// report returns a description of the refusals since the last report,
// and clears them; "" if there were none. It also drops the accounts of
// uids that have left with their audit allowance refilled.
func (a *accounts) report() string {
	now := a.now()
	l := a.lim.Load()
	a.mu.Lock()
	for uid, acct := range a.byUID {
		if acct.conns == 0 && (acct.admin || acct.audit.full(now, float64(l.AuditBytesPerSecondPerUID), float64(l.AuditBurstPerUID))) {
			delete(a.byUID, uid)
		}
	}
	if len(a.refused) == 0 {
		a.mu.Unlock()
		return ""
	}
	refused := a.refused
	a.refused = make(map[refusal]uint64)
	a.mu.Unlock()

	type uidCount struct {
		uid   uint32
		total uint64
		kinds [numLimitKinds]uint64
	}
	byUID := map[uint32]*uidCount{}
	for r, n := range refused {
		c := byUID[r.uid]
		if c == nil {
			c = &uidCount{uid: r.uid}
			byUID[r.uid] = c
		}
		c.total += n
		c.kinds[r.kind] += n
	}
	list := make([]*uidCount, 0, len(byUID))
	for _, c := range byUID {
		list = append(list, c)
	}
	slices.SortFunc(list, func(x, y *uidCount) int {
		if x.total != y.total {
			if x.total > y.total {
				return -1
			}
			return 1
		}
		return int(int64(x.uid) - int64(y.uid))
	})
	var b strings.Builder
	b.WriteString("requests refused for limits")
	for i, c := range list {
		if i == maxReportedUIDs {
			var rest uint64
			for _, c := range list[i:] {
				rest += c.total
			}
			fmt.Fprintf(&b, "; %d more uids: %d", len(list)-i, rest)
			break
		}
		sep := ": "
		if i > 0 {
			sep = "; "
		}
		fmt.Fprintf(&b, "%suid %d: %d (", sep, c.uid, c.total)
		first := true
		for k, n := range c.kinds {
			if n == 0 {
				continue
			}
			if !first {
				b.WriteString(", ")
			}
			first = false
			fmt.Fprintf(&b, "%s %d", limitNames[k], n)
		}
		b.WriteString(")")
	}
	return b.String()
}

// Heavy work: operations that keep a processor busy for long (RSA key
// generation, key rotation) or write the store. Each class has slots
// shared by the ordinary uids and a quota per uid; a uid over its quota,
// or arriving when the slots are taken, waits in its own queue, and free
// slots go to the waiting uids in turn (round robin), whatever the length
// of their queues. Administrators do not queue.
type heavyClass uint8

const (
	heavyCPU heavyClass = iota
	heavyStore
	numHeavyClasses
)

// Store writes are committed in groups (one fsync for all the writes that
// wait), so they need no processor of their own: their slots only keep
// one uid's writes from filling every group.
const (
	storeSlots       = 64
	storeSlotsPerUID = 8
)

// slotWaiter is one operation waiting for a slot.
type slotWaiter struct {
	ready   chan struct{} // closed when granted
	granted bool          // under the queue's mu
}

// fairQueue hands out a class's slots.
type fairQueue struct {
	class heavyClass

	// mu guards slots and perUID (resize changes them), running, ring,
	// next, and the class's entries of every account's running and
	// waiting.
	mu      sync.Mutex
	slots   int
	perUID  int
	running int
	ring    []*account // uids with operations waiting, in turn order
	next    int        // ring index of the next uid to serve
}

// acquire waits for a slot for acct; it fails if cancel is closed first.
// Every nil return must be paired with one release.
func (q *fairQueue) acquire(acct *account, cancel <-chan struct{}) error {
	if acct.admin {
		return nil
	}
	q.mu.Lock()
	// Free slots and room in the uid's quota mean that no one can run
	// ahead of it: every uid still waiting is held by its own quota.
	if q.running < q.slots && acct.running[q.class] < q.perUID {
		q.running++
		acct.running[q.class]++
		q.mu.Unlock()
		return nil
	}
	w := &slotWaiter{ready: make(chan struct{})}
	if len(acct.waiting[q.class]) == 0 {
		q.ring = append(q.ring, acct)
	}
	acct.waiting[q.class] = append(acct.waiting[q.class], w)
	q.mu.Unlock()
	select {
	case <-w.ready:
		return nil
	case <-cancel:
	}
	q.mu.Lock()
	defer q.mu.Unlock()
	if w.granted {
		q.releaseLocked(acct)
	} else {
		ws := acct.waiting[q.class]
		i := slices.Index(ws, w)
		acct.waiting[q.class] = slices.Delete(ws, i, i+1)
		if len(acct.waiting[q.class]) == 0 {
			q.dropLocked(acct)
		}
	}
	return errConnClosing
}

// release gives back a slot acquire granted.
func (q *fairQueue) release(acct *account) {
	if acct.admin {
		return
	}
	q.mu.Lock()
	q.releaseLocked(acct)
	q.mu.Unlock()
}

func (q *fairQueue) releaseLocked(acct *account) {
	q.running--
	acct.running[q.class]--
	// The slot goes to another uid first, if one waits.
	if j := slices.Index(q.ring, acct); j >= 0 && j == q.next {
		q.next = (j + 1) % len(q.ring)
	}
	q.grantLocked()
}

// grantLocked gives free slots to waiting uids in turn.
func (q *fairQueue) grantLocked() {
	for q.running < q.slots && len(q.ring) > 0 {
		found := false
		for i := range q.ring {
			j := (q.next + i) % len(q.ring)
			acct := q.ring[j]
			if acct.running[q.class] >= q.perUID {
				continue
			}
			ws := acct.waiting[q.class]
			w := ws[0]
			ws[0] = nil
			acct.waiting[q.class] = ws[1:]
			w.granted = true
			close(w.ready)
			q.running++
			acct.running[q.class]++
			if len(acct.waiting[q.class]) == 0 {
				q.ring = slices.Delete(q.ring, j, j+1)
				q.next = j
			} else {
				q.next = j + 1
			}
			if len(q.ring) > 0 {
				q.next %= len(q.ring)
			} else {
				q.next = 0
			}
			found = true
			break
		}
		if !found {
			return
		}
	}
}

// resize sets the class's slots and per-uid quota (SetLimits). Operations
// running keep their slots; fewer slots or a lower quota hold back the
// next grants until enough have ended, more are granted to waiting uids at
// once.
func (q *fairQueue) resize(slots, perUID int) {
	q.mu.Lock()
	q.slots, q.perUID = slots, perUID
	q.grantLocked()
	q.mu.Unlock()
}

// dropLocked takes acct out of the ring.
func (q *fairQueue) dropLocked(acct *account) {
	j := slices.Index(q.ring, acct)
	if j < 0 {
		return
	}
	q.ring = slices.Delete(q.ring, j, j+1)
	if q.next > j {
		q.next--
	}
	if len(q.ring) > 0 {
		q.next %= len(q.ring)
	} else {
		q.next = 0
	}
}

// limitSet is one set of limits in force (SetLimits replaces it whole)
// with the replies to requests refused for per-uid and per-connection
// limits, which name them, made once per set.
type limitSet struct {
	Limits
	auditRateMsg, connInFlightMsg, inFlightMsg, requestMemoryMsg, connMemoryMsg string
}

func newLimitSet(l Limits) *limitSet {
	return &limitSet{
		Limits: l,
		auditRateMsg: fmt.Sprintf("this user's requests made more audit records than the daemon allows (%d bytes a second): try again later",
			l.AuditBytesPerSecondPerUID),
		connInFlightMsg:  fmt.Sprintf("too many requests in flight (limit %d)", l.MaxInFlight),
		inFlightMsg:      fmt.Sprintf("too many requests in flight for this user (limit %d)", l.MaxInFlightPerUID),
		requestMemoryMsg: fmt.Sprintf("this user's requests in progress hold too much memory (limit %d bytes): try again later", l.MaxRequestBytesPerUID),
		connMemoryMsg:    fmt.Sprintf("this connection's requests in progress hold too much memory (limit %d bytes): try again later", l.MaxRequestBytesPerUID),
	}
}

// kdfQueueMsg refuses a request of a uid whose derivations fill its share
// of the KDF queue.
const kdfQueueMsg = "too many key derivations of this user waiting: try again later"

// shortenSlice makes the calling goroutine run, until it ends, on a
// thread of its own with the shortest time slice (kdf.SetBackground) and
// on every processor but one (kdf.LeaveOneCPU): a request that arrives
// while it computes waits for the processor at most that long, and one
// processor is always left to the threads that answer requests (several
// uids' RSA generations at once would otherwise take every processor,
// and every thread of the daemon has the same priority). Its priority
// stays: a thread of the daemon that waited long to run would hold up
// every stop of the world the garbage collector makes, and with it every
// request. The thread is never given back: when the goroutine ends, the
// runtime ends the thread. Heavy work runs on its own goroutine
// (isHeavy), so only that request pays for it, and a thread's start
// costs little next to an RSA key generation.
func shortenSlice() {
	runtime.LockOSThread()
	kdf.SetBackground(unix.Gettid(), 0)
	kdf.LeaveOneCPU()
}

// wireLimits describes the limits in force for Status.
func (s *Server) wireLimits() *wire.Limits {
	l := s.lims()
	w := &wire.Limits{
		MaxMessageBytes:           uint32(l.MaxMessageBytes),
		MaxInFlight:               uint32(l.MaxInFlight),
		MaxSessions:               uint32(l.MaxSessions),
		MaxHandles:                uint32(l.MaxHandles),
		MaxKeysPerUser:            uint32(l.MaxKeysPerUser),
		MaxBatchOps:               uint32(l.MaxBatchOps),
		MaxConnections:            uint32(l.MaxConnections),
		AdminConnections:          uint32(l.AdminConnections),
		MaxConnectionsPerUid:      uint32(l.MaxConnectionsPerUID),
		MaxInFlightPerUid:         uint32(l.MaxInFlightPerUID),
		MaxRequestBytesPerUid:     uint32(l.MaxRequestBytesPerUID),
		MaxLongPollsPerUid:        uint32(l.MaxLongPollsPerUID),
		MaxSessionsPerUid:         uint32(l.MaxSessionsPerUID),
		MaxNamedWatchersPerUid:    uint32(l.MaxNamedWatchersPerUID),
		MaxComputingPerUid:        uint32(l.MaxComputingPerUID),
		MaxHeavyPerUid:            uint32(l.MaxHeavyPerUID),
		HeavySlots:                uint32(l.HeavySlots),
		AuditBytesPerSecondPerUid: uint32(l.AuditBytesPerSecondPerUID),
		AuditBurstPerUid:          uint32(l.AuditBurstPerUID),
		PackedOps:                 true,
		ShmMaxBytes:               uint32(l.ShmMaxBytes),
		ShmBytesPerUid:            uint32(l.ShmBytesPerUID),
	}
	if s.cfg.KDF != nil {
		kl := s.cfg.KDF.Limits()
		w.KdfQueuePerUid, w.KdfRunningPerUid = uint32(kl.QueuePerTenant), uint32(kl.RunningPerTenant)
	}
	return w
}

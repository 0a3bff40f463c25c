package server

// The core's entry: a Session is one caller's state, whatever front
// carries its requests. A front makes one (NewSession, or newSession for
// the SOCK_SEQPACKET front) with the identity of whoever opened it, hands
// it requests with the identity the kernel attested for each, and gets
// back replies whose audit records are written. Everything a request
// passes through is here or below, once for every front: admission
// (admitCaller, enter, checkRequest, admitHeavy), execution (execute.go,
// dispatch.go), the record (record), and refusals (refusalReply).

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/proto"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// Identity is who sent one request, as the kernel attested it when the
// request was sent (for the SOCK_SEQPACKET front, SCM_CREDENTIALS of that
// message), not when the connection was made: a socket passed to another
// process speaks for that process.
type Identity struct {
	PID int32
	UID uint32
	GID uint32
	// Pidfd refers to the sending process (SCM_PIDFD, or a pidfd the front
	// opened), or is -1 where the kernel does not provide one. Valid only
	// while the request is handled; the front owns it.
	Pidfd int
	// SSHDest is what the ssh-agent front knows of where its client's
	// connection leads (audit.Caller.SSHDest); recorded, never decided on.
	SSHDest string
	// Principal is the client certificate's identity of a request that
	// came over mutual TLS (audit.Caller.Principal), which a front mapped
	// to UID and GID; PID is then 0 and Pidfd -1: there is no local
	// process. Recorded, never decided on.
	Principal string
	// Via is the session of the connection that carried the request, when
	// a front hands it to another session (the ssh-agent front signs with
	// a key that ssh-add gave it, held by a session of its own): the
	// sender is then read as Via reads its own senders, against the
	// process that opened Via's connection and what was read of it then
	// (its namespaces), rather than against a session no process opened.
	// nil: the session's own. Via must stay open while the request runs.
	Via *Session

	// ctx is the request's context when it came through Do: what waits
	// (derivations, slots for heavy work, long polls) stops when it is
	// done. nil: the session's (ctxOf).
	ctx *reqCtx
}

func (id Identity) caller() policy.Caller { return policy.Caller{UID: id.UID, GID: id.GID} }

// frontSeqpacket is the name of the daemon's own front. Its audit records
// name no front: records without one were carried by it, as every record
// was before there were other fronts.
const frontSeqpacket = "seqpacket"

// ErrSessionClosed is returned by Do once the session is closed.
var ErrSessionClosed = errors.New("server: session closed")

// Session is the core's state of one caller: what a connection of the
// SOCK_SEQPACKET front holds, and what any other front holds for whoever
// opened it (an ssh-agent connection, an HTTP client). Its handles,
// streaming sessions and ephemeral keys are its own, and die with it; what
// it holds counts against the uid that opened it.
type Session struct {
	s     *Server
	id    uint64 // the audit's "conn"
	front string // the front's name (frontSeqpacket, or NewSession's)
	// auditFront is what the audit records say of the front: nothing for
	// frontSeqpacket.
	auditFront string
	log        *slog.Logger
	// acct is the uid that opened the session (opener): whatever the
	// session holds is counted against it (peruid.go).
	acct *account
	// opener is who opened the session (for the SOCK_SEQPACKET front,
	// SO_PEERCRED), with its pidfd (-1 if none), kept open for the
	// session's life so that its pid cannot be taken by another process
	// unnoticed (peer.go); closed by Close.
	opener Identity
	peer   peer // the opener, for the audit (peer.go); set once, before requests

	inFlight  atomic.Int32   // requests executing, inline or concurrently
	async     sync.WaitGroup // requests running outside the front's loop: concurrently, or through Do
	longPolls atomic.Int32   // generation watches waiting (generation.go)
	closing   chan struct{}  // closed when the session ends: long polls stop
	// ctx ends with the session, or as soon as the client hangs up:
	// derivations waiting for a worker, or running, stop.
	ctx    context.Context
	cancel context.CancelFunc
	// gone is set when the client hangs up (for the SOCK_SEQPACKET front,
	// closes its end, which the server's watcher of hang-ups sees at once:
	// Server.hangups): the requests running skip their remaining
	// operations.
	gone atomic.Bool
	// held is what the requests running concurrently hold (requestCost),
	// at most the limit of one uid's, administrators' too.
	held atomic.Int64

	// mu guards the per-session tables and ending. It is held only to look
	// up or change them, never across crypto or I/O.
	mu          sync.Mutex
	handles     map[uint32]*keystore.Object
	nextHandle  uint32
	sessions    map[uint32]*session
	nextSession uint32
	ending      bool           // Close has begun: Do takes no more requests
	closed      bool           // the tables are dropped: nothing may be added
	genWatcher  *genid.Watcher // the session as a watcher, once it watched
	st          connStore      // pending init, rotation, backup, restore (storeops.go)
	shm         *shmMapping    // the registered shared memory, if any (shmem.go)

	// passed is the descriptor that came with the request running inline
	// (the front's), for its shm_register; -1 when none. Only the
	// connection's own goroutine touches it.
	passed int
}

// newSession makes the session of a caller opened by opener, counted
// against acct (accounts.connect). It takes opener's pidfd. ctx bounds
// the session's work.
func newSession(ctx context.Context, s *Server, front string, acct *account, opener Identity) *Session {
	ss := &Session{
		s:        s,
		front:    front,
		acct:     acct,
		opener:   Identity{PID: opener.PID, UID: opener.UID, GID: opener.GID, Pidfd: opener.Pidfd},
		id:       s.nextConn.Add(1),
		handles:  make(map[uint32]*keystore.Object),
		sessions: make(map[uint32]*session),
		closing:  make(chan struct{}),
		passed:   -1,
	}
	if front != frontSeqpacket {
		ss.auditFront = front
		ss.log = s.log.With("conn", ss.id, "front", front)
	} else {
		ss.log = s.log.With("conn", ss.id)
	}
	ss.ctx, ss.cancel = context.WithCancel(ctx)
	return ss
}

// maxFrontName bounds a front's name.
const maxFrontName = 32

// validFront reports whether name may name a front in the audit log: a
// short lowercase word with digits and dashes, other than the daemon's
// own front's.
func validFront(name string) bool {
	if name == "" || len(name) > maxFrontName || name == frontSeqpacket {
		return false
	}
	for _, c := range []byte(name) {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-') {
			return false
		}
	}
	return true
}

// NewSession opens a session for a front other than the daemon's own
// SOCK_SEQPACKET one: front names it in the audit log (lowercase letters,
// digits and dashes, such as "ssh-agent"; not "seqpacket"), and opener is
// who opened it, as the kernel said (SO_PEERCRED and SO_PEERPIDFD of a
// Unix socket). The session takes opener.Pidfd, even on error, and keeps
// it open until Close, so that the opener's pid cannot be taken by
// another process unnoticed; pass -1 for none.
//
// The session counts against opener.UID's limits as a connection does
// (connections per uid and in all); over one, NewSession fails, and the
// refusal is counted in the next "limits" audit event. Its work stops
// once ctx is done, as when a client hangs up; it must still be closed,
// by its front (Shutdown closes only the SOCK_SEQPACKET front's).
func (s *Server) NewSession(ctx context.Context, front string, opener Identity) (*Session, error) {
	drop := func() {
		if opener.Pidfd >= 0 {
			unix.Close(opener.Pidfd)
		}
	}
	if !validFront(front) {
		drop()
		return nil, fmt.Errorf("server: invalid front name %q", front)
	}
	if err := ctx.Err(); err != nil {
		drop()
		return nil, err
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		drop()
		return nil, ErrServerClosed
	}
	acct, err := s.accts.connect(opener.UID)
	s.mu.Unlock()
	if err != nil {
		drop()
		return nil, err
	}
	ss := newSession(ctx, s, front, acct, opener)
	ss.readPeer()
	return ss, nil
}

// Do runs req for id, the identity the kernel attested for whoever sent
// it, and returns the reply, once its audit record is written. Every
// refusal (a limit, the protocol version, the batch size, the generation,
// authorization) is a reply with its status, recorded like any other; an
// error means the request was not taken at all: the session is closed, or
// ctx was done before it began.
//
// Do runs the request in the calling goroutine, whatever the operation
// table says of running it concurrently (the front decides that); it may
// be called from several goroutines at once. Once ctx is done, what the
// request waits for stops, and its operations not yet begun are skipped.
//
// The reply owns its memory, and req is not kept. The reply may hold
// plaintext or exported key bytes: the front clears them once sent.
// Descriptors an operation passes with its reply on the SOCK_SEQPACKET
// front (generation_map's page) are not passed.
func (ss *Session) Do(ctx context.Context, id Identity, req *wire.Request) (*wire.Reply, error) {
	if req == nil {
		return nil, errors.New("server: nil request")
	}
	ss.mu.Lock()
	if ss.ending {
		ss.mu.Unlock()
		return nil, ErrSessionClosed
	}
	ss.async.Add(1)
	ss.mu.Unlock()
	defer ss.async.Done()
	if v := ss.enterVia(&id); v != nil {
		defer v.async.Done()
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	caller, r := ss.admitCaller(id)
	if r.refused() {
		return ss.refusalReplyPaused(caller, req.Id, r), nil
	}
	if id.PID <= 0 && id.Principal == "" {
		return ss.refusalReply(caller, req.Id, errNoSender("pid", id.PID)), nil
	}
	n := req.SizeVT()
	if max := ss.s.lims().MaxMessageBytes; n > max {
		return ss.refusalReply(caller, req.Id, errTooLarge(n, max)), nil
	}
	if r := ss.enter(); r.refused() {
		return ss.refusalReplyPaused(caller, req.Id, r), nil
	}
	var pk packing
	we := pk.unpack(req, ss.s.lims().MaxBatchOps)
	if we == nil {
		we = ss.checkRequest(req)
	}
	if we != nil {
		pk.restore(req)
		ss.leave()
		return ss.refusalReply(caller, req.Id, rejectionOf(we)), nil
	}
	defer pk.restore(req) // req is the caller's
	heavy := heavyOps(pk.sent(req))
	if heavy {
		cost, r := ss.admitHeavy(req, n)
		if r.refused() {
			ss.leave()
			return ss.refusalReplyPaused(caller, req.Id, r), nil
		}
		defer ss.unhold(cost)
	}
	// The request's context ends with ctx or with the session; it is made
	// only if something waits on it (reqCtx).
	rc := &reqCtx{caller: ctx, session: ss.ctx}
	defer rc.release()
	id.ctx = rc

	a := arenaPool.Get().(*arena)
	a.reset()
	var nbuf []auditNote
	notes := ss.notesFor(&nbuf, caller, len(req.Ops))
	if !heavy {
		ss.acct.startComputing()
	}
	rep := ss.execute(req, id, a, notes, heavy)
	if !heavy {
		ss.acct.stopComputing()
	}
	rep = ss.record(req, rep, id, caller, notes, n)
	pk.pack(rep, a)
	ss.leave()
	// The results, and the slice of them, may be a's and point into a
	// and into req: the reply gets copies, and a is wiped.
	rep.Results = copyResults(rep.Results)
	a.wipe()
	arenaPool.Put(a)
	return rep, nil
}

// copyResults returns deep copies of rs, carved from one slice. The
// fields of the data path are copied by hand, without reflection; a
// result with a member of value or any other field set (which a copy of
// those would not encode alike) is cloned.
func copyResults(rs []*wire.Result) []*wire.Result {
	out := make([]*wire.Result, len(rs))
	copies := make([]wire.Result, len(rs))
	for i, res := range rs {
		if res == nil {
			continue
		}
		c := &copies[i]
		c.Status, c.Message, c.KeyVersion, c.OutputLength = res.Status, res.Message, res.KeyVersion, res.OutputLength
		if res.Data != nil {
			c.Data = bytes.Clone(res.Data)
		}
		// A member of value is cloned even when it encodes as nothing (a
		// nil message, which proto.Clone keeps and encodes as empty).
		if res.Value != nil || c.SizeVT() != res.SizeVT() {
			out[i] = proto.Clone(res).(*wire.Result)
			continue
		}
		out[i] = c
	}
	return out
}

// reqCtx is the context of a request that came through Do: it ends with
// the caller's or with the session's. Checking whether it ended needs no
// context of its own; one that ends with either is made only for what
// waits on it (a slot for heavy work, a derivation, a long poll), which
// few requests do, and released when Do returns.
type reqCtx struct {
	caller, session context.Context

	once   sync.Once
	ctx    context.Context
	cancel context.CancelFunc
	stop   func() bool
}

// done reports whether the request's context has ended.
func (rc *reqCtx) done() bool { return rc.caller.Err() != nil || rc.session.Err() != nil }

// get returns the context that ends with either, made on first use.
func (rc *reqCtx) get() context.Context {
	rc.once.Do(func() {
		rc.ctx, rc.cancel = context.WithCancel(rc.caller)
		rc.stop = context.AfterFunc(rc.session, rc.cancel)
	})
	return rc.ctx
}

// release frees what get made; a get after it returns an ended context.
func (rc *reqCtx) release() {
	rc.once.Do(func() { rc.ctx = endedCtx })
	if rc.cancel != nil {
		rc.stop()
		rc.cancel()
	}
}

// endedCtx is a context that has ended.
var endedCtx = func() context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	return ctx
}()

// arenaPool holds wiped arenas for Do.
var arenaPool = sync.Pool{New: func() any { return new(arena) }}

// enterVia holds id.Via open while a request of id runs on ss: Via's
// Close waits for it (as for Via's own requests), so that its opener's
// pidfd, which callerOf reads, is not closed (and its number reused)
// under it. A Via that is ss, of another server, or closing already is
// dropped: the request is read as ss's own. The caller calls
// Via.async.Done once the request is over if it returns non-nil.
func (ss *Session) enterVia(id *Identity) *Session {
	v := id.Via
	if v == nil {
		return nil
	}
	if v == ss || v.s != ss.s {
		id.Via = nil
		return nil
	}
	v.mu.Lock()
	if v.ending {
		v.mu.Unlock()
		id.Via = nil
		return nil
	}
	v.async.Add(1)
	v.mu.Unlock()
	return v
}

// Close ends the session: what waits stops, requests in progress finish,
// its streaming sessions end, its handles are dropped and its ephemeral
// keys destroyed, and it no longer counts against its opener's uid.
// Do fails with ErrSessionClosed once Close has begun. Close may be
// called more than once.
func (ss *Session) Close() {
	ss.mu.Lock()
	if ss.ending {
		ss.mu.Unlock()
		return
	}
	ss.ending = true
	ss.mu.Unlock()
	close(ss.closing) // generation watches end now, not at their timeout
	ss.cancel()       // and derivations, and waits for heavy slots
	ss.async.Wait()
	ss.mu.Lock()
	ss.closed = true
	handles, sessions := ss.handles, ss.sessions
	ss.handles, ss.sessions = nil, nil
	w := ss.genWatcher
	ss.mu.Unlock()
	if w != nil {
		w.Remove()
	}
	for sid, sess := range sessions {
		ss.endSession(sid, sess)
	}
	ss.acct.dropSessions(len(sessions))
	for _, o := range handles {
		ss.release(o)
	}
	ss.st.cleanup()
	ss.unmapShm()
	if ss.opener.Pidfd >= 0 {
		unix.Close(ss.opener.Pidfd)
		ss.opener.Pidfd = -1
	}
	ss.s.accts.disconnect(ss.acct)
}

// ctxOf is the context of a request of id: Do's, or the session's.
func (ss *Session) ctxOf(id Identity) context.Context {
	if id.ctx != nil {
		return id.ctx.get()
	}
	return ss.ctx
}

// stopOf is what ends a long poll of a request of id: Do's context, or
// the end of the session.
func (ss *Session) stopOf(id Identity) <-chan struct{} {
	if id.ctx != nil {
		return id.ctx.get().Done()
	}
	return ss.closing
}

// abandoned reports whether nobody waits for the reply to a request of id
// any more: the client hung up, or Do's context is done. Its remaining
// operations are skipped.
func (ss *Session) abandoned(id Identity) bool {
	return ss.gone.Load() || (id.ctx != nil && id.ctx.done())
}

// hangUp tells the session that its client hung up: no reply can reach it
// any more, so the work it asked for stops.
func (ss *Session) hangUp() {
	ss.gone.Store(true)
	ss.cancel()
}

// rejection is why a request is refused as a whole, before it runs; the
// zero rejection refuses nothing.
type rejection struct {
	status         wire.Status // STATUS_OK: not refused
	public, detail string
	// limit: refused for a limit (kind), which is counted and reported in
	// the next "limits" audit event rather than recorded.
	limit bool
	kind  limitKind
	// unrecorded: the audit log cannot take records (not recorded; the log
	// counts these).
	unrecorded bool
}

func (r rejection) refused() bool { return r.status != wire.Status_STATUS_OK }

func limitRefusal(kind limitKind, public string) rejection {
	return rejection{status: wire.Status_STATUS_RESOURCE_EXHAUSTED, public: public, limit: true, kind: kind}
}

func rejectionOf(we *wire.Error) rejection {
	return rejection{status: we.Status, public: we.Public, detail: we.Detail}
}

func errNoSender(what string, v any) rejection {
	// The kernel attaches credentials to every message once SO_PASSCRED is
	// set; pid 0 means it had none to attach (a message queued before
	// that, or a sender whose pid this daemon's pid namespace cannot see),
	// and the uid would read as the overflow uid. Refuse rather than guess
	// who is asking.
	return rejection{status: wire.Status_STATUS_PERMISSION_DENIED, public: "the daemon cannot see who sent this message",
		detail: fmt.Sprintf("%s %v", what, v)}
}

func errTooLarge(n, max int) rejection {
	return rejection{status: wire.Status_STATUS_RESOURCE_EXHAUSTED,
		public: fmt.Sprintf("request of %d bytes exceeds the %d-byte message limit", n, max)}
}

// admitCaller is the first check of a request, before anything is spent
// on it: the audit log can take its record and its uid's audit allowance
// is not spent. It returns the audit's view of the caller, read now,
// through id's pidfd, before the caller can move on (nil when nothing is
// audited).
func (ss *Session) admitCaller(id Identity) (*audit.Caller, rejection) {
	if ss.s.alog == nil {
		return nil, rejection{}
	}
	// A log that cannot take records refuses the request before anything
	// is done (not recorded, necessarily; the log counts these).
	if err := ss.s.alog.Ready(); err != nil {
		ss.log.Warn("request refused: the audit log cannot be written", "err", err)
		return nil, rejection{status: errAuditDown.Status, public: errAuditDown.Public, unrecorded: true}
	}
	// A uid whose requests made more records than its allowance waits
	// until it refills.
	if l := ss.s.lims(); !ss.acct.auditOK(ss.s.cfg.Now, &l.Limits) {
		return nil, limitRefusal(limitAuditRate, l.auditRateMsg)
	}
	c := ss.callerOf(id)
	return &c, rejection{}
}

// enter counts a request as in flight, on its session and for its uid,
// while it executes; one that would exceed a limit is refused at once,
// before anything is spent on it (a batch takes longer to decode than to
// refuse). Unless refused, the caller must leave, or have the request's
// runner leave.
func (ss *Session) enter() rejection {
	l := ss.s.lims()
	if int(ss.inFlight.Add(1)) > l.MaxInFlight {
		ss.inFlight.Add(-1)
		return limitRefusal(limitConnInFlight, l.connInFlightMsg)
	}
	if !ss.acct.enter(l.MaxInFlightPerUID) {
		ss.inFlight.Add(-1)
		return limitRefusal(limitInFlight, l.inFlightMsg)
	}
	return rejection{}
}

// leave ends a request's count in flight, on its session and for its
// uid (see enter).
func (ss *Session) leave() {
	ss.inFlight.Add(-1)
	ss.acct.leave()
}

// checkRequest refuses a decoded request that does not speak this
// protocol, holds no operation or more than the batch limit, or expects
// another generation than the machine's.
func (ss *Session) checkRequest(req *wire.Request) *wire.Error {
	switch {
	case req.Version != wire.ProtocolVersion:
		return wire.Errorf(wire.Status_STATUS_UNIMPLEMENTED,
			"unsupported protocol version %d (this daemon speaks %d)", req.Version, wire.ProtocolVersion)
	case len(req.Ops) == 0:
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a request needs at least one operation")
	case len(req.Ops) > ss.s.lims().MaxBatchOps:
		return wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
			"%d operations exceed the batch limit of %d", len(req.Ops), ss.s.lims().MaxBatchOps)
	case len(req.Ops) > 1 && slices.ContainsFunc(req.Ops, func(op *wire.Op) bool { return op.GetShmRegister() != nil }):
		// It takes the descriptor of its own message: alone, it runs on
		// the connection's goroutine, before the next message is read.
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "shm_register must be the only operation of its request")
	}
	// Nothing is served from a generation the machine has left.
	return ss.checkGeneration(req)
}

// admitHeavy admits req, of reqBytes, to run as a heavy request (isHeavy):
// a uid whose derivations fill its share of the KDF queue is refused
// here, cheaply, rather than by the supervisor once the request runs;
// and the request, which may wait long for a slot or a worker, holds its
// bytes, decoded, with its results, until done: cost counts against its
// uid's share of memory, and its session's, until unhold.
func (ss *Session) admitHeavy(req *wire.Request, reqBytes int) (cost int, r rejection) {
	if sup := ss.s.cfg.KDF; sup != nil && hasKDF(req) && sup.TenantFull(ss.kdfContext(Identity{})) {
		return 0, limitRefusal(limitKDFQueue, kdfQueueMsg)
	}
	l := ss.s.lims()
	cost = min(requestCost(reqBytes, len(req.Ops)), l.MaxRequestBytesPerUID)
	if kind, msg, ok := ss.hold(l, cost); !ok {
		return 0, limitRefusal(kind, msg)
	}
	return cost, rejection{}
}

// opCost is what one operation of a request running concurrently is
// counted to hold besides the request's bytes: the operation decoded, its
// result and its audit note.
const opCost = 256

// requestCost is what a request of n bytes and ops operations holds while
// it runs concurrently. (It is counted as at most the limit, so that any
// request may run alone.)
func requestCost(n, ops int) int { return n + ops*opCost }

// hold counts cost bytes of a request that runs concurrently against its
// uid's share and its session's; false: over one of them (which it
// names), not counted.
func (ss *Session) hold(l *limitSet, cost int) (limitKind, string, bool) {
	max := l.MaxRequestBytesPerUID
	if ss.held.Add(int64(cost)) > int64(max) {
		ss.held.Add(-int64(cost))
		return limitConnRequestMemory, l.connMemoryMsg, false
	}
	if !ss.acct.hold(cost, max) {
		ss.held.Add(-int64(cost))
		return limitRequestMemory, l.requestMemoryMsg, false
	}
	return 0, "", true
}

func (ss *Session) unhold(cost int) {
	ss.held.Add(-int64(cost))
	ss.acct.unhold(cost)
}

// notesFor returns n cleared audit notes from *buf, or nil when nothing is
// audited (caller is nil).
func (ss *Session) notesFor(buf *[]auditNote, caller *audit.Caller, n int) []auditNote {
	if caller == nil {
		return nil
	}
	if cap(*buf) < n {
		*buf = make([]auditNote, n)
	}
	ns := (*buf)[:n]
	clear(ns)
	return ns
}

// record runs what must follow the execution of req before its reply
// leaves: the audit log takes its keys or drops them if req changed the
// seal state, and the request is recorded. It returns the reply to send:
// rep, or, when the record could not be written, an UNAVAILABLE reply
// that withholds rep's results.
func (ss *Session) record(req *wire.Request, rep *wire.Reply, id Identity, caller *audit.Caller, notes []auditNote, reqBytes int) *wire.Reply {
	if caller == nil {
		return rep
	}
	if changesSeal(req) {
		ss.s.syncAuditKeys()
	}
	if err := ss.auditRequest(req, rep, caller, notes, reqBytes); err != nil {
		ss.withheld(req.Id, err)
		ss.undoHandles(createdHandles(req, rep), id, req.Id)
		return &wire.Reply{Version: wire.ProtocolVersion, Id: req.Id, Status: errAuditLost.Status, Message: errAuditLost.Public}
	}
	return rep
}

func (ss *Session) withheld(reqID uint64, err error) {
	ss.log.Error("results withheld: the audit log could not record the request", "request", reqID, "err", err)
}

// refusalReply answers a whole request refused by r, once the refusal is
// recorded (caller nil: nothing is audited), or counted for a limit. A
// front that holds replies for their records sends those first, so that
// records stay in the order requests were taken.
func (ss *Session) refusalReply(caller *audit.Caller, reqID uint64, r rejection) *wire.Reply {
	st, public := r.status, r.public
	if m := ss.s.cfg.Metrics; m != nil {
		m.Refused(st)
	}
	switch {
	case r.limit:
		ss.s.accts.refuse(ss.acct.uid, r.kind, r.public)
	case r.unrecorded:
	default:
		ss.log.Info("request refused", "request", reqID, "status", st.String(), "reason", public, "detail", r.detail)
		if caller != nil {
			if err := ss.auditRefusal(caller, reqID, st, public, r.detail); err != nil {
				ss.log.Error("the audit log could not record a refusal", "request", reqID, "err", err)
				st, public = errAuditLost.Status, errAuditLost.Public
			}
		}
	}
	return &wire.Reply{Version: wire.ProtocolVersion, Id: reqID, Status: st, Message: public}
}

// Refusal is a request that a front refused itself, before any of it
// reached the core (Session.Refuse): what the front's protocol asked for,
// in the audit log's terms.
type Refusal struct {
	// Op names the operation as the audit log does: the core's name for
	// it where the core has one ("sign", "list", "import", "destroy"), or
	// the front's own for what the core has no operation for ("lock",
	// "unlock", "session-bind"); "request" for a message that names none.
	// Lowercase letters, digits and dashes.
	Op string
	// Key is the persistent id of the key the request named, if known.
	Key []byte
	// Request numbers the request among the front's requests on the
	// session (the audit's "request").
	Request uint64
	// Status is the class of the refusal; never STATUS_OK for Refuse.
	Status wire.Status
	// Reason is the precise reason, for the audit log and the daemon's
	// log (the client is not told it). Never secrets.
	Reason string
}

// maxRefusalReason bounds a front's reason in the audit log: a reason
// may quote what the client sent.
const maxRefusalReason = 512

// validOp reports whether name may name a front's operation in the audit
// log (the syntax of a front's name, and "request").
func validOp(name string) bool { return name == "request" || validFront(name) }

// Refuse records in the audit log, for id, a request that the front
// refused itself, before it reached the core: a rule of the front's
// protocol that the core does not know of (a locked ssh-agent, a
// destination the key may not be used for, a malformed message). It must
// be called before the front answers the refusal; a nil error means the
// refusal is recorded (or there is no audit log, or, as for any request,
// the uid's audit allowance is spent and it is counted in the next
// "limits" event instead), and the front may answer. A non-nil error
// means it is not recorded: the front must not answer as it would have,
// but fail closed, as the core does when the log cannot be written (the
// ssh-agent front answers SSH_AGENT_FAILURE and closes the connection).
func (ss *Session) Refuse(ctx context.Context, id Identity, r Refusal) error {
	if r.Status == wire.Status_STATUS_OK {
		return errors.New("server: a refusal needs a status other than OK")
	}
	return ss.recordFront(ctx, id, r)
}

// Record records in the audit log, for id, something a front did itself
// that changes what its caller may do and that no operation of the core
// carries: an ssh-agent locked or unlocked, a connection bound to a
// destination host, a key the front added ending with its lifetime. r's
// Status is OK (or the class of a failure the front reports as done);
// Reason says what happened. As with Refuse, it must be called before
// the front answers, and a non-nil error means the front must fail
// closed.
func (ss *Session) Record(ctx context.Context, id Identity, r Refusal) error {
	return ss.recordFront(ctx, id, r)
}

func (ss *Session) recordFront(ctx context.Context, id Identity, r Refusal) error {
	switch {
	case !validOp(r.Op):
		return fmt.Errorf("server: invalid operation name %q", r.Op)
	case len(r.Key) != 0 && len(r.Key) != len(audit.KeyID{}):
		return fmt.Errorf("server: a key id of %d bytes", len(r.Key))
	}
	ss.mu.Lock()
	if ss.ending {
		ss.mu.Unlock()
		return ErrSessionClosed
	}
	ss.async.Add(1)
	ss.mu.Unlock()
	defer ss.async.Done()
	if v := ss.enterVia(&id); v != nil {
		defer v.async.Done()
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(r.Reason) > maxRefusalReason {
		r.Reason = r.Reason[:maxRefusalReason] + "..."
	}
	caller, rj := ss.admitCaller(id)
	switch {
	case rj.unrecorded:
		return errAuditDown
	case rj.limit:
		ss.refusalReplyPaused(caller, r.Request, rj) // counted, not recorded
		return nil
	}
	if r.Status == wire.Status_STATUS_OK {
		ss.log.Debug("done by the front", "uid", id.UID, "pid", id.PID, "request", r.Request, "op", r.Op, "what", r.Reason)
	} else {
		ss.log.Info("request refused by the front", "uid", id.UID, "pid", id.PID, "request", r.Request, "op", r.Op, "status", r.Status.String(), "reason", r.Reason)
	}
	if caller == nil {
		return nil
	}
	if err := ss.auditFrontRefusal(caller, &r); err != nil {
		ss.log.Error("the audit log could not record a refusal", "request", r.Request, "err", err)
		return err
	}
	return nil
}

// refusalReplyPaused is refusalReply, after the pause that follows a
// refusal for a limit (limitPause), for a front that returns the reply
// rather than sending it first.
func (ss *Session) refusalReplyPaused(caller *audit.Caller, reqID uint64, r rejection) *wire.Reply {
	rep := ss.refusalReply(caller, reqID, r)
	if r.limit {
		time.Sleep(limitPause)
	}
	return rep
}

// limitPause is how long a session waits after a request was refused for
// a limit before it takes the next: a client that sends again at once, in
// a loop, then costs the daemon little.
const limitPause = 10 * time.Millisecond

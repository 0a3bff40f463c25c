package server

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"runtime/debug"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// Identity is who sent one message, as the kernel attested it when the
// message was sent (SCM_CREDENTIALS), not when the connection was made:
// a socket passed to another process speaks for that process.
type Identity struct {
	PID int32
	UID uint32
	GID uint32
	// Pidfd refers to the sending process (SCM_PIDFD), or is -1 where the
	// kernel does not provide one. Valid only while the request is handled.
	Pidfd int
}

func (id Identity) caller() policy.Caller { return policy.Caller{UID: id.UID, GID: id.GID} }

// conn is the state of one client connection.
type conn struct {
	s     *Server
	c     *seqpacket.Conn
	id    uint64
	log   *slog.Logger
	pidfd bool // messages carry SCM_PIDFD
	// acct is the uid that opened the connection (peer): whatever the
	// connection holds is counted against it (peruid.go).
	acct *account
	// opener is what SO_PEERCRED said of the process that opened the
	// connection, with its pidfd (-1 if none), kept open for the
	// connection's life so that its pid cannot be taken by another process
	// unnoticed (peer.go); closed by cleanup.
	opener seqpacket.Cred

	inFlight  atomic.Int32   // requests executing, inline or concurrently
	async     sync.WaitGroup // requests running concurrently
	longPolls atomic.Int32   // generation watches waiting (generation.go)
	closing   chan struct{}  // closed when the connection ends: long polls stop
	// ctx ends with the connection, or as soon as the client hangs up:
	// derivations waiting for a worker, or running, stop.
	ctx    context.Context
	cancel context.CancelFunc
	// gone is set when the client hangs up (closes its end), which the
	// server's watcher of hang-ups sees at once (Server.hangups): the
	// requests it left unread are dropped, and the requests running skip
	// their remaining operations. unwatch ends that watch (cleanup).
	gone    atomic.Bool
	unwatch func()
	// held is what the requests running concurrently hold (requestCost),
	// at most the limit of one uid's, administrators' too.
	held atomic.Int64

	// mu guards the per-connection tables. It is held only to look up or
	// change them, never across crypto or I/O.
	mu          sync.Mutex
	handles     map[uint32]*keystore.Object
	nextHandle  uint32
	sessions    map[uint32]*session
	nextSession uint32
	closed      bool
	genWatcher  *genid.Watcher // the connection as a watcher, once it watched
	st          connStore      // pending init, rotation, backup, restore (storeops.go)

	// Used only by the serving goroutine.
	peer         peer // who opened the connection, for the audit (peer.go)
	buf          recvBuf
	oob          []byte
	out          []byte
	arena        arena
	notes        []auditNote
	pending      []pendingReply  // replies waiting for their audit records (queueReply)
	pendingBytes int             // their encoded size
	recs         []*audit.Record // flush's scratch
	bufs         [][]byte        // encoded-reply buffers for reuse
}

func newConn(s *Server, c *seqpacket.Conn, acct *account, opener seqpacket.Cred) *conn {
	cn := &conn{
		s:        s,
		c:        c,
		acct:     acct,
		opener:   opener,
		id:       s.nextConn.Add(1),
		handles:  make(map[uint32]*keystore.Object),
		sessions: make(map[uint32]*session),
		closing:  make(chan struct{}),
		buf:      newRecvBuf(s.limits.MaxMessageBytes + 1),
		oob:      make([]byte, seqpacket.OOBSize),
	}
	cn.log = s.log.With("conn", cn.id)
	cn.ctx, cn.cancel = context.WithCancel(context.Background())
	c.SetSpin(spin)
	return cn
}

// admit runs the checks a message must pass before anything is spent on
// it, in this order: the audit log can take its record and its uid's
// audit allowance is not spent; the kernel said who sent it; it is within
// the message limit; its connection and its uid have room for one more
// request in flight (counted from here: the caller must leave, or have
// the request's runner leave); it decodes, speaks this protocol, holds a
// batch within the limit, and expects the current generation. A refused
// message is answered here, and ok is false. req is decoded without
// copying: it points into the receive buffer.
func (cn *conn) admit(m seqpacket.Message, id Identity) (req *wire.Request, raw []byte, caller *audit.Caller, ok bool) {
	max := cn.s.limits.MaxMessageBytes
	buf := cn.buf.b
	// The audit: a log that cannot take records refuses the request before
	// anything is done (not recorded, necessarily; the log counts these).
	// Otherwise the caller's executable and cgroup are read now, through
	// the message's pidfd, before the caller can move on.
	if cn.s.alog != nil {
		if err := cn.s.alog.Ready(); err != nil {
			cn.flush()
			cn.log.Warn("request refused: the audit log cannot be written", "err", err)
			cn.out = cn.send(cn.out, &wire.Reply{Version: wire.ProtocolVersion, Id: peekRequestID(buf[:min(m.N, len(buf), max)]),
				Status: errAuditDown.Status, Message: errAuditDown.Public})
			return nil, nil, nil, false
		}
		// A uid whose requests made more records than its allowance
		// waits until it refills.
		if !cn.acct.auditOK(cn.s.cfg.Now, &cn.s.limits) {
			cn.refuseLimit(peekRequestID(buf[:min(m.N, len(buf), max)]), limitAuditRate, cn.s.auditRateMsg)
			return nil, nil, nil, false
		}
		c := cn.callerOf(id)
		caller = &c
	}
	if !m.HasCred || m.Cred.PID == 0 {
		// The kernel attaches credentials to every message once SO_PASSCRED
		// is set; pid 0 means it had none to attach (a message queued before
		// that, or a sender whose pid this daemon's pid namespace cannot
		// see), and the uid would read as the overflow uid. Refuse rather
		// than guess who is asking.
		cn.refuse(caller, peekRequestID(buf[:min(m.N, len(buf))]), wire.Status_STATUS_PERMISSION_DENIED,
			"the daemon cannot see who sent this message", fmt.Sprintf("credentials %v, pid %d", m.HasCred, m.Cred.PID))
		return nil, nil, nil, false
	}
	if m.N > max {
		cn.refuse(caller, peekRequestID(buf[:max]), wire.Status_STATUS_RESOURCE_EXHAUSTED,
			fmt.Sprintf("request of %d bytes exceeds the %d-byte message limit", m.N, max), "")
		return nil, nil, nil, false
	}
	raw = buf[:m.N]
	// Every request counts as in flight, on its connection and for its
	// uid, while it executes; one that would exceed a limit is refused at
	// once, before anything is spent on it (a batch takes longer to decode
	// than to refuse).
	if int(cn.inFlight.Add(1)) > cn.s.limits.MaxInFlight {
		cn.inFlight.Add(-1)
		cn.refuseLimit(peekRequestID(raw), limitConnInFlight, cn.s.connInFlightMsg)
		return nil, nil, nil, false
	}
	if !cn.acct.enter(cn.s.limits.MaxInFlightPerUID) {
		cn.inFlight.Add(-1)
		cn.refuseLimit(peekRequestID(raw), limitInFlight, cn.s.inFlightMsg)
		return nil, nil, nil, false
	}
	// Decode without copying: byte and string fields point into the
	// receive buffer, which the serving loop wipes once this returns and
	// reuses for the next message. Everything that keeps a field
	// beyond the request copies it (see "aliasing" in dispatch.go); a
	// request that runs concurrently is decoded again, with copies.
	req = wire.RequestFromVTPool()
	if err := req.UnmarshalVTUnsafe(raw); err != nil {
		wire.Recycle(req)
		cn.leave()
		cn.refuse(caller, peekRequestID(raw), wire.Status_STATUS_INVALID_ARGUMENT, "malformed request", err.Error())
		return nil, nil, nil, false
	}
	var refusal *wire.Error
	switch {
	case req.Version != wire.ProtocolVersion:
		refusal = wire.Errorf(wire.Status_STATUS_UNIMPLEMENTED,
			"unsupported protocol version %d (this daemon speaks %d)", req.Version, wire.ProtocolVersion)
	case len(req.Ops) == 0:
		refusal = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a request needs at least one operation")
	case len(req.Ops) > cn.s.limits.MaxBatchOps:
		refusal = wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
			"%d operations exceed the batch limit of %d", len(req.Ops), cn.s.limits.MaxBatchOps)
	default:
		// Nothing is served from a generation the machine has left.
		refusal = cn.checkGeneration(req)
	}
	if refusal != nil {
		reqID := req.Id
		wire.Recycle(req)
		cn.leave()
		cn.refuse(caller, reqID, refusal.Status, refusal.Public, refusal.Detail)
		return nil, nil, nil, false
	}
	return req, raw, caller, true
}

// leave ends a request's count in flight, on its connection and for its
// uid (see admit).
func (cn *conn) leave() {
	cn.inFlight.Add(-1)
	cn.acct.leave()
}

// runInline executes req, admitted, on the connection's goroutine, and
// sends or queues its reply. It recycles req.
func (cn *conn) runInline(req *wire.Request, raw []byte, id Identity, caller *audit.Caller) {
	cn.arena.reset()
	notes := cn.notesFor(&cn.notes, caller, len(req.Ops))
	cn.acct.startComputing()
	rep := cn.execute(req, id, &cn.arena, notes, false)
	cn.acct.stopComputing()
	// Done executing before the reply leaves: a client that sends its
	// next request as soon as this reply arrives is within the limit.
	cn.leave()
	if caller != nil && !changesSeal(req) {
		cn.queueReply(req, rep, id, caller, notes, cn.arena.attach, len(raw))
	} else {
		rep = cn.record(req, rep, id, caller, notes, len(raw))
		cn.out = cn.sendFDs(cn.out, rep, cn.arena.attach)
	}
	cn.arena.wipe()
	wire.Recycle(req) // nothing refers to the request now
}

// runConcurrently starts req, admitted, in a goroutine of its own, which
// takes a copy of the message, records the request and sends its reply.
// It recycles req, and reports whether the goroutine took id's pidfd.
func (cn *conn) runConcurrently(req *wire.Request, raw []byte, id Identity, caller *audit.Caller) bool {
	// A uid whose derivations fill its share of the KDF queue is refused
	// here, cheaply, rather than by the supervisor once the request runs.
	if sup := cn.s.cfg.KDF; sup != nil && hasKDF(req) && sup.TenantFull(cn.kdfContext()) {
		cn.leave()
		wire.Recycle(req)
		cn.refuseLimit(peekRequestID(raw), limitKDFQueue, cn.s.kdfQueueMsg)
		return false
	}
	// Replies held so far go first: records stay in the order requests
	// were taken.
	cn.flush()
	// A slow request runs concurrently so that the connection keeps
	// serving; it needs its own copy of the message, and holds it,
	// decoded, with its results, until it is done (it may wait long for a
	// slot or a worker): that counts against its uid's share of memory,
	// and its connection's.
	cost := min(requestCost(len(raw), len(req.Ops)), cn.s.limits.MaxRequestBytesPerUID)
	wire.Recycle(req)
	if kind, msg, ok := cn.hold(cost); !ok {
		cn.leave()
		cn.refuseLimit(peekRequestID(raw), kind, msg)
		return false
	}
	own := bytes.Clone(raw)
	req = wire.RequestFromVTPool()
	if err := req.UnmarshalVTUnsafe(own); err != nil {
		wire.Recycle(req)
		clear(own)
		cn.leave()
		cn.unhold(cost)
		cn.refuse(caller, peekRequestID(raw), wire.Status_STATUS_INVALID_ARGUMENT, "malformed request", err.Error())
		return false
	}
	cn.async.Add(1)
	go func() {
		defer cn.async.Done()
		defer func() {
			if id.Pidfd >= 0 {
				unix.Close(id.Pidfd)
			}
		}()
		if h := cn.s.cfg.heavyHook; h != nil {
			h()
		}
		var a arena
		var nbuf []auditNote
		notes := cn.notesFor(&nbuf, caller, len(req.Ops))
		rep := cn.execute(req, id, &a, notes, true)
		rep = cn.record(req, rep, id, caller, notes, len(own))
		cn.leave()
		cn.sendFDs(nil, rep, a.attach)
		a.wipe()
		wire.Recycle(req)
		clear(own)
		cn.unhold(cost)
	}()
	return true
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
// uid's share and its connection's; false: over one of them (which it
// names), not counted.
func (cn *conn) hold(cost int) (limitKind, string, bool) {
	max := cn.s.limits.MaxRequestBytesPerUID
	if cn.held.Add(int64(cost)) > int64(max) {
		cn.held.Add(-int64(cost))
		return limitConnRequestMemory, cn.s.connMemoryMsg, false
	}
	if !cn.acct.hold(cost, max) {
		cn.held.Add(-int64(cost))
		return limitRequestMemory, cn.s.requestMemoryMsg, false
	}
	return 0, "", true
}

func (cn *conn) unhold(cost int) {
	cn.held.Add(-int64(cost))
	cn.acct.unhold(cost)
}

// notesFor returns n cleared audit notes from *buf, or nil when nothing is
// audited (caller is nil).
func (cn *conn) notesFor(buf *[]auditNote, caller *audit.Caller, n int) []auditNote {
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
func (cn *conn) record(req *wire.Request, rep *wire.Reply, id Identity, caller *audit.Caller, notes []auditNote, reqBytes int) *wire.Reply {
	if caller == nil {
		return rep
	}
	if changesSeal(req) {
		cn.s.syncAuditKeys()
	}
	if err := cn.auditRequest(req, rep, caller, notes, reqBytes); err != nil {
		cn.log.Error("results withheld: the audit log could not record the request", "request", req.Id, "err", err)
		cn.undoHandles(createdHandles(req, rep), id, req.Id)
		return &wire.Reply{Version: wire.ProtocolVersion, Id: req.Id, Status: errAuditLost.Status, Message: errAuditLost.Public}
	}
	return rep
}

// refuse answers a whole request with an error status, once the refusal
// is recorded (caller nil: nothing is audited).
func (cn *conn) refuse(caller *audit.Caller, reqID uint64, st wire.Status, public, detail string) {
	cn.flush()
	cn.log.Info("request refused", "request", reqID, "status", st.String(), "reason", public, "detail", detail)
	if caller != nil {
		if err := cn.auditRefusal(caller, reqID, st, public, detail); err != nil {
			cn.log.Error("the audit log could not record a refusal", "request", reqID, "err", err)
			st, public = errAuditLost.Status, errAuditLost.Public
		}
	}
	cn.out = cn.send(cn.out, &wire.Reply{Version: wire.ProtocolVersion, Id: reqID, Status: st, Message: public})
}

// limitPause is how long a connection waits after a request was refused
// for a limit before it reads the next: a client that sends again at
// once, in a loop, then costs the daemon little.
const limitPause = 10 * time.Millisecond

// refuseLimit answers a whole request refused for a limit with
// RESOURCE_EXHAUSTED. The refusal is counted, and reported in the next
// "limits" audit event, rather than recorded on its own: a flood of
// refusals must not become a flood of records.
func (cn *conn) refuseLimit(reqID uint64, kind limitKind, public string) {
	cn.flush()
	cn.s.accts.refuse(cn.acct.uid, kind, public)
	cn.out = cn.send(cn.out, &wire.Reply{Version: wire.ProtocolVersion, Id: reqID,
		Status: wire.Status_STATUS_RESOURCE_EXHAUSTED, Message: public})
	time.Sleep(limitPause)
}

// replyHeader bounds the encoded size of a reply's fields other than its
// results.
const replyHeader = 64

// execute runs every operation of req and builds the reply. It never
// panics: a panic in an operation becomes STATUS_INTERNAL for that
// operation, logged without its arguments. Outputs are carved from a, so
// the reply must be sent before a is reused.
//
// notes, if not nil, has one entry per operation, which execute fills
// for the audit record.
//
// perOp: the request runs concurrently, and each operation that computes
// (see runsApart) holds a compute slot of its uid while it
// does (peruid.go); otherwise the caller holds one for the whole request.
func (cn *conn) execute(req *wire.Request, id Identity, a *arena, notes []auditNote, perOp bool) *wire.Reply {
	n := len(req.Ops)
	rep := &wire.Reply{Version: wire.ProtocolVersion, Id: req.Id, Results: make([]*wire.Result, n)}
	// One allocation for all results rather than one per operation.
	results := make([]wire.Result, n)
	max := cn.s.limits.MaxMessageBytes
	budget := max - replyHeader
	size := 0
	full, gone := false, false
	for i := 0; i < n; {
		// Once the client has hung up, nothing more is done for it: its
		// remaining operations are skipped, each saying so in the audit
		// record.
		if gone = gone || cn.gone.Load(); gone {
			res := &results[i]
			res.Status, res.Message = errHungUp.Status, errHungUp.Public
			noteAt(notes, i).setErr(errHungUp)
			rep.Results[i] = res
			i++
			continue
		}
		if h := cn.s.cfg.opHook; h != nil {
			h()
		}
		// Room stays reserved for a minimal result (4 bytes) for every
		// operation after the ones executed.
		if !full {
			// A run of small operations on one key, as far as the reply
			// has room for it.
			run, bound := 0, size
			for most := runLength(req.Ops[i:], n-i); run < most; run++ {
				b := opReplyBound(req.Ops[i+run], max)
				if bound+b+4*(n-i-run-1) > budget {
					break
				}
				bound += b
			}
			if run > 1 {
				var rn []auditNote
				if notes != nil {
					// One key and one version for the whole run: the other
					// operations' notes say only that they are alike.
					cn.noteBefore(req.Ops[i], &notes[i])
					for j := i + 1; j < i+run; j++ {
						notes[j].likePrev = true
					}
					rn = notes[i : i+run]
				}
				if perOp {
					cn.acct.startComputing()
				}
				cn.executeRun(req.Ops[i:i+run], id, req.Id, a, results[i:i+run], rn)
				if perOp {
					cn.acct.stopComputing()
				}
				for j := i; j < i+run; j++ {
					rep.Results[j] = &results[j]
					size += results[j].SizeVT() + 4
				}
				if notes != nil {
					noteAfter(&notes[i], &results[i])
				}
				i += run
				continue
			}
		}
		op := req.Ops[i]
		r := rowOf(op)
		res := &results[i]
		switch {
		case full:
			res.Status = wire.Status_STATUS_RESOURCE_EXHAUSTED
		case size+r.replyBound(op, max)+4*(n-i-1) > budget:
			full = true
			res.Status = wire.Status_STATUS_RESOURCE_EXHAUSTED
			res.Message = "not executed: the reply would exceed the message size limit; split the batch"
		case perOp && !r.runsApart(op):
			cn.acct.startComputing()
			res = cn.safeDispatch(r, op, id, req.Id, a, res, noteAt(notes, i))
			cn.acct.stopComputing()
		default:
			res = cn.safeDispatch(r, op, id, req.Id, a, res, noteAt(notes, i))
		}
		rep.Results[i] = res
		size += res.SizeVT() + 4
		i++
	}
	return rep
}

// listBudget is how many bytes of key infos one List result may hold.
func listBudget(max int) int { return max / 2 }

// safeDispatch runs one operation. A data result is written to out, which
// the caller provides to save an allocation.
//
// note, if not nil, gets what the audit records of the operation.
func (cn *conn) safeDispatch(r *opRow, op *wire.Op, id Identity, reqID uint64, a *arena, out *wire.Result, note *auditNote) (res *wire.Result) {
	defer func() {
		if p := recover(); p != nil {
			cn.log.Error("operation panicked", "request", reqID, "op", r.opName(), "panic", fmt.Sprintf("%T", p), "stack", stackWithoutArgs())
			res = &wire.Result{Status: wire.Status_STATUS_INTERNAL, Message: "internal error"}
			if note != nil {
				note.msg = "internal error: the operation panicked"
			}
		}
	}()
	if note != nil {
		cn.noteBefore(op, note)
		defer func() { noteAfter(note, res) }()
	}
	// Heavy work waits for a slot, in turn with other uids' (peruid.go).
	if class, heavy := cn.heavyClassOf(r, op); heavy {
		q := &cn.s.accts.heavy[class]
		if err := q.acquire(cn.acct, cn.ctx.Done()); err != nil {
			note.setErr(err)
			out.Status, out.Message = errConnClosing.Status, errConnClosing.Public
			return out
		}
		defer q.release(cn.acct)
		if class == heavyCPU && !cn.acct.admin {
			shortenSlice()
		}
	}
	data, full, err := cn.dispatchRow(r, op, id, a, out)
	if err != nil {
		note.setErr(err)
		var we *wire.Error
		if errors.As(err, &we) {
			if we.Status != wire.Status_STATUS_VERIFICATION_FAILED {
				cn.log.Info("operation refused", "request", reqID, "op", r.opName(), "uid", id.UID, "gid", id.GID, "pid", id.PID,
					"status", we.Status.String(), "reason", we.Public, "detail", we.Detail)
			}
			out.Status, out.Message = we.Status, we.Public
			return out
		}
		cn.log.Error("operation failed", "request", reqID, "op", r.opName(), "err", err)
		out.Status, out.Message = wire.Status_STATUS_INTERNAL, "internal error"
		return out
	}
	if full != nil {
		return full
	}
	out.Data = data
	return out
}

// stackWithoutArgs returns the goroutine's stack with argument values
// removed: they are raw words that may hold key bytes.
func stackWithoutArgs() string {
	lines := strings.Split(string(debug.Stack()), "\n")
	for i, l := range lines {
		if j := strings.LastIndexByte(l, '('); j > 0 && strings.HasSuffix(l, ")") && !strings.HasPrefix(l, "\t") {
			lines[i] = l[:j] + "(...)"
		}
	}
	return strings.Join(lines, "\n")
}

// cleanup runs when the connection ends: wait for concurrent requests,
// close sessions, drop handles and destroy the connection's ephemeral keys.
func (cn *conn) cleanup() {
	cn.c.ShutdownRead()
	close(cn.closing) // generation watches end now, not at their timeout
	cn.cancel()       // and derivations, and waits for heavy slots
	cn.async.Wait()
	cn.mu.Lock()
	cn.closed = true
	handles, sessions := cn.handles, cn.sessions
	cn.handles, cn.sessions = nil, nil
	w := cn.genWatcher
	cn.mu.Unlock()
	if w != nil {
		w.Remove()
	}
	for sid, ss := range sessions {
		cn.endSession(sid, ss)
	}
	cn.acct.dropSessions(len(sessions))
	for _, o := range handles {
		cn.release(o)
	}
	cn.st.cleanup()
	if cn.unwatch != nil {
		cn.unwatch() // before the close, which would look like a hang-up
	}
	cn.c.Close()
	if cn.opener.Pidfd >= 0 {
		unix.Close(cn.opener.Pidfd)
		cn.opener.Pidfd = -1
	}
	cn.buf.free()
	cn.log.Debug("disconnected")
}

package server

// The SOCK_SEQPACKET front: the daemon's own protocol (docs/protocol.md)
// on a Unix socket. What is here is the transport's: accepting
// connections, receiving one request per message with the credentials
// the kernel attached to it (SCM_CREDENTIALS, SCM_PIDFD), the hang-up
// watch, decoding, holding replies until their audit records are written
// in one write (queueReply, flush), and sending one reply per message.
// What a request does once received, for whom, and what the audit log
// says of it is the core's (session.go and below): each connection is a
// Session, which this front hands an identity and a request through the
// core's own steps (admitCaller, enter, checkRequest, admitHeavy,
// execute, record, refusalReply) rather than through Session.Do, so that
// a request costs no allocation or goroutine hand-off more than its work.

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// ErrServerClosed is returned by Serve after Shutdown.
var ErrServerClosed = errors.New("server closed")

// Serve accepts connections on l and serves each in its own goroutine
// until Shutdown. It closes l when it returns.
func (s *Server) Serve(l *seqpacket.Listener) error {
	go func() {
		// Shutdown closes the listener through this goroutine's view of it.
		<-s.done
		l.Close()
	}()
	defer l.Close()
	for {
		c, err := l.Accept()
		if err != nil {
			if s.isClosing() || errors.Is(err, seqpacket.ErrClosed) {
				return ErrServerClosed
			}
			s.log.Error("accept failed", "err", err)
			time.Sleep(10 * time.Millisecond) // e.g. EMFILE: do not spin
			continue
		}
		s.ServeConn(c)
	}
}

// ServeConn starts serving one accepted connection in a new goroutine and
// takes ownership of c.
func (s *Server) ServeConn(c *seqpacket.Conn) {
	// The uid that opened the connection pays for what it holds
	// (peruid.go).
	peer, err := c.PeerCred()
	if err != nil {
		s.log.Error("cannot read the credentials of a new connection; dropping it", "err", err)
		c.Close()
		return
	}
	dropPeer := func() {
		if peer.Pidfd >= 0 {
			unix.Close(peer.Pidfd)
		}
	}
	s.mu.Lock()
	if s.closing {
		s.mu.Unlock()
		dropPeer()
		c.Close()
		return
	}
	acct, err := s.accts.connect(peer.UID)
	if err != nil {
		s.mu.Unlock()
		// Counted, and reported once a second (reportLimits).
		s.log.Debug("connection refused", "uid", peer.UID, "pid", peer.PID, "reason", err.Error())
		dropPeer()
		s.refuseConn(c, err.Error())
		return
	}
	cn := newSeqConn(s, c, acct, peer)
	// Before anything else, so that no message is received without the
	// sender's credentials. (Accepted sockets inherit SO_PASSCRED from the
	// listener; a connection handed in otherwise may not have it yet.)
	pidfd, err := c.EnableCredentials()
	if err != nil {
		s.mu.Unlock()
		s.log.Error("cannot enable credentials; dropping connection", "err", err)
		cn.Session.Close() // the opener's pidfd, and its count
		c.Close()
		return
	}
	cn.pidfd = pidfd
	cn.watchHangup()
	cn.armPark()
	s.conns[cn] = struct{}{}
	s.connsN.Store(int32(len(s.conns)))
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		cn.readPeer()
		cn.serve()
	}()
}

// ended runs once the connection is done with (cleanup has run): the
// server forgets it.
func (cn *seqConn) ended() {
	s := cn.s
	s.mu.Lock()
	delete(s.conns, cn)
	s.connsN.Store(int32(len(s.conns)))
	s.mu.Unlock()
	s.wg.Done()
}

// seqConn is one connection of the SOCK_SEQPACKET front: the socket and
// what it takes to receive, frame and send, over the core's Session of
// the connection.
type seqConn struct {
	*Session
	c     *seqpacket.Conn
	pidfd bool // messages carry SCM_PIDFD
	// unwatch ends the watch of the client hanging up (cleanup).
	unwatch func()

	// Used only by the serving goroutine; nil while the connection is
	// parked (idle.go): an idle connection holds no buffer.
	*connScratch
	noPark bool // the connection cannot be parked: it keeps its goroutine
}

// connScratch is what a connection needs only while it serves requests:
// its buffers. A parked connection gives it back to the server's pool
// (idle.go).
type connScratch struct {
	buf          recvBuf
	oob          []byte
	out          []byte
	arena        arena
	notes        []auditNote
	packing      packing         // of the request running inline (packed.go)
	pending      []pendingReply  // replies waiting for their audit records (queueReply)
	pendingBytes int             // their encoded size
	recs         []*audit.Record // flush's scratch
	bufs         [][]byte        // encoded-reply buffers for reuse
}

func newSeqConn(s *Server, c *seqpacket.Conn, acct *account, opener seqpacket.Cred) *seqConn {
	cn := &seqConn{
		Session: newSession(context.Background(), s, frontSeqpacket, acct,
			Identity{PID: opener.PID, UID: opener.UID, GID: opener.GID, Pidfd: opener.Pidfd}),
		c:           c,
		connScratch: s.getScratch(),
	}
	c.SetSpin(spin)
	return cn
}

// maxRefusing bounds the connections being refused at once: each holds a
// thread while it waits for the client's first request.
const maxRefusing = 16

// refuseConn answers the first request of a connection that is over a
// limit with RESOURCE_EXHAUSTED and closes it, so the client gets a clear
// error rather than a hang. When many are being refused already, it closes
// the connection at once.
func (s *Server) refuseConn(c *seqpacket.Conn, msg string) {
	select {
	case s.refusing <- struct{}{}:
	default:
		c.Close()
		return
	}
	go func() {
		defer func() { <-s.refusing }()
		defer c.Close()
		c.SetRecvTimeout(time.Second)
		buf := make([]byte, 64)
		if _, err := c.Recv(buf); err != nil {
			return
		}
		rep := &wire.Reply{Version: wire.ProtocolVersion, Id: peekRequestID(buf),
			Status: wire.Status_STATUS_RESOURCE_EXHAUSTED, Message: msg}
		if b, err := marshal(nil, rep); err == nil {
			c.Send(b)
		}
	}()
}

// spin is how long a connection polls for the next request, when the last
// one came quickly, before it sleeps (see seqpacket.Conn.SetSpin): a
// client in a request-reply loop then never pays the wake-up of a
// sleeping thread.
const spin = 100 * time.Microsecond

// stopReading makes the serving goroutine's receive return, so it stops
// taking requests; replies in progress can still be sent.
func (cn *seqConn) stopReading() { cn.c.ShutdownRead() }

// watchHangup has the server's watcher tell the connection when its
// client hangs up.
func (cn *seqConn) watchHangup() {
	if cn.s.hangups == nil {
		return
	}
	stop, err := cn.s.hangups.Watch(cn.c, cn.hungUp)
	if err != nil {
		cn.log.Warn("cannot watch for the client hanging up: work it leaves behind runs on", "err", err)
		return
	}
	cn.unwatch = stop
}

// hungUp runs on the watcher's goroutine when the client has hung up: no
// reply can reach it any more, so the work it asked for stops.
func (cn *seqConn) hungUp() { cn.hangUp() }

// dropUnread drops a request received after the client hung up, unread.
func (cn *seqConn) dropUnread(m seqpacket.Message) {
	if m.Cred.Pidfd >= 0 {
		unix.Close(m.Cred.Pidfd)
	}
	if m.FD >= 0 {
		unix.Close(m.FD)
	}
	cn.buf.done(m.N)
	cn.log.Debug("client hung up: the requests it left are dropped unread")
}

// serve serves the connection's requests on the calling goroutine while
// they come, and parks the connection once none came for parkAfter
// (idle.go); it returns then, or when the connection ends.
func (cn *seqConn) serve() {
	for {
		if cn.connScratch == nil {
			cn.connScratch = cn.s.getScratch()
		}
		end := cn.receive()
		cn.flush()
		if end {
			cn.cleanup()
			cn.ended()
			return
		}
		if cn.park() {
			return
		}
	}
}

// receive receives and answers requests until the connection ends (end
// is true) or has none waiting: for a while (parkAfter) when it holds a
// receiving slot (idle.go), else at once.
func (cn *seqConn) receive() (end bool) {
	blocking := cn.takeSlot()
	defer func() {
		if blocking {
			cn.s.dropSlot()
		}
	}()
	for {
		var m seqpacket.Message
		var err error
		if blocking {
			m, err = cn.c.RecvMsg(cn.buf.b, cn.oob)
		} else {
			m, err = cn.c.TryRecvMsg(cn.buf.b, cn.oob)
		}
		if errors.Is(err, seqpacket.ErrTimeout) || errors.Is(err, seqpacket.ErrWouldBlock) {
			if cn.noPark {
				continue
			}
			return false
		}
		if err != nil {
			if !errors.Is(err, seqpacket.ErrPeerClosed) && !errors.Is(err, seqpacket.ErrClosed) {
				cn.log.Warn("receive failed; dropping connection", "err", err)
			}
			return true
		}
		if cn.gone.Load() {
			cn.dropUnread(m)
			return true
		}
		cn.handleMessage(m)
		// Plaintexts and other inputs must not outlive the request in the
		// receive buffer.
		cn.buf.done(m.N)
		// Replies held for their audit records (see queueReply): take the
		// requests already waiting too, then record them all in one write
		// and send their replies.
		for len(cn.pending) > 0 && len(cn.pending) < maxPending && (cn.pendingBytes < maxPendingBytes || cn.s.auditAlways) {
			m, err := cn.c.TryRecvMsg(cn.buf.b, cn.oob)
			if err != nil {
				break // ErrWouldBlock; any other error shows at the next RecvMsg
			}
			if cn.gone.Load() {
				cn.dropUnread(m)
				break
			}
			cn.handleMessage(m)
			cn.buf.done(m.N)
		}
		cn.flush()
		if !blocking {
			// A connection served without a slot takes one as soon as
			// one is free: it is busy.
			blocking = cn.takeSlot()
		}
	}
}

// handleMessage answers one received message. It owns m's pidfd and the
// descriptor passed with it, which an shm_register of a request run
// inline takes; any other is closed unused.
func (cn *seqConn) handleMessage(m seqpacket.Message) {
	if m.FD >= 0 {
		cn.passed = m.FD
		defer cn.dropPassed()
	}
	id := Identity{PID: m.Cred.PID, UID: m.Cred.UID, GID: m.Cred.GID, Pidfd: m.Cred.Pidfd}
	closePidfd := true
	defer func() {
		if closePidfd && id.Pidfd >= 0 {
			unix.Close(id.Pidfd)
		}
	}()
	req, raw, caller, ok := cn.admit(m, id)
	if !ok {
		return
	}
	if !heavyOps(cn.packing.sent(req)) {
		cn.runInline(req, raw, id, caller)
		return
	}
	cn.dropPassed() // the connection goes on without this request
	closePidfd = !cn.runConcurrently(req, raw, id, caller)
}

// admit runs the checks a message must pass before anything is spent on
// it, in this order: the core's first (admitCaller: the audit log can
// take the record, the uid's audit allowance); the kernel said who sent
// it; it is within the message limit; the core counts it in flight
// (enter: the caller must leave, or have the request's runner leave); it
// decodes; and the core's checks of a decoded request (checkRequest). A
// refused message is answered here, and ok is false. req is decoded
// without copying: it points into the receive buffer.
func (cn *seqConn) admit(m seqpacket.Message, id Identity) (req *wire.Request, raw []byte, caller *audit.Caller, ok bool) {
	max := cn.s.lims().MaxMessageBytes
	buf := cn.buf.b
	caller, r := cn.admitCaller(id)
	if r.refused() {
		cn.refuse(nil, peekRequestID(buf[:min(m.N, len(buf), max)]), r)
		return nil, nil, nil, false
	}
	if !m.HasCred || m.Cred.PID == 0 {
		cn.refuse(caller, peekRequestID(buf[:min(m.N, len(buf))]), errNoSender("credentials", fmt.Sprintf("%v, pid %d", m.HasCred, m.Cred.PID)))
		return nil, nil, nil, false
	}
	if m.N > max {
		cn.refuse(caller, peekRequestID(buf[:max]), errTooLarge(m.N, max))
		return nil, nil, nil, false
	}
	raw = buf[:m.N]
	if r := cn.enter(); r.refused() {
		cn.refuse(caller, peekRequestID(raw), r)
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
		cn.refuse(caller, peekRequestID(raw), rejection{status: wire.Status_STATUS_INVALID_ARGUMENT, public: "malformed request", detail: err.Error()})
		return nil, nil, nil, false
	}
	we := cn.packing.unpack(req, cn.s.lims().MaxBatchOps)
	if we == nil {
		we = cn.checkRequest(req)
	}
	if we != nil {
		reqID := req.Id
		cn.packing.restore(req)
		wire.Recycle(req)
		cn.leave()
		cn.refuse(caller, reqID, rejectionOf(we))
		return nil, nil, nil, false
	}
	return req, raw, caller, true
}

// refuse answers a whole request refused by r (refusalReply), after the
// replies held for their records, and pauses after a refusal for a limit
// (limitPause).
func (cn *seqConn) refuse(caller *audit.Caller, reqID uint64, r rejection) {
	cn.flush()
	cn.out = cn.send(cn.out, cn.refusalReply(caller, reqID, r))
	if r.limit {
		time.Sleep(limitPause)
	}
}

// runInline executes req, admitted, on the connection's goroutine, and
// sends or queues its reply. It recycles req.
func (cn *seqConn) runInline(req *wire.Request, raw []byte, id Identity, caller *audit.Caller) {
	cn.arena.reset()
	notes := cn.notesFor(&cn.notes, caller, len(req.Ops))
	cn.acct.startComputing()
	rep := cn.execute(req, id, &cn.arena, notes, false)
	cn.acct.stopComputing()
	// Done executing before the reply leaves: a client that sends its
	// next request as soon as this reply arrives is within the limit.
	cn.leave()
	if caller != nil && !sealOps(cn.packing.sent(req)) {
		cn.queueReply(req, rep, id, caller, notes, cn.arena.attach, len(raw))
	} else {
		rep = cn.record(req, rep, id, caller, notes, len(raw))
		cn.packing.pack(rep, &cn.arena)
		cn.out = cn.sendFDs(cn.out, rep, cn.arena.attach)
	}
	cn.arena.wipe()
	cn.packing.restore(req)
	wire.Recycle(req) // nothing refers to the request now
}

// runConcurrently starts req, admitted, in a goroutine of its own, which
// takes a copy of the message, records the request and sends its reply.
// It recycles req, and reports whether the goroutine took id's pidfd.
func (cn *seqConn) runConcurrently(req *wire.Request, raw []byte, id Identity, caller *audit.Caller) bool {
	// Replies held so far go first: records stay in the order requests
	// were taken.
	cn.flush()
	// A slow request runs concurrently so that the connection keeps
	// serving; it needs its own copy of the message, and holds it,
	// decoded, with its results, until it is done (admitHeavy).
	cost, r := cn.admitHeavy(req, len(raw))
	cn.packing.restore(req)
	wire.Recycle(req)
	if r.refused() {
		cn.leave()
		cn.refuse(caller, peekRequestID(raw), r)
		return false
	}
	own := bytes.Clone(raw)
	req = wire.RequestFromVTPool()
	var pk packing
	err := req.UnmarshalVTUnsafe(own)
	if err == nil {
		if we := pk.unpack(req, cn.s.lims().MaxBatchOps); we != nil {
			err = we
		}
	}
	if err != nil {
		wire.Recycle(req)
		clear(own)
		cn.leave()
		cn.unhold(cost)
		cn.refuse(caller, peekRequestID(raw), rejection{status: wire.Status_STATUS_INVALID_ARGUMENT, public: "malformed request", detail: err.Error()})
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
		pk.pack(rep, &a)
		cn.leave()
		cn.sendFDs(nil, rep, a.attach)
		a.wipe()
		pk.restore(req)
		wire.Recycle(req)
		clear(own)
		cn.unhold(cost)
	}()
	return true
}

// cleanup runs when the connection ends: the core's session closes
// (requests running concurrently finish first), then the socket.
func (cn *seqConn) cleanup() {
	cn.c.ShutdownRead()
	cn.Session.Close()
	if cn.unwatch != nil {
		cn.unwatch() // before the close, which would look like a hang-up
	}
	cn.c.Close()
	if cn.connScratch != nil {
		cn.s.putScratch(cn.connScratch)
		cn.connScratch = nil
	}
	cn.log.Debug("disconnected")
}

// send marshals rep into buf (reused when large enough) and sends it. A
// reply that would exceed the message limit is replaced by an error.
func (cn *seqConn) send(buf []byte, rep *wire.Reply) []byte { return cn.sendFDs(buf, rep, nil) }

// sendFDs is send with descriptors attached to the reply (SCM_RIGHTS):
// only the generation page's, for generation_map. The caller keeps them.
func (cn *seqConn) sendFDs(buf []byte, rep *wire.Reply, fds []int) []byte {
	b := cn.encodeReply(buf, rep)
	if rep.Status != wire.Status_STATUS_OK {
		fds = nil
	}
	return cn.sendEncoded(b, rep.Id, fds)
}

// encodeReply marshals rep into buf (reused when large enough). A reply
// that would exceed the message limit is replaced by an error.
func (cn *seqConn) encodeReply(buf []byte, rep *wire.Reply) []byte {
	n := rep.SizeVT()
	if cap(buf) < n {
		buf = cn.s.getReplyBuf(n)
	}
	b := buf[:n]
	_, err := rep.MarshalToSizedBufferVT(b)
	if err == nil && len(b) > cn.s.lims().MaxMessageBytes {
		err = fmt.Errorf("reply of %d bytes exceeds the limit", len(b))
	}
	if err != nil {
		cn.log.Error("cannot encode reply", "request", rep.Id, "err", err)
		b, _ = marshal(b, &wire.Reply{Version: wire.ProtocolVersion, Id: rep.Id,
			Status: wire.Status_STATUS_INTERNAL, Message: "the reply could not be encoded"})
	}
	return b
}

// sendEncoded sends the encoded reply b to request reqID, with fds if any,
// then clears b and returns it for reuse (nil if it grew too large).
func (cn *seqConn) sendEncoded(b []byte, reqID uint64, fds []int) []byte {
	var err error
	if len(fds) > 0 {
		err = cn.c.SendFDs(b, fds)
	} else {
		err = cn.c.Send(b)
	}
	if errors.Is(err, unix.EMSGSIZE) {
		// Should not happen (New caps the limit at what the kernel allows),
		// but a client must never wait for a reply that cannot be sent.
		cn.log.Error("reply too large for the socket", "request", reqID, "bytes", len(b))
		b, _ = marshal(b, &wire.Reply{Version: wire.ProtocolVersion, Id: reqID,
			Status: wire.Status_STATUS_INTERNAL, Message: "the reply was too large to send"})
		err = cn.c.Send(b)
	}
	if err != nil && !errors.Is(err, seqpacket.ErrPeerClosed) && !errors.Is(err, seqpacket.ErrClosed) {
		cn.log.Warn("send failed", "request", reqID, "err", err)
	}
	// The kernel has its copy; ours may hold plaintext or an exported key.
	clear(b)
	if cap(b) > replyKeep {
		cn.s.putReplyBuf(b)
		return nil
	}
	return b[:0]
}

// replyKeep bounds the reply buffers a connection keeps for its next
// replies; larger ones are shared by all connections (Server.replyBufs),
// so that an idle connection holds no large buffer.
const replyKeep = 64 << 10

// getReplyBuf returns a buffer of at least n bytes, empty: a shared one
// of the message limit's size for a large reply.
func (s *Server) getReplyBuf(n int) []byte {
	size := s.lims().MaxMessageBytes
	if n > replyKeep && n <= size {
		if p, _ := s.replyBufs.Get().(*[]byte); p != nil {
			return (*p)[:0]
		}
		return make([]byte, 0, size)
	}
	return make([]byte, 0, n)
}

// putReplyBuf gives back a wiped buffer that getReplyBuf made.
func (s *Server) putReplyBuf(b []byte) {
	if cap(b) == s.lims().MaxMessageBytes {
		b = b[:0]
		s.replyBufs.Put(&b)
	}
}

func marshal(buf []byte, rep *wire.Reply) ([]byte, error) {
	return wire.AppendMarshal(buf, rep)
}

// peekRequestID finds the id field of a request that could not be decoded
// whole (malformed or truncated), so the error reply can still be matched
// to it. It returns 0 if there is none.
func peekRequestID(b []byte) uint64 {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0
		}
		b = b[n:]
		if num == 2 && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			if n < 0 {
				return 0
			}
			return v
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0
		}
		b = b[n:]
	}
	return 0
}

// maxPending bounds the replies a connection holds for their records, and
// maxPendingBytes their size: a large reply (a batch's) is worth sending
// at once, so that the client decodes it while the next request runs,
// and holding it saves little next to the work it took. With
// --audit-sync always, where each write costs an fsync, only maxPending
// applies.
const (
	maxPending      = 64
	maxPendingBytes = 16 << 10
)

// pendingReply is a reply held until its request's audit record is
// written (see queueReply).
type pendingReply struct {
	b       []byte // the encoded reply: may hold plaintext, cleared once sent
	fds     []int  // descriptors to attach (not owned)
	reqID   uint64
	rec     *audit.Record
	more    []*audit.Record // the other records of a combined request
	created []uint32        // handles of keys the request made
	id      Identity
}

// queueReply holds the reply of an inline request until flush writes the
// audit records of every held reply in one write and sends them: a client
// that keeps several requests in flight on one connection then costs one
// write for all of them rather than one each. Everything the reply and the
// record need is copied now, before the receive buffer is reused.
func (cn *seqConn) queueReply(req *wire.Request, rep *wire.Reply, id Identity, caller *audit.Caller, notes []auditNote, attach []int, reqBytes int) {
	var b []byte
	if n := len(cn.bufs); n > 0 {
		b, cn.bufs = cn.bufs[n-1], cn.bufs[:n-1]
	}
	// The record first: it lists the operations of packed runs one by
	// one, and the reply packs their results again (packed.go).
	recs := cn.requestRecords(cn.recs[:0], req, rep, caller, notes, reqBytes)
	cn.recs = recs[:0]
	created := createdHandles(req, rep)
	cn.packing.pack(rep, &cn.arena)
	p := pendingReply{
		b:     cn.encodeReply(b, rep),
		reqID: req.Id,
		rec:   recs[0],
		id:    Identity{PID: id.PID, UID: id.UID, GID: id.GID, Pidfd: -1},
	}
	if len(recs) > 1 {
		p.more = slices.Clone(recs[1:])
	}
	clear(recs)
	cn.spendAudit(p.rec)
	for _, r := range p.more {
		cn.spendAudit(r)
	}
	if rep.Status == wire.Status_STATUS_OK && len(attach) > 0 {
		p.fds = slices.Clone(attach)
	}
	p.created = created
	cn.pending = append(cn.pending, p)
	cn.pendingBytes += len(p.b)
}

// flush writes the audit records of the held replies in one write and
// sends the replies, in order; if the records cannot be written, each
// request gets UNAVAILABLE and the keys they made are destroyed.
func (cn *seqConn) flush() {
	if len(cn.pending) == 0 {
		return
	}
	recs := cn.recs[:0]
	for i := range cn.pending {
		recs = append(recs, cn.pending[i].rec)
		recs = append(recs, cn.pending[i].more...)
	}
	err := cn.s.alog.AppendAll(recs)
	for i := range cn.pending {
		p := &cn.pending[i]
		if err != nil {
			cn.log.Error("results withheld: the audit log could not record the request", "request", p.reqID, "err", err)
			cn.undoHandles(p.created, p.id, p.reqID)
			clear(p.b)
			p.b, _ = marshal(p.b[:0], &wire.Reply{Version: wire.ProtocolVersion, Id: p.reqID, Status: errAuditLost.Status, Message: errAuditLost.Public})
			p.fds = nil
		}
		if b := cn.sendEncoded(p.b, p.reqID, p.fds); b != nil {
			cn.bufs = append(cn.bufs, b)
		}
		putRecord(p.rec)
		for _, r := range p.more {
			putRecord(r)
		}
		*p = pendingReply{}
	}
	clear(recs)
	cn.recs = recs[:0]
	cn.pending = cn.pending[:0]
	cn.pendingBytes = 0
}

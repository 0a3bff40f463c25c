package server

// The SOCK_SEQPACKET front: the daemon's own protocol (docs/protocol.md)
// on a Unix socket. What is here is the transport's: accepting
// connections, receiving one request per message with the credentials
// the kernel attached to it (SCM_CREDENTIALS, SCM_PIDFD), the hang-up
// watch, and sending one reply per message. What a request does once
// received, for whom, and what the audit log says of it is the core's
// (conn.go and below): this front hands it an identity and a request
// (admit, runInline, runConcurrently), and sends the reply it gives
// back, with its audit record already written.

import (
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

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
	cn := newConn(s, c, acct, peer)
	// Before anything else, so that no message is received without the
	// sender's credentials. (Accepted sockets inherit SO_PASSCRED from the
	// listener; a connection handed in otherwise may not have it yet.)
	pidfd, err := c.EnableCredentials()
	if err != nil {
		s.mu.Unlock()
		s.accts.disconnect(acct)
		s.log.Error("cannot enable credentials; dropping connection", "err", err)
		dropPeer()
		c.Close()
		return
	}
	cn.pidfd = pidfd
	cn.watchHangup()
	s.conns[cn] = struct{}{}
	s.connsN.Store(int32(len(s.conns)))
	s.wg.Add(1)
	s.mu.Unlock()
	go func() {
		defer s.wg.Done()
		cn.serve()
		s.mu.Lock()
		delete(s.conns, cn)
		s.connsN.Store(int32(len(s.conns)))
		s.mu.Unlock()
		s.accts.disconnect(acct)
	}()
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
func (cn *conn) stopReading() { cn.c.ShutdownRead() }

// watchHangup has the server's watcher tell the connection when its
// client hangs up.
func (cn *conn) watchHangup() {
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
func (cn *conn) hungUp() {
	cn.gone.Store(true)
	cn.cancel()
}

// dropUnread drops a request received after the client hung up, unread.
func (cn *conn) dropUnread(m seqpacket.Message) {
	if m.Cred.Pidfd >= 0 {
		unix.Close(m.Cred.Pidfd)
	}
	cn.buf.done(m.N)
	cn.log.Debug("client hung up: the requests it left are dropped unread")
}

func (cn *conn) serve() {
	defer cn.cleanup()
	cn.readPeer()
	defer cn.flush()
	idleArmed := false // the receive times out, to give back a large buffer
	for {
		if cn.buf.dirty != idleArmed {
			idleArmed = cn.buf.dirty
			timeout := time.Duration(0)
			if idleArmed {
				timeout = recvIdle
			}
			cn.c.SetRecvTimeout(timeout)
		}
		m, err := cn.c.RecvMsg(cn.buf.b, cn.oob)
		if errors.Is(err, seqpacket.ErrTimeout) {
			cn.buf.release() // idle after a large message
			continue
		}
		if err != nil {
			if !errors.Is(err, seqpacket.ErrPeerClosed) && !errors.Is(err, seqpacket.ErrClosed) {
				cn.log.Warn("receive failed; dropping connection", "err", err)
			}
			return
		}
		if cn.gone.Load() {
			cn.dropUnread(m)
			return
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
	}
}

// handleMessage answers one received message. It owns m's pidfd.
func (cn *conn) handleMessage(m seqpacket.Message) {
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
	if !isHeavy(req) {
		cn.runInline(req, raw, id, caller)
		return
	}
	closePidfd = !cn.runConcurrently(req, raw, id, caller)
}

// send marshals rep into buf (reused when large enough) and sends it. A
// reply that would exceed the message limit is replaced by an error.
func (cn *conn) send(buf []byte, rep *wire.Reply) []byte { return cn.sendFDs(buf, rep, nil) }

// sendFDs is send with descriptors attached to the reply (SCM_RIGHTS):
// only the generation page's, for generation_map. The caller keeps them.
func (cn *conn) sendFDs(buf []byte, rep *wire.Reply, fds []int) []byte {
	b := cn.encodeReply(buf, rep)
	if rep.Status != wire.Status_STATUS_OK {
		fds = nil
	}
	return cn.sendEncoded(b, rep.Id, fds)
}

// encodeReply marshals rep into buf (reused when large enough). A reply
// that would exceed the message limit is replaced by an error.
func (cn *conn) encodeReply(buf []byte, rep *wire.Reply) []byte {
	n := rep.SizeVT()
	if cap(buf) < n {
		buf = cn.s.getReplyBuf(n)
	}
	b := buf[:n]
	_, err := rep.MarshalToSizedBufferVT(b)
	if err == nil && len(b) > cn.s.limits.MaxMessageBytes {
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
func (cn *conn) sendEncoded(b []byte, reqID uint64, fds []int) []byte {
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
	size := s.limits.MaxMessageBytes
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
	if cap(b) == s.limits.MaxMessageBytes {
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

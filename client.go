package keywarden

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/protobuf/encoding/protowire"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// Client is a connection to the keywarden daemon. It is safe for
// concurrent use: concurrent calls are pipelined on the one connection, up
// to the daemon's in-flight limit.
//
// Handles, and therefore every *Key and Stream obtained from a Client,
// belong to its connection: they stop working when it is closed, and
// ephemeral keys are destroyed then.
type Client struct {
	conn   *seqpacket.Conn
	limits Limits
	status ServerStatus
	sem    chan struct{} // one token per request in flight

	// mu guards the fields below.
	mu      sync.Mutex
	pending map[uint64]*call
	nextID  uint64
	reading bool  // some goroutine is receiving replies
	err     error // set once the connection is unusable
	// queue holds combined calls not yet sent; sending: some goroutine
	// is sending them (combine.go).
	queue   []*call
	sending bool
	// combined counts the combined requests sent whose replies have not
	// arrived: at most combineWindow.
	combined int

	// replyBudget bounds the reply bytes the batches of this Client leave
	// outstanding together (see Batch.Do): half the socket's send buffer.
	replyBudget int
	replies     replyBytes
	// abandoned: the reply bytes of requests finish gave up on, by id,
	// given back when their replies arrive or the connection fails.
	abandoned map[uint64]int

	recvBuf []byte // used only by the goroutine that is reading
	recvOOB []byte // likewise, for replies that carry a descriptor

	// fdWanted counts calls waiting for a reply with a descriptor
	// (generation_map); while it is not 0 the reader receives with a
	// control buffer.
	fdWanted atomic.Int32

	shm sharedMem // for large payloads (shmem.go)
}

// call is one request awaiting its reply.
type call struct {
	id    uint64
	reply *wire.Reply // set under Client.mu
	err   error       // set under Client.mu
	// wantFD: the reply may carry a descriptor, which goes to fds (set
	// under Client.mu); any other reply's descriptors are closed.
	wantFD bool
	fds    []int
	// wake is signalled when reply or err is set, or when this call's
	// goroutine should take over reading replies.
	wake chan struct{}
	// waiting: a goroutine waits on wake in finish (set under
	// Client.mu). Only such a call may be asked to take over reading: a
	// batch has several calls pending and waits on one at a time, so a
	// call of it that no one waits on yet would keep the request to read
	// to itself while every waiter sleeps.
	waiting bool

	// A combined call (combine.go): its operation, its sizes, the
	// generation it expects, and, once its request's reply is in, its
	// result (all under Client.mu but op and the sizes).
	op               *wire.Op
	opName           string
	reqSize, repSize int
	gen              uint64
	hasGen           bool
	state            int
	cancelWait       bool // ctx ended while the request was being sent
	res              *wire.Result
	// members: the calls of a combined request, whose reply goes to
	// them; set on the request's own entry in Client.pending.
	members []*call
	// buf, when not nil, is where the reader copies the reply, if it
	// fits, instead of into a new buffer (a recycling Batch's); the
	// reader sets it to nil once it has (under Client.mu).
	buf []byte
	// budget: the reply bytes a batch took for this request from
	// Client.replies, which go back when its reply is in. A call that
	// finish gives up on leaves them to the reader, which gives them back
	// when it drops the late reply: until then the reply may still fill
	// the socket (Client.abandoned).
	budget int
}

// sendBufs holds buffers for encoding requests; the kernel copies a
// message on send, so a buffer is free again once Send returns.
var sendBufs = sync.Pool{New: func() any { return new([]byte) }}

// replySpin is how long the goroutine reading replies polls for one, when
// the last came quickly, before it sleeps: a fast operation's reply then
// costs no thread wake-up (see seqpacket.Conn.SetSpin).
const replySpin = 100 * time.Microsecond

// recvSlice bounds how long a reading goroutine blocks before it checks
// whether its context is done.
const recvSlice = 25 * time.Millisecond

// Dial connects to the daemon at socketPath. An empty path means the
// KEYWARDEN_SOCKET environment variable or, if that is unset,
// DefaultSocketPath(). Dial asks the daemon for its limits, so a nil error
// means the daemon answered.
//
// Before it sends anything, Dial checks that the socket is served by a
// daemon it trusts: one run by root, by the caller's own uid, or by the uid
// $KEYWARDEN_DAEMON_UID names, in a directory that no one else could have
// made or written to; otherwise it returns an *UntrustedSocketError (see
// DialWithOptions).
func Dial(ctx context.Context, socketPath string) (*Client, error) {
	return DialWithOptions(ctx, socketPath, nil)
}

// DialWithOptions is Dial with options; nil options are Dial's. It refuses
// a socket whose directory belongs to a uid it does not trust (root, the
// caller, opts.DaemonUID or $KEYWARDEN_DAEMON_UID, and the owner of a
// directory that root gave them, such as systemd's RuntimeDirectory) or is
// writable by others without being sticky, and a daemon whose uid, as the
// kernel reports it (SO_PEERCRED), is not trusted; either refusal is an
// *UntrustedSocketError that says what was found, and happens before any
// byte is sent.
func DialWithOptions(ctx context.Context, socketPath string, opts *DialOptions) (*Client, error) {
	if socketPath == "" {
		socketPath = SocketPathFromEnv()
	}
	trust, err := newTrust(opts)
	if err != nil {
		return nil, err
	}
	if err := trust.checkDir(socketPath); err != nil {
		return nil, err
	}
	conn, err := seqpacket.Dial(ctx, socketPath)
	if err != nil {
		return nil, fmt.Errorf("keywarden: %w", err)
	}
	if err := trust.checkPeer(socketPath, conn); err != nil {
		conn.Close()
		return nil, err
	}
	conn.SetSpin(replySpin)
	if err := conn.SetRecvTimeout(recvSlice); err != nil {
		conn.Close()
		return nil, fmt.Errorf("keywarden: %w", err)
	}
	c := &Client{
		conn:    conn,
		pending: make(map[uint64]*call),
		sem:     make(chan struct{}, 1),
		recvBuf: make([]byte, wire.DefaultMaxMessageBytes+1),
	}
	st, err := c.Status(ctx)
	if err != nil {
		conn.Close()
		return nil, err
	}
	if st.ProtocolVersion != wire.ProtocolVersion {
		conn.Close()
		return nil, fmt.Errorf("keywarden: daemon speaks protocol version %d, this client %d", st.ProtocolVersion, wire.ProtocolVersion)
	}
	c.status = *st
	c.limits = st.Limits
	if n := c.limits.MaxMessageBytes; n+1 > len(c.recvBuf) {
		c.recvBuf = make([]byte, n+1)
	}
	if c.limits.MaxMessageBytes <= 0 {
		c.limits.MaxMessageBytes = wire.DefaultMaxMessageBytes
	}
	// The kernel may cap the message size below what the daemon allows.
	if m := conn.MaxMessage(); m > 0 && m < c.limits.MaxMessageBytes {
		c.limits.MaxMessageBytes = m
	}
	// Both ends ask for the same socket buffers (package seqpacket) from
	// the same kernel: the daemon's send buffer is as large as this one.
	c.replyBudget = max(conn.MaxMessage(), 64<<10) / 2
	if c.limits.MaxInFlight <= 0 {
		c.limits.MaxInFlight = 1
	}
	if c.limits.MaxBatchOps <= 0 {
		c.limits.MaxBatchOps = 1
	}
	c.sem = make(chan struct{}, c.limits.MaxInFlight)
	return c, nil
}

// Limits returns the daemon's limits as this client applies them.
func (c *Client) Limits() Limits { return c.limits }

// MaxData is the largest data a one-shot operation can carry; larger data
// needs a Stream.
func (c *Client) MaxData() int { return c.limits.MaxMessageBytes - wire.MessageOverhead }

// Close closes the connection. The daemon closes the connection's handles
// and sessions and destroys its ephemeral keys.
func (c *Client) Close() error {
	c.fail(ErrClosed)
	err := c.conn.Close()
	c.shm.release()
	return err
}

// fail marks the client unusable and wakes every waiter with err.
func (c *Client) fail(err error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.err == nil {
		c.err = err
	}
	for id, cl := range c.pending {
		delete(c.pending, id)
		if cl.members != nil {
			c.combined--
			for _, m := range cl.members {
				m.err = c.err
				signal(m.wake)
			}
			continue
		}
		cl.err = c.err
		signal(cl.wake)
	}
	for _, q := range c.queue {
		q.err = c.err
		signal(q.wake)
	}
	clear(c.queue)
	c.queue = c.queue[:0]
	// No reply will come.
	for id, n := range c.abandoned {
		delete(c.abandoned, id)
		c.replies.unpark(n)
		c.replies.give(n)
	}
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// roundTrip sends one request with the given operations and waits for the
// reply. A refusal of the whole request becomes an *Error.
func (c *Client) roundTrip(ctx context.Context, opName string, ops ...*wire.Op) (*wire.Reply, error) {
	cl, err := c.start(ctx, ops)
	if err != nil {
		return nil, err
	}
	return c.finish(ctx, opName, cl)
}

// start sends a request and returns its pending call. The caller must
// call finish, which releases the in-flight token.
func (c *Client) start(ctx context.Context, ops []*wire.Op) (*call, error) {
	return c.startCall(ctx, ops, false)
}

// startCall is start for a call that may receive a descriptor.
func (c *Client) startCall(ctx context.Context, ops []*wire.Op, wantFD bool) (*call, error) {
	return c.startCallFDs(ctx, ops, wantFD, nil)
}

// startCallFDs is startCall sending descriptors with the request.
func (c *Client) startCallFDs(ctx context.Context, ops []*wire.Op, wantFD bool, fds []int) (*call, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return c.startHeld(ctx, ops, wantFD, fds, nil)
}

// tryStart is start for a caller that must not wait for a place in
// flight: it returns nil and no error when the requests this Client has
// in flight already hold more than most of the places (Batch.Send). The
// reply goes into buf if it fits (call.buf).
func (c *Client) tryStart(ctx context.Context, ops []*wire.Op, most int, buf []byte) (*call, error) {
	if len(c.sem) >= most {
		return nil, nil
	}
	select {
	case c.sem <- struct{}{}:
	default:
		return nil, nil
	}
	return c.startHeld(ctx, ops, false, nil, buf)
}

// startInto is start with the reply going into buf if it fits.
func (c *Client) startInto(ctx context.Context, ops []*wire.Op, buf []byte) (*call, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	return c.startHeld(ctx, ops, false, nil, buf)
}

// startHeld is startCallFDs once the in-flight token is held; it gives it
// back on failure.
func (c *Client) startHeld(ctx context.Context, ops []*wire.Op, wantFD bool, fds []int, buf []byte) (*call, error) {
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		<-c.sem
		return nil, err
	}
	c.nextID++
	cl := &call{id: c.nextID, wake: make(chan struct{}, 1), wantFD: wantFD, buf: buf}
	c.pending[cl.id] = cl
	c.mu.Unlock()

	req := &wire.Request{Version: wire.ProtocolVersion, Id: cl.id, Ops: ops}
	if g, ok := ExpectedGeneration(ctx); ok {
		req.ExpectedGeneration = &g
	}
	bp := sendBufs.Get().(*[]byte)
	b, err := wire.AppendMarshal(*bp, req)
	defer func() {
		clear(b) // it held the caller's data
		if cap(b) <= 2*wire.DefaultMaxMessageBytes {
			*bp = b[:0]
		}
		sendBufs.Put(bp)
	}()
	if err == nil && len(b) > c.limits.MaxMessageBytes && c.limits.MaxMessageBytes > 0 {
		err = &Error{Code: CodeResourceExhausted,
			Message: fmt.Sprintf("request of %d bytes exceeds the %d-byte message limit", len(b), c.limits.MaxMessageBytes)}
	}
	if err == nil {
		if len(fds) > 0 {
			err = c.conn.SendFDs(b, fds)
		} else {
			err = c.conn.Send(b)
		}
		if err != nil {
			err = c.transportErr(err)
		}
	}
	if err != nil {
		c.mu.Lock()
		delete(c.pending, cl.id)
		c.mu.Unlock()
		<-c.sem
		return nil, err
	}
	return cl, nil
}

func (c *Client) transportErr(err error) error {
	if errors.Is(err, seqpacket.ErrPeerClosed) {
		err = errors.New("keywarden: the daemon closed the connection")
	} else if errors.Is(err, seqpacket.ErrClosed) {
		err = ErrClosed
	} else {
		err = fmt.Errorf("keywarden: %w", err)
	}
	c.fail(err)
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// finish waits for cl's reply. Whichever waiting goroutine finds nobody
// reading becomes the reader and hands out replies to the others, so a
// lone caller receives its own reply with no goroutine switch.
func (c *Client) finish(ctx context.Context, opName string, cl *call) (*wire.Reply, error) {
	defer func() { <-c.sem }()
	for {
		c.mu.Lock()
		cl.waiting = false
		if cl.reply != nil || cl.err != nil {
			c.mu.Unlock()
			break
		}
		if ctx.Err() != nil {
			delete(c.pending, cl.id) // a late reply is dropped
			if cl.budget > 0 {
				if c.abandoned == nil {
					c.abandoned = make(map[uint64]int)
				}
				c.abandoned[cl.id] = cl.budget
				// Nobody may read its reply soon: a batch needing room
				// does not wait for it (replyBytes.take).
				c.replies.park(cl.budget)
				cl.budget = 0
			}
			c.promoteLocked()
			c.mu.Unlock()
			return nil, ctx.Err()
		}
		if !c.reading {
			c.reading = true
			c.mu.Unlock()
			c.read(ctx, cl)
			continue
		}
		cl.waiting = true
		c.mu.Unlock()
		select {
		case <-cl.wake:
		case <-ctx.Done():
		}
	}
	if cl.err != nil {
		return nil, cl.err
	}
	rep := cl.reply
	if rep.Status != wire.Status_STATUS_OK {
		return nil, resultErr(opName, rep.Status, rep.Message)
	}
	return rep, nil
}

// read receives replies until cl's arrives, ctx is done or the connection
// fails, then gives up the reader role.
func (c *Client) read(ctx context.Context, cl *call) {
	defer func() {
		c.mu.Lock()
		c.reading = false
		c.promoteLocked()
		c.mu.Unlock()
	}()
	for {
		var n int
		var fds []int
		var err error
		if c.fdWanted.Load() > 0 {
			if c.recvOOB == nil {
				c.recvOOB = make([]byte, seqpacket.OOBSize)
			}
			n, fds, err = c.conn.RecvFDs(c.recvBuf, c.recvOOB)
		} else {
			n, err = c.conn.Recv(c.recvBuf)
		}
		if errors.Is(err, seqpacket.ErrTimeout) {
			if ctx.Err() != nil {
				return
			}
			continue
		}
		if err != nil {
			c.transportErr(err)
			return
		}
		if n >= len(c.recvBuf) {
			clear(c.recvBuf)
			closeFDs(fds)
			c.transportErr(fmt.Errorf("reply of %d bytes exceeds the message limit", n))
			return
		}
		// One copy of the whole message, which the decoded reply then
		// points into, costs one allocation instead of one per field.
		// The buffer is wiped at once: a reply may hold plaintext or a
		// data key, which the caller wipes in its copy and which must not
		// stay behind here until a longer reply overwrites it.
		msg := c.replyBuf(n)
		copy(msg, c.recvBuf[:n])
		clear(c.recvBuf[:n])
		rep := wire.ReplyFromVTPool()
		if err := rep.UnmarshalVTUnsafe(msg); err != nil {
			closeFDs(fds)
			c.transportErr(fmt.Errorf("malformed reply: %w", err))
			return
		}
		c.mu.Lock()
		target := c.pending[rep.Id]
		late := 0
		if target == nil {
			late = c.abandoned[rep.Id]
			delete(c.abandoned, rep.Id)
		}
		if target != nil {
			delete(c.pending, rep.Id)
			if target.members != nil {
				deliverLocked(target, rep)
				c.combined--
			} else {
				target.reply = rep
				if target.wantFD {
					target.fds, fds = fds, nil
				}
			}
		}
		done := cl.reply != nil || cl.res != nil || cl.err != nil
		c.mu.Unlock()
		if late > 0 {
			c.replies.unpark(late)
			c.replies.give(late)
		}
		closeFDs(fds) // descriptors nobody asked for
		if target != nil {
			if target.members != nil {
				for _, m := range target.members {
					if m != cl {
						signal(m.wake)
					}
				}
			} else if target != cl {
				signal(target.wake)
			}
		}
		if target != nil && target.members != nil {
			// A combined request is done: the calls queued meanwhile go
			// now, together.
			c.mu.Lock()
			if !c.sending {
				c.sending = true
				c.sendQueuedLocked()
				c.sending = false
			}
			c.mu.Unlock()
		}
		if done {
			return
		}
	}
}

// replyBuf returns where the reply of n bytes in recvBuf goes: the buffer
// its call brought, if it has one large enough, else a new one.
func (c *Client) replyBuf(n int) []byte {
	if id, ok := replyID(c.recvBuf[:n]); ok {
		c.mu.Lock()
		if t := c.pending[id]; t != nil && t.buf != nil && cap(t.buf) >= n {
			b := t.buf[:n]
			t.buf = nil
			c.mu.Unlock()
			return b
		}
		c.mu.Unlock()
	}
	return make([]byte, n)
}

// replyID reads the id of an encoded Reply, without decoding the rest.
func replyID(b []byte) (uint64, bool) {
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return 0, false
		}
		b = b[n:]
		if num == 2 && typ == protowire.VarintType {
			v, n := protowire.ConsumeVarint(b)
			return v, n > 0
		}
		n = protowire.ConsumeFieldValue(num, typ, b)
		if n < 0 {
			return 0, false
		}
		b = b[n:]
	}
	return 0, false
}

// promoteLocked wakes one waiting call so it takes over reading. c.mu must
// be held.
func (c *Client) promoteLocked() {
	if c.reading {
		return
	}
	for _, p := range c.pending {
		if p.waiting {
			signal(p.wake)
			return
		}
		for _, m := range p.members {
			if m.waiting {
				signal(m.wake)
				return
			}
		}
	}
	for _, q := range c.queue {
		if q.waiting {
			signal(q.wake)
			return
		}
	}
}

// do runs one operation and returns its result, turning a non-OK status
// into an *Error.
func (c *Client) do(ctx context.Context, opName string, op *wire.Op) (*wire.Result, error) {
	if req, rep, ok := combineSizes(op); ok {
		return c.doCombined(ctx, opName, op, req, rep)
	}
	rep, err := c.roundTrip(ctx, opName, op)
	if err != nil {
		return nil, err
	}
	if len(rep.Results) != 1 {
		return nil, &Error{Code: CodeInternal, Op: opName, Message: "the daemon sent a reply without a result"}
	}
	res := rep.Results[0]
	if err := resultErr(opName, res.Status, res.Message); err != nil {
		return nil, err
	}
	return res, nil
}

// doData runs an operation whose result is bytes.
func (c *Client) doData(ctx context.Context, opName string, op *wire.Op) ([]byte, error) {
	res, err := c.do(ctx, opName, op)
	if err != nil {
		return nil, err
	}
	return res.GetData(), nil
}

// Status asks the daemon for its version, limits and counters.
func (c *Client) Status(ctx context.Context) (*ServerStatus, error) {
	res, err := c.do(ctx, "status", &wire.Op{Op: &wire.Op_Status{Status: &wire.StatusOp{}}})
	if err != nil {
		return nil, err
	}
	s := res.GetServer()
	if s == nil {
		return nil, &Error{Code: CodeInternal, Op: "status", Message: "empty status"}
	}
	l := s.GetLimits()
	return &ServerStatus{
		ProtocolVersion: s.ProtocolVersion,
		ServerVersion:   s.ServerVersion,
		Limits: Limits{
			MaxMessageBytes: int(l.GetMaxMessageBytes()), MaxInFlight: int(l.GetMaxInFlight()),
			MaxSessions: int(l.GetMaxSessions()), MaxHandles: int(l.GetMaxHandles()),
			MaxKeysPerUser: int(l.GetMaxKeysPerUser()), MaxBatchOps: int(l.GetMaxBatchOps()), PackedRuns: l.GetPackedOps(),
			SharedMemory:   int(l.GetShmMaxBytes()),
			MaxConnections: int(l.GetMaxConnections()), AdminConnections: int(l.GetAdminConnections()),
			PerUID: PerUIDLimits{
				Connections: int(l.GetMaxConnectionsPerUid()), InFlight: int(l.GetMaxInFlightPerUid()),
				RequestBytes: int(l.GetMaxRequestBytesPerUid()), LongPolls: int(l.GetMaxLongPollsPerUid()),
				Sessions: int(l.GetMaxSessionsPerUid()), NamedWatchers: int(l.GetMaxNamedWatchersPerUid()),
				Computing: int(l.GetMaxComputingPerUid()), Heavy: int(l.GetMaxHeavyPerUid()),
				HeavySlots: int(l.GetHeavySlots()), AuditBytesPerSecond: int(l.GetAuditBytesPerSecondPerUid()),
				AuditBurst: int(l.GetAuditBurstPerUid()), KDFQueue: int(l.GetKdfQueuePerUid()),
				KDFRunning: int(l.GetKdfRunningPerUid()),
			},
		},
		DevMode:     s.DevMode,
		Started:     time.Unix(0, s.StartedUnixNano),
		Keys:        s.Keys,
		Connections: s.Connections,
		CallerUID:   s.CallerUid,
		CallerGID:   s.CallerGid,
		CallerPID:   s.CallerPid,
		CallerPidfd: s.CallerPidfd,
		Memory: MemoryStatus{
			Backing: s.GetMemory().GetBacking(), LockedBytes: s.GetMemory().GetLockedBytes(),
			InUseBytes: s.GetMemory().GetInUseBytes(), LimitBytes: s.GetMemory().GetLimitBytes(),
			Allocations: s.GetMemory().GetAllocations(), RuntimeSecret: s.GetMemory().GetRuntimeSecret(),
			Mlockall: s.GetMemory().GetMlockall(), Dumpable: s.GetMemory().GetDumpable(),
			CachedKeys: s.GetMemory().GetCachedKeys(),
		},
		Generation:      generationFromWire(s.GetGeneration()),
		Seal:            sealStatusFromWire(s.GetSeal()),
		Audit:           auditStatusFromWire(s.GetAudit()),
		SSHAgentSockets: s.GetSshAgentSockets(),
	}, nil
}

func auditStatusFromWire(a *wire.AuditStatus) *AuditStatus {
	if a == nil {
		return nil
	}
	st := &AuditStatus{
		Path: a.Path, Sync: a.Sync, Healthy: a.Healthy, Error: a.Error, Refused: a.Refused,
		Seq: a.Seq, FileBytes: a.FileBytes, Keyed: a.Keyed, PublicKey: a.PublicKey,
		LastCheckpoint: a.LastCheckpoint, LinuxEnabled: a.LinuxEnabled, LinuxReason: a.LinuxReason,
		LinuxSent: a.LinuxSent, LinuxDropped: a.LinuxDropped,
	}
	if a.FailedSinceUnixNano != 0 {
		st.FailedSince = time.Unix(0, a.FailedSinceUnixNano)
	}
	return st
}

// Ping sends payload to the daemon and back; it measures the transport.
func (c *Client) Ping(ctx context.Context, payload []byte) error {
	_, err := c.do(ctx, "ping", &wire.Op{Op: &wire.Op_Ping{Ping: &wire.Ping{Payload: payload}}})
	return err
}

package keywarden

import (
	"context"
	"fmt"

	"github.com/keywarden/keywarden/internal/wire"
)

// Calls of one small operation each (Ping, Encrypt, Decrypt, MAC,
// VerifyMAC, Hash, SignMessage, Verify), made by many goroutines at once on
// one Client, are combined: each call joins a queue, and whichever
// goroutine finds nobody sending sends everything queued as one request of
// several operations (a batch, protocol.md section 4), then goes on while
// anything is queued. A lone call on an idle connection finds the queue
// empty and goes out at once, as a request of its own: nothing ever waits
// for company. The daemon executes the operations of a request in order
// and independently, and its reply carries one result per operation, so
// each call still gets its own result and its own error; a refusal of the
// whole request (a generation that changed, a limit) is what each of its
// calls would have got alone. The request says it is combined
// (Request.combined), and the daemon records each of its operations in
// the audit log as the record of a request of its own, so that the log
// reads as if the calls had been sent one by one. One message each way
// then serves many calls:
// on the daemon, one receive, one credential check and one send for all of
// them; here, one receive that hands each waiting call its result.
//
// A call joins a request only with calls that expect the same generation
// (WithGeneration), and a request stays small enough that the daemon's
// reply budget never refuses one of its operations.

// combineMaxOp is the largest request a combined call may make: larger
// ones gain nothing from company and go alone.
const combineMaxOp = 4 << 10

// combineMaxOps bounds the calls of one request: the daemon records the
// operations of a combined request one by one up to 64 of them.
const combineMaxOps = 64

// combinedLimit bounds a combined request, and the bound of its reply.
func (c *Client) combinedLimit() int {
	return min(c.limits.MaxMessageBytes-wire.MessageOverhead-requestHeadroom, pipelineChunk)
}

// combineSizes returns the encoded size of op in a request and the
// daemon's bound of its result (B(op) in protocol.md section 4), and
// whether op may be combined with others: a small operation the daemon
// executes at once, in the connection's order.
func combineSizes(op *wire.Op) (req, rep int, ok bool) {
	switch o := op.GetOp().(type) {
	case *wire.Op_Ping:
		rep = 64 + len(o.Ping.GetPayload())
	case *wire.Op_Encrypt:
		rep = 64 + len(o.Encrypt.GetPlaintext()) + 512
	case *wire.Op_Decrypt:
		rep = 64 + len(o.Decrypt.GetCiphertext())
	case *wire.Op_Sign, *wire.Op_Hash, *wire.Op_Mac:
		rep = 576
	case *wire.Op_Verify, *wire.Op_MacVerify:
		rep = 64
	default:
		return 0, 0, false
	}
	req = op.SizeVT() + 8
	if req > combineMaxOp || rep > combineMaxOp+1024 {
		return 0, 0, false
	}
	return req, rep + 4, true
}

// combineWindow bounds the combined requests in flight. Calls made
// while that many are in flight queue up, and go together when a reply
// frees a place: the daemon executes a connection's requests one at a
// time, so they would wait as long in its socket, each a message of its
// own.
const combineWindow = 2

// Where a combined call is.
const (
	callQueued = iota // in Client.queue
	callTaken         // in a request being encoded and sent
	callSent          // sent, or failed
)

// doCombined runs op, which combineSizes accepts, in a request with
// whatever other such calls are queued when it is sent.
func (c *Client) doCombined(ctx context.Context, opName string, op *wire.Op, reqSize, repSize int) (*wire.Result, error) {
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	defer func() { <-c.sem }()
	cl := &call{op: op, opName: opName, reqSize: reqSize, repSize: repSize, wake: make(chan struct{}, 1)}
	cl.gen, cl.hasGen = ExpectedGeneration(ctx)
	c.mu.Lock()
	if c.err != nil {
		err := c.err
		c.mu.Unlock()
		return nil, err
	}
	c.queue = append(c.queue, cl)
	if !c.sending {
		c.sending = true
		c.sendQueuedLocked()
		c.sending = false
	}
	c.mu.Unlock()
	if err := c.await(ctx, cl); err != nil {
		return nil, err
	}
	if cl.err != nil {
		return nil, cl.err
	}
	res := cl.res
	if err := resultErr(opName, res.Status, res.Message); err != nil {
		return nil, err
	}
	return res, nil
}

// sendQueuedLocked sends the queued calls, as many to a request as the
// limits allow, until the queue is empty. c.mu is held on entry and on
// return, and released while a request is encoded and sent.
func (c *Client) sendQueuedLocked() {
	limit := c.combinedLimit()
	maxOps := max(1, min(c.limits.MaxBatchOps, combineMaxOps))
	for len(c.queue) > 0 && c.err == nil && c.combined < combineWindow {
		first := c.queue[0]
		n, req, rep := 1, first.reqSize, first.repSize
		for n < len(c.queue) && n < maxOps {
			q := c.queue[n]
			if q.hasGen != first.hasGen || q.gen != first.gen || req+q.reqSize > limit || rep+q.repSize > limit {
				break
			}
			req += q.reqSize
			rep += q.repSize
			n++
		}
		members := make([]*call, n)
		copy(members, c.queue[:n])
		clear(c.queue[:n])
		c.queue = c.queue[n:]
		if len(c.queue) == 0 {
			c.queue = c.queue[:0:0]
		}
		c.nextID++
		g := &call{id: c.nextID, members: members}
		c.pending[g.id] = g
		c.combined++
		for _, m := range members {
			m.state = callTaken
		}
		c.mu.Unlock()

		err := c.sendCombined(g, first)
		if te, ok := err.(*transportError); ok {
			err = c.transportErr(te.err) // fails g's calls with the rest
		}

		c.mu.Lock()
		if err != nil && c.pending[g.id] == g {
			delete(c.pending, g.id)
			c.combined--
			for _, m := range members {
				m.err = err
				signal(m.wake)
			}
		}
		for _, m := range members {
			m.state = callSent
			if m.cancelWait {
				signal(m.wake)
			}
		}
		// The calls just sent wait for replies: someone must read them.
		c.promoteLocked()
	}
}

// sendCombined encodes and sends g's request: its calls' operations, in
// order, under the generation they expect.
func (c *Client) sendCombined(g, first *call) error {
	ops := make([]*wire.Op, len(g.members))
	for i, m := range g.members {
		ops[i] = m.op
	}
	// Combined: the daemon records each operation as it records a call
	// made alone.
	req := &wire.Request{Version: wire.ProtocolVersion, Id: g.id, Ops: ops, Combined: len(ops) > 1}
	if first.hasGen {
		gen := first.gen
		req.ExpectedGeneration = &gen
	}
	bp := sendBufs.Get().(*[]byte)
	b, err := wire.AppendMarshal(*bp, req)
	defer func() {
		clear(b) // it held the callers' data
		if cap(b) <= 2*wire.DefaultMaxMessageBytes {
			*bp = b[:0]
		}
		sendBufs.Put(bp)
	}()
	if err != nil {
		return fmt.Errorf("keywarden: %w", err)
	}
	if len(b) > c.limits.MaxMessageBytes && c.limits.MaxMessageBytes > 0 {
		return &Error{Code: CodeResourceExhausted,
			Message: fmt.Sprintf("request of %d bytes exceeds the %d-byte message limit", len(b), c.limits.MaxMessageBytes)}
	}
	if err := c.conn.Send(b); err != nil {
		return &transportError{err}
	}
	return nil
}

// transportError marks an error of the connection itself.
type transportError struct{ err error }

func (e *transportError) Error() string { return e.err.Error() }

// deliverLocked hands each call of the combined request g its result in
// rep. c.mu must be held.
func deliverLocked(g *call, rep *wire.Reply) {
	for i, m := range g.members {
		switch {
		case rep.Status != wire.Status_STATUS_OK:
			m.err = resultErr(m.opName, rep.Status, rep.Message)
		case i >= len(rep.Results):
			m.err = &Error{Code: CodeInternal, Op: m.opName, Message: "the daemon sent a reply without a result"}
		default:
			res := rep.Results[i]
			// The results share one buffer: a caller appending to its
			// output must not write into a neighbour's.
			res.Data = res.Data[:len(res.Data):len(res.Data)]
			m.res = res
		}
	}
}

// await waits until cl, a combined call, has its result or error, reading
// replies for everyone if nobody is, or until ctx is done. A call whose
// request is being encoded when ctx ends waits until it is sent: the
// request holds the caller's data until then.
func (c *Client) await(ctx context.Context, cl *call) error {
	for {
		c.mu.Lock()
		cl.waiting = false
		if cl.res != nil || cl.err != nil {
			c.mu.Unlock()
			return nil
		}
		if ctx.Err() != nil {
			switch cl.state {
			case callQueued:
				for i, q := range c.queue {
					if q == cl {
						c.queue = append(c.queue[:i], c.queue[i+1:]...)
						break
					}
				}
			case callTaken:
				cl.cancelWait = true
				c.mu.Unlock()
				<-cl.wake
				continue
			}
			// A late result is dropped with its request's other results.
			c.promoteLocked()
			c.mu.Unlock()
			return ctx.Err()
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
}

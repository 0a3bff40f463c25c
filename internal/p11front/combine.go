package p11front

import (
	"github.com/keywarden/keywarden/internal/wire"
)

// Combining calls. The threads of a program share the module's one
// connection, and when they call at once the front reads several of
// their frames together (the module sends a deferred C_*Init with the
// call after it, and each thread its own). The front then sends the
// core the operations of those frames' C_Sign, C_Encrypt and C_Decrypt
// in one combined request rather than one request each: the core reads
// the caller's identity once, writes their audit records in one write
// (each operation still its own record, as if it had come alone), and
// the connection's goroutine goes through the core's request once.
//
// A call is deferred only while another frame is already read (or
// calls are deferred already), so the call of a program calling from
// one thread goes to the core at once. A deferred call's reply, and every reply after it, is held until
// the deferred calls have run (exec), which is before the front writes,
// before it handles any frame that is not one of these calls or that
// names the session of a deferred call, and before any other request or
// refusal it sends the core (do, refuse): the core sees the requests in
// the order of the frames, and a session sees its calls take effect in
// order.

// Bounds of a combined request: the core records one of at most 64
// operations one operation at a time, and each operation's data is
// small. What the calls deferred together carry, with room for each
// one's reply (its data again, for an encryption, and combinedOverhead),
// stays within half the core's message size (--max-message-bytes), so
// that neither the request nor its reply can be refused as too large,
// whatever the size of the front's reads.
const (
	maxCombined      = 64
	maxCombinedData  = 4 << 10
	combinedOverhead = 1 << 10
)

// deferred is a one-shot call whose operation waits to go to the core
// with others.
type deferred struct {
	sess uint64 // the session's handle
	slot **operation
	op   *operation
	wop  *wire.Op // the core's operation
	room uint32   // the caller's buffer
	e    *encoder // the response, once the result is in
	buf  []byte   // the frame, cleared once the reply is written
	body []byte   // the reply's body, once exec ran
	size int      // the bytes counted for it against the message size
}

// heldReply is a reply held until the deferred calls before it have run.
type heldReply struct {
	code uint32
	body []byte    // nil: d's
	d    *deferred // non-nil: a deferred call's reply
}

// mayDefer reports whether a one-shot call of op over data is
// deferred: other frames are read, the operation is one the core
// runs in one request (not a digest, not a stream), its key is open on
// the connection, and the combined request has room for it.
func (c *conn) mayDefer(op *operation, data []byte) bool {
	if !c.collecting || op.kind == opDigest || len(data) > maxCombinedData ||
		op.key == nil || op.key.handle == 0 || op.key.gone {
		return false
	}
	lim := c.f.cfg.Server.Limits()
	if len(c.pend) >= min(maxCombined, lim.MaxBatchOps) {
		// The core's batch limit in force (--max-batch-ops) may be
		// lower, and would refuse the whole combined request.
		return false
	}
	n := combinedSize(data)
	for _, d := range c.pend {
		n += d.size
	}
	return n <= lim.MaxMessageBytes/2
}

// combinedSize is what a call over data counts against the message
// size: its data in the request and again in the reply, and room for
// the rest of both.
func combinedSize(data []byte) int { return 2*len(data) + combinedOverhead }

// deferCall defers the one-shot call of op over data on session sh,
// whose response e is to give its result within room bytes.
func (c *conn) deferCall(sh uint64, slot **operation, op *operation, data []byte, room uint32, e *encoder) uint64 {
	wop, rv := c.prepare(op, data)
	if rv != ckrOK {
		return rv
	}
	c.pend = append(c.pend, &deferred{sess: sh, slot: slot, op: op, wop: wop, room: room, e: e, size: combinedSize(data)})
	return rvDeferred
}

// rvDeferred is what a handler returns for a call it deferred.
const rvDeferred = ^uint64(0) - 1

// independent reports whether the frame body may be handled while calls
// are deferred: a C_{Sign,Encrypt,Decrypt}Init or a one-shot call of
// those on a session no deferred call names.
func (c *conn) independent(body []byte) bool {
	id, d, err := parseRequest(body)
	if err != nil {
		return false
	}
	switch id {
	case callSignInit, callEncryptInit, callDecryptInit, callSign, callEncrypt, callDecrypt:
	default:
		return false
	}
	sh := d.Ulong()
	if d.err != nil {
		return false
	}
	for _, p := range c.pend {
		if p.sess == sh {
			return false
		}
	}
	return true
}

// exec runs the deferred calls: their operations in one request of the
// core's, combined if more than one, and each call's result given as
// the call would have given it alone.
func (c *conn) exec() {
	if len(c.pend) == 0 {
		return
	}
	pend := c.pend
	c.pend = nil // what the results' handling sends the core goes after
	ops := make([]*wire.Op, len(pend))
	for i, p := range pend {
		ops[i] = p.wop
	}
	rs, err := c.doAll(ops, len(ops) > 1)
	for i, p := range pend {
		var r *wire.Result
		rerr := err
		if err == nil {
			r = rs[i]
			rerr = resultErr(r)
		}
		out, rv := resultOf(p.op, r, rerr)
		if rv == ckrOK {
			p.op.result, p.op.done = out, true
			rv = c.give(p.slot, p.op, p.room, p.e)
		} else {
			c.abort(p.slot)
		}
		if rv == ckrOK {
			p.body = p.e.b
		} else {
			p.body = errorResponse(rv)
		}
		p.wop, p.e = nil, nil
	}
	clear(pend)
	if c.pend == nil {
		c.pend = pend[:0]
	}
}

// appendHeld runs the deferred calls and appends the held replies to
// out, in order.
func (c *conn) appendHeld(out []byte) []byte {
	c.exec()
	for i := range c.held {
		h := &c.held[i]
		body := h.body
		if h.d != nil {
			body = h.d.body
			clear(h.d.buf) // it may have held data to encrypt
		}
		out = appendFrame(out, h.code, body)
		if h.d != nil {
			clear(h.d.body) // a decryption's plaintext, now copied into out (cleared once written)
		}
	}
	clear(c.held)
	c.held = c.held[:0]
	return out
}

// dropHeld clears the held replies and the frames of deferred calls, of
// a connection that ends without writing them.
func (c *conn) dropHeld() {
	for _, p := range c.pend {
		clear(p.buf)
	}
	clear(c.pend)
	c.pend = nil
	for _, h := range c.held {
		clear(h.body)
		if h.d != nil {
			clear(h.d.buf)
			clear(h.d.body)
		}
	}
	clear(c.held)
	c.held = nil
}

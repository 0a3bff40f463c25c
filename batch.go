package keywarden

import (
	"context"
	"crypto"

	"github.com/keywarden/keywarden/internal/wire"
)

// Batch collects small operations and sends them in as few messages as
// the daemon's limits allow, so that they do not pay a round trip each.
// Operations in a batch run in order and independently: one failing does
// not stop the others. A Batch is not safe for concurrent use; the Client
// is.
//
//	b := client.NewBatch()
//	r1 := b.Encrypt(key, msg1, nil)
//	r2 := b.Encrypt(key, msg2, nil)
//	if err := b.Do(ctx); err != nil { ... }   // transport failure
//	ct1, err := r1.Bytes()                    // per-operation result
type Batch struct {
	c     *Client
	ops   []*wire.Op
	res   []*BatchResult
	sizes []opSize
	// packs[i] says what ops[i] shares with the operations of a packed
	// run it may be sent in (packedbatch.go); kind 0 for an operation
	// sent as it is.
	packs []packKey

	// Operations and results are carved from slabs: a few allocations per
	// hundred operations instead of four per operation.
	opSlab  slab[wire.Op]
	resSlab slab[BatchResult]
	encSlab slab[wire.Encrypt]
	encWrap slab[wire.Op_Encrypt]
	decSlab slab[wire.Decrypt]
	decWrap slab[wire.Op_Decrypt]
	macSlab slab[wire.Mac]
	macWrap slab[wire.Op_Mac]
	// packBuf holds the messages of the packed runs of the request being
	// sent (packedbatch.go).
	packBuf []byte
	// pend is the batch sent and not yet waited for (Send, Wait).
	pend *pendingBatch
	// usedBufs hold replies that results point into; Recycle makes them
	// freeBufs, which replies are then received into.
	usedBufs, freeBufs [][]byte
	recycling          bool // Recycle was called: keep reply buffers
	// scratchOps and scratchInts hold the slices of the requests of one
	// Send and its Wait (carve).
	scratchOps  []*wire.Op
	scratchInts []int
}

// carve returns an empty slice of capacity n from the end of *s, whose
// appends up to n never reach what carve hands out next.
func carve[T any](s *[]T, n int) []T {
	if len(*s)+n > cap(*s) {
		return make([]T, 0, n)
	}
	c := (*s)[len(*s) : len(*s) : len(*s)+n]
	*s = (*s)[:len(*s)+n]
	return c
}

// slab allocates values of T in chunks. Pointers it returns stay valid;
// a chunk is freed when nothing points into it any more, unless the slab
// was rewound: it then keeps its chunks and hands their values out again.
type slab[T any] struct {
	buf    []T
	chunks [][]T // kept once rewound
	next   int   // the next of chunks to use
	keep   bool
}

const slabChunk = 128

func (s *slab[T]) new() *T {
	if len(s.buf) == cap(s.buf) {
		switch {
		case s.next < len(s.chunks):
			s.buf = s.chunks[s.next][:0]
			s.next++
		case s.keep:
			s.buf = make([]T, 0, slabChunk)
			s.chunks = append(s.chunks, s.buf)
			s.next++
		default:
			s.buf = make([]T, 0, slabChunk)
		}
	}
	s.buf = s.buf[:len(s.buf)+1]
	return &s.buf[len(s.buf)-1]
}

// forget stops keeping the chunks: the values handed out stay the
// caller's.
func (s *slab[T]) forget() {
	clear(s.chunks)
	s.chunks, s.next, s.keep = s.chunks[:0], 0, false
}

// rewind zeroes every value handed out and hands them out again: no
// pointer to one may be used after.
func (s *slab[T]) rewind() {
	for _, c := range s.chunks {
		clear(c[:cap(c)])
	}
	if !s.keep {
		clear(s.buf[:cap(s.buf)])
		// The current chunk is the first kept.
		if cap(s.buf) > 0 {
			s.chunks = append(s.chunks, s.buf[:0])
		}
		s.keep = true
	}
	s.buf, s.next = nil, 0
}

// opSize is what an operation adds to a request (req) and to the
// client's estimate of its reply (rep, above the size of its result), and
// the daemon's bound of its result (bound: B(op) in section 4 of
// docs/protocol.md), by which the daemon decides whether the operation's
// result may still fit in the reply.
type opSize struct{ req, rep, bound int }

// BatchResult is the outcome of one operation of a Batch, valid after Do
// (or Wait) and until the batch is recycled (Recycle).
type BatchResult struct {
	op   string
	data []byte
	err  error
}

// Bytes returns the operation's output (ciphertext, plaintext, signature,
// tag or digest) or its error.
func (r *BatchResult) Bytes() ([]byte, error) { return r.data, r.err }

// Err returns the operation's error; nil means success (for Verify and
// VerifyMAC: the signature or tag verified).
func (r *BatchResult) Err() error { return r.err }

// NewBatch starts an empty batch.
func (c *Client) NewBatch() *Batch { return &Batch{c: c} }

// Len returns the number of operations queued.
func (b *Batch) Len() int { return len(b.ops) }

// Recycle empties the batch for reuse, as Reset does, and lets it reuse
// the memory of earlier results: the results of earlier calls to Do and
// Wait become invalid, and the bytes they returned are wiped and
// overwritten by the next replies. A loop that queues, sends and reads a
// batch again and again then receives its replies into the same memory
// instead of new memory each time, which saves this process the work of
// allocating, faulting in and collecting it. Outside a Send and its
// Wait, which it leaves alone as Reset does.
func (b *Batch) Recycle() {
	if b.pend != nil {
		b.Reset()
		return
	}
	b.eachSlab(slabber.rewind)
	for _, buf := range b.usedBufs {
		clear(buf[:cap(buf)])
		b.freeBufs = append(b.freeBufs, buf[:0])
	}
	clear(b.usedBufs)
	b.usedBufs = b.usedBufs[:0]
	b.empty()
	b.recycling = true
}

// slabber is a slab of any type.
type slabber interface {
	rewind()
	forget()
}

// eachSlab calls f with each of the batch's slabs.
func (b *Batch) eachSlab(f func(slabber)) {
	f(&b.opSlab)
	f(&b.resSlab)
	f(&b.encSlab)
	f(&b.encWrap)
	f(&b.decSlab)
	f(&b.decWrap)
	f(&b.macSlab)
	f(&b.macWrap)
}

// replyBuf returns a buffer kept by the batch for a reply of at most n
// bytes, or nil if it has none.
func (b *Batch) replyBuf(n int) []byte {
	for i := len(b.freeBufs) - 1; i >= 0; i-- {
		if buf := b.freeBufs[i]; cap(buf) >= n {
			b.freeBufs[i] = b.freeBufs[len(b.freeBufs)-1]
			b.freeBufs[len(b.freeBufs)-1] = nil
			b.freeBufs = b.freeBufs[:len(b.freeBufs)-1]
			return buf
		}
	}
	if b.recycling {
		return make([]byte, 0, max(n, pipelineChunk+requestHeadroom))
	}
	return nil
}

// keepBuf returns an unused reply buffer to the batch.
func (b *Batch) keepBuf(buf []byte) {
	if buf != nil {
		b.freeBufs = append(b.freeBufs, buf)
	}
}

// Reset empties the batch for reuse. BatchResults of earlier calls to Do
// stay valid.
func (b *Batch) Reset() {
	if b.pend != nil {
		// Sent and not waited for: Wait still needs these.
		b.ops, b.res, b.sizes, b.packs = nil, nil, nil, nil
		return
	}
	// The results stay valid: the batch no longer keeps, for reuse, the
	// memory they use.
	if b.recycling {
		b.eachSlab(slabber.forget)
		clear(b.usedBufs)
		b.usedBufs = b.usedBufs[:0]
		b.recycling = false
	}
	b.empty()
}

func (b *Batch) empty() {
	clear(b.ops)
	clear(b.res)
	clear(b.packs)
	b.ops, b.res, b.sizes, b.packs = b.ops[:0], b.res[:0], b.sizes[:0], b.packs[:0]
}

func (b *Batch) add(name string, op *wire.Op, replyData, bound int) *BatchResult {
	r := b.resSlab.new()
	r.op = name
	b.ops = append(b.ops, op)
	b.res = append(b.res, r)
	b.sizes = append(b.sizes, opSize{req: op.SizeVT() + 8, rep: replyData + 32, bound: bound})
	b.packs = append(b.packs, packKey{})
	return r
}

// addPackable is add for an operation that may be sent in a packed run,
// which k describes.
func (b *Batch) addPackable(name string, op *wire.Op, replyData, bound int, k packKey) *BatchResult {
	r := b.add(name, op, replyData, bound)
	if len(k.msg) <= maxPackedMessage {
		b.packs[len(b.packs)-1] = k
	}
	return r
}

// The daemon's bounds of results (B(op) in section 4 of docs/protocol.md),
// and the room it keeps in a reply for the rest.
const (
	boundSmall  = 64
	boundDigest = boundSmall + 512
	replyHeader = 64
)

// refusalRoom bounds the result of an operation the daemon refuses: its
// status and message.
const refusalRoom = 256

func (b *Batch) fail(name string, err error) *BatchResult {
	r := b.add(name, nil, 0, 0)
	r.err = err
	return r
}

// maxSigSize bounds the signature of any supported key (RSA-4096).
const maxSigSize = 512

// Encrypt queues k.Encrypt(plaintext, aad).
func (b *Batch) Encrypt(k *Key, plaintext, aad []byte) *BatchResult {
	e := b.encSlab.new()
	e.Handle, e.Plaintext, e.Aad = k.handle, plaintext, aad
	w := b.encWrap.new()
	w.Encrypt = e
	op := b.opSlab.new()
	op.Op = w
	return b.addPackable("encrypt", op, k.ciphertextBound(len(plaintext)), boundDigest+len(plaintext),
		packKey{wire.PackedKind_PACKED_KIND_ENCRYPT, k.handle, aad, 0, plaintext})
}

// aesGCMOverhead is what an AES-GCM ciphertext adds to its plaintext: the
// daemon's header (magic and key version), the nonce and the tag.
const aesGCMOverhead = 7 + 12 + 16

// ciphertextBound bounds the size of k's ciphertext of n bytes. An
// estimate close to the truth lets a batch of small encryptions go in a
// few large requests rather than many small ones: every request costs the
// daemon a round of work of its own, an audit record among it.
func (k *Key) ciphertextBound(n int) int {
	if k.typ == AES256GCM {
		return n + aesGCMOverhead
	}
	return n + maxSigSize // RSA-OAEP: at most the modulus
}

// Decrypt queues k.Decrypt(ciphertext, aad).
func (b *Batch) Decrypt(k *Key, ciphertext, aad []byte) *BatchResult {
	d := b.decSlab.new()
	d.Handle, d.Ciphertext, d.Aad = k.handle, ciphertext, aad
	w := b.decWrap.new()
	w.Decrypt = d
	op := b.opSlab.new()
	op.Op = w
	return b.addPackable("decrypt", op, len(ciphertext), boundSmall+len(ciphertext),
		packKey{wire.PackedKind_PACKED_KIND_DECRYPT, k.handle, aad, 0, ciphertext})
}

// SignMessage queues k.SignMessageContext(ctx, msg, opts).
func (b *Batch) SignMessage(k *Key, msg []byte, opts *SignOptions) *BatchResult {
	s, err := k.signOp(msg, false, opts)
	if err != nil {
		return b.fail("sign", err)
	}
	return b.add("sign", &wire.Op{Op: &wire.Op_Sign{Sign: s}}, maxSigSize, boundDigest)
}

// SignDigest queues k.SignDigest(digest, opts).
func (b *Batch) SignDigest(k *Key, digest []byte, opts *SignOptions) *BatchResult {
	if opts == nil || opts.Hash == 0 {
		return b.fail("sign", argError("sign", "signing a digest needs its hash"))
	}
	s, err := k.signOp(digest, true, opts)
	if err != nil {
		return b.fail("sign", err)
	}
	return b.add("sign", &wire.Op{Op: &wire.Op_Sign{Sign: s}}, maxSigSize, boundDigest)
}

// Verify queues k.Verify(msg, sig, opts).
func (b *Batch) Verify(k *Key, msg, sig []byte, opts *SignOptions) *BatchResult {
	op, err := k.verifyOp(msg, sig, false, opts)
	if err != nil {
		return b.fail("verify", err)
	}
	return b.add("verify", op, 0, boundSmall)
}

// MAC queues k.MAC(data).
func (b *Batch) MAC(k *Key, data []byte) *BatchResult {
	m := b.macSlab.new()
	m.Handle, m.Data = k.handle, data
	w := b.macWrap.new()
	w.Mac = m
	op := b.opSlab.new()
	op.Op = w
	return b.addPackable("mac", op, 64, boundDigest, packKey{wire.PackedKind_PACKED_KIND_MAC, k.handle, nil, 0, data})
}

// VerifyMAC queues k.VerifyMAC(data, tag).
func (b *Batch) VerifyMAC(k *Key, data, tag []byte) *BatchResult {
	return b.add("mac-verify", &wire.Op{Op: &wire.Op_MacVerify{MacVerify: &wire.MacVerify{Handle: k.handle, Data: data, Tag: tag}}}, 0, boundSmall)
}

// Hash queues Client.Hash(h, data).
func (b *Batch) Hash(h crypto.Hash, data []byte) *BatchResult {
	alg, err := hashToWire(h)
	if err == nil && alg == wire.HashAlg_HASH_ALG_UNSPECIFIED {
		err = argError("hash", "a hash must be named")
	}
	if err != nil {
		return b.fail("hash", err)
	}
	return b.add("hash", &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: alg, Data: data}}}, 64, boundDigest)
}

// Ping queues a Ping.
func (b *Batch) Ping(payload []byte) *BatchResult {
	return b.add("ping", &wire.Op{Op: &wire.Op_Ping{Ping: &wire.Ping{Payload: payload}}}, len(payload), boundSmall+len(payload))
}

// pipelineChunk bounds a combined request (combine.go).
const pipelineChunk = 64 << 10

// requestHeadroom is room left in a request or reply for everything but
// the operations.
const requestHeadroom = 256

// Do sends the queued operations and fills in their results. It splits
// them into as many requests as the message size and batch limits need
// and keeps several in flight at once, as many as the replies they may
// bring fit in half a socket buffer: the daemon must never be left unable
// to send a reply this goroutine does not read because it is itself
// blocked sending a request the daemon does not read. The error is non-nil only when the
// requests could not be exchanged; each operation's own outcome is in its
// BatchResult.
//
// Do is Send followed at once by Wait.
func (b *Batch) Do(ctx context.Context) error {
	if err := b.Send(ctx); err != nil {
		return err
	}
	return b.Wait(ctx)
}

// Send sends the queued operations and returns without waiting for their
// results, so that the caller can prepare more work, such as the next
// batch, while the daemon executes these; Wait then waits for the
// results. A caller that alternates two batches, queuing and sending one
// while the other is in the daemon, keeps this process and the daemon
// busy at once:
//
//	a.Send(ctx)               // a in the daemon
//	for {
//		queue(b); b.Send(ctx) // b behind it
//		a.Wait(ctx)           // a's results; then refill a
//		a, b = b, a
//	}
//
// Send sends at once only what fits in the Client's room for requests in
// flight and their replies without waiting for any; it leaves the rest
// for Wait, which sends it before it waits. Requests go to the daemon in
// the order of the operations, and the daemon executes a connection's
// requests in the order they arrive, so a batch that Send sent whole is
// executed before any batch sent after it; a batch it sent in part may be
// overtaken by later ones.
//
// Send's ctx bounds the sending it does; the operations Send leaves to
// Wait are sent under the expected generation of Send's ctx (WithGeneration)
// and Wait's cancellation. Until Wait returns the batch must not be
// queued to or sent again; a Reset meanwhile leaves the operations sent
// to Wait. A batch sent and not waited for holds part of the Client's
// room for requests in flight and their replies until its Wait: at most
// half of the places, and as much of the reply room as it found free,
// which a Wait of another batch that needs room goes past rather than
// wait for. A Send that returns an error has waited for whatever it sent,
// and every operation has its outcome: its Wait returns nil at once. The
// error is as Do's.
func (b *Batch) Send(ctx context.Context) error {
	if b.pend != nil {
		return argError("batch", "sent again before Wait")
	}
	p := &pendingBatch{b: b, ops: b.ops, res: b.res, packs: b.packs, left: b.chunks()}
	// Each operation is in one request: its op and index there, and in a
	// packed run's op and count, at most once each.
	if n := 2 * len(b.ops); cap(b.scratchOps) < n {
		b.scratchOps, b.scratchInts = make([]*wire.Op, 0, n), make([]int, 0, n)
	} else {
		clear(b.scratchOps)
		b.scratchOps, b.scratchInts = b.scratchOps[:0], b.scratchInts[:0]
	}
	if g, ok := ExpectedGeneration(ctx); ok {
		p.gen, p.hasGen = g, true
	}
	b.pend = p
	if ctx.Err() != nil {
		return b.Wait(ctx)
	}
	// Room is taken without waiting: the requests this process has in
	// flight may belong to batches of this goroutine, sent and not yet
	// waited for, whose places and replies only their Wait gives back.
	// Such batches hold at most half of the places, so that a Wait of
	// this goroutine always finds some (Client.tryStart).
	most := b.c.limits.MaxInFlight / 2
	for len(p.left) > 0 {
		ch := p.left[0]
		f := p.flight(ch)
		if len(f.ops) == 0 {
			p.left = p.left[1:]
			continue
		}
		if len(p.inflight) >= b.window() || !b.c.replies.tryTake(ch.rep, b.c.replyBudget) {
			break
		}
		if b.c.limits.PackedRuns {
			f.ops, f.runs = b.packRuns(f.ops, f.idx, p.packs)
		}
		f.buf = b.replyBuf(ch.rep)
		cl, err := b.c.tryStart(ctx, f.ops, most, f.buf)
		b.clearPackBuf()
		if cl == nil {
			b.keepBuf(f.buf)
			b.c.replies.give(ch.rep)
			if err != nil {
				// As Do: the other requests are still tried, and every
				// operation gets an outcome before Send returns.
				p.failFlight(f, err)
				p.left = p.left[1:]
				b.c.replies.park(p.parked)
				return b.Wait(ctx)
			}
			break
		}
		f.cl = cl
		cl.budget = ch.rep
		p.inflight = append(p.inflight, f)
		p.parked += ch.rep
		p.left = p.left[1:]
	}
	b.c.replies.park(p.parked)
	return nil
}

// Wait sends what Send left of the batch, waits for the replies and fills
// in the results. Without a batch sent and not waited for it returns nil
// at once. Its error is as Do's.
func (b *Batch) Wait(ctx context.Context) error {
	p := b.pend
	if p == nil {
		return nil
	}
	b.pend = nil
	b.c.replies.unpark(p.parked)
	p.parked = 0
	sendCtx := ctx
	if g, ok := ExpectedGeneration(ctx); p.hasGen && (!ok || g != p.gen) {
		sendCtx = WithGeneration(ctx, p.gen)
	} else if !p.hasGen && ok {
		sendCtx = withoutGeneration(ctx)
	}
	window := b.window()
	for _, ch := range p.left {
		f := p.flight(ch)
		if len(f.ops) == 0 {
			continue
		}
		if err := ctx.Err(); err != nil {
			p.failFlight(f, err)
			continue
		}
		// The replies in flight, this batch's and other goroutines' on
		// the same Client, stay within the budget (replybudget.go).
		for len(p.inflight) > 0 && (len(p.inflight) >= window || !b.c.replies.tryTake(ch.rep, b.c.replyBudget)) {
			b.finishOne(ctx, p)
		}
		if len(p.inflight) == 0 {
			if err := b.c.replies.take(ctx, ch.rep, b.c.replyBudget); err != nil {
				p.failFlight(f, err)
				continue
			}
		}
		if b.c.limits.PackedRuns {
			f.ops, f.runs = b.packRuns(f.ops, f.idx, p.packs)
		}
		f.buf = b.replyBuf(ch.rep)
		cl, err := b.c.startInto(sendCtx, f.ops, f.buf)
		b.clearPackBuf()
		if err != nil {
			b.keepBuf(f.buf)
			b.c.replies.give(ch.rep)
			p.failFlight(f, err)
			continue
		}
		f.cl = cl
		cl.budget = ch.rep
		p.inflight = append(p.inflight, f)
	}
	p.left = nil
	for len(p.inflight) > 0 {
		b.finishOne(ctx, p)
	}
	return p.firstErr
}

// withoutGeneration is ctx with no expected generation.
func withoutGeneration(ctx context.Context) context.Context {
	return context.WithValue(ctx, expectedGenerationKey{}, nil)
}

// window is how many requests of one batch are in flight at most.
func (b *Batch) window() int { return max(1, b.c.limits.MaxInFlight/2) }

// pendingBatch is a batch between Send and the end of Wait.
type pendingBatch struct {
	b *Batch
	// ops, res and packs are the batch's as Send found them: a Reset
	// meanwhile starts new ones and leaves these alone.
	ops      []*wire.Op
	res      []*BatchResult
	packs    []packKey
	left     []chunk // not yet sent
	inflight []batchFlight
	// parked: the reply bytes this batch holds between Send and Wait.
	parked   int
	gen      uint64
	hasGen   bool
	firstErr error
}

// batchFlight is one request of a batch.
type batchFlight struct {
	ch  chunk
	ops []*wire.Op
	idx []int
	// runs[j] is how many of idx the j-th of ops stands for: more than
	// one for a packed run (packedbatch.go); nil when none is.
	runs []int
	cl   *call
	buf  []byte // the batch's buffer for the reply, or nil
}

func (p *pendingBatch) flight(ch chunk) batchFlight {
	f := batchFlight{ch: ch}
	n := ch.to - ch.from
	f.ops, f.idx = carve(&p.b.scratchOps, n), carve(&p.b.scratchInts, n)
	for i := ch.from; i < ch.to; i++ {
		if p.ops[i] != nil {
			f.ops = append(f.ops, p.ops[i])
			f.idx = append(f.idx, i)
		}
	}
	return f
}

// failFlight gives every operation of f the error err, which is the
// batch's unless it has one already.
func (p *pendingBatch) failFlight(f batchFlight, err error) {
	for _, i := range f.idx {
		p.res[i].err = err
	}
	if p.firstErr == nil {
		p.firstErr = err
	}
}

// finishOne waits for the oldest request of p in flight and fills in its
// operations' results.
func (b *Batch) finishOne(ctx context.Context, p *pendingBatch) {
	f := p.inflight[0]
	p.inflight = p.inflight[1:]
	rep, err := b.c.finish(ctx, "batch", f.cl)
	if f.cl.budget > 0 { // else given back with the late reply
		b.c.replies.give(f.cl.budget)
	}
	switch {
	case f.buf == nil:
	case err == nil && f.cl.buf == nil:
		// The results point into it until Recycle.
		b.usedBufs = append(b.usedBufs, f.buf)
	case err == nil:
		b.keepBuf(f.buf) // the reply went elsewhere
	}
	// A request that failed drops its buffer: a reply given up on may
	// still be copied into it.
	if f.runs != nil && err == nil {
		unpackResults(p.res, rep, f.idx, f.runs)
	} else {
		for j, i := range f.idx {
			r := p.res[i]
			switch {
			case err != nil:
				r.err = err
			case j >= len(rep.Results):
				r.err = &Error{Code: CodeInternal, Op: r.op, Message: "missing result"}
			default:
				res := rep.Results[j]
				r.err = resultErr(r.op, res.Status, res.Message)
				r.data = res.GetData()
			}
		}
	}
	if err != nil && p.firstErr == nil && CodeOf(err) == CodeUnavailable {
		p.firstErr = err
	}
	// Nothing refers to the reply's messages any more (results point
	// into its bytes, not into them): recycle them, without the slices
	// into those bytes, which the results still use.
	if rep != nil {
		for _, r := range rep.Results {
			r.Data = nil
		}
		rep.ReturnToVTPool()
	}
}

// chunk is a run of a batch's operations sent as one request; rep bounds
// the size of its reply.
type chunk struct{ from, to, rep int }

// chunks splits the batch into requests.
func (b *Batch) chunks() []chunk {
	var chunks []chunk
	// Requests as large as the daemon takes: each request costs both
	// processes a round of system calls and wake-ups, and the daemon an
	// audit record and the caller's identity, which 512 small operations
	// in one request share rather than three. The two processes work at
	// once with two batches in flight (Send, Wait), so a batch need not
	// be cut into pieces for that; the replies of two such requests fit
	// in the Client's room for replies at once.
	limit := b.c.limits.MaxMessageBytes - wire.MessageOverhead
	if room := b.c.replyBudget / 2; room > 0 {
		limit = min(limit, room)
	}
	limit -= requestHeadroom
	// The daemon executes an operation if the results before it, as
	// large as they came out, its bound B(op) and 4 bytes for each
	// operation after it fit in its reply (section 4 of
	// docs/protocol.md). A request whose results' estimates (at least
	// refusalRoom each, and each at least 4 bytes more than the result)
	// and its largest bound fit has every operation executed: the
	// results before one and the 4 bytes of each after it are within
	// the estimates of the others.
	most := b.c.limits.MaxMessageBytes - replyHeader
	from, req, rep, spent, worst := 0, 0, 0, 0, 0
	for i := range b.ops {
		if b.ops[i] == nil { // failed on the client side already
			if from == i {
				from++
			}
			continue
		}
		s := b.sizes[i]
		est := max(s.rep, refusalRoom)
		if i > from && (req+s.req > limit || rep+s.rep > limit || spent+est+max(worst, s.bound) > most || i-from >= b.c.limits.MaxBatchOps) {
			chunks = append(chunks, chunk{from, i, rep + requestHeadroom})
			from, req, rep, spent, worst = i, 0, 0, 0, 0
		}
		req += s.req
		rep += s.rep
		spent += est
		worst = max(worst, s.bound)
	}
	if from < len(b.ops) {
		chunks = append(chunks, chunk{from, len(b.ops), rep + requestHeadroom})
	}
	return chunks
}

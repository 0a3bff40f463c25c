package server

import (
	"sync"

	"github.com/keywarden/keywarden/internal/wire"
)

// Packed runs (Op.packed): a client may send a run of encryptions,
// decryptions or MACs on one key with the same parameters as one Packed
// op, its messages back to back, instead of one Op each. The daemon takes
// it apart on arrival, before the request's checks, into exactly the
// operations it stands for, and puts their results back together just
// before the reply is encoded. Everything in between (the limit on
// operations per request, authorization, the per-key encryption budget,
// the runs of execute, metrics and the audit record) sees the same
// operations, in the same order, as if the client had sent them one by
// one: a packed run is an encoding, not a second path to keys.
//
// Taking a run apart allocates nothing per operation: the operations are
// carved from slices the packing keeps for the next request of its
// connection, and their byte fields point into the request's own bytes.

// minPackedRun is the fewest messages a packed run holds. With three or
// more, the packed result is never larger than the results it stands for
// with their framing (each entry is at most one byte longer than its
// Result, which execute's reply budget counts 4 bytes of framing for, and
// a packed result adds at most 8 bytes of its own): a request within the
// reply budget of section 4 of docs/protocol.md gets its reply.
const minPackedRun = 3

// packing is how the packed runs of one request were taken apart.
type packing struct {
	orig  []*wire.Op // the request's ops as decoded; nil when it had no packed run
	spans []packSpan

	// The operations taken apart, reused by the next request once
	// restore has given this one its ops back: the packing's own for a
	// request of at most maxKeptPacked operations, else big, borrowed
	// from bigSlabs for the request.
	packSlabs
	big *packSlabs
}

// packSlabs hold the operations a request's packed runs stand for.
type packSlabs struct {
	ops  []*wire.Op
	opv  []wire.Op
	encs []wire.Encrypt
	encW []wire.Op_Encrypt
	decs []wire.Decrypt
	decW []wire.Op_Decrypt
	macs []wire.Mac
	macW []wire.Op_Mac
}

// bigSlabs holds the structures of requests of more than maxKeptPacked
// operations between two such requests, of any connection: a connection
// keeps only a small request's, while a steady stream of large batches
// does not make them anew each time. What the pool holds is the
// garbage collector's to drop.
var bigSlabs = sync.Pool{New: func() any { return new(packSlabs) }}

// clear drops the references into a request's bytes.
func (sl *packSlabs) clear() {
	clear(sl.ops)
	clear(sl.encs)
	clear(sl.decs)
	clear(sl.macs)
}

// room returns s emptied, with room for n elements: a new slice when s
// has less, so that pointers to its elements stay valid while it fills.
func room[T any](s []T, n int) []T {
	if cap(s) < n {
		return make([]T, 0, n)
	}
	return s[:0]
}

// packSpan says that the operations [at, at+n) of the request taken apart
// came from its op orig.
type packSpan struct{ orig, at, n int }

var (
	errPackedShort = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "malformed request: a packed run needs at least %d messages", minPackedRun)
	errPackedKind  = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "malformed request: a packed run names no known operation")
	errPackedLate  = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a packed run cannot be sent this way")
	errPackedBad   = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "malformed request: a packed run's messages do not match its count")
)

// unpack replaces each Packed op of req by the operations it stands for.
// most is the most operations a request may hold, counted after taking
// runs apart. On an error req is left as it was. restore gives req its
// ops back.
func (pk *packing) unpack(req *wire.Request, most int) *wire.Error {
	pk.orig, pk.spans = nil, pk.spans[:0]
	total, packed := 0, [4]int{}
	for _, op := range req.Ops {
		p := op.GetPacked()
		if p == nil {
			total++
			continue
		}
		if p.Count < minPackedRun {
			return errPackedShort
		}
		k := int(p.Kind)
		if k <= 0 || k >= len(packed) {
			return errPackedKind
		}
		if uint64(total)+uint64(p.Count) > uint64(most) {
			return wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
				"the request's operations, packed runs counted by their messages, exceed the batch limit of %d", most)
		}
		total += int(p.Count)
		packed[k] += int(p.Count)
		// Each message takes at least a byte: a count larger than the
		// bytes is refused before anything is made for it.
		if int(p.Count) > len(p.Messages) {
			return errPackedBad
		}
	}
	if total > most {
		return wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
			"%d operations exceed the batch limit of %d", total, most)
	}
	if packed == [4]int{} {
		return nil
	}
	sl := &pk.packSlabs
	if total > maxKeptPacked {
		sl = bigSlabs.Get().(*packSlabs)
	}
	ops := room(sl.ops, total)
	opv := room(sl.opv, packed[1]+packed[2]+packed[3])
	encs := room(sl.encs, packed[wire.PackedKind_PACKED_KIND_ENCRYPT])
	encW := room(sl.encW, packed[wire.PackedKind_PACKED_KIND_ENCRYPT])
	decs := room(sl.decs, packed[wire.PackedKind_PACKED_KIND_DECRYPT])
	decW := room(sl.decW, packed[wire.PackedKind_PACKED_KIND_DECRYPT])
	macs := room(sl.macs, packed[wire.PackedKind_PACKED_KIND_MAC])
	macW := room(sl.macW, packed[wire.PackedKind_PACKED_KIND_MAC])
	// On an error below, borrowed slabs are not given back.
	spans := pk.spans[:0]
	for i, op := range req.Ops {
		p := op.GetPacked()
		if p == nil {
			ops = append(ops, op)
			continue
		}
		spans = append(spans, packSpan{orig: i, at: len(ops), n: int(p.Count)})
		// The slices have room for every operation (counted above): each
		// is lengthened and its new elements written in place, one kind
		// of operation per loop.
		b := p.Messages
		at, n := len(opv), int(p.Count)
		opv = opv[:at+n]
		ops = ops[:len(ops)+n]
		tail := ops[len(ops)-n:]
		var ok bool
		switch p.Kind {
		case wire.PackedKind_PACKED_KIND_ENCRYPT:
			k := len(encs)
			encs, encW = encs[:k+n], encW[:k+n]
			for j := range n {
				e := &encs[k+j]
				*e = wire.Encrypt{Handle: p.Handle, Aad: p.Aad, Hash: p.Hash}
				if e.Plaintext, b, ok = wire.NextPackedMessage(b); !ok {
					return errPackedBad
				}
				encW[k+j] = wire.Op_Encrypt{Encrypt: e}
				opv[at+j] = wire.Op{Op: &encW[k+j]}
				tail[j] = &opv[at+j]
			}
		case wire.PackedKind_PACKED_KIND_DECRYPT:
			k := len(decs)
			decs, decW = decs[:k+n], decW[:k+n]
			for j := range n {
				d := &decs[k+j]
				*d = wire.Decrypt{Handle: p.Handle, Aad: p.Aad, Hash: p.Hash}
				if d.Ciphertext, b, ok = wire.NextPackedMessage(b); !ok {
					return errPackedBad
				}
				decW[k+j] = wire.Op_Decrypt{Decrypt: d}
				opv[at+j] = wire.Op{Op: &decW[k+j]}
				tail[j] = &opv[at+j]
			}
		default:
			k := len(macs)
			macs, macW = macs[:k+n], macW[:k+n]
			for j := range n {
				m := &macs[k+j]
				*m = wire.Mac{Handle: p.Handle}
				if m.Data, b, ok = wire.NextPackedMessage(b); !ok {
					return errPackedBad
				}
				macW[k+j] = wire.Op_Mac{Mac: m}
				opv[at+j] = wire.Op{Op: &macW[k+j]}
				tail[j] = &opv[at+j]
			}
		}
		if len(b) != 0 {
			return errPackedBad
		}
	}
	*sl = packSlabs{ops: ops, opv: opv, encs: encs, encW: encW, decs: decs, decW: decW, macs: macs, macW: macW}
	if sl != &pk.packSlabs {
		pk.big = sl
	}
	pk.orig, pk.spans = req.Ops, spans
	req.Ops = ops
	return nil
}

// sent returns req's ops as the client sent them, each packed run one
// Packed op, while they are taken apart; else req's ops. A Packed op
// answers isHeavy and changesSeal as each operation it stands for does
// (TestPackedRunsAnswerAsOne), so that those questions of a request are
// asked of its runs rather than of each of their messages.
func (pk *packing) sent(req *wire.Request) []*wire.Op {
	if pk.orig != nil {
		return pk.orig
	}
	return req.Ops
}

// maxKeptPacked is the most operations whose structures a packing keeps
// for the next request: a run of thousands of messages costs a few
// hundred bytes of them each, which a connection must not hold on to
// after one large request (it did not pay for them with any key).
const maxKeptPacked = 256

// restore gives req back the ops it was decoded with, for recycling.
func (pk *packing) restore(req *wire.Request) {
	if pk.orig != nil {
		req.Ops = pk.orig
		pk.orig, pk.spans = nil, pk.spans[:0]
		// Nothing kept points into the request's bytes.
		pk.packSlabs.clear()
		if pk.big != nil {
			pk.big.clear()
			bigSlabs.Put(pk.big)
			pk.big = nil
		}
		pk.trim()
	}
}

// trim drops the kept structures beyond maxKeptPacked operations.
func (pk *packing) trim() {
	if cap(pk.ops) > maxKeptPacked || cap(pk.opv) > maxKeptPacked {
		pk.ops, pk.opv = nil, nil
	}
	if cap(pk.encs) > maxKeptPacked || cap(pk.encW) > maxKeptPacked {
		pk.encs, pk.encW = nil, nil
	}
	if cap(pk.decs) > maxKeptPacked || cap(pk.decW) > maxKeptPacked {
		pk.decs, pk.decW = nil, nil
	}
	if cap(pk.macs) > maxKeptPacked || cap(pk.macW) > maxKeptPacked {
		pk.macs, pk.macW = nil, nil
	}
	if cap(pk.spans) > maxKeptPacked {
		pk.spans = nil
	}
}

// pack puts the results of each packed run of rep back into one result,
// its entries carved from a: rep is then the reply to the request as the
// client sent it. A reply refusing the whole request is left as it is.
func (pk *packing) pack(rep *wire.Reply, a *arena) {
	if pk.orig == nil || rep.Status != wire.Status_STATUS_OK {
		return
	}
	total := len(pk.orig)
	for _, s := range pk.spans {
		total += s.n - 1
	}
	if len(rep.Results) != total {
		return
	}
	out := make([]*wire.Result, len(pk.orig))
	packed := make([]wire.Result, len(pk.spans))
	i, at := 0, 0 // the next result of rep and of out
	for k, s := range pk.spans {
		for ; at < s.orig; at++ {
			out[at] = rep.Results[i]
			i++
		}
		size := 0
		for _, r := range rep.Results[s.at : s.at+s.n] {
			size += wire.PackedEntryBound(len(r.GetData()) + len(r.GetMessage()))
		}
		b := a.take(size)
		for _, r := range rep.Results[s.at : s.at+s.n] {
			if r.GetStatus() == wire.Status_STATUS_OK {
				b = wire.AppendPackedEntry(b, r.GetStatus(), r.GetKeyVersion(), r.GetData())
			} else {
				b = wire.AppendPackedEntry(b, r.GetStatus(), r.GetKeyVersion(), []byte(r.GetMessage()))
			}
		}
		packed[k].Data = b
		out[at] = &packed[k]
		at++
		i = s.at + s.n
	}
	for ; at < len(out); at++ {
		out[at] = rep.Results[i]
		i++
	}
	rep.Results = out
}

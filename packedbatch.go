package keywarden

import (
	"bytes"
	"encoding/binary"

	"github.com/keywarden/keywarden/internal/wire"
)

// A daemon that says so (Limits.PackedRuns) takes a run of encryptions,
// decryptions or MACs on one key with the same parameters as one Packed
// operation: one header, then the messages back to back, and likewise
// the results. Batch.Do sends runs so. The daemon treats a packed run
// exactly as the operations it stands for: the results, the limits and
// the audit record are the same; only the encoding is smaller and cheaper
// on both sides.

// minPackedRun is the shortest run sent packed: the daemon takes none
// shorter.
const minPackedRun = 3

// packKey is what the operations of a packed run share.
type packKey struct {
	kind   wire.PackedKind
	handle uint32
	aad    []byte
	hash   wire.HashAlg
	msg    []byte
}

// maxPackedMessage is the largest message sent in a packed run. Packing
// saves the per-operation encoding of small messages; a large one gains
// nothing from it and would be copied once more (a file's chunks, for
// one, go as they are).
const maxPackedMessage = 4 << 10

func (k *packKey) sameRun(o *packKey) bool {
	return k.kind == o.kind && k.handle == o.handle && k.hash == o.hash && bytes.Equal(k.aad, o.aad)
}

// packRuns returns ops, the operations idx of the batch, with each run
// of at least minPackedRun operations that can be packed replaced by one
// Packed operation, and for each operation returned how many of ops it
// stands for; runs is nil when nothing was packed. What each operation
// shares with a run was noted when it was queued: keys[i] for the
// operation i of the batch (Batch.packs as Send found it). The
// Packed operations' messages are copied into b.packBuf, which holds them
// until the request is encoded: the caller empties it (clearPackBuf) once
// it is.
func (b *Batch) packRuns(ops []*wire.Op, idx []int, keys []packKey) (out []*wire.Op, runs []int) {
	n := len(ops)
	// Room for every message at once: packBuf is never moved while a
	// packed run points into it, nor leaves a copy behind.
	need := 0
	for _, i := range idx {
		if k := &keys[i]; k.kind != 0 {
			need += len(k.msg) + binary.MaxVarintLen64
		}
	}
	if need == 0 {
		return ops, nil
	}
	if cap(b.packBuf) < need {
		b.clearPackBuf()
		b.packBuf = make([]byte, 0, need)
	}
	for i := 0; i < n; {
		k := &keys[idx[i]]
		j := i + 1
		if k.kind != 0 {
			for j < n && k.sameRun(&keys[idx[j]]) {
				j++
			}
		}
		if j-i < minPackedRun {
			if runs != nil {
				out = append(out, ops[i:j]...)
				for range j - i {
					runs = append(runs, 1)
				}
			}
			i = j
			continue
		}
		if runs == nil {
			out, runs = carve(&b.scratchOps, n), carve(&b.scratchInts, n)
			out = append(out, ops[:i]...)
			for range i {
				runs = append(runs, 1)
			}
		}
		start := len(b.packBuf)
		for _, at := range idx[i:j] {
			b.packBuf = wire.AppendPackedMessage(b.packBuf, keys[at].msg)
		}
		buf := b.packBuf[start:len(b.packBuf):len(b.packBuf)]
		p := &wire.Packed{Kind: k.kind, Handle: k.handle, Aad: k.aad, Hash: k.hash, Count: uint32(j - i), Messages: buf}
		out = append(out, &wire.Op{Op: &wire.Op_Packed{Packed: p}})
		runs = append(runs, j-i)
		i = j
	}
	if runs == nil {
		return ops, nil
	}
	return out, runs
}

// unpackResults fills in the results res[i] of the operations idx, sent
// as packed by packRuns (runs), from rep.
func unpackResults(res []*BatchResult, rep *wire.Reply, idx, runs []int) {
	at := 0 // the next of idx
	for j, n := range runs {
		ours := idx[at : at+n]
		at += n
		if j >= len(rep.Results) {
			for _, i := range ours {
				res[i].err = &Error{Code: CodeInternal, Op: res[i].op, Message: "missing result"}
			}
			continue
		}
		rr := rep.Results[j]
		if n == 1 {
			r := res[ours[0]]
			r.err = resultErr(r.op, rr.Status, rr.Message)
			r.data = rr.GetData()
			continue
		}
		if rr.Status != wire.Status_STATUS_OK {
			for _, i := range ours {
				res[i].err = resultErr(res[i].op, rr.Status, rr.Message)
			}
			continue
		}
		data := rr.GetData()
		for _, i := range ours {
			r := res[i]
			st, _, d, rest, ok := wire.NextPackedEntry(data)
			switch {
			case !ok:
				r.err = &Error{Code: CodeInternal, Op: r.op, Message: "missing result"}
				continue
			case st == wire.Status_STATUS_OK:
				r.data, r.err = d, nil
			default:
				r.data, r.err = nil, resultErr(r.op, st, string(d))
			}
			data = rest
		}
	}
}

// clearPackBuf wipes and empties the messages packRuns copied, for the
// next request.
func (b *Batch) clearPackBuf() {
	clear(b.packBuf)
	b.packBuf = b.packBuf[:0]
}

package server

import (
	"time"

	"errors"
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/keywarden/keywarden/internal/wire"
)

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
func (ss *Session) execute(req *wire.Request, id Identity, a *arena, notes []auditNote, perOp bool) *wire.Reply {
	m := ss.s.cfg.Metrics
	if m == nil {
		return ss.executeOps(req, id, a, notes, perOp)
	}
	m.Begin()
	t := time.Now()
	rep := ss.executeOps(req, id, a, notes, perOp)
	d := time.Since(t)
	first := len(opRows)
	for i, res := range rep.Results {
		op := opIndex(req.Ops[i])
		if i == 0 {
			first = op
		}
		m.Op(op, res.Status)
	}
	m.End(first, d)
	return rep
}

// executeOps is execute without metrics.
func (ss *Session) executeOps(req *wire.Request, id Identity, a *arena, notes []auditNote, perOp bool) *wire.Reply {
	n := len(req.Ops)
	// The results are carved from a, none allocated per operation.
	results, ptrs := a.results(n)
	rep := &wire.Reply{Version: wire.ProtocolVersion, Id: req.Id, Results: ptrs}
	max := ss.s.lims().MaxMessageBytes
	budget := max - replyHeader
	size := 0
	full, gone := false, false
	for i := 0; i < n; {
		// Once the client has hung up, nothing more is done for it: its
		// remaining operations are skipped, each saying so in the audit
		// record.
		if gone = gone || ss.abandoned(id); gone {
			res := &results[i]
			res.Status, res.Message = errHungUp.Status, errHungUp.Public
			noteAt(notes, i).setErr(errHungUp)
			rep.Results[i] = res
			i++
			continue
		}
		if h := ss.s.cfg.opHook; h != nil {
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
					ss.noteBefore(req.Ops[i], &notes[i])
					for j := i + 1; j < i+run; j++ {
						notes[j].likePrev = true
					}
					rn = notes[i : i+run]
				}
				if perOp {
					ss.acct.startComputing()
				}
				ss.executeRun(req.Ops[i:i+run], id, req.Id, a, results[i:i+run], rn)
				if perOp {
					ss.acct.stopComputing()
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
			ss.acct.startComputing()
			res = ss.safeDispatch(r, op, id, req.Id, a, res, noteAt(notes, i))
			ss.acct.stopComputing()
		default:
			res = ss.safeDispatch(r, op, id, req.Id, a, res, noteAt(notes, i))
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
func (ss *Session) safeDispatch(r *opRow, op *wire.Op, id Identity, reqID uint64, a *arena, out *wire.Result, note *auditNote) (res *wire.Result) {
	defer func() {
		if p := recover(); p != nil {
			ss.log.Error("operation panicked", "request", reqID, "op", r.opName(), "panic", fmt.Sprintf("%T", p), "stack", stackWithoutArgs())
			res = &wire.Result{Status: wire.Status_STATUS_INTERNAL, Message: "internal error"}
			if note != nil {
				note.msg = "internal error: the operation panicked"
			}
		}
	}()
	if note != nil {
		ss.noteBefore(op, note)
		defer func() {
			from := note.key
			noteAfter(note, res)
			noteOrigin(note, op, res, from)
		}()
	}
	// Heavy work waits for a slot, in turn with other uids' (peruid.go).
	if class, heavy := ss.heavyClassOf(r, op); heavy {
		q := &ss.s.accts.heavy[class]
		if err := q.acquire(ss.acct, ss.ctxOf(id).Done()); err != nil {
			note.setErr(err)
			out.Status, out.Message = errConnClosing.Status, errConnClosing.Public
			return out
		}
		defer q.release(ss.acct)
		if class == heavyCPU && !ss.acct.admin {
			shortenSlice()
		}
	}
	var data []byte
	var full *wire.Result
	var err error
	if namesRegion(op) {
		data, full, err = ss.dispatchShared(r, op, id, a, out)
	} else {
		data, full, err = ss.dispatchRow(r, op, id, a, out)
	}
	if err != nil {
		note.setErr(err)
		var we *wire.Error
		if errors.As(err, &we) {
			if we.Status != wire.Status_STATUS_VERIFICATION_FAILED {
				ss.log.Info("operation refused", "request", reqID, "op", r.opName(), "uid", id.UID, "gid", id.GID, "pid", id.PID,
					"status", we.Status.String(), "reason", we.Public, "detail", we.Detail)
			}
			out.Status, out.Message = we.Status, we.Public
			return out
		}
		ss.log.Error("operation failed", "request", reqID, "op", r.opName(), "err", err)
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

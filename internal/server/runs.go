package server

import (
	"errors"
	"fmt"

	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// A run is a stretch of a batch's operations of one kind (encrypt,
// decrypt or MAC) on one handle. The daemon authorizes it once and enters
// the key's secret state once for all of it: small operations in a batch
// then pay their fixed costs once per run rather than once each.

// runKind returns the kind of op for runs, its handle and the usage it
// needs; 0 for operations that are not run, among them those naming
// regions of shared memory (shmem.go: namesRegion, asked here of the
// three kinds in the same switch).
func runKind(op *wire.Op) (kind int, h uint32, hash wire.HashAlg, need key.Usage) {
	switch o := op.GetOp().(type) {
	case *wire.Op_Encrypt:
		if e := o.Encrypt; e.Input == nil && e.Output == nil {
			return 1, e.Handle, e.Hash, key.Encrypt
		}
	case *wire.Op_Decrypt:
		if d := o.Decrypt; d.Input == nil && d.Output == nil {
			return 2, d.Handle, d.Hash, key.Decrypt
		}
	case *wire.Op_Mac:
		if m := o.Mac; m.Input == nil {
			return 3, m.Handle, 0, key.Sign
		}
	}
	return 0, 0, 0, 0
}

// runLength returns how many operations from ops[0] form a run, at most
// the given number.
func runLength(ops []*wire.Op, most int) int {
	kind, h, hash, _ := runKind(ops[0])
	if kind == 0 {
		return 1
	}
	n := 1
	for n < len(ops) && n < most {
		k2, h2, hash2, _ := runKind(ops[n])
		if k2 != kind || h2 != h || hash2 != hash {
			break
		}
		n++
	}
	return n
}

// executeRun runs ops, a run, writing a result for each into out.
// notes, if not nil, get the precise reasons of failures for the audit.
func (ss *Session) executeRun(ops []*wire.Op, id Identity, reqID uint64, a *arena, out []wire.Result, notes []auditNote) {
	defer func() {
		if p := recover(); p != nil {
			ss.log.Error("operation panicked", "request", reqID, "op", opName(ops[0]), "panic", fmt.Sprintf("%T", p), "stack", stackWithoutArgs())
			for i := range out {
				out[i].Status, out[i].Message, out[i].Data = wire.Status_STATUS_INTERNAL, "internal error", nil
				if notes != nil {
					notes[i].msg = "internal error: the operation panicked"
				}
			}
		}
	}()
	kind, h, hash, need := runKind(ops[0])
	fail := func(err error) {
		for i := range out {
			ss.setError(&out[i], ops[i], id, reqID, err, noteAt(notes, i))
		}
	}
	o, err := ss.authorized(h, id, policy.Use, need)
	if err != nil {
		fail(err)
		return
	}
	// Encryptions are counted, drawn and sealed within one generation
	// (generation.go): those a change reaches, whenever in the run, fail,
	// and those made before it stand.
	var mark genid.Mark
	if kind == 1 {
		if mark, err = ss.s.beginOnce(); err != nil {
			fail(random.ErrChangedInRun)
			return
		}
	}
	var ver uint32
	done := func(i int, data []byte, err error) {
		if kind == 1 && err == nil {
			ss.s.onceAt(stageMade)
			if !ss.s.gen.Unchanged(mark) {
				err = random.ErrChangedInRun
			}
		}
		if err != nil {
			ss.setError(&out[i], ops[i], id, reqID, err, noteAt(notes, i))
			return
		}
		out[i].Data = data
		out[i].KeyVersion = ver
	}
	var v *keystore.Version
	switch {
	case kind == 1 && o.Spec.Family == key.FamilyAES:
		v, err = ss.s.store.Encrypting(o, uint64(len(ops)))
		if errors.Is(err, keystore.ErrSpent) {
			// Under refuse-when-spent, what is left of the budget may be
			// fewer encryptions than the run's, not none: one at a time,
			// as many succeed as would alone.
			ss.executeEach(ops, id, reqID, a, out, notes)
			return
		}
		if err == nil {
			ss.s.onceAt(stageCounted)
		}
	case kind == 2 && o.Spec.Family == key.FamilyAES:
		// One version for the run, named by the first ciphertext; a run
		// that mixes versions is done one operation at a time.
		var n uint32
		if n, _, err = ctVersion(ops[0].GetDecrypt().Ciphertext); err == nil {
			for _, op := range ops[1:] {
				if n2, _, err2 := ctVersion(op.GetDecrypt().Ciphertext); err2 != nil || n2 != n {
					ss.executeEach(ops, id, reqID, a, out, notes)
					return
				}
			}
			var ok bool
			if v, ok = o.Version(n); !ok {
				err = errRetired(o, n)
			}
		}
	case kind == 2:
		ss.executeEach(ops, id, reqID, a, out, notes) // RSA: versions are tried per ciphertext
		return
	default:
		v, err = ss.current(o)
	}
	if err != nil {
		fail(err)
		return
	}
	ver = v.N
	err = o.UseVersion(v, func(m *mech.Key) error {
		switch kind {
		case 1:
			over := encryptOverhead(m)
			if m.Spec().Family == key.FamilyAES {
				over += ctHeaderLen
			}
			return m.EncryptEach(len(ops), hash, func(i int) (pt, aad, dst []byte) {
				e := ops[i].GetEncrypt()
				dst = a.take(len(e.Plaintext) + over)
				if m.Spec().Family == key.FamilyAES {
					dst = appendCTHeader(dst, v.N)
				}
				return e.Plaintext, e.Aad, dst
			}, done)
		case 2:
			return m.DecryptEach(len(ops), hash, func(i int) (ct, aad, dst []byte) {
				d := ops[i].GetDecrypt()
				return d.Ciphertext[ctHeaderLen:], d.Aad, a.take(len(d.Ciphertext))
			}, done)
		default:
			return m.MACEach(len(ops), func(i int) (data, dst []byte) {
				return ops[i].GetMac().Data, a.take(64)
			}, done)
		}
	})
	if err != nil {
		if kind == 1 && o.Spec.Family == key.FamilyAES {
			ss.s.store.Uncount(v, uint64(len(ops)))
		}
		fail(err)
	}
}

// executeEach runs ops one at a time.
func (ss *Session) executeEach(ops []*wire.Op, id Identity, reqID uint64, a *arena, out []wire.Result, notes []auditNote) {
	for i, op := range ops {
		if n := noteAt(notes, i); n != nil {
			// Each operation is noted on its own here: a run that falls
			// back to one at a time may mix key versions.
			n.likePrev = false
		}
		if ss.abandoned(id) {
			// RSA decryptions take long: a client that hung up waits for
			// none of them (see execute).
			for j := i; j < len(ops); j++ {
				out[j].Status, out[j].Message, out[j].Data = errHungUp.Status, errHungUp.Public, nil
				noteAt(notes, j).setErr(errHungUp)
			}
			return
		}
		// Encrypt, decrypt and MAC set only these fields.
		if r := ss.safeDispatch(rowOf(op), op, id, reqID, a, &out[i], noteAt(notes, i)); r != &out[i] {
			out[i].Status, out[i].Message, out[i].Data, out[i].KeyVersion = r.Status, r.Message, r.Data, r.KeyVersion
		}
	}
}

// setError writes err into res as safeDispatch would, logging refusals.
func (ss *Session) setError(res *wire.Result, op *wire.Op, id Identity, reqID uint64, err error, note *auditNote) {
	note.setErr(err)
	var we *wire.Error
	if errors.As(err, &we) {
		if we.Status != wire.Status_STATUS_VERIFICATION_FAILED {
			ss.log.Info("operation refused", "request", reqID, "op", opName(op), "uid", id.UID, "gid", id.GID, "pid", id.PID,
				"status", we.Status.String(), "reason", we.Public, "detail", we.Detail)
		}
		res.Status, res.Message, res.Data = we.Status, we.Public, nil
		return
	}
	ss.log.Error("operation failed", "request", reqID, "op", opName(op), "err", err)
	res.Status, res.Message, res.Data = wire.Status_STATUS_INTERNAL, "internal error", nil
}

// noteAt is the audit note of operation i, or nil when nothing is audited.
func noteAt(notes []auditNote, i int) *auditNote {
	if notes == nil {
		return nil
	}
	return &notes[i]
}

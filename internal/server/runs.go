package server

import (
	"errors"
	"fmt"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// A run is a stretch of a batch's operations of one kind (encrypt,
// decrypt or MAC) on one handle. The daemon authorizes it once and enters
// the key's secret state once for all of it: small operations in a batch
// then pay their fixed costs once per run rather than once each.

// runKind returns the kind of op for runs, its handle and the usage it
// needs; 0 for operations that are not run.
func runKind(op *wire.Op) (kind int, h uint32, hash wire.HashAlg, need key.Usage) {
	switch o := op.GetOp().(type) {
	case *wire.Op_Encrypt:
		return 1, o.Encrypt.Handle, o.Encrypt.Hash, key.Encrypt
	case *wire.Op_Decrypt:
		return 2, o.Decrypt.Handle, o.Decrypt.Hash, key.Decrypt
	case *wire.Op_Mac:
		return 3, o.Mac.Handle, 0, key.Sign
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
func (cn *conn) executeRun(ops []*wire.Op, id Identity, reqID uint64, a *arena, out []wire.Result) {
	defer func() {
		if p := recover(); p != nil {
			cn.log.Error("operation panicked", "request", reqID, "op", opName(ops[0]), "panic", fmt.Sprintf("%T", p), "stack", stackWithoutArgs())
			for i := range out {
				out[i].Status, out[i].Message, out[i].Data = wire.Status_STATUS_INTERNAL, "internal error", nil
			}
		}
	}()
	kind, h, hash, need := runKind(ops[0])
	fail := func(err error) {
		for i := range out {
			cn.setError(&out[i], ops[i], id, reqID, err)
		}
	}
	o, err := cn.authorized(h, id, policy.Use, need)
	if err != nil {
		fail(err)
		return
	}
	done := func(i int, data []byte, err error) {
		if err != nil {
			cn.setError(&out[i], ops[i], id, reqID, err)
			return
		}
		out[i].Data = data
	}
	err = o.Use(func(m *mech.Key) error {
		switch kind {
		case 1:
			over := encryptOverhead(m)
			return m.EncryptEach(len(ops), hash, func(i int) (pt, aad, dst []byte) {
				e := ops[i].GetEncrypt()
				return e.Plaintext, e.Aad, a.take(len(e.Plaintext) + over)
			}, done)
		case 2:
			return m.DecryptEach(len(ops), hash, func(i int) (ct, aad, dst []byte) {
				d := ops[i].GetDecrypt()
				return d.Ciphertext, d.Aad, a.take(len(d.Ciphertext))
			}, done)
		default:
			return m.MACEach(len(ops), func(i int) (data, dst []byte) {
				return ops[i].GetMac().Data, a.take(64)
			}, done)
		}
	})
	if err != nil {
		fail(err)
	}
}

// setError writes err into res as safeDispatch would, logging refusals.
func (cn *conn) setError(res *wire.Result, op *wire.Op, id Identity, reqID uint64, err error) {
	var we *wire.Error
	if errors.As(err, &we) {
		if we.Status != wire.Status_STATUS_VERIFICATION_FAILED {
			cn.log.Info("operation refused", "request", reqID, "op", opName(op), "uid", id.UID, "gid", id.GID, "pid", id.PID,
				"status", we.Status.String(), "reason", we.Public, "detail", we.Detail)
		}
		res.Status, res.Message, res.Data = we.Status, we.Public, nil
		return
	}
	cn.log.Error("operation failed", "request", reqID, "op", opName(op), "err", err)
	res.Status, res.Message, res.Data = wire.Status_STATUS_INTERNAL, "internal error", nil
}

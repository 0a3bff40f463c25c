package p11front

import (
	"crypto/ecdsa"

	"github.com/keywarden/keywarden/internal/wire"
)

// Multi-part operations run over the core's streaming sessions where the
// mechanism hashes the message itself (digests, HMAC, ECDSA with a hash,
// RSA with a hash): each C_*Update is one update of the stream, of any
// total size. The others (pure EdDSA, which needs the whole message,
// and the mechanisms whose data is a digest) collect their parts, up to
// maxBody.

// streamChunk bounds the data of one update sent to the core: well
// inside the smallest message limit a daemon may be given (64 KiB).
const streamChunk = 60 << 10

// streamKind is the core's streaming session for op, if it has one.
func streamKind(op *operation) (wire.SessionKind, wire.HashAlg, wire.Padding, bool) {
	m := op.mech
	switch op.kind {
	case opDigest:
		h, _ := digestHash(m.typ)
		return wire.SessionKind_SESSION_KIND_HASH, h, 0, true
	case opSign, opVerify:
		sign := op.kind == opSign
		if hmacMech(m.typ) {
			if sign {
				return wire.SessionKind_SESSION_KIND_MAC, 0, 0, true
			}
			return wire.SessionKind_SESSION_KIND_MAC_VERIFY, 0, 0, true
		}
		kind := wire.SessionKind_SESSION_KIND_VERIFY
		if sign {
			kind = wire.SessionKind_SESSION_KIND_SIGN
		}
		switch m.typ {
		case ckmECDSASHA256, ckmECDSASHA384, ckmECDSASHA512, ckmSHA256RSAPKCS, ckmSHA384RSAPKCS, ckmSHA512RSAPKCS,
			ckmSHA256RSAPKCSPSS, ckmSHA384RSAPKCSPSS, ckmSHA512RSAPKCSPSS:
			sg, rv := signParams(op, nil)
			if rv != ckrOK {
				return 0, 0, 0, false
			}
			return kind, sg.Hash, sg.Padding, true
		}
	}
	return 0, 0, 0, false
}

// update adds data to op: through its stream where it has one (opened on
// the first update), else to the parts collected.
func (c *conn) update(slot **operation, data []byte) uint64 {
	sent := false
	op := *slot
	if op == nil {
		return ckrOperationNotInitialized
	}
	if op.done {
		c.abort(slot)
		return ckrOperationActive
	}
	if op.stream == 0 && len(op.data) == 0 {
		if kind, h, p, ok := streamKind(op); ok {
			so := &wire.SessionOpen{Kind: kind, Hash: h, Padding: p}
			if op.key != nil {
				kh, err := c.open(op.key)
				if err != nil {
					c.abort(slot)
					return rvOf(err, ckrKeyFunctionNotPermitted)
				}
				so.Handle = kh
			}
			r, err := c.do(&wire.Op{Op: &wire.Op_SessionOpen{SessionOpen: so}})
			if err != nil {
				c.abort(slot)
				return rvOf(err, ckrKeyFunctionNotPermitted)
			}
			op.stream = r.GetSession().GetSession()
		}
	}
	if op.stream != 0 {
		// In pieces that fit in one request of the core's.
		for len(data) > 0 || !sent {
			n := min(len(data), streamChunk)
			if _, err := c.do(&wire.Op{Op: &wire.Op_SessionUpdate{SessionUpdate: &wire.SessionUpdate{Session: op.stream, Data: data[:n]}}}); err != nil {
				c.abort(slot)
				return rvOf(err, ckrFunctionFailed)
			}
			data, sent = data[n:], true
		}
		return ckrOK
	}
	if len(op.data)+len(data) > maxBody {
		c.abort(slot)
		return ckrDataLenRange
	}
	if c.collected()+len(data) > maxCollected {
		c.abort(slot)
		return ckrDeviceMemory
	}
	op.data = append(op.data, data...)
	return ckrOK
}

// maxCollected bounds what the operations of all the sessions of one
// connection hold together: the parts they collect and the results they
// keep for a next call (after a length query). One operation may collect
// up to maxBody, but not each of the operations of every session.
const maxCollected = maxBody

// collected is what the operations of the connection's sessions hold:
// parts collected, and results kept.
func (c *conn) collected() int {
	n := 0
	for _, s := range c.sessions {
		for _, op := range []*operation{s.sign, s.verify, s.encrypt, s.decrypt, s.digest} {
			if op != nil {
				n += len(op.data) + len(op.result)
			}
		}
	}
	return n
}

// finish ends op's stream with sig (for a verification) and returns what
// the core made: the digest, tag or signature in PKCS #11's form.
func (c *conn) finish(op *operation, sig []byte) ([]byte, uint64) {
	sid := op.stream
	op.stream = 0
	if pub, ok := op.key.pubECDSA(); ok && op.kind == opVerify {
		der, rv := ecdsaDER(sig, pub)
		if rv != ckrOK {
			c.do(&wire.Op{Op: &wire.Op_SessionAbort{SessionAbort: &wire.SessionAbort{Session: sid}}})
			return nil, rv
		}
		sig = der
	}
	r, err := c.do(&wire.Op{Op: &wire.Op_SessionFinal{SessionFinal: &wire.SessionFinal{Session: sid, Signature: sig}}})
	if err != nil {
		return nil, rvOf(err, ckrKeyFunctionNotPermitted)
	}
	if _, ok := op.key.pubECDSA(); ok && op.kind == opSign {
		return ecdsaRaw(r.Data, op.key)
	}
	return r.Data, ckrOK
}

// abort ends the operation in slot, and its stream if it has one.
func (c *conn) abort(slot **operation) {
	op := *slot
	*slot = nil
	if op == nil {
		return
	}
	clear(op.data)
	if op.stream != 0 {
		c.do(&wire.Op{Op: &wire.Op_SessionAbort{SessionAbort: &wire.SessionAbort{Session: op.stream}}})
	}
}

// abortAll ends every operation of s.
func (c *conn) abortAll(s *session) {
	for _, kind := range []int{opSign, opVerify, opEncrypt, opDecrypt, opDigest} {
		c.abort(s.slotOf(kind))
	}
}

// pubECDSA is ks's ECDSA public key, if it is one (nil ks: none).
func (ks *keyState) pubECDSA() (*ecdsa.PublicKey, bool) {
	if ks == nil {
		return nil, false
	}
	pub, ok := ks.pub.(*ecdsa.PublicKey)
	return pub, ok
}

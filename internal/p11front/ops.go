package p11front

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"encoding/asn1"
	"math/big"

	"github.com/keywarden/keywarden/internal/wire"
)

// The kinds of operation a session runs.
const (
	opSign = iota
	opVerify
	opEncrypt
	opDecrypt
	opDigest
)

var opNames = [...]string{"sign", "verify", "encrypt", "decrypt", "hash"}

// operation is an operation in progress on a session: its mechanism and
// key, the data of C_*Update calls so far (sent to the core in one
// request at the end, at most maxBody bytes), and a result computed for
// a length query or a buffer too small, kept until the client takes it.
type operation struct {
	kind   int
	mech   mechanism
	key    *keyState
	data   []byte
	result []byte
	done   bool   // result is final
	stream uint32 // the core's streaming session, once opened (stream.go)
}

// slotOf returns the operation slot of kind on s.
func (s *session) slotOf(kind int) **operation {
	switch kind {
	case opSign:
		return &s.sign
	case opVerify:
		return &s.verify
	case opEncrypt:
		return &s.encrypt
	case opDecrypt:
		return &s.decrypt
	}
	return &s.digest
}

// mechInfo is a mechanism the front offers: key sizes (bits, or bytes
// for secret keys, as PKCS #11 has it) and flags.
type mechInfo struct {
	min, max, flags uint64
}

const ecFlags = ckfMechECFp | ckfMechECNamedCurve | ckfMechECUncompress

// mechanisms are the mechanisms the daemon offers through the front.
// Everything else is CKR_MECHANISM_INVALID: nothing falls back.
var mechanisms = map[uint64]mechInfo{
	ckmSHA256:            {0, 0, ckfMechDigest},
	ckmSHA384:            {0, 0, ckfMechDigest},
	ckmSHA512:            {0, 0, ckfMechDigest},
	ckmSHA3256:           {0, 0, ckfMechDigest},
	ckmSHA3512:           {0, 0, ckfMechDigest},
	ckmSHA256HMAC:        {32, 32, ckfMechSign | ckfMechVerify},
	ckmSHA384HMAC:        {48, 48, ckfMechSign | ckfMechVerify},
	ckmSHA512HMAC:        {64, 64, ckfMechSign | ckfMechVerify},
	ckmECDSA:             {256, 384, ckfMechSign | ckfMechVerify | ecFlags},
	ckmECDSASHA256:       {256, 384, ckfMechSign | ckfMechVerify | ecFlags},
	ckmECDSASHA384:       {256, 384, ckfMechSign | ckfMechVerify | ecFlags},
	ckmECDSASHA512:       {256, 384, ckfMechSign | ckfMechVerify | ecFlags},
	ckmEDDSA:             {255, 255, ckfMechSign | ckfMechVerify},
	ckmRSAPKCS:           {2048, 4096, ckfMechSign | ckfMechVerify},
	ckmSHA256RSAPKCS:     {2048, 4096, ckfMechSign | ckfMechVerify},
	ckmSHA384RSAPKCS:     {2048, 4096, ckfMechSign | ckfMechVerify},
	ckmSHA512RSAPKCS:     {2048, 4096, ckfMechSign | ckfMechVerify},
	ckmRSAPKCSPSS:        {2048, 4096, ckfMechSign | ckfMechVerify},
	ckmSHA256RSAPKCSPSS:  {2048, 4096, ckfMechSign | ckfMechVerify},
	ckmSHA384RSAPKCSPSS:  {2048, 4096, ckfMechSign | ckfMechVerify},
	ckmSHA512RSAPKCSPSS:  {2048, 4096, ckfMechSign | ckfMechVerify},
	ckmRSAPKCSOAEP:       {2048, 4096, ckfMechEncrypt | ckfMechDecrypt},
	ckmAESGCM:            {32, 32, ckfMechEncrypt | ckfMechDecrypt},
	ckmAESKeyGen:         {32, 32, ckfMechGenerate},
	ckmGenericSecretGen:  {32, 64, ckfMechGenerate},
	ckmECKeyPairGen:      {256, 384, ckfMechGenerateKeyPair | ecFlags},
	ckmECEdwardsGen:      {255, 255, ckfMechGenerateKeyPair},
	ckmECMontgomeryGen:   {255, 255, ckfMechGenerateKeyPair},
	ckmRSAPKCSKeyPairGen: {2048, 4096, ckfMechGenerateKeyPair},
	ckmAESKeyWrap:        {32, 32, ckfMechWrap | ckfMechUnwrap},
	ckmAESKeyWrapPad:     {32, 32, ckfMechWrap | ckfMechUnwrap},
	ckmRSAAESKeyWrap:     {2048, 4096, ckfMechWrap | ckfMechUnwrap},
	ckmHKDFDerive:        {32, 64, ckfMechDerive},
	ckmECDH1Derive:       {255, 384, ckfMechDerive | ecFlags},
}

func (c *conn) cGetMechanismList(d *decoder, e *encoder) uint64 {
	rv := c.slot(d)
	room := d.Buffer("u")
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if int(room) < len(mechanisms) {
		e.Ulongs(nil, len(mechanisms)) // the length only (see give)
		return ckrOK
	}
	out := make([]uint64, 0, len(mechanisms))
	for m := range mechanisms {
		out = append(out, m)
	}
	sortHandles(out)
	e.Ulongs(out, len(out))
	return ckrOK
}

func (c *conn) cGetMechanismInfo(d *decoder, e *encoder) uint64 {
	rv := c.slot(d)
	m := d.Ulong()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	mi, ok := mechanisms[m]
	if !ok {
		return ckrMechanismInvalid
	}
	e.Ulong(mi.min)
	e.Ulong(mi.max)
	e.Ulong(mi.flags)
	return ckrOK
}

// mechNone is how keywarden's module sends a C_*Init's NULL_PTR
// mechanism (the type 0xffffffff, no parameter, and the key handle 0
// where the call takes a key; with a key it is a mechanism not offered,
// as a program may send it through p11-kit's own client): PKCS #11 3.0
// ends the active operation of that kind, if there is one, and starts
// none. The module sends it too to end an operation in the daemon when
// it refuses a call of the operation itself, without sending it
// (docs/pkcs11.md).
const mechNone = 0xffffffff

// refused ends the operation of kind on the session of handle h, if
// there is one, after a call of it that did not decode: a call that
// fails ends its operation, whatever the failure.
func (c *conn) refused(h uint64, kind int) uint64 {
	if s, rv := c.session(h); rv == ckrOK {
		c.abort(s.slotOf(kind))
	}
	return rvParse
}

// opInit is C_{Sign,Verify,Encrypt,Decrypt}Init.
func opInit(kind int) handler {
	return func(c *conn, d *decoder, e *encoder) uint64 {
		s, rv := c.session(d.Ulong())
		m := d.Mechanism()
		oh := d.Ulong()
		if d.done() != nil {
			return rvParse
		}
		if rv != ckrOK {
			return rv
		}
		slot := s.slotOf(kind)
		if m.typ == mechNone && !m.hasParam && oh == 0 {
			c.abort(slot)
			return ckrOK
		}
		if *slot != nil {
			return ckrOperationActive
		}
		o, rv := c.object(oh)
		if rv != ckrOK {
			return ckrKeyHandleInvalid
		}
		if rv := checkMechanism(kind, m, o); rv != ckrOK {
			return rv
		}
		*slot = &operation{kind: kind, mech: m, key: o.key}
		return ckrOK
	}
}

func (c *conn) cDigestInit(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	m := d.Mechanism()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if m.typ == mechNone && !m.hasParam {
		c.abort(&s.digest)
		return ckrOK
	}
	if s.digest != nil {
		return ckrOperationActive
	}
	if _, ok := digestHash(m.typ); !ok || m.hasParam {
		return ckrMechanismInvalid
	}
	s.digest = &operation{kind: opDigest, mech: m}
	return ckrOK
}

// cDigestKey: digesting a key's value is not offered. As every call of
// an operation that fails, it ends the digest.
func (c *conn) cDigestKey(d *decoder, e *encoder) uint64 {
	sh := d.Ulong()
	d.Ulong()
	if d.done() != nil {
		return c.refused(sh, opDigest)
	}
	s, rv := c.session(sh)
	if rv != ckrOK {
		return rv
	}
	if s.digest == nil {
		return ckrOperationNotInitialized
	}
	c.abort(&s.digest)
	return ckrFunctionNotSupported
}

// checkMechanism checks that m may run kind with o.
func checkMechanism(kind int, m mechanism, o *object) uint64 {
	mi, ok := mechanisms[m.typ]
	if !ok {
		return ckrMechanismInvalid
	}
	need := map[int]uint64{opSign: ckfMechSign, opVerify: ckfMechVerify, opEncrypt: ckfMechEncrypt, opDecrypt: ckfMechDecrypt}[kind]
	if mi.flags&need == 0 {
		return ckrMechanismInvalid
	}
	if kind == opSign || kind == opDecrypt {
		if o.class == ckoPublicKey {
			return ckrKeyTypeInconsistent
		}
	}
	t := o.key.info.Type
	switch m.typ {
	case ckmSHA256HMAC:
		return want(t == wire.KeyType_KEY_TYPE_HMAC_SHA256)
	case ckmSHA384HMAC:
		return want(t == wire.KeyType_KEY_TYPE_HMAC_SHA384)
	case ckmSHA512HMAC:
		return want(t == wire.KeyType_KEY_TYPE_HMAC_SHA512)
	case ckmECDSA, ckmECDSASHA256, ckmECDSASHA384, ckmECDSASHA512:
		return want(t == wire.KeyType_KEY_TYPE_ECDSA_P256 || t == wire.KeyType_KEY_TYPE_ECDSA_P384)
	case ckmEDDSA:
		if len(m.param) > 0 {
			return ckrMechanismParamInvalid // Ed25519ph and contexts are not offered
		}
		return want(t == wire.KeyType_KEY_TYPE_ED25519)
	case ckmAESGCM:
		if len(m.param) > 0 && !allZero(m.param) || m.hashAlg != 128 && m.hasParam {
			// The daemon chooses every nonce (docs/pkcs11.md): an IV the
			// caller chose is refused, not silently replaced.
			return ckrMechanismParamInvalid
		}
		return want(t == wire.KeyType_KEY_TYPE_AES256_GCM)
	case ckmRSAPKCSOAEP:
		if _, ok := oaepHash(m); !ok {
			return ckrMechanismParamInvalid
		}
		return want(isRSA(t))
	case ckmRSAPKCSPSS, ckmSHA256RSAPKCSPSS, ckmSHA384RSAPKCSPSS, ckmSHA512RSAPKCSPSS:
		if _, ok := pssHash(m); !ok {
			return ckrMechanismParamInvalid
		}
		return want(isRSA(t))
	default:
		return want(isRSA(t))
	}
}

func want(ok bool) uint64 {
	if ok {
		return ckrOK
	}
	return ckrKeyTypeInconsistent
}

func isRSA(t wire.KeyType) bool {
	return t == wire.KeyType_KEY_TYPE_RSA_2048 || t == wire.KeyType_KEY_TYPE_RSA_3072 || t == wire.KeyType_KEY_TYPE_RSA_4096
}

func allZero(b []byte) bool {
	for _, x := range b {
		if x != 0 {
			return false
		}
	}
	return true
}

func digestHash(m uint64) (wire.HashAlg, bool) {
	switch m {
	case ckmSHA256:
		return wire.HashAlg_HASH_ALG_SHA256, true
	case ckmSHA384:
		return wire.HashAlg_HASH_ALG_SHA384, true
	case ckmSHA512:
		return wire.HashAlg_HASH_ALG_SHA512, true
	case ckmSHA3256:
		return wire.HashAlg_HASH_ALG_SHA3_256, true
	case ckmSHA3512:
		return wire.HashAlg_HASH_ALG_SHA3_512, true
	}
	return 0, false
}

// mgfOf is the MGF1 function that goes with a hash.
var mgfOf = map[wire.HashAlg]uint64{
	wire.HashAlg_HASH_ALG_SHA256: ckgMGF1SHA256,
	wire.HashAlg_HASH_ALG_SHA384: ckgMGF1SHA384,
	wire.HashAlg_HASH_ALG_SHA512: ckgMGF1SHA512,
}

var hashSize = map[wire.HashAlg]uint64{
	wire.HashAlg_HASH_ALG_SHA256: 32, wire.HashAlg_HASH_ALG_SHA384: 48, wire.HashAlg_HASH_ALG_SHA512: 64,
}

// pssHash is the hash of an RSA-PSS mechanism, if its parameters are
// ones the daemon signs with: MGF1 with the same hash, and a salt as
// long as the hash.
func pssHash(m mechanism) (wire.HashAlg, bool) {
	if !m.hasParam {
		return 0, false
	}
	h, ok := digestHash(m.hashAlg)
	if !ok || mgfOf[h] != m.mgf || hashSize[h] != m.extra {
		return 0, false
	}
	switch m.typ {
	case ckmSHA256RSAPKCSPSS:
		ok = h == wire.HashAlg_HASH_ALG_SHA256
	case ckmSHA384RSAPKCSPSS:
		ok = h == wire.HashAlg_HASH_ALG_SHA384
	case ckmSHA512RSAPKCSPSS:
		ok = h == wire.HashAlg_HASH_ALG_SHA512
	}
	return h, ok
}

// oaepHash is the hash of an RSA-OAEP mechanism: MGF1 with the same
// hash, and no label.
func oaepHash(m mechanism) (wire.HashAlg, bool) {
	if !m.hasParam {
		return 0, false
	}
	h, ok := digestHash(m.hashAlg)
	if !ok || mgfOf[h] != m.mgf || len(m.source) != 0 {
		return 0, false
	}
	return h, true
}

// opOneShot is C_Sign, C_Encrypt, C_Decrypt and C_Digest.
func opOneShot(kind int) handler {
	return func(c *conn, d *decoder, e *encoder) uint64 {
		sh := d.Ulong()
		s, rv := c.session(sh)
		data := d.Bytes()
		room := d.Buffer("y")
		if d.done() != nil {
			return c.refused(sh, kind)
		}
		if rv != ckrOK {
			return rv
		}
		slot := s.slotOf(kind)
		op := *slot
		if op == nil {
			return ckrOperationNotInitialized
		}
		if !op.done {
			if len(op.data) > 0 || op.stream != 0 {
				c.abort(slot)
				return ckrOperationActive // a multi-part operation is under way
			}
			var out []byte
			if _, _, _, ok := streamKind(op); ok && len(data) > streamChunk {
				// More than one request of the core's carries: a stream.
				if rv := c.update(slot, data); rv != ckrOK {
					return rv
				}
				out, rv = c.finish(op, nil)
			} else if c.mayDefer(op, data) {
				if rv := c.deferCall(sh, slot, op, data, room, e); rv != rvDeferred {
					c.abort(slot)
					return rv
				}
				return rvDeferred
			} else {
				out, rv = c.run(op, data)
			}
			if rv != ckrOK {
				c.abort(slot)
				return rv
			}
			op.result, op.done = out, true
		}
		return c.give(slot, op, room, e)
	}
}

// give answers with op's result: its length for a length query or a
// buffer too small (the operation stays, as PKCS #11 says), else the
// result, which ends the operation.
func (c *conn) give(slot **operation, op *operation, room uint32, e *encoder) uint64 {
	if int(room) < len(op.result) {
		// The result is kept for the next call, within what the
		// connection may hold (it counts itself, being in slot).
		if c.collected() > maxCollected {
			clear(op.result)
			c.abort(slot)
			return ckrDeviceMemory
		}
		// Only the length, with CKR_OK on the wire as p11-kit's server
		// does: the client returns CKR_BUFFER_TOO_SMALL to a caller
		// whose buffer was too small, CKR_OK to a length query.
		e.Bytes(nil, len(op.result))
		return ckrOK
	}
	e.Bytes(op.result, len(op.result))
	clear(op.result) // it may be plaintext
	*slot = nil
	return ckrOK
}

// opUpdate is C_{Sign,Verify,Digest}Update: the data is kept until the
// final call.
func opUpdate(kind int) handler {
	return func(c *conn, d *decoder, e *encoder) uint64 {
		sh := d.Ulong()
		s, rv := c.session(sh)
		data := d.Bytes()
		if d.done() != nil {
			return c.refused(sh, kind)
		}
		if rv != ckrOK {
			return rv
		}
		return c.update(s.slotOf(kind), data)
	}
}

// opUpdateOut is C_{Encrypt,Decrypt}Update: the data is kept, and the
// whole output comes from the final call (AES-GCM authenticates the
// whole message before releasing any of it).
func opUpdateOut(kind int) handler {
	return func(c *conn, d *decoder, e *encoder) uint64 {
		sh := d.Ulong()
		s, rv := c.session(sh)
		data := d.Bytes()
		d.Buffer("y")
		if d.done() != nil {
			return c.refused(sh, kind)
		}
		if rv != ckrOK {
			return rv
		}
		if rv := c.update(s.slotOf(kind), data); rv != ckrOK {
			return rv
		}
		e.Bytes([]byte{}, 0)
		return ckrOK
	}
}

// opFinal is C_{Sign,Encrypt,Decrypt,Digest}Final.
func opFinal(kind int) handler {
	return func(c *conn, d *decoder, e *encoder) uint64 {
		sh := d.Ulong()
		s, rv := c.session(sh)
		room := d.Buffer("y")
		if d.done() != nil {
			return c.refused(sh, kind)
		}
		if rv != ckrOK {
			return rv
		}
		slot := s.slotOf(kind)
		op := *slot
		if op == nil {
			return ckrOperationNotInitialized
		}
		if !op.done {
			var out []byte
			if op.stream != 0 {
				out, rv = c.finish(op, nil)
			} else {
				out, rv = c.run(op, op.data)
			}
			clear(op.data)
			op.data = nil
			if rv != ckrOK {
				c.abort(slot)
				return rv
			}
			op.result, op.done = out, true
		}
		return c.give(slot, op, room, e)
	}
}

func (c *conn) cVerify(d *decoder, e *encoder) uint64 {
	sh := d.Ulong()
	s, rv := c.session(sh)
	data := d.Bytes()
	sig := d.Bytes()
	if d.done() != nil {
		return c.refused(sh, opVerify)
	}
	if rv != ckrOK {
		return rv
	}
	op := s.verify
	if op == nil {
		return ckrOperationNotInitialized
	}
	if len(op.data) > 0 || op.stream != 0 {
		c.abort(&s.verify)
		return ckrOperationActive
	}
	s.verify = nil
	return c.verify(op, data, sig)
}

func (c *conn) cVerifyFinal(d *decoder, e *encoder) uint64 {
	sh := d.Ulong()
	s, rv := c.session(sh)
	sig := d.Bytes()
	if d.done() != nil {
		return c.refused(sh, opVerify)
	}
	if rv != ckrOK {
		return rv
	}
	op := s.verify
	if op == nil {
		return ckrOperationNotInitialized
	}
	s.verify = nil
	if op.stream != 0 {
		_, rv := c.finish(op, sig) // a signature that does not verify: CKR_SIGNATURE_INVALID
		return rv
	}
	return c.verify(op, op.data, sig)
}

// run performs op on data through the core.
func (c *conn) run(op *operation, data []byte) ([]byte, uint64) {
	wop, rv := c.prepare(op, data)
	if rv != ckrOK {
		return nil, rv
	}
	r, err := c.do(wop)
	return resultOf(op, r, err)
}

// prepare is the core's operation that runs op over data, opening its
// key first if the connection has not yet.
func (c *conn) prepare(op *operation, data []byte) (*wire.Op, uint64) {
	if op.kind == opDigest {
		h, _ := digestHash(op.mech.typ)
		return &wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: h, Data: data}}}, ckrOK
	}
	h, err := c.open(op.key)
	if err != nil {
		return nil, rvOf(err, ckrKeyFunctionNotPermitted)
	}
	switch op.kind {
	case opSign:
		if hmacMech(op.mech.typ) {
			return &wire.Op{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: h, Data: data}}}, ckrOK
		}
		sg, rv := signParams(op, data)
		if rv != ckrOK {
			return nil, rv
		}
		sg.Handle = h
		return &wire.Op{Op: &wire.Op_Sign{Sign: sg}}, ckrOK
	case opEncrypt:
		en := &wire.Encrypt{Handle: h, Plaintext: data}
		if op.mech.typ == ckmAESGCM {
			en.Aad = op.mech.source
		} else {
			en.Hash, _ = oaepHash(op.mech)
		}
		return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: en}}, ckrOK
	case opDecrypt:
		de := &wire.Decrypt{Handle: h, Ciphertext: data}
		if op.mech.typ == ckmAESGCM {
			de.Aad = op.mech.source
		} else {
			de.Hash, _ = oaepHash(op.mech)
		}
		return &wire.Op{Op: &wire.Op_Decrypt{Decrypt: de}}, ckrOK
	}
	return nil, ckrGeneralError
}

// resultOf is op's result from the core's result r, or from err, the
// failure of the core's operation that prepare made.
func resultOf(op *operation, r *wire.Result, err error) ([]byte, uint64) {
	if err != nil {
		switch op.kind {
		case opDigest:
			return nil, rvOf(err, ckrFunctionFailed)
		case opDecrypt:
			if st := statusOf(err); st == wire.Status_STATUS_VERIFICATION_FAILED || st == wire.Status_STATUS_INVALID_ARGUMENT {
				return nil, ckrEncryptedDataInvalid
			}
		}
		return nil, rvOf(err, ckrKeyFunctionNotPermitted)
	}
	if op.kind == opSign && !hmacMech(op.mech.typ) {
		if _, ok := op.key.pub.(*ecdsa.PublicKey); ok {
			return ecdsaRaw(r.Data, op.key)
		}
	}
	return r.Data, ckrOK
}

func hmacMech(m uint64) bool {
	return m == ckmSHA256HMAC || m == ckmSHA384HMAC || m == ckmSHA512HMAC
}

// verify checks sig over data through the core.
func (c *conn) verify(op *operation, data, sig []byte) uint64 {
	h, err := c.open(op.key)
	if err != nil {
		return rvOf(err, ckrKeyFunctionNotPermitted)
	}
	if hmacMech(op.mech.typ) {
		_, err := c.do(&wire.Op{Op: &wire.Op_MacVerify{MacVerify: &wire.MacVerify{Handle: h, Data: data, Tag: sig}}})
		if err != nil {
			return rvOf(err, ckrKeyFunctionNotPermitted)
		}
		return ckrOK
	}
	sg, rv := signParams(op, data)
	if rv != ckrOK {
		return rv
	}
	if pub, ok := op.key.pub.(*ecdsa.PublicKey); ok {
		der, rv := ecdsaDER(sig, pub)
		if rv != ckrOK {
			return rv
		}
		sig = der
	}
	if _, ok := op.key.pub.(ed25519.PublicKey); ok && len(sig) != ed25519.SignatureSize {
		return ckrSignatureLenRange
	}
	if pub, ok := op.key.pub.(*rsa.PublicKey); ok && len(sig) != pub.Size() {
		return ckrSignatureLenRange
	}
	_, err = c.do(&wire.Op{Op: &wire.Op_Verify{Verify: &wire.Verify{Handle: h, Data: sg.Data, Prehashed: sg.Prehashed,
		Hash: sg.Hash, Padding: sg.Padding, Signature: sig}}})
	if err != nil {
		return rvOf(err, ckrKeyFunctionNotPermitted)
	}
	return ckrOK
}

// digestInfo prefixes of PKCS #1 v1.5 signatures (RFC 8017, 9.2).
var digestInfo = map[wire.HashAlg][]byte{
	wire.HashAlg_HASH_ALG_SHA256: {0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05, 0x00, 0x04, 0x20},
	wire.HashAlg_HASH_ALG_SHA384: {0x30, 0x41, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05, 0x00, 0x04, 0x30},
	wire.HashAlg_HASH_ALG_SHA512: {0x30, 0x51, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x03, 0x05, 0x00, 0x04, 0x40},
}

// signParams is the core's sign operation (without its handle) for op
// over data.
func signParams(op *operation, data []byte) (*wire.Sign, uint64) {
	sg := &wire.Sign{Data: data}
	switch op.mech.typ {
	case ckmEDDSA:
	case ckmECDSA:
		// The data is a digest: its length says which.
		switch len(data) {
		case 32:
			sg.Hash = wire.HashAlg_HASH_ALG_SHA256
		case 48:
			sg.Hash = wire.HashAlg_HASH_ALG_SHA384
		case 64:
			sg.Hash = wire.HashAlg_HASH_ALG_SHA512
		default:
			return nil, ckrDataLenRange
		}
		sg.Prehashed = true
	case ckmECDSASHA256:
		sg.Hash = wire.HashAlg_HASH_ALG_SHA256
	case ckmECDSASHA384:
		sg.Hash = wire.HashAlg_HASH_ALG_SHA384
	case ckmECDSASHA512:
		sg.Hash = wire.HashAlg_HASH_ALG_SHA512
	case ckmRSAPKCS:
		// The data is a DigestInfo: the daemon signs the digest inside
		// with the hash it names. Raw RSA of anything else is not offered.
		sg.Padding = wire.Padding_PADDING_PKCS1V15
		sg.Prehashed = true
		for h, p := range digestInfo {
			if len(data) == len(p)+int(hashSize[h]) && bytes.HasPrefix(data, p) {
				sg.Hash, sg.Data = h, data[len(p):]
				return sg, ckrOK
			}
		}
		return nil, ckrDataInvalid
	case ckmSHA256RSAPKCS:
		sg.Hash, sg.Padding = wire.HashAlg_HASH_ALG_SHA256, wire.Padding_PADDING_PKCS1V15
	case ckmSHA384RSAPKCS:
		sg.Hash, sg.Padding = wire.HashAlg_HASH_ALG_SHA384, wire.Padding_PADDING_PKCS1V15
	case ckmSHA512RSAPKCS:
		sg.Hash, sg.Padding = wire.HashAlg_HASH_ALG_SHA512, wire.Padding_PADDING_PKCS1V15
	case ckmRSAPKCSPSS:
		sg.Hash, _ = pssHash(op.mech)
		sg.Padding, sg.Prehashed = wire.Padding_PADDING_PSS, true
		if uint64(len(data)) != hashSize[sg.Hash] {
			return nil, ckrDataLenRange
		}
	case ckmSHA256RSAPKCSPSS, ckmSHA384RSAPKCSPSS, ckmSHA512RSAPKCSPSS:
		sg.Hash, _ = pssHash(op.mech)
		sg.Padding = wire.Padding_PADDING_PSS
	default:
		return nil, ckrMechanismInvalid
	}
	return sg, ckrOK
}

// ecdsaRaw turns an ASN.1 ECDSA signature into PKCS #11's r ‖ s, each as
// long as the curve's order.
func ecdsaRaw(der []byte, ks *keyState) ([]byte, uint64) {
	var rs struct{ R, S *big.Int }
	if rest, err := asn1.Unmarshal(der, &rs); err != nil || len(rest) != 0 {
		return nil, ckrDeviceError
	}
	pub := ks.pub.(*ecdsa.PublicKey)
	n := (pub.Curve.Params().BitSize + 7) / 8
	out := make([]byte, 2*n)
	rs.R.FillBytes(out[:n])
	rs.S.FillBytes(out[n:])
	return out, ckrOK
}

// ecdsaDER turns PKCS #11's r ‖ s into an ASN.1 ECDSA signature.
func ecdsaDER(sig []byte, pub *ecdsa.PublicKey) ([]byte, uint64) {
	n := (pub.Curve.Params().BitSize + 7) / 8
	if len(sig) != 2*n {
		return nil, ckrSignatureLenRange
	}
	der, err := asn1.Marshal(struct{ R, S *big.Int }{new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])})
	if err != nil {
		return nil, ckrSignatureInvalid
	}
	return der, ckrOK
}

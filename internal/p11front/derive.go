package p11front

import (
	"encoding/asn1"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// CKM_HKDF_DERIVE (PKCS #11 3.0): HKDF (RFC 5869, extract then expand)
// from an HMAC key of the daemon's into a new AES or HMAC key, done by
// the core's derivation: the child inherits what the core's rules give
// it (never exportable unless its parent is, the parent's program list),
// and the parent needs the derive usage.
const (
	ckmHKDFDerive = 0x402A
	ckfMechDerive = 0x00080000
	// Salt types of CK_HKDF_PARAMS.
	ckfHKDFSaltNull = 1
	ckfHKDFSaltData = 2
	ckfHKDFSaltKey  = 4
)

// CKM_ECDH1_DERIVE: ECDH of a P-256 or P-384 key of the daemon's with a
// peer's public point, or X25519 of an X25519 key with a peer's 32-byte
// public value, through no KDF (CKD_NULL: the shared secret, its
// leading bytes removed to the new key's length) or the ANSI X9.63 KDF
// under SHA-2 with the shared data, into a new AES or generic secret key;
// the core's rules apply as for HKDF.
const (
	ckmECDH1Derive = 0x1050
	// KDFs of CK_ECDH1_DERIVE_PARAMS.
	ckdNull      = 1
	ckdSHA1KDF   = 2
	ckdSHA224KDF = 5
	ckdSHA256KDF = 6
	ckdSHA384KDF = 7
	ckdSHA512KDF = 8
)

// ecdhParams reads CKM_ECDH1_DERIVE's parameter for a parent on curve
// (the byte length of its coordinates): the core's KDF and hash, the
// shared data, and the peer's point, given raw (a SEC 1 point) or
// wrapped in a DER OCTET STRING (as some programs send it, after
// CKA_EC_POINT).
func ecdhParams(m mechanism, size int, x25519 bool) (wire.DeriveKdf, wire.HashAlg, []byte, []byte, uint64) {
	if !m.hasParam {
		return 0, 0, nil, nil, ckrMechanismParamInvalid
	}
	var kdf wire.DeriveKdf
	var h wire.HashAlg
	switch m.extra {
	case ckdNull:
		if len(m.param) != 0 {
			return 0, 0, nil, nil, ckrMechanismParamInvalid // no shared data without a KDF
		}
		kdf = wire.DeriveKdf_DERIVE_KDF_NONE
	case ckdSHA256KDF:
		kdf, h = wire.DeriveKdf_DERIVE_KDF_X963, wire.HashAlg_HASH_ALG_SHA256
	case ckdSHA384KDF:
		kdf, h = wire.DeriveKdf_DERIVE_KDF_X963, wire.HashAlg_HASH_ALG_SHA384
	case ckdSHA512KDF:
		kdf, h = wire.DeriveKdf_DERIVE_KDF_X963, wire.HashAlg_HASH_ALG_SHA512
	default:
		// SHA-1 and SHA-224 (and every other KDF) are not offered.
		return 0, 0, nil, nil, ckrMechanismParamInvalid
	}
	var pt []byte
	if x25519 {
		pt = peerX25519(m.source)
	} else {
		pt = peerPoint(m.source, size)
	}
	if pt == nil {
		return 0, 0, nil, nil, ckrMechanismParamInvalid
	}
	return kdf, h, m.param, pt, ckrOK
}

// peerPoint returns the SEC 1 point in b, raw or in a DER OCTET STRING,
// for a curve whose coordinates are size bytes; nil if b is neither. The
// raw form is tried first: a raw point may also read as DER. The core
// checks that the point is on the curve.
func peerPoint(b []byte, size int) []byte {
	isPoint := func(p []byte) bool {
		switch {
		case len(p) == 1+2*size:
			return p[0] == 4
		case len(p) == 1+size:
			return p[0] == 2 || p[0] == 3
		}
		return false
	}
	if isPoint(b) {
		return b
	}
	var inner []byte
	if rest, err := asn1.Unmarshal(b, &inner); err == nil && len(rest) == 0 && isPoint(inner) {
		return inner
	}
	return nil
}

// peerX25519 returns the X25519 public value in b: its 32 bytes raw
// (as PKCS #11 3.0 has CKM_ECDH1_DERIVE's public data for a Montgomery
// key) or in a DER OCTET STRING (as CKA_EC_POINT holds it); nil if b is
// neither. The raw form is tried first: 32 bytes may also read as DER.
func peerX25519(b []byte) []byte {
	if len(b) == 32 {
		return b
	}
	var inner []byte
	if rest, err := asn1.Unmarshal(b, &inner); err == nil && len(rest) == 0 && len(inner) == 32 {
		return inner
	}
	return nil
}

// ecdhSize is the byte length of the coordinates (and of the shared
// secret) of an ECDH or X25519 key type, 0 for any other type.
func ecdhSize(t wire.KeyType) int {
	switch t {
	case wire.KeyType_KEY_TYPE_ECDH_P256, wire.KeyType_KEY_TYPE_X25519:
		return 32
	case wire.KeyType_KEY_TYPE_ECDH_P384:
		return 48
	}
	return 0
}

// hkdfParams reads CKM_HKDF_DERIVE's parameter: extract and expand both,
// a SHA-2 PRF, no salt or a salt given as data (a salt key is not
// offered).
func hkdfParams(m mechanism) (wire.HashAlg, []byte, []byte, uint64) {
	if m.typ != ckmHKDFDerive {
		return 0, nil, nil, ckrMechanismInvalid
	}
	if !m.hasParam || !m.extract || !m.expand || m.saltKey != 0 {
		return 0, nil, nil, ckrMechanismParamInvalid
	}
	h, ok := digestHash(m.hashAlg)
	if !ok {
		return 0, nil, nil, ckrMechanismParamInvalid
	}
	switch m.extra {
	case ckfHKDFSaltNull:
		if len(m.param) != 0 {
			return 0, nil, nil, ckrMechanismParamInvalid
		}
		return h, nil, m.source, ckrOK
	case ckfHKDFSaltData:
		if len(m.param) == 0 {
			return 0, nil, nil, ckrMechanismParamInvalid
		}
		return h, m.param, m.source, ckrOK
	}
	return 0, nil, nil, ckrMechanismParamInvalid
}

func isHMAC(t wire.KeyType) bool {
	return t == wire.KeyType_KEY_TYPE_HMAC_SHA256 || t == wire.KeyType_KEY_TYPE_HMAC_SHA384 || t == wire.KeyType_KEY_TYPE_HMAC_SHA512
}

func (c *conn) cDeriveKey(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	m := d.Mechanism()
	bh := d.Ulong()
	as := d.Attrs()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if rv := c.writable(s); rv != ckrOK {
		return rv
	}
	bo, orv := c.object(bh)
	var dv wire.Derive
	switch m.typ {
	case ckmECDH1Derive:
		if orv != ckrOK {
			return ckrKeyHandleInvalid
		}
		size := ecdhSize(bo.key.info.Type)
		if bo.class != ckoPrivateKey || size == 0 {
			return ckrKeyTypeInconsistent
		}
		dv.Kdf, dv.Hash, dv.Info, dv.PeerPublicKey, rv = ecdhParams(m, size, bo.key.info.Type == wire.KeyType_KEY_TYPE_X25519)
		if rv != ckrOK {
			return rv
		}
		t, rv := readTemplate(as)
		if rv != ckrOK {
			return rv
		}
		// A generic secret without a length is as long as the shared
		// secret, as PKCS #11 has it.
		if k, _ := t.ulong(ckaKeyType); k == ckkGenericSecret && !t.has(ckaValueLen) {
			t.attrs[ckaValueLen] = attr{typ: ckaValueLen, value: ulongVal(uint64(size))}
		}
		if dv.Template, rv = derivedTemplate(t); rv != ckrOK {
			return rv
		}
		if dv.Kdf == wire.DeriveKdf_DERIVE_KDF_NONE && key.Lookup(dv.Template.Type).SecretLen > size {
			return ckrTemplateInconsistent // longer than the shared secret
		}
	default:
		hash, salt, info, rv := hkdfParams(m)
		if rv != ckrOK {
			return rv
		}
		if orv != ckrOK {
			return ckrKeyHandleInvalid
		}
		if bo.class != ckoSecretKey || !isHMAC(bo.key.info.Type) {
			return ckrKeyTypeInconsistent
		}
		t, rv := readTemplate(as)
		if rv != ckrOK {
			return rv
		}
		if dv.Template, rv = derivedTemplate(t); rv != ckrOK {
			return rv
		}
		dv.Hash, dv.Salt, dv.Info = hash, salt, info
	}
	b, err := c.open(bo.key)
	if err != nil {
		return rvOf(err, ckrKeyFunctionNotPermitted)
	}
	dv.Handle = b
	r, err := c.do(&wire.Op{Op: &wire.Op_Derive{Derive: &dv}})
	if err != nil {
		switch statusOf(err) {
		case wire.Status_STATUS_POLICY_VIOLATION:
			return ckrTemplateInconsistent
		case wire.Status_STATUS_INVALID_ARGUMENT:
			return ckrMechanismParamInvalid
		}
		return rvOf(err, ckrKeyFunctionNotPermitted)
	}
	kr := r.GetKey()
	ks := c.addKey(kr.GetInfo(), kr.GetInfo().GetEphemeral())
	ks.handle = kr.GetHandle()
	e.Ulong(c.objectsOf(ks)[0])
	return ckrOK
}

// derivedTemplate is the core's template of a derived key: a secret key,
// AES or HMAC by its type and length, with the usages its type can have.
func derivedTemplate(t templ) (*wire.KeyTemplate, uint64) {
	typ, def, rv := unwrapType(t)
	if rv != ckrOK {
		return nil, rv
	}
	if typ != wire.KeyType_KEY_TYPE_AES256_GCM && !isHMAC(typ) {
		return nil, ckrTemplateInconsistent // a derived key is a secret key
	}
	kt, rv := keyTemplate(templ{attrs: map[uint32]attr{}}, t, def)
	if rv != ckrOK {
		return nil, rv
	}
	kt.Type = typ
	capable(kt)
	return kt, ckrOK
}

package p11front

import (
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
	hash, salt, info, rv := hkdfParams(m)
	if rv != ckrOK {
		return rv
	}
	bo, rv := c.object(bh)
	if rv != ckrOK {
		return ckrKeyHandleInvalid
	}
	if bo.class != ckoSecretKey || !isHMAC(bo.key.info.Type) {
		return ckrKeyTypeInconsistent
	}
	t, rv := readTemplate(as)
	if rv != ckrOK {
		return rv
	}
	typ, def, rv := unwrapType(t)
	if rv != ckrOK {
		return rv
	}
	if key := typ; key != wire.KeyType_KEY_TYPE_AES256_GCM && !isHMAC(key) {
		return ckrTemplateInconsistent // a derived key is a secret key
	}
	kt, rv := keyTemplate(templ{attrs: map[uint32]attr{}}, t, def)
	if rv != ckrOK {
		return rv
	}
	kt.Type = typ
	capable(kt)
	b, err := c.open(bo.key)
	if err != nil {
		return rvOf(err, ckrKeyFunctionNotPermitted)
	}
	r, err := c.do(&wire.Op{Op: &wire.Op_Derive{Derive: &wire.Derive{Handle: b, Hash: hash, Salt: salt, Info: info, Template: kt}}})
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

package p11front

import (
	"github.com/keywarden/keywarden/internal/wire"
)

// Key wrapping mechanisms: RFC 3394 and RFC 5649 AES key wrap, done by the
// core under its wrapping rules (only keys with wrap usage wrap, only
// wrappable keys are wrapped, never under a weaker key; keys unwrapped
// from these formats are never exportable).
const (
	ckmAESKeyWrap    = 0x2109
	ckmAESKeyWrapPad = 0x210A
	// ckmRSAAESKeyWrap is RSA-OAEP of an ephemeral AES key, then RFC 5649
	// under it: the daemon makes the AES key, AES-256 only.
	ckmRSAAESKeyWrap = 0x1054
)

const (
	ckfMechWrap   = 0x00020000
	ckfMechUnwrap = 0x00040000
)

// wrapFormat is the core's format for a wrapping mechanism, and for
// CKM_RSA_AES_KEY_WRAP its OAEP hash. wrapping: for C_WrapKey (the
// daemon makes the ephemeral AES key, AES-256; C_UnwrapKey opens any).
func wrapFormat(m mechanism, wrapping bool) (wire.WrapFormat, wire.HashAlg, uint64) {
	if m.typ == ckmRSAAESKeyWrap {
		h, ok := oaepHash(m)
		if !ok || wrapping && m.aesBits != 256 || !wrapping && m.aesBits != 128 && m.aesBits != 192 && m.aesBits != 256 {
			return 0, 0, ckrMechanismParamInvalid
		}
		return wire.WrapFormat_WRAP_FORMAT_RSA_AES_KWP, h, ckrOK
	}
	f, rv := aesWrapFormat(m)
	return f, 0, rv
}

// aesWrapFormat is the core's format for an AES key wrap mechanism.
func aesWrapFormat(m mechanism) (wire.WrapFormat, uint64) {
	if len(m.param) > 0 {
		return 0, ckrMechanismParamInvalid // a non-default IV is not offered
	}
	switch m.typ {
	case ckmAESKeyWrap:
		return wire.WrapFormat_WRAP_FORMAT_KW, ckrOK
	case ckmAESKeyWrapPad:
		return wire.WrapFormat_WRAP_FORMAT_KWP, ckrOK
	}
	return 0, ckrMechanismInvalid
}

func (c *conn) cWrapKey(d *decoder, e *encoder) uint64 {
	_, rv := c.session(d.Ulong())
	m := d.Mechanism()
	wh := d.Ulong()
	th := d.Ulong()
	room := d.Buffer("y")
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	format, hash, rv := wrapFormat(m, true)
	if rv != ckrOK {
		return rv
	}
	wo, rv := c.object(wh)
	if rv != ckrOK || !wrapsWith(wo, format) {
		return ckrWrappingKeyHandleInvalid
	}
	to, rv := c.object(th)
	if rv != ckrOK || to.class == ckoPublicKey {
		return ckrKeyHandleInvalid
	}
	w, err := c.open(wo.key)
	if err != nil {
		return rvOf(err, ckrWrappingKeyHandleInvalid)
	}
	t, err := c.open(to.key)
	if err != nil {
		return rvOf(err, ckrKeyHandleInvalid)
	}
	r, err := c.do(&wire.Op{Op: &wire.Op_Wrap{Wrap: &wire.Wrap{Handle: w, Target: t, Format: format, Hash: hash}}})
	if err != nil {
		if st := statusOf(err); st == wire.Status_STATUS_PERMISSION_DENIED || st == wire.Status_STATUS_POLICY_VIOLATION {
			return ckrKeyUnextractable
		}
		return rvOf(err, ckrKeyUnextractable)
	}
	// A length query or a buffer too small: PKCS #11 asks the length,
	// and the next call wraps again (the blob is ciphertext only).
	if int(room) < len(r.Data) {
		e.Bytes(nil, len(r.Data)) // the length only (see give)
		return ckrOK
	}
	e.Bytes(r.Data, len(r.Data))
	return ckrOK
}

// ckrWrappingKeyHandleInvalid is CKR_WRAPPING_KEY_HANDLE_INVALID;
// ckrUnwrappingKeyHandleInvalid CKR_UNWRAPPING_KEY_HANDLE_INVALID.
const (
	ckrWrappingKeyHandleInvalid   = 0x113
	ckrUnwrappingKeyHandleInvalid = 0x0F0
	ckrWrappedKeyInvalid          = 0x110
)

func (c *conn) cUnwrapKey(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	m := d.Mechanism()
	uh := d.Ulong()
	blob := d.Bytes()
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
	format, hash, rv := wrapFormat(m, false)
	if rv != ckrOK {
		return rv
	}
	uo, rv := c.object(uh)
	if rv != ckrOK || !unwrapsWith(uo, format) {
		return ckrUnwrappingKeyHandleInvalid
	}
	t, rv := readTemplate(as)
	if rv != ckrOK {
		return rv
	}
	typ, def, rv := unwrapType(t)
	if rv != ckrOK {
		return rv
	}
	kt, rv := keyTemplate(templ{attrs: map[uint32]attr{}}, t, def)
	if rv != ckrOK {
		return rv
	}
	// Keys unwrapped from these formats are never exportable: the blob
	// carries no attributes to vouch that they were.
	kt.Type, kt.Exportable = typ, false
	capable(kt)
	u, err := c.open(uo.key)
	if err != nil {
		return rvOf(err, ckrUnwrappingKeyHandleInvalid)
	}
	r, err := c.do(&wire.Op{Op: &wire.Op_Unwrap{Unwrap: &wire.Unwrap{Handle: u, Blob: blob, Format: format, Template: kt, Hash: hash}}})
	if err != nil {
		switch statusOf(err) {
		case wire.Status_STATUS_VERIFICATION_FAILED, wire.Status_STATUS_INVALID_ARGUMENT:
			return ckrWrappedKeyInvalid
		case wire.Status_STATUS_POLICY_VIOLATION:
			return ckrTemplateInconsistent
		}
		return rvOf(err, ckrKeyFunctionNotPermitted)
	}
	kr := r.GetKey()
	ks := c.addKey(kr.GetInfo(), kr.GetInfo().GetEphemeral())
	ks.handle = kr.GetHandle()
	e.Ulong(c.objectsOf(ks)[0])
	return ckrOK
}

// wrapsWith says whether o is the kind of object that wraps in format:
// a secret key for the AES key wraps; an RSA public key (or the private
// key's object, the same key of the daemon's) for RSA-AES.
func wrapsWith(o *object, format wire.WrapFormat) bool {
	if format == wire.WrapFormat_WRAP_FORMAT_RSA_AES_KWP {
		return o.class != ckoSecretKey && isRSA(o.key.info.Type)
	}
	return o.class == ckoSecretKey
}

// unwrapsWith: a secret key for the AES key wraps, an RSA private key
// for RSA-AES.
func unwrapsWith(o *object, format wire.WrapFormat) bool {
	if format == wire.WrapFormat_WRAP_FORMAT_RSA_AES_KWP {
		return o.class == ckoPrivateKey && isRSA(o.key.info.Type)
	}
	return o.class == ckoSecretKey
}

// unwrapType is the key type an unwrap template asks for, and the usages
// a key of that kind gets when the template names none.
func unwrapType(t templ) (wire.KeyType, wire.Usage, uint64) {
	class, ok := t.ulong(ckaClass)
	if !ok {
		return 0, 0, ckrTemplateIncomplete
	}
	ktype, ok := t.ulong(ckaKeyType)
	if !ok {
		return 0, 0, ckrTemplateIncomplete
	}
	n, _ := t.ulong(ckaValueLen)
	switch {
	case class == ckoSecretKey && ktype == ckkAES && (n == 0 || n == 32):
		return wire.KeyType_KEY_TYPE_AES256_GCM, wire.Usage_USAGE_ENCRYPT | wire.Usage_USAGE_DECRYPT, ckrOK
	case class == ckoSecretKey && (ktype == ckkGenericSecret || ktype == ckkSHA256HMAC) && (n == 32 || n == 0 && ktype == ckkSHA256HMAC):
		return wire.KeyType_KEY_TYPE_HMAC_SHA256, wire.Usage_USAGE_SIGN | wire.Usage_USAGE_VERIFY, ckrOK
	case class == ckoSecretKey && (ktype == ckkGenericSecret || ktype == ckkSHA384HMAC) && (n == 48 || n == 0 && ktype == ckkSHA384HMAC):
		return wire.KeyType_KEY_TYPE_HMAC_SHA384, wire.Usage_USAGE_SIGN | wire.Usage_USAGE_VERIFY, ckrOK
	case class == ckoSecretKey && (ktype == ckkGenericSecret || ktype == ckkSHA512HMAC) && (n == 64 || n == 0 && ktype == ckkSHA512HMAC):
		return wire.KeyType_KEY_TYPE_HMAC_SHA512, wire.Usage_USAGE_SIGN | wire.Usage_USAGE_VERIFY, ckrOK
	case class == ckoPrivateKey && ktype == ckkECEdwards:
		return wire.KeyType_KEY_TYPE_ED25519, wire.Usage_USAGE_SIGN, ckrOK
	case class == ckoPrivateKey && ktype == ckkEC:
		switch string(t.bytes(ckaECParams)) {
		case string(oidP256):
			return wire.KeyType_KEY_TYPE_ECDSA_P256, wire.Usage_USAGE_SIGN, ckrOK
		case string(oidP384):
			return wire.KeyType_KEY_TYPE_ECDSA_P384, wire.Usage_USAGE_SIGN, ckrOK
		}
		return 0, 0, ckrTemplateIncomplete
	}
	return 0, 0, ckrTemplateInconsistent
}

package p11front

import (
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"math/big"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// templ is a template read into what the front uses of it.
type templ struct {
	attrs map[uint32]attr
}

func readTemplate(as []attr) (templ, uint64) {
	t := templ{attrs: map[uint32]attr{}}
	for _, a := range as {
		if a.invalid {
			return t, ckrAttributeValueInvalid
		}
		if _, dup := t.attrs[a.typ]; dup {
			return t, ckrTemplateInconsistent
		}
		t.attrs[a.typ] = a
	}
	return t, ckrOK
}

// flag returns a CK_BBOOL attribute, or def if absent.
func (t templ) flag(typ uint32, def bool) bool {
	a, ok := t.attrs[typ]
	if !ok || len(a.value) != 1 {
		return def
	}
	return a.value[0] != 0
}

func (t templ) has(typ uint32) bool { _, ok := t.attrs[typ]; return ok }

// ulong returns a CK_ULONG attribute.
func (t templ) ulong(typ uint32) (uint64, bool) {
	a, ok := t.attrs[typ]
	if !ok || len(a.value) != 8 {
		return 0, false
	}
	return binary.NativeEndian.Uint64(a.value), true
}

func (t templ) bytes(typ uint32) []byte { return t.attrs[typ].value }

// allowed are the attributes a template to make a key may carry; their
// values are checked where they matter. CKA_ID is accepted and not
// kept: a key's id is the one the daemon gives it.
var allowed = map[uint32]bool{
	ckaClass: true, ckaToken: true, ckaPrivate: true, ckaLabel: true, ckaID: true, ckaKeyType: true,
	ckaSensitive: true, ckaExtractable: true, ckaEncrypt: true, ckaDecrypt: true, ckaWrap: true,
	ckaUnwrap: true, ckaSign: true, ckaVerify: true, ckaDerive: true, ckaValueLen: true, ckaModifiable: true,
	ckaModulusBits: true, ckaPublicExponent: true, ckaECParams: true, ckaSubject: true, ckaStartDate: true,
	ckaEndDate: true, ckaSignRecover: true, ckaVerifyRecover: true, ckaCopyable: true, ckaDestroyable: true,
	ckaValue: true, ckaECPoint: true, ckaModulus: true, ckaPrivateExponent: true, ckaPrime1: true, ckaPrime2: true,
	0x126 /* CKA_EXPONENT_1 */ : true, 0x127 /* CKA_EXPONENT_2 */ : true, 0x128 /* CKA_COEFFICIENT */ : true,
	ckaAlwaysAuth: true, ckaPublicKeyInfo: true,
}

// keyTemplate turns the templates of a key (the public one nil for a
// secret key) into the core's template, with its type set by the
// caller. The defaults are the daemon's: not exportable, not wrappable;
// usages as asked, or those of the key's kind when none is asked.
func keyTemplate(pub, priv templ, defUsage wire.Usage) (*wire.KeyTemplate, uint64) {
	kt := &wire.KeyTemplate{}
	for _, t := range []templ{pub, priv} {
		for typ, a := range t.attrs {
			if !allowed[typ] {
				return nil, ckrAttributeTypeInvalid
			}
			if valueKind(typ) == kindByte && len(a.value) == 1 && a.value[0] != 0 &&
				(typ == ckaSignRecover || typ == ckaVerifyRecover || typ == ckaModifiable || typ == ckaCopyable || typ == ckaAlwaysAuth) {
				return nil, ckrAttributeValueInvalid
			}
		}
	}
	var usage uint32
	asked := false
	for _, t := range []templ{pub, priv} {
		for typ, u := range usageOf {
			if t.has(typ) {
				asked = true
				if t.flag(typ, false) {
					usage |= uint32(u)
				}
			}
		}
	}
	if !asked {
		usage = uint32(defUsage)
	}
	kt.Usage = usage
	kt.Ephemeral = !priv.flag(ckaToken, pub.flag(ckaToken, false))
	if l := priv.bytes(ckaLabel); l != nil {
		kt.Name = string(l)
	} else if l := pub.bytes(ckaLabel); l != nil {
		kt.Name = string(l)
	}
	kt.Exportable = !priv.flag(ckaSensitive, true)
	kt.Wrappable = priv.flag(ckaExtractable, false)
	return kt, ckrOK
}

// capable narrows kt's usages to those a key of its type can have:
// programs ask for usages by habit (CKA_DERIVE on every EC key, CKA_ENCRYPT
// on every secret), and a key with fewer usages than asked is never
// more permissive. The attributes read back say what the key has.
func capable(kt *wire.KeyTemplate) {
	if spec := key.Lookup(kt.Type); spec != nil {
		kt.Usage &= uint32(spec.Capable(key.Private))
	}
}

// create makes a key through the core (generate or import) and returns
// the handles of its objects.
func (c *conn) create(op *wire.Op) ([]uint64, uint64) {
	if g := op.GetGenerate(); g != nil {
		capable(g.Template)
	} else if im := op.GetImport(); im != nil && im.Format == wire.KeyFormat_KEY_FORMAT_RAW {
		capable(im.Template)
	}
	r, err := c.do(op)
	if err != nil {
		switch statusOf(err) {
		case wire.Status_STATUS_POLICY_VIOLATION, wire.Status_STATUS_INVALID_ARGUMENT:
			return nil, ckrTemplateInconsistent
		case wire.Status_STATUS_ALREADY_EXISTS:
			return nil, ckrAttributeValueInvalid
		}
		return nil, rvOf(err, ckrTemplateInconsistent)
	}
	kr := r.GetKey()
	ks := c.addKey(kr.GetInfo(), kr.GetInfo().GetEphemeral())
	ks.handle = kr.GetHandle()
	return c.objectsOf(ks), ckrOK
}

func (c *conn) cGenerateKey(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	m := d.Mechanism()
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
	t, rv := readTemplate(as)
	if rv != ckrOK {
		return rv
	}
	var typ wire.KeyType
	var def wire.Usage
	n, hasLen := t.ulong(ckaValueLen)
	switch m.typ {
	case ckmAESKeyGen:
		if hasLen && n != 32 {
			return ckrKeySizeRange // AES-256 only
		}
		typ, def = wire.KeyType_KEY_TYPE_AES256_GCM, wire.Usage_USAGE_ENCRYPT|wire.Usage_USAGE_DECRYPT
	case ckmGenericSecretGen:
		switch {
		case !hasLen || n == 32:
			typ = wire.KeyType_KEY_TYPE_HMAC_SHA256
		case n == 48:
			typ = wire.KeyType_KEY_TYPE_HMAC_SHA384
		case n == 64:
			typ = wire.KeyType_KEY_TYPE_HMAC_SHA512
		default:
			return ckrKeySizeRange
		}
		def = wire.Usage_USAGE_SIGN | wire.Usage_USAGE_VERIFY
	default:
		return ckrMechanismInvalid
	}
	if cl, ok := t.ulong(ckaClass); ok && cl != ckoSecretKey {
		return ckrTemplateInconsistent
	}
	kt, rv := keyTemplate(templ{}, t, def)
	if rv != ckrOK {
		return rv
	}
	kt.Type = typ
	hs, rv := c.create(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: kt}}})
	if rv != ckrOK {
		return rv
	}
	e.Ulong(hs[0])
	return ckrOK
}

// writable: making a token object needs a read-write session (PKCS #11);
// the front asks it of session objects too, as the key lives in the core.
func (c *conn) writable(s *session) uint64 {
	if !c.loggedIn {
		return ckrUserNotLoggedIn
	}
	if !s.rw {
		return ckrSessionReadOnly
	}
	return ckrOK
}

func (c *conn) cGenerateKeyPair(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	m := d.Mechanism()
	pubAs := d.Attrs()
	privAs := d.Attrs()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if rv := c.writable(s); rv != ckrOK {
		return rv
	}
	pub, rv := readTemplate(pubAs)
	if rv != ckrOK {
		return rv
	}
	priv, rv := readTemplate(privAs)
	if rv != ckrOK {
		return rv
	}
	var typ wire.KeyType
	def := wire.Usage_USAGE_SIGN | wire.Usage_USAGE_VERIFY
	switch m.typ {
	case ckmECKeyPairGen:
		switch p := string(pub.bytes(ckaECParams)); p {
		case string(oidP256):
			typ = wire.KeyType_KEY_TYPE_ECDSA_P256
		case string(oidP384):
			typ = wire.KeyType_KEY_TYPE_ECDSA_P384
		case string(oidEd25519), string(nameEd25519):
			typ = wire.KeyType_KEY_TYPE_ED25519
		default:
			if isX25519Params([]byte(p)) {
				// As pkcs11-tool asks for it (EC:curve25519): the
				// mechanism is CKM_EC_MONTGOMERY_KEY_PAIR_GEN's, the
				// curve says.
				typ, def = wire.KeyType_KEY_TYPE_X25519, wire.Usage_USAGE_DERIVE
				break
			}
			if p == "" {
				return ckrTemplateIncomplete
			}
			return ckrAttributeValueInvalid
		}
	case ckmECEdwardsGen:
		if p := string(pub.bytes(ckaECParams)); p != "" && p != string(oidEd25519) && p != string(nameEd25519) {
			return ckrAttributeValueInvalid
		}
		typ = wire.KeyType_KEY_TYPE_ED25519
	case ckmECMontgomeryGen:
		if p := pub.bytes(ckaECParams); p != nil && !isX25519Params(p) {
			return ckrAttributeValueInvalid
		}
		typ, def = wire.KeyType_KEY_TYPE_X25519, wire.Usage_USAGE_DERIVE
	case ckmRSAPKCSKeyPairGen:
		bits, _ := pub.ulong(ckaModulusBits)
		switch bits {
		case 2048:
			typ = wire.KeyType_KEY_TYPE_RSA_2048
		case 3072:
			typ = wire.KeyType_KEY_TYPE_RSA_3072
		case 4096:
			typ = wire.KeyType_KEY_TYPE_RSA_4096
		case 0:
			return ckrTemplateIncomplete
		default:
			return ckrKeySizeRange
		}
		if e := pub.bytes(ckaPublicExponent); e != nil && new(big.Int).SetBytes(e).Cmp(big.NewInt(65537)) != 0 {
			return ckrAttributeValueInvalid
		}
	default:
		return ckrMechanismInvalid
	}
	kt, rv := keyTemplate(pub, priv, def)
	if rv != ckrOK {
		return rv
	}
	kt.Type = typ
	hs, rv := c.create(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: kt}}})
	if rv != ckrOK {
		return rv
	}
	if len(hs) != 2 {
		return ckrGeneralError
	}
	e.Ulong(hs[1]) // public
	e.Ulong(hs[0]) // private
	return ckrOK
}

// cCreateObject imports a key: a secret key from its value (AES-256, or
// an HMAC key of 32, 48 or 64 bytes), a public key, or a private key (EC
// P-256/P-384 from its scalar, Ed25519 from its seed, RSA from its
// components), which the core receives as PKCS #8 and checks as any
// import. The template's values are wiped once sent.
func (c *conn) cCreateObject(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	as := d.Attrs()
	if d.done() != nil {
		return rvParse
	}
	defer func() {
		for _, a := range as {
			clear(a.value)
		}
	}()
	if rv != ckrOK {
		return rv
	}
	if rv := c.writable(s); rv != ckrOK {
		return rv
	}
	t, rv := readTemplate(as)
	if rv != ckrOK {
		return rv
	}
	class, ok := t.ulong(ckaClass)
	if !ok {
		return ckrTemplateIncomplete
	}
	ktype, _ := t.ulong(ckaKeyType)
	im := &wire.Import{}
	switch class {
	case ckoSecretKey:
		v := t.bytes(ckaValue)
		var typ wire.KeyType
		switch {
		case ktype == ckkAES && len(v) == 32:
			typ = wire.KeyType_KEY_TYPE_AES256_GCM
		case ktype == ckkAES:
			return ckrAttributeValueInvalid
		case (ktype == ckkGenericSecret || ktype == ckkSHA256HMAC) && len(v) == 32:
			typ = wire.KeyType_KEY_TYPE_HMAC_SHA256
		case (ktype == ckkGenericSecret || ktype == ckkSHA384HMAC) && len(v) == 48:
			typ = wire.KeyType_KEY_TYPE_HMAC_SHA384
		case (ktype == ckkGenericSecret || ktype == ckkSHA512HMAC) && len(v) == 64:
			typ = wire.KeyType_KEY_TYPE_HMAC_SHA512
		default:
			return ckrAttributeValueInvalid
		}
		def := wire.Usage_USAGE_ENCRYPT | wire.Usage_USAGE_DECRYPT
		if typ != wire.KeyType_KEY_TYPE_AES256_GCM {
			def = wire.Usage_USAGE_SIGN | wire.Usage_USAGE_VERIFY
		}
		kt, rv := keyTemplate(templ{}, t, def)
		if rv != ckrOK {
			return rv
		}
		kt.Type = typ
		im.Template, im.Format, im.Data = kt, wire.KeyFormat_KEY_FORMAT_RAW, v
	case ckoPublicKey:
		spki, typ, rv := publicSPKI(t, ktype)
		if rv != ckrOK {
			return rv
		}
		kt, rv := keyTemplate(t, templ{attrs: map[uint32]attr{}}, wire.Usage_USAGE_VERIFY)
		if rv != ckrOK {
			return rv
		}
		kt.Type, kt.Exportable = typ, true
		im.Template, im.Format, im.Data = kt, wire.KeyFormat_KEY_FORMAT_SPKI_DER, spki
	case ckoPrivateKey:
		der, typ, rv := privatePKCS8(t, ktype)
		if rv != ckrOK {
			return rv
		}
		defer clear(der)
		kt, rv := keyTemplate(templ{attrs: map[uint32]attr{}}, t, wire.Usage_USAGE_SIGN|wire.Usage_USAGE_VERIFY)
		if rv != ckrOK {
			return rv
		}
		kt.Type = typ
		capable(kt)
		im.Template, im.Format, im.Data = kt, wire.KeyFormat_KEY_FORMAT_PKCS8_DER, der
	default:
		return ckrAttributeValueInvalid
	}
	hs, rv := c.create(&wire.Op{Op: &wire.Op_Import{Import: im}})
	if rv != ckrOK {
		return rv
	}
	e.Ulong(hs[0])
	return ckrOK
}

// publicSPKI builds the SubjectPublicKeyInfo of a public key template.
func publicSPKI(t templ, ktype uint64) ([]byte, wire.KeyType, uint64) {
	switch ktype {
	case ckkEC, ckkECEdwards:
		var pt []byte
		if _, err := asn1.Unmarshal(t.bytes(ckaECPoint), &pt); err != nil {
			pt = t.bytes(ckaECPoint) // some programs send the bare point
		}
		var pub any
		var typ wire.KeyType
		switch string(t.bytes(ckaECParams)) {
		case string(oidP256), string(oidP384):
			curve, kt := elliptic.P256(), wire.KeyType_KEY_TYPE_ECDSA_P256
			if string(t.bytes(ckaECParams)) == string(oidP384) {
				curve, kt = elliptic.P384(), wire.KeyType_KEY_TYPE_ECDSA_P384
			}
			k, err := ecdsa.ParseUncompressedPublicKey(curve, pt)
			if err != nil {
				return nil, 0, ckrAttributeValueInvalid
			}
			pub, typ = k, kt
		case string(oidEd25519), string(nameEd25519):
			if len(pt) != 32 {
				return nil, 0, ckrAttributeValueInvalid
			}
			pub, typ = edPublic(pt), wire.KeyType_KEY_TYPE_ED25519
		default:
			return nil, 0, ckrAttributeValueInvalid
		}
		der, err := x509.MarshalPKIXPublicKey(pub)
		if err != nil {
			return nil, 0, ckrAttributeValueInvalid
		}
		return der, typ, ckrOK
	case ckkRSA:
		n := new(big.Int).SetBytes(t.bytes(ckaModulus))
		e := new(big.Int).SetBytes(t.bytes(ckaPublicExponent))
		if !e.IsInt64() || e.Int64() > 1<<31-1 {
			return nil, 0, ckrAttributeValueInvalid
		}
		var typ wire.KeyType
		switch n.BitLen() {
		case 2048:
			typ = wire.KeyType_KEY_TYPE_RSA_2048
		case 3072:
			typ = wire.KeyType_KEY_TYPE_RSA_3072
		case 4096:
			typ = wire.KeyType_KEY_TYPE_RSA_4096
		default:
			return nil, 0, ckrKeySizeRange
		}
		der, err := x509.MarshalPKIXPublicKey(&rsa.PublicKey{N: n, E: int(e.Int64())})
		if err != nil {
			return nil, 0, ckrAttributeValueInvalid
		}
		return der, typ, ckrOK
	}
	return nil, 0, ckrTemplateIncomplete
}

// privatePKCS8 builds the PKCS #8 DER of a private key template; the
// caller wipes it.
func privatePKCS8(t templ, ktype uint64) ([]byte, wire.KeyType, uint64) {
	var priv any
	var typ wire.KeyType
	switch ktype {
	case ckkEC:
		var curve elliptic.Curve
		switch string(t.bytes(ckaECParams)) {
		case string(oidP256):
			curve, typ = elliptic.P256(), wire.KeyType_KEY_TYPE_ECDSA_P256
		case string(oidP384):
			curve, typ = elliptic.P384(), wire.KeyType_KEY_TYPE_ECDSA_P384
		default:
			return nil, 0, ckrAttributeValueInvalid
		}
		v := t.bytes(ckaValue)
		size := (curve.Params().BitSize + 7) / 8
		if len(v) > size || len(v) == 0 {
			return nil, 0, ckrAttributeValueInvalid
		}
		padded := make([]byte, size)
		copy(padded[size-len(v):], v)
		k, err := ecdsa.ParseRawPrivateKey(curve, padded)
		clear(padded)
		if err != nil {
			return nil, 0, ckrAttributeValueInvalid
		}
		priv = k
	case ckkECEdwards:
		switch string(t.bytes(ckaECParams)) {
		case string(oidEd25519), string(nameEd25519):
		default:
			return nil, 0, ckrAttributeValueInvalid
		}
		v := t.bytes(ckaValue)
		if len(v) != ed25519.SeedSize {
			return nil, 0, ckrAttributeValueInvalid
		}
		priv, typ = ed25519.NewKeyFromSeed(v), wire.KeyType_KEY_TYPE_ED25519
	case ckkRSA:
		n := new(big.Int).SetBytes(t.bytes(ckaModulus))
		e := new(big.Int).SetBytes(t.bytes(ckaPublicExponent))
		d := new(big.Int).SetBytes(t.bytes(ckaPrivateExponent))
		p := new(big.Int).SetBytes(t.bytes(ckaPrime1))
		q := new(big.Int).SetBytes(t.bytes(ckaPrime2))
		if !e.IsInt64() || e.Int64() > 1<<31-1 || p.Sign() == 0 || q.Sign() == 0 {
			return nil, 0, ckrTemplateIncomplete
		}
		switch n.BitLen() {
		case 2048:
			typ = wire.KeyType_KEY_TYPE_RSA_2048
		case 3072:
			typ = wire.KeyType_KEY_TYPE_RSA_3072
		case 4096:
			typ = wire.KeyType_KEY_TYPE_RSA_4096
		default:
			return nil, 0, ckrKeySizeRange
		}
		k := &rsa.PrivateKey{PublicKey: rsa.PublicKey{N: n, E: int(e.Int64())}, D: d, Primes: []*big.Int{p, q}}
		if err := k.Validate(); err != nil {
			return nil, 0, ckrAttributeValueInvalid
		}
		k.Precompute()
		priv = k
	default:
		return nil, 0, ckrTemplateIncomplete
	}
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return nil, 0, ckrAttributeValueInvalid
	}
	return der, typ, ckrOK
}

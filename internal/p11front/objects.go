package p11front

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"
	"strconv"

	"github.com/keywarden/keywarden/internal/wire"
)

// keyState is a key of the core as the connection knows it: its info
// (from the core's list, or from the operation that made it) and its
// handle on the connection's core session once opened.
type keyState struct {
	info   *wire.KeyInfo
	handle uint32 // 0: not open
	pub    any    // the parsed public key of an asymmetric key
	// session: made on this connection as a session object (an ephemeral
	// key of the core's): not in the core's list, gone with the connection.
	session bool
	gone    bool // destroyed, or no longer listed
}

// objectKey names an object: a key and the class it shows as (a private
// key shows as a private and a public object).
type objectKey struct {
	id    string
	class uint64
}

// object is a PKCS #11 object of the connection.
type object struct {
	handle uint64
	class  uint64
	key    *keyState
}

// addKey records info's key (or refreshes what is known of it) and
// returns its state.
func (c *conn) addKey(info *wire.KeyInfo, session bool) *keyState {
	ks := c.keys[string(info.Id)]
	if ks == nil {
		ks = &keyState{session: session}
		c.keys[string(info.Id)] = ks
	}
	ks.info, ks.gone = info, false
	if ks.pub == nil && len(info.PublicKey) > 0 {
		if pub, err := x509.ParsePKIXPublicKey(info.PublicKey); err == nil {
			ks.pub = pub
		}
	}
	return ks
}

// objectsOf returns the handles of ks's objects, made on first use: a
// secret key, a public key, or a private key and its public half.
func (c *conn) objectsOf(ks *keyState) []uint64 {
	var classes []uint64
	switch ks.info.Class {
	case wire.KeyClass_KEY_CLASS_SECRET:
		classes = []uint64{ckoSecretKey}
	case wire.KeyClass_KEY_CLASS_PUBLIC:
		classes = []uint64{ckoPublicKey}
	case wire.KeyClass_KEY_CLASS_PRIVATE:
		classes = []uint64{ckoPrivateKey, ckoPublicKey}
	}
	var hs []uint64
	for _, cl := range classes {
		k := objectKey{id: string(ks.info.Id), class: cl}
		h, ok := c.byKey[k]
		if !ok {
			h = c.nextObject
			c.nextObject++
			c.byKey[k] = h
			c.objects[h] = &object{handle: h, class: cl, key: ks}
		}
		hs = append(hs, h)
	}
	return hs
}

// refresh lists the caller's keys from the core, makes objects for new
// ones and drops those of keys no longer listed (session keys stay).
func (c *conn) refresh() error {
	seen := map[string]bool{}
	var after []byte
	for {
		r, err := c.do(&wire.Op{Op: &wire.Op_List{List: &wire.List{After: after}}})
		if err != nil {
			return err
		}
		l := r.GetList()
		for _, info := range l.GetKeys() {
			if pkcs11Type(info.Type) == nil {
				continue // a type PKCS #11 has no use for here
			}
			c.objectsOf(c.addKey(info, false)) // handles in the list's order
			seen[string(info.Id)] = true
		}
		if len(l.GetNext()) == 0 {
			break
		}
		after = l.Next
	}
	for id, ks := range c.keys {
		if !ks.session && !seen[id] {
			c.forget(ks)
		}
	}
	return nil
}

// forget drops ks and its objects; its core handle is closed.
func (c *conn) forget(ks *keyState) {
	ks.gone = true
	for _, cl := range []uint64{ckoSecretKey, ckoPublicKey, ckoPrivateKey} {
		k := objectKey{id: string(ks.info.Id), class: cl}
		if h, ok := c.byKey[k]; ok {
			delete(c.byKey, k)
			delete(c.objects, h)
		}
	}
	delete(c.keys, string(ks.info.Id))
	if ks.handle != 0 && !ks.session {
		c.do(&wire.Op{Op: &wire.Op_Close{Close: &wire.Close{Handle: ks.handle}}})
	}
	ks.handle = 0
}

// open returns ks's handle on the core session, opening it on first use.
func (c *conn) open(ks *keyState) (uint32, error) {
	if ks.gone {
		return 0, errGone
	}
	if ks.handle != 0 {
		return ks.handle, nil
	}
	r, err := c.do(&wire.Op{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Id{Id: ks.info.Id}}}})
	if err != nil {
		return 0, err
	}
	ks.handle = r.GetKey().GetHandle()
	if info := r.GetKey().GetInfo(); info != nil {
		c.addKey(info, ks.session)
	}
	return ks.handle, nil
}

var errGone = errors.New("the key is gone")

// loadPublic learns ks's public half from the core, opening the key for
// that only (and closing it again, so that listing many keys holds no
// handles of the core's: a key is open while it is used).
func (c *conn) loadPublic(ks *keyState) bool {
	wasOpen := ks.handle != 0
	h, err := c.open(ks)
	if err != nil {
		return false
	}
	if !wasOpen && !ks.session {
		c.do(&wire.Op{Op: &wire.Op_Close{Close: &wire.Close{Handle: h}}})
		ks.handle = 0
	}
	return ks.pub != nil
}

// typeInfo is how a key type of the core shows in PKCS #11.
type typeInfo struct {
	ckk    uint64
	curve  []byte // DER of the curve's OID (CKA_EC_PARAMS)
	valLen uint64 // CKA_VALUE_LEN of secret keys
	gen    uint64 // the generation mechanism
}

var (
	oidP256    = mustOID(asn1.ObjectIdentifier{1, 2, 840, 10045, 3, 1, 7})
	oidP384    = mustOID(asn1.ObjectIdentifier{1, 3, 132, 0, 34})
	oidEd25519 = mustOID(asn1.ObjectIdentifier{1, 3, 101, 112})
	oidX25519  = mustOID(asn1.ObjectIdentifier{1, 3, 101, 110})
	// Ed25519's and X25519's curves as OpenSC and OpenSSL also name them
	// (PKCS #11 3.0 allows a PrintableString for CKA_EC_PARAMS).
	nameEd25519 = mustString("edwards25519")
	nameX25519  = mustString("curve25519")
	// What OpenSC 0.23's pkcs11-tool sends for EC:curve25519: the
	// PrintableString with a length one too long (11 for 10 bytes). It
	// names nothing else, so it is taken for curve25519 on input.
	nameX25519OpenSC = []byte("\x13\x0bcurve25519")
)

// isX25519Params reports whether p (CKA_EC_PARAMS) names curve25519.
func isX25519Params(p []byte) bool {
	return bytes.Equal(p, oidX25519) || bytes.Equal(p, nameX25519) || bytes.Equal(p, nameX25519OpenSC)
}

func mustOID(o asn1.ObjectIdentifier) []byte {
	b, err := asn1.Marshal(o)
	if err != nil {
		panic(err)
	}
	return b
}

func mustString(s string) []byte {
	b, err := asn1.MarshalWithParams(s, "printable")
	if err != nil {
		panic(err)
	}
	return b
}

func pkcs11Type(t wire.KeyType) *typeInfo {
	switch t {
	case wire.KeyType_KEY_TYPE_AES256_GCM:
		return &typeInfo{ckk: ckkAES, valLen: 32, gen: ckmAESKeyGen}
	case wire.KeyType_KEY_TYPE_HMAC_SHA256:
		return &typeInfo{ckk: ckkGenericSecret, valLen: 32, gen: ckmGenericSecretGen}
	case wire.KeyType_KEY_TYPE_HMAC_SHA384:
		return &typeInfo{ckk: ckkGenericSecret, valLen: 48, gen: ckmGenericSecretGen}
	case wire.KeyType_KEY_TYPE_HMAC_SHA512:
		return &typeInfo{ckk: ckkGenericSecret, valLen: 64, gen: ckmGenericSecretGen}
	case wire.KeyType_KEY_TYPE_ED25519:
		return &typeInfo{ckk: ckkECEdwards, curve: oidEd25519, gen: ckmECEdwardsGen}
	case wire.KeyType_KEY_TYPE_ECDSA_P256:
		return &typeInfo{ckk: ckkEC, curve: oidP256, gen: ckmECKeyPairGen}
	case wire.KeyType_KEY_TYPE_ECDSA_P384:
		return &typeInfo{ckk: ckkEC, curve: oidP384, gen: ckmECKeyPairGen}
	case wire.KeyType_KEY_TYPE_ECDH_P256:
		return &typeInfo{ckk: ckkEC, curve: oidP256, gen: ckmECKeyPairGen}
	case wire.KeyType_KEY_TYPE_ECDH_P384:
		return &typeInfo{ckk: ckkEC, curve: oidP384, gen: ckmECKeyPairGen}
	case wire.KeyType_KEY_TYPE_X25519:
		return &typeInfo{ckk: ckkECMontgomery, curve: oidX25519, gen: ckmECMontgomeryGen}
	case wire.KeyType_KEY_TYPE_RSA_2048, wire.KeyType_KEY_TYPE_RSA_3072, wire.KeyType_KEY_TYPE_RSA_4096:
		return &typeInfo{ckk: ckkRSA, gen: ckmRSAPKCSKeyPairGen}
	}
	return nil
}

func boolVal(b bool) []byte {
	if b {
		return []byte{1}
	}
	return []byte{0}
}

func ulongVal(v uint64) []byte {
	var b [8]byte
	binary.NativeEndian.PutUint64(b[:], v)
	return b[:]
}

// visible reports whether o shows to the connection: a private or secret
// key only after C_Login, as CKA_PRIVATE says.
func (c *conn) visible(o *object) bool {
	return c.loggedIn || o.class == ckoPublicKey
}

// attribute returns the value of attribute t of o in the C API's layout,
// or an error code: CKR_ATTRIBUTE_TYPE_INVALID for an attribute o does
// not have, CKR_ATTRIBUTE_SENSITIVE for the value of a key the core
// does not export.
func (c *conn) attribute(o *object, t uint32) ([]byte, uint64) {
	info := o.key.info
	ti := pkcs11Type(info.Type)
	if ti == nil {
		return nil, ckrAttributeTypeInvalid
	}
	usage := info.CallerUsage
	has := func(u wire.Usage) []byte { return boolVal(usage&uint32(u) != 0) }
	lc := info.GetLifecycle()
	secretHalf := o.class != ckoPublicKey
	origin := lc.GetOrigin()
	switch t {
	case ckaClass:
		return ulongVal(o.class), ckrOK
	case ckaToken:
		return boolVal(!info.Ephemeral), ckrOK
	case ckaPrivate:
		return boolVal(secretHalf), ckrOK
	case ckaLabel:
		return []byte(c.label(info)), ckrOK
	case ckaID:
		return bytes.Clone(info.Id), ckrOK
	case ckaKeyType:
		return ulongVal(ti.ckk), ckrOK
	case ckaLocal:
		return boolVal(origin == wire.KeyOrigin_KEY_ORIGIN_GENERATED), ckrOK
	case ckaKeyGenMechanism:
		if origin != wire.KeyOrigin_KEY_ORIGIN_GENERATED {
			return ulongVal(ckUnavailableInfomation), ckrOK
		}
		return ulongVal(ti.gen), ckrOK
	case ckaModifiable, ckaCopyable:
		return boolVal(false), ckrOK
	case ckaDestroyable:
		return boolVal(info.Ephemeral || lc.GetDeletionAllowed()), ckrOK
	case ckaDerive:
		return has(wire.Usage_USAGE_DERIVE), ckrOK
	case ckaStartDate, ckaEndDate:
		return []byte{}, ckrOK
	case ckaSubject:
		if o.class == ckoSecretKey {
			return nil, ckrAttributeTypeInvalid
		}
		return []byte{}, ckrOK
	}
	if secretHalf {
		switch t {
		case ckaSensitive:
			return boolVal(!info.Exportable), ckrOK
		case ckaExtractable:
			return boolVal(info.Wrappable), ckrOK
		case ckaAlwaysSensitive:
			// A key that was ever outside the daemon in plaintext
			// (imported) or under another key (unwrapped) was not always
			// sensitive, as PKCS #11 has it; a derived key is if its base
			// key was when it was derived.
			return boolVal(lc.GetNeverExportable() && madeHere(origin, lc.GetBaseAlwaysSensitive())), ckrOK
		case ckaNeverExtractable:
			// Nor is a key that was wrappable (CKA_EXTRACTABLE) once,
			// and switched off since.
			return boolVal(!info.Wrappable && !lc.GetEverWrappable() && !lc.GetWrappedOut() && madeHere(origin, lc.GetBaseNeverExtractable())), ckrOK
		case ckaWrapWithTrusted:
			return boolVal(true), ckrOK
		case ckaAlwaysAuth:
			return boolVal(false), ckrOK
		case ckaDecrypt:
			return has(wire.Usage_USAGE_DECRYPT), ckrOK
		case ckaSign:
			return has(wire.Usage_USAGE_SIGN), ckrOK
		case ckaUnwrap:
			return has(wire.Usage_USAGE_UNWRAP), ckrOK
		case ckaSignRecover:
			return boolVal(false), ckrOK
		case ckaValue:
			if o.class == ckoPrivateKey || !info.Exportable {
				return nil, ckrAttributeSensitive
			}
			return c.exportValue(o.key)
		}
	}
	if o.class != ckoPrivateKey {
		switch t {
		case ckaEncrypt:
			return has(wire.Usage_USAGE_ENCRYPT), ckrOK
		case ckaVerify:
			return has(wire.Usage_USAGE_VERIFY), ckrOK
		case ckaWrap:
			return has(wire.Usage_USAGE_WRAP), ckrOK
		case ckaVerifyRecover:
			return boolVal(false), ckrOK
		}
	}
	if o.class == ckoSecretKey {
		if t == ckaValueLen {
			return ulongVal(ti.valLen), ckrOK
		}
		return nil, ckrAttributeTypeInvalid
	}
	// The public parts of an asymmetric key, on both its objects. The
	// core's list does not carry them: the key's info from opening it does.
	if o.key.pub == nil && !c.loadPublic(o.key) {
		return nil, ckrAttributeTypeInvalid
	}
	switch pub := o.key.pub.(type) {
	case *rsa.PublicKey:
		switch t {
		case ckaModulus:
			return pub.N.Bytes(), ckrOK
		case ckaModulusBits:
			return ulongVal(uint64(pub.N.BitLen())), ckrOK
		case ckaPublicExponent:
			return big.NewInt(int64(pub.E)).Bytes(), ckrOK
		case ckaPublicKeyInfo:
			return bytes.Clone(info.PublicKey), ckrOK
		}
	case *ecdsa.PublicKey:
		switch t {
		case ckaECParams:
			return bytes.Clone(ti.curve), ckrOK
		case ckaECPoint:
			pt := elliptic.Marshal(pub.Curve, pub.X, pub.Y) //nolint:staticcheck // the uncompressed point PKCS #11 wants
			b, _ := asn1.Marshal(pt)
			return b, ckrOK
		case ckaPublicKeyInfo:
			return bytes.Clone(info.PublicKey), ckrOK
		}
	case ed25519.PublicKey:
		switch t {
		case ckaECParams:
			return bytes.Clone(ti.curve), ckrOK
		case ckaECPoint:
			b, _ := asn1.Marshal([]byte(pub))
			return b, ckrOK
		case ckaPublicKeyInfo:
			return bytes.Clone(info.PublicKey), ckrOK
		}
	case *ecdh.PublicKey:
		// X25519: the 32 bytes of its u-coordinate in an OCTET STRING,
		// as for Ed25519.
		switch t {
		case ckaECParams:
			return bytes.Clone(ti.curve), ckrOK
		case ckaECPoint:
			b, _ := asn1.Marshal(pub.Bytes())
			return b, ckrOK
		case ckaPublicKeyInfo:
			return bytes.Clone(info.PublicKey), ckrOK
		}
	}
	return nil, ckrAttributeTypeInvalid
}

// label is the CKA_LABEL of a key: its name, or, for a key of another
// owner that shares it with the caller, the core's name for it, UID:NAME.
// Another uid may share a key named as one of the caller's: a program
// that finds its key by label must never get that one.
func (c *conn) label(info *wire.KeyInfo) string {
	if info.Name == "" || info.OwnerUid == c.id.UID {
		return info.Name
	}
	return strconv.FormatUint(uint64(info.OwnerUid), 10) + ":" + info.Name
}

// madeHere reports whether a key of origin o was made inside the daemon
// from nothing that was ever outside it: generated, or derived from a
// base key that had the property asked about (base: always sensitive, or
// never extractable) when it was derived, as the daemon recorded on the
// derived key. PKCS #11 has a derived key always sensitive and never
// extractable only if its base key was too.
func madeHere(o wire.KeyOrigin, base bool) bool {
	return o == wire.KeyOrigin_KEY_ORIGIN_GENERATED || o == wire.KeyOrigin_KEY_ORIGIN_DERIVED && base
}

// exportValue asks the core for the raw value of an exportable secret
// key (the core decides, and records it).
func (c *conn) exportValue(ks *keyState) ([]byte, uint64) {
	h, err := c.open(ks)
	if err != nil {
		return nil, ckrAttributeSensitive
	}
	r, err := c.do(&wire.Op{Op: &wire.Op_Export{Export: &wire.Export{Handle: h, Format: wire.KeyFormat_KEY_FORMAT_RAW}}})
	if err != nil {
		return nil, ckrAttributeSensitive
	}
	return r.Data, ckrOK
}

// matches reports whether o has every attribute of tmpl with its value.
func (c *conn) matches(o *object, tmpl []attr) bool {
	for _, a := range tmpl {
		if a.invalid {
			return false
		}
		if a.typ == ckaValue {
			return false // never searched by value
		}
		v, rv := c.attribute(o, a.typ)
		if rv != ckrOK {
			return false
		}
		if valueKind(a.typ) == kindByte {
			if len(a.value) != 1 || (a.value[0] != 0) != (len(v) == 1 && v[0] != 0) {
				return false
			}
			continue
		}
		if !bytes.Equal(v, a.value) {
			return false
		}
	}
	return true
}

// find returns the handles of the visible objects matching tmpl.
func (c *conn) find(tmpl []attr) ([]uint64, error) {
	if err := c.refresh(); err != nil {
		return nil, err
	}
	var out []uint64
	for _, ks := range c.keys {
		for _, h := range c.objectsOf(ks) {
			o := c.objects[h]
			if c.visible(o) && c.matches(o, tmpl) {
				out = append(out, h)
			}
		}
	}
	sortHandles(out)
	return out, nil
}

func sortHandles(hs []uint64) {
	for i := 1; i < len(hs); i++ {
		for j := i; j > 0 && hs[j] < hs[j-1]; j-- {
			hs[j], hs[j-1] = hs[j-1], hs[j]
		}
	}
}

// do runs one operation through the core and returns its result, or an
// error carrying the core's status. Deferred calls run first: the core
// takes requests in the order of the frames.
func (c *conn) do(op *wire.Op) (*wire.Result, error) {
	c.exec()
	rs, err := c.doAll([]*wire.Op{op}, false)
	if err != nil {
		return nil, err
	}
	if err := resultErr(rs[0]); err != nil {
		return nil, err
	}
	return rs[0], nil
}

// resultErr is the failure r reports, if any.
func resultErr(r *wire.Result) error {
	if r.Status != wire.Status_STATUS_OK {
		return &coreError{status: r.Status, msg: r.Message}
	}
	return nil
}

// doAll runs ops in one request of the core's, combined (recorded one
// operation at a time, each as a request of its own) if combined, and
// returns a result for each; an error means the whole request failed.
func (c *conn) doAll(ops []*wire.Op, combined bool) ([]*wire.Result, error) {
	c.nextReq++
	rep, err := c.ss.Do(c.f.ctx, c.id, &wire.Request{Version: wire.ProtocolVersion, Id: c.nextReq, Ops: ops, Combined: combined})
	if err != nil {
		return nil, &coreError{status: wire.Status_STATUS_UNAVAILABLE, msg: err.Error()}
	}
	if rep.Status != wire.Status_STATUS_OK {
		return nil, &coreError{status: rep.Status, msg: rep.Message}
	}
	if len(rep.Results) != len(ops) {
		return nil, &coreError{status: wire.Status_STATUS_INTERNAL, msg: "no result"}
	}
	return rep.Results, nil
}

// coreError is a failure the core reported.
type coreError struct {
	status wire.Status
	msg    string
}

func (e *coreError) Error() string { return fmt.Sprintf("%s: %s", e.status, e.msg) }

// statusOf is the core's status in err (STATUS_INTERNAL if none).
func statusOf(err error) wire.Status {
	var ce *coreError
	if errors.As(err, &ce) {
		return ce.status
	}
	return wire.Status_STATUS_INTERNAL
}

// rvOf maps an error of the core to a PKCS #11 return value; what
// applies to a key operation, where given, comes first.
func rvOf(err error, denied uint64) uint64 {
	var ce *coreError
	if !errors.As(err, &ce) {
		if errors.Is(err, errGone) {
			return ckrKeyHandleInvalid
		}
		return ckrGeneralError
	}
	switch ce.status {
	case wire.Status_STATUS_PERMISSION_DENIED, wire.Status_STATUS_POLICY_VIOLATION:
		return denied
	case wire.Status_STATUS_NOT_FOUND:
		return ckrKeyHandleInvalid
	case wire.Status_STATUS_VERIFICATION_FAILED:
		return ckrSignatureInvalid
	case wire.Status_STATUS_INVALID_ARGUMENT:
		return ckrArgumentsBad
	case wire.Status_STATUS_RESOURCE_EXHAUSTED:
		return ckrDeviceMemory
	case wire.Status_STATUS_UNIMPLEMENTED:
		return ckrMechanismInvalid
	case wire.Status_STATUS_GENERATION_CHANGED:
		return ckrDeviceError
	}
	return ckrDeviceError
}

func edPublic(b []byte) ed25519.PublicKey { return ed25519.PublicKey(bytes.Clone(b)) }

package p11front

import (
	"encoding/binary"
	"errors"
)

// The p11-kit RPC protocol, version 0 (p11-kit's rpc-message.c and
// rpc-transport.c): a client sends one version byte and the server
// answers with the version it speaks; then every message is a frame
//
//	code (4) ‖ options length (4) ‖ body length (4) ‖ options ‖ body
//
// (big-endian), answered by one frame with the same code. A body is the
// call's id (4), its signature as a byte array, and its arguments in the
// signature's order. Integers are big-endian; a CK_ULONG is 8 bytes; a
// byte array is a length (4) and its bytes, or 0xffffffff for none.

// Call ids, in the protocol's order.
const (
	callError = iota
	callInitialize
	callFinalize
	callGetInfo
	callGetSlotList
	callGetSlotInfo
	callGetTokenInfo
	callGetMechanismList
	callGetMechanismInfo
	callInitToken
	callOpenSession
	callCloseSession
	callCloseAllSessions
	callGetSessionInfo
	callInitPIN
	callSetPIN
	callGetOperationState
	callSetOperationState
	callLogin
	callLogout
	callCreateObject
	callCopyObject
	callDestroyObject
	callGetObjectSize
	callGetAttributeValue
	callSetAttributeValue
	callFindObjectsInit
	callFindObjects
	callFindObjectsFinal
	callEncryptInit
	callEncrypt
	callEncryptUpdate
	callEncryptFinal
	callDecryptInit
	callDecrypt
	callDecryptUpdate
	callDecryptFinal
	callDigestInit
	callDigest
	callDigestUpdate
	callDigestKey
	callDigestFinal
	callSignInit
	callSign
	callSignUpdate
	callSignFinal
	callSignRecoverInit
	callSignRecover
	callVerifyInit
	callVerify
	callVerifyUpdate
	callVerifyFinal
	callVerifyRecoverInit
	callVerifyRecover
	callDigestEncryptUpdate
	callDecryptDigestUpdate
	callSignEncryptUpdate
	callDecryptVerifyUpdate
	callGenerateKey
	callGenerateKeyPair
	callWrapKey
	callUnwrapKey
	callDeriveKey
	callSeedRandom
	callGenerateRandom
	callWaitForSlotEvent
	callMax
)

// calls gives each call's name and the signatures of its request and
// response: a_ an array of _, A an attribute, f_ a buffer for _ (its
// length only), M a mechanism, u a CK_ULONG, s a space-padded string, v
// a version, y a byte, z a string.
var calls = [callMax]struct{ name, req, resp string }{
	callError:               {"ERROR", "", "u"},
	callInitialize:          {"C_Initialize", "ayyay", ""},
	callFinalize:            {"C_Finalize", "", ""},
	callGetInfo:             {"C_GetInfo", "", "vsusv"},
	callGetSlotList:         {"C_GetSlotList", "yfu", "au"},
	callGetSlotInfo:         {"C_GetSlotInfo", "u", "ssuvv"},
	callGetTokenInfo:        {"C_GetTokenInfo", "u", "ssssuuuuuuuuuuuvvs"},
	callGetMechanismList:    {"C_GetMechanismList", "ufu", "au"},
	callGetMechanismInfo:    {"C_GetMechanismInfo", "uu", "uuu"},
	callInitToken:           {"C_InitToken", "uayz", ""},
	callOpenSession:         {"C_OpenSession", "uu", "u"},
	callCloseSession:        {"C_CloseSession", "u", ""},
	callCloseAllSessions:    {"C_CloseAllSessions", "u", ""},
	callGetSessionInfo:      {"C_GetSessionInfo", "u", "uuuu"},
	callInitPIN:             {"C_InitPIN", "uay", ""},
	callSetPIN:              {"C_SetPIN", "uayay", ""},
	callGetOperationState:   {"C_GetOperationState", "ufy", "ay"},
	callSetOperationState:   {"C_SetOperationState", "uayuu", ""},
	callLogin:               {"C_Login", "uuay", ""},
	callLogout:              {"C_Logout", "u", ""},
	callCreateObject:        {"C_CreateObject", "uaA", "u"},
	callCopyObject:          {"C_CopyObject", "uuaA", "u"},
	callDestroyObject:       {"C_DestroyObject", "uu", ""},
	callGetObjectSize:       {"C_GetObjectSize", "uu", "u"},
	callGetAttributeValue:   {"C_GetAttributeValue", "uufA", "aAu"},
	callSetAttributeValue:   {"C_SetAttributeValue", "uuaA", ""},
	callFindObjectsInit:     {"C_FindObjectsInit", "uaA", ""},
	callFindObjects:         {"C_FindObjects", "ufu", "au"},
	callFindObjectsFinal:    {"C_FindObjectsFinal", "u", ""},
	callEncryptInit:         {"C_EncryptInit", "uMu", ""},
	callEncrypt:             {"C_Encrypt", "uayfy", "ay"},
	callEncryptUpdate:       {"C_EncryptUpdate", "uayfy", "ay"},
	callEncryptFinal:        {"C_EncryptFinal", "ufy", "ay"},
	callDecryptInit:         {"C_DecryptInit", "uMu", ""},
	callDecrypt:             {"C_Decrypt", "uayfy", "ay"},
	callDecryptUpdate:       {"C_DecryptUpdate", "uayfy", "ay"},
	callDecryptFinal:        {"C_DecryptFinal", "ufy", "ay"},
	callDigestInit:          {"C_DigestInit", "uM", ""},
	callDigest:              {"C_Digest", "uayfy", "ay"},
	callDigestUpdate:        {"C_DigestUpdate", "uay", ""},
	callDigestKey:           {"C_DigestKey", "uu", ""},
	callDigestFinal:         {"C_DigestFinal", "ufy", "ay"},
	callSignInit:            {"C_SignInit", "uMu", ""},
	callSign:                {"C_Sign", "uayfy", "ay"},
	callSignUpdate:          {"C_SignUpdate", "uay", ""},
	callSignFinal:           {"C_SignFinal", "ufy", "ay"},
	callSignRecoverInit:     {"C_SignRecoverInit", "uMu", ""},
	callSignRecover:         {"C_SignRecover", "uayfy", "ay"},
	callVerifyInit:          {"C_VerifyInit", "uMu", ""},
	callVerify:              {"C_Verify", "uayay", ""},
	callVerifyUpdate:        {"C_VerifyUpdate", "uay", ""},
	callVerifyFinal:         {"C_VerifyFinal", "uay", ""},
	callVerifyRecoverInit:   {"C_VerifyRecoverInit", "uMu", ""},
	callVerifyRecover:       {"C_VerifyRecover", "uayfy", "ay"},
	callDigestEncryptUpdate: {"C_DigestEncryptUpdate", "uayfy", "ay"},
	callDecryptDigestUpdate: {"C_DecryptDigestUpdate", "uayfy", "ay"},
	callSignEncryptUpdate:   {"C_SignEncryptUpdate", "uayfy", "ay"},
	callDecryptVerifyUpdate: {"C_DecryptVerifyUpdate", "uayfy", "ay"},
	callGenerateKey:         {"C_GenerateKey", "uMaA", "u"},
	callGenerateKeyPair:     {"C_GenerateKeyPair", "uMaAaA", "uu"},
	callWrapKey:             {"C_WrapKey", "uMuufy", "ay"},
	callUnwrapKey:           {"C_UnwrapKey", "uMuayaA", "u"},
	callDeriveKey:           {"C_DeriveKey", "uMuaA", "u"},
	callSeedRandom:          {"C_SeedRandom", "uay", ""},
	callGenerateRandom:      {"C_GenerateRandom", "ufy", "ay"},
	callWaitForSlotEvent:    {"C_WaitForSlotEvent", "u", "u"},
}

// The handshake a client's C_Initialize carries.
const handshake = "PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1"

// Bounds on what a client may send: a body, an array's elements, an
// attribute template, a buffer the client says it has room for.
const (
	maxBody       = 1 << 20
	maxOptions    = 4 << 10
	maxAttributes = 256
	maxArray      = 1 << 16
)

// errParse: the request does not follow its signature (the client gets
// CKR_DEVICE_ERROR, as from p11-kit's own server).
var errParse = errors.New("p11front: malformed request")

// attr is one attribute of a template. In a C_GetAttributeValue request
// only typ and size (the room the client has; 0 for a length query) are
// set; in one the client sends, typ and value (nil with invalid for an
// attribute the client marked invalid).
type attr struct {
	typ     uint32
	size    uint32
	value   []byte
	invalid bool
}

// mechanism is a CK_MECHANISM as decoded: the parameter's bytes in the
// protocol's encoding (for RSA-PSS and RSA-OAEP, the parameter's fields).
type mechanism struct {
	typ   uint64
	param []byte
	// hasParam: the parameter was sent (not a null array)
	hasParam bool
	// Decoded parameters: for RSA-PSS the hash, MGF and salt length; for
	// RSA-OAEP the hash, MGF, source and (source) its data; for AES-GCM
	// the IV (param), its bits (extra), the AAD (source) and the tag's
	// bits (hashAlg).
	hashAlg, mgf, extra uint64
	source              []byte
	// aesBits: for CKM_RSA_AES_KEY_WRAP, the ephemeral AES key's bits
	// (its OAEP parameters are in hashAlg, mgf, extra and source).
	aesBits uint64
	// For CKM_HKDF_DERIVE: extract and expand; the PRF's hash is hashAlg,
	// the salt type extra, the salt param, the salt key saltKey, the info
	// source.
	extract, expand bool
	saltKey         uint64
}

// decoder reads a request body against its signature.
type decoder struct {
	b   []byte
	sig string // what remains of the signature
	err error
}

// parseRequest reads the call id and checks the signature of body.
func parseRequest(body []byte) (int, *decoder, error) {
	d := &decoder{b: body}
	id := d.u32()
	if d.err != nil || id == callError || id >= callMax {
		return 0, nil, errParse
	}
	sig, ok := d.array()
	if !ok || sig == nil || string(sig) != calls[id].req {
		return 0, nil, errParse
	}
	d.sig = calls[id].req
	return int(id), d, nil
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errParse
	}
}

// part checks that the next part of the signature is p.
func (d *decoder) part(p string) {
	if d.err != nil {
		return
	}
	if len(d.sig) < len(p) || d.sig[:len(p)] != p {
		d.fail()
		return
	}
	d.sig = d.sig[len(p):]
}

// done reports an error if anything is left unread.
func (d *decoder) done() error {
	if d.err == nil && (len(d.b) != 0 || d.sig != "") {
		d.fail()
	}
	return d.err
}

func (d *decoder) take(n int) []byte {
	if d.err != nil || n < 0 || n > len(d.b) {
		d.fail()
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() byte {
	v := d.take(1)
	if v == nil {
		return 0
	}
	return v[0]
}

func (d *decoder) u32() uint32 {
	v := d.take(4)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint32(v)
}

func (d *decoder) u64() uint64 {
	v := d.take(8)
	if v == nil {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

// array reads a byte array: nil, true for a null one.
func (d *decoder) array() ([]byte, bool) {
	n := d.u32()
	if d.err != nil {
		return nil, false
	}
	if n == 0xffffffff {
		return nil, true
	}
	if n >= 0x7fffffff {
		d.fail()
		return nil, false
	}
	v := d.take(int(n))
	return v, d.err == nil
}

// Byte reads a "y".
func (d *decoder) Byte() byte {
	d.part("y")
	return d.u8()
}

// Ulong reads a "u".
func (d *decoder) Ulong() uint64 {
	d.part("u")
	return d.u64()
}

// Bytes reads an "ay": a presence byte, then the array; nil if absent.
func (d *decoder) Bytes() []byte {
	d.part("ay")
	if d.u8() == 0 {
		return nil
	}
	v, _ := d.array()
	if v == nil {
		v = []byte{}
	}
	return v
}

// Zstring reads a "z".
func (d *decoder) Zstring() []byte {
	d.part("z")
	v, _ := d.array()
	return v
}

// Buffer reads an "fy" or "fu": the room the client has (0: a length
// query).
func (d *decoder) Buffer(kind string) uint32 {
	d.part("f" + kind)
	n := d.u32()
	return n
}

// AttrBuffer reads an "fA": types and the room for each value.
func (d *decoder) AttrBuffer() []attr {
	d.part("fA")
	n := d.u32()
	if d.err != nil || n > maxAttributes {
		d.fail()
		return nil
	}
	out := make([]attr, n)
	for i := range out {
		out[i].typ = d.u32()
		out[i].size = d.u32()
	}
	if d.err != nil {
		return nil
	}
	return out
}

// Attrs reads an "aA": a template with values.
func (d *decoder) Attrs() []attr {
	d.part("aA")
	n := d.u32()
	if d.err != nil || n > maxAttributes {
		d.fail()
		return nil
	}
	out := make([]attr, n)
	for i := range out {
		out[i] = d.attribute()
	}
	if d.err != nil {
		return nil
	}
	return out
}

// attribute reads one attribute with its value, which is encoded by the
// attribute's kind (valueKind).
func (d *decoder) attribute() attr {
	a := attr{typ: d.u32()}
	if d.u8() == 0 {
		a.invalid = true
		return a
	}
	a.size = d.u32()
	switch valueKind(a.typ) {
	case kindByte:
		a.value = []byte{d.u8()}
	case kindUlong:
		var b [8]byte
		binary.NativeEndian.PutUint64(b[:], d.u64())
		a.value = b[:]
	case kindAttrs, kindMechs:
		// Templates inside templates (CKA_WRAP_TEMPLATE) and mechanism
		// lists (CKA_ALLOWED_MECHANISMS) are refused by the front; they
		// are skipped here without recursion.
		d.fail()
	default:
		v, _ := d.array()
		a.value = v
	}
	return a
}

// Mechanism reads an "M". Parameters are kept as sent; those of RSA-PSS
// and RSA-OAEP (the only ones p11-kit 0.24 sends in their own encoding)
// are decoded.
func (d *decoder) Mechanism() mechanism {
	d.part("M")
	m := mechanism{typ: uint64(d.u32())}
	switch m.typ {
	case ckmRSAPKCSPSS, ckmSHA256RSAPKCSPSS, ckmSHA384RSAPKCSPSS, ckmSHA512RSAPKCSPSS:
		m.hashAlg, m.mgf, m.extra = d.u64(), d.u64(), d.u64()
		m.hasParam = true
		return m
	case ckmRSAPKCSOAEP:
		m.hashAlg, m.mgf, m.extra = d.u64(), d.u64(), d.u64()
		m.source, _ = d.array()
		m.hasParam = true
		return m
	case ckmRSAAESKeyWrap:
		// keywarden's module (no p11-kit release sends this one): the
		// AES key's bits, then the OAEP parameters as for RSA-OAEP.
		m.aesBits = d.u64()
		m.hashAlg, m.mgf, m.extra = d.u64(), d.u64(), d.u64()
		m.source, _ = d.array()
		m.hasParam = true
		return m
	case ckmHKDFDerive:
		// keywarden's module: extract, expand, the PRF, the salt type,
		// the salt, the salt key, the info.
		m.extract, m.expand = d.u8() != 0, d.u8() != 0
		m.hashAlg, m.extra = d.u64(), d.u64()
		m.param, _ = d.array()
		m.saltKey = d.u64()
		m.source, _ = d.array()
		m.hasParam = true
		return m
	case ckmECDH1Derive:
		// CK_ECDH1_DERIVE_PARAMS as p11-kit and keywarden's module send
		// it: the KDF, the shared data, the peer's public data.
		m.extra = d.u64()
		m.param, _ = d.array()
		m.source, _ = d.array()
		m.hasParam = true
		return m
	case ckmAESGCM:
		// p11-kit 0.25 and later: IV, IV bits, AAD, tag bits.
		m.param, _ = d.array()
		m.extra = d.u64()
		m.source, _ = d.array()
		m.hashAlg = d.u64() // the tag's bits
		m.hasParam = true
		return m
	}
	v, _ := d.array()
	m.param, m.hasParam = v, v != nil
	return m
}

// Value kinds of attributes, as p11-kit encodes them.
const (
	kindBytes = iota
	kindByte
	kindUlong
	kindAttrs
	kindMechs
	kindDate
)

func valueKind(t uint32) int {
	switch t {
	case ckaToken, ckaPrivate, 0x86 /* CKA_TRUSTED */, ckaSensitive, ckaEncrypt, ckaDecrypt, ckaWrap, ckaUnwrap,
		ckaSign, ckaSignRecover, ckaVerify, ckaVerifyRecover, ckaDerive, ckaExtractable, ckaLocal,
		ckaNeverExtractable, ckaAlwaysSensitive, ckaModifiable, ckaCopyable, 0x300, /* CKA_SECONDARY_AUTH */
		ckaAlwaysAuth, ckaWrapWithTrusted, 0x301 /* CKA_RESET_ON_INIT */, 0x302 /* CKA_HAS_RESET */, 0x405 /* CKA_COLOR */ :
		return kindByte
	case ckaClass, 0x80 /* CKA_CERTIFICATE_TYPE */, 0x87 /* CKA_CERTIFICATE_CATEGORY */, 0x88, /* CKA_JAVA_MIDP_SECURITY_DOMAIN */
		ckaKeyType, ckaModulusBits, 0x133 /* CKA_PRIME_BITS */, 0x134 /* CKA_SUB_PRIME_BITS */, 0x160 /* CKA_VALUE_BITS */, ckaValueLen,
		ckaKeyGenMechanism, 0x201 /* CKA_AUTH_PIN_FLAGS */, 0x400, 0x401, 0x402, 0x403, 0x404, 0x406,
		0x500 /* CKA_MECHANISM_TYPE */ :
		return kindUlong
	case 0x40000211, 0x40000212: // CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE
		return kindAttrs
	case 0x40000600: // CKA_ALLOWED_MECHANISMS
		return kindMechs
	case ckaStartDate, ckaEndDate:
		return kindDate
	}
	return kindBytes
}

// encoder writes a response body.
type encoder struct {
	b []byte
}

func newResponse(id int) *encoder {
	e := &encoder{b: make([]byte, 0, 256)}
	e.u32(uint32(id))
	e.array([]byte(calls[id].resp))
	return e
}

// errorResponse is the body of a failed call's response.
func errorResponse(rv uint64) []byte {
	e := newResponse(callError)
	e.u64(rv)
	return e.b
}

func (e *encoder) u8(v byte)    { e.b = append(e.b, v) }
func (e *encoder) u32(v uint32) { e.b = binary.BigEndian.AppendUint32(e.b, v) }
func (e *encoder) u64(v uint64) { e.b = binary.BigEndian.AppendUint64(e.b, v) }

func (e *encoder) array(v []byte) {
	if v == nil {
		e.u32(0xffffffff)
		return
	}
	e.u32(uint32(len(v)))
	e.b = append(e.b, v...)
}

// Ulong writes a "u".
func (e *encoder) Ulong(v uint64) { e.u64(v) }

// Version writes a "v".
func (e *encoder) Version(major, minor byte) { e.u8(major); e.u8(minor) }

// Space writes an "s" of n bytes: s padded with spaces.
func (e *encoder) Space(s string, n int) {
	b := make([]byte, n)
	for i := range b {
		b[i] = ' '
	}
	copy(b, s)
	e.array(b)
}

// Bytes writes an "ay": data, or with data nil only its length n (the
// answer to a length query, or to a buffer too small).
func (e *encoder) Bytes(data []byte, n int) {
	if data == nil {
		e.u8(0)
		e.u32(uint32(n))
		return
	}
	e.u8(1)
	e.array(data)
}

// Ulongs writes an "au": vs, or with vs nil only its length n.
func (e *encoder) Ulongs(vs []uint64, n int) {
	if vs == nil {
		e.u8(0)
		e.u32(uint32(n))
		return
	}
	e.u8(1)
	e.u32(uint32(len(vs)))
	for _, v := range vs {
		e.u64(v)
	}
}

// attrOut is one attribute of a C_GetAttributeValue answer.
type attrOut struct {
	typ uint32
	// length is the value's length in the C API (1 for a CK_BBOOL, 8 for
	// a CK_ULONG); -1 marks the attribute invalid (sensitive, unknown, or
	// a buffer too small).
	length int64
	// value is the value in the C API's layout, or nil when only the
	// length is given.
	value []byte
}

// Attrs writes an "aA".
func (e *encoder) Attrs(as []attrOut) {
	e.u32(uint32(len(as)))
	for _, a := range as {
		e.u32(a.typ)
		if a.length < 0 {
			e.u8(0)
			continue
		}
		e.u8(1)
		e.u32(uint32(a.length))
		switch valueKind(a.typ) {
		case kindByte:
			var v byte
			if len(a.value) > 0 {
				v = a.value[0]
			}
			e.u8(v)
		case kindUlong:
			var v uint64
			if len(a.value) == 8 {
				v = binary.NativeEndian.Uint64(a.value)
			}
			e.u64(v)
		case kindAttrs, kindMechs:
			e.u32(0)
		default:
			e.array(a.value)
		}
	}
}

// frameHeader is the length of a frame's header.
const frameHeader = 12

// frame is one message of the transport.
type frame struct {
	code    uint32
	options []byte
	body    []byte
}

// parseHeader reads a frame header and checks its lengths. A frame
// longer than the front takes is errTooLong, with its code and lengths
// (the front answers it without reading it into memory: conn.oversized).
func parseHeader(h []byte) (code, olen, blen uint32, err error) {
	code = binary.BigEndian.Uint32(h[0:4])
	olen = binary.BigEndian.Uint32(h[4:8])
	blen = binary.BigEndian.Uint32(h[8:12])
	if olen > maxOptions || blen > maxBody {
		return code, olen, blen, errTooLong
	}
	return code, olen, blen, nil
}

// errTooLong: a frame's options or body are longer than the front takes.
var errTooLong = errors.New("p11front: frame too long")

// appendFrame appends the frame of a response body.
func appendFrame(dst []byte, code uint32, body []byte) []byte {
	dst = binary.BigEndian.AppendUint32(dst, code)
	dst = binary.BigEndian.AppendUint32(dst, 0)
	dst = binary.BigEndian.AppendUint32(dst, uint32(len(body)))
	return append(dst, body...)
}

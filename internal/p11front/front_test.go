package p11front

import (
	"bytes"
	"context"
	"crypto/sha256"
	"os"
	"os/exec"
	"regexp"
	"strconv"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// getAttr asks for one attribute of object o and returns the call's
// return value (from the response) and the value (nil if invalid).
func (cl *client) getAttr(s, o uint64, typ uint32) (uint64, []byte) {
	cl.t.Helper()
	d := cl.ok(cl.call(callGetAttributeValue, func(e *encoder) {
		e.u64(s)
		e.u64(o)
		e.u32(1)
		e.u32(typ)
		e.u32(4096)
	}))
	d.part("aA")
	if n := d.u32(); n != 1 {
		cl.t.Fatalf("%d attributes in the answer", n)
	}
	d.u32()
	valid := d.u8()
	var v []byte
	if valid == 1 {
		d.u32()
		switch valueKind(typ) {
		case kindByte:
			v = []byte{d.u8()}
		case kindUlong:
			v = ulongVal(d.u64())
		default:
			v, _ = d.array()
		}
	}
	d.part("u")
	rv := d.u64()
	if d.done() != nil {
		cl.t.Fatal("malformed GetAttributeValue answer")
	}
	return rv, v
}

// An attack: read the value of a key that is not exportable. The
// attribute is sensitive; nothing of the key comes back.
func TestSensitiveValueIsNeverRead(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, false), boolAttr(ckaSensitive, true), ulongAttr(ckaValueLen, 32))
	rv, v := cl.getAttr(s, h, ckaValue)
	if rv != ckrAttributeSensitive || v != nil {
		t.Fatalf("CKA_VALUE of a sensitive key: rv %#x, value %x", rv, v)
	}
	// Switching CKA_SENSITIVE off, or CKA_EXTRACTABLE on, is refused.
	for _, a := range []tmplAttr{boolAttr(ckaSensitive, false), boolAttr(ckaExtractable, true)} {
		rv, _ := cl.call(callSetAttributeValue, func(e *encoder) { e.u64(s); e.u64(h); writeAttrs(e, []tmplAttr{a}) })
		if rv != ckrAttributeReadOnly {
			t.Fatalf("setting attribute %#x to %v: rv %#x", a.typ, a.value, rv)
		}
	}
	if rv, v := cl.getAttr(s, h, ckaValue); rv != ckrAttributeSensitive || v != nil {
		t.Fatalf("CKA_VALUE after the attempts: rv %#x", rv)
	}
}

// A usage can be dropped through C_SetAttributeValue (the core's rule:
// usage only shrinks), never added.
func TestUsageOnlyShrinks(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, false), boolAttr(ckaEncrypt, true), boolAttr(ckaDecrypt, false))
	rv, _ := cl.call(callSetAttributeValue, func(e *encoder) { e.u64(s); e.u64(h); writeAttrs(e, []tmplAttr{boolAttr(ckaDecrypt, true)}) })
	if rv != ckrAttributeReadOnly {
		t.Fatalf("adding decrypt: rv %#x", rv)
	}
	cl.ok(cl.call(callSetAttributeValue, func(e *encoder) { e.u64(s); e.u64(h); writeAttrs(e, []tmplAttr{boolAttr(ckaEncrypt, false)}) }))
	if _, v := cl.getAttr(s, h, ckaEncrypt); len(v) != 1 || v[0] != 0 {
		t.Fatalf("CKA_ENCRYPT after dropping it: %v", v)
	}
}

func TestSecurityOfficerLoginRefused(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	rv, _ := cl.call(callLogin, func(e *encoder) { e.u64(s); e.u64(ckuSO); e.u8(1); e.array([]byte("any")) })
	if rv != ckrPinIncorrect {
		t.Fatalf("CKU_SO login: rv %#x", rv)
	}
	if !contains(tf.logText(t), "security officer") {
		t.Fatal("the refusal is not in the audit log")
	}
}

// Private and secret objects show only after login.
func TestPrivateObjectsNeedLogin(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, false))
	if n := len(cl.find(s, ulongAttr(ckaClass, ckoSecretKey))); n != 1 {
		t.Fatalf("%d secret keys after login", n)
	}
	cl.ok(cl.call(callLogout, func(e *encoder) { e.u64(s) }))
	if n := len(cl.find(s, ulongAttr(ckaClass, ckoSecretKey))); n != 0 {
		t.Fatalf("%d secret keys after logout", n)
	}
}

// Everything the daemon does not offer is CKR_MECHANISM_INVALID: no
// fallback to another mechanism.
func TestUnknownMechanismInvalid(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, false))
	for _, m := range []uint32{0x1081 /* CKM_AES_ECB */, 0x1082 /* CKM_AES_CBC */, 0x0003 /* CKM_RSA_X_509 */, 0x0220 /* CKM_SHA_1 */} {
		for _, call := range []int{callEncryptInit, callDecryptInit, callSignInit} {
			rv, _ := cl.call(call, func(e *encoder) { e.u64(s); e.u32(m); e.u32(0xffffffff); e.u64(h) })
			if rv != ckrMechanismInvalid {
				t.Errorf("%s with mechanism %#x: rv %#x", calls[call].name, m, rv)
			}
		}
		rv, _ := cl.call(callGetMechanismInfo, func(e *encoder) { e.u64(slotID); e.u64(uint64(m)) })
		if rv != ckrMechanismInvalid {
			t.Errorf("C_GetMechanismInfo(%#x): rv %#x", m, rv)
		}
	}
}

// An attack: a process that inherited (or was passed) another's
// connection writes on it. The front sees another writer's credentials
// on the bytes, records the refusal and closes the connection.
func TestOtherWriterClosesTheConnection(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	f, err := cl.c.(interface{ File() (*os.File, error) }).File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	body := request(callCloseSession, func(e *encoder) { e.u64(s) })
	frame := appendFrame(nil, 99, body)
	cmd := exec.Command("sh", "-c", `cat >&3`)
	cmd.Stdin = bytesReader(frame)
	cmd.ExtraFiles = []*os.File{f}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	cl.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var b [1]byte
	if n, err := cl.c.Read(b[:]); n != 0 || err == nil {
		t.Fatalf("the connection answered another writer: %d bytes, %v", n, err)
	}
	if !contains(tf.logText(t), "wrote on the connection") {
		t.Fatal("the refusal is not in the audit log")
	}
}

// The calls before C_Initialize, and a malformed request, fail without
// reaching the core.
func TestMalformedRequestRefused(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	body := request(callOpenSession, func(e *encoder) { e.u64(slotID) }) // a ulong short
	if rv, _ := cl.raw(body); rv != ckrDeviceError {
		t.Fatalf("short request: rv %#x", rv)
	}
	bad := request(callGetInfo, nil)
	bad[7] = 'x' // the signature does not match
	if rv, _ := cl.raw(bad); rv != ckrDeviceError {
		t.Fatalf("bad signature: rv %#x", rv)
	}
}

// gcm writes a CKM_AES_GCM mechanism as p11-kit 0.25 and later encode it.
func gcm(e *encoder, iv, aad []byte, tagBits uint64) {
	e.u32(ckmAESGCM)
	e.array(iv)
	e.u64(uint64(len(iv) * 8))
	e.array(aad)
	e.u64(tagBits)
}

// AES-GCM through PKCS #11: the daemon chooses the nonce, so the caller's
// IV must be zeros (an IV of the caller's choosing is refused, never
// silently replaced); the ciphertext carries the nonce, and decrypts with
// the same AAD only.
func TestAESGCMNonceIsTheDaemons(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, false))
	zero := make([]byte, 12)
	rv, _ := cl.call(callEncryptInit, func(e *encoder) { e.u64(s); gcm(e, []byte("caller's iv!"), nil, 128); e.u64(h) })
	if rv != ckrMechanismParamInvalid {
		t.Fatalf("a caller's IV: rv %#x", rv)
	}
	encrypt := func() []byte {
		cl.ok(cl.call(callEncryptInit, func(e *encoder) { e.u64(s); gcm(e, zero, []byte("aad"), 128); e.u64(h) }))
		d := cl.ok(cl.call(callEncrypt, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("secret message")); e.u32(4096) }))
		return d.Bytes()
	}
	c1, c2 := encrypt(), encrypt()
	if len(c1) == 0 || string(c1) == string(c2) {
		t.Fatalf("two encryptions: %x %x", c1, c2)
	}
	decrypt := func(aad string) (uint64, []byte) {
		cl.ok(cl.call(callDecryptInit, func(e *encoder) { e.u64(s); gcm(e, zero, []byte(aad), 128); e.u64(h) }))
		rv, d := cl.call(callDecrypt, func(e *encoder) { e.u64(s); e.u8(1); e.array(c1); e.u32(4096) })
		if rv != ckrOK {
			return rv, nil
		}
		return rv, d.Bytes()
	}
	if rv, pt := decrypt("aad"); rv != ckrOK || string(pt) != "secret message" {
		t.Fatalf("decrypt: rv %#x %q", rv, pt)
	}
	if rv, _ := decrypt("other"); rv != ckrEncryptedDataInvalid {
		t.Fatalf("decrypt with another AAD: rv %#x", rv)
	}
}

// An attack: use a handle of another connection (another process's
// session, or the same process's before C_Finalize). Handles are the
// connection's own: another's mean nothing.
func TestHandlesOfAnotherConnection(t *testing.T) {
	tf := newTestFront(t)
	a := tf.dial(t)
	sa := a.session()
	a.login(sa)
	h := a.generate(sa, ckmAESKeyGen, boolAttr(ckaToken, false))
	b := tf.dial(t)
	sb := b.session()
	b.login(sb)
	if rv, _ := b.getAttrRV(sb, h, ckaLabel); rv != ckrObjectHandleInvalid {
		t.Fatalf("another connection's object: rv %#x", rv)
	}
	rv, _ := b.call(callEncryptInit, func(e *encoder) { e.u64(sb); gcm(e, make([]byte, 12), nil, 128); e.u64(h) })
	if rv != ckrKeyHandleInvalid {
		t.Fatalf("another connection's key: rv %#x", rv)
	}
}

// An attack: a PKCS #1 v1.5 decryption oracle. RSA decrypts with OAEP
// only; CKM_RSA_PKCS is for signatures.
func TestRSAPKCS1DecryptionRefused(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	d := cl.ok(cl.call(callGenerateKeyPair, func(e *encoder) {
		e.u64(s)
		e.u32(ckmRSAPKCSKeyPairGen)
		e.u32(0xffffffff)
		writeAttrs(e, []tmplAttr{ulongAttr(ckaModulusBits, 2048), boolAttr(ckaEncrypt, true), boolAttr(ckaToken, false)})
		writeAttrs(e, []tmplAttr{boolAttr(ckaDecrypt, true)})
	}))
	d.Ulong()
	priv := d.Ulong()
	rv, _ := cl.call(callDecryptInit, func(e *encoder) { e.u64(s); e.u32(ckmRSAPKCS); e.u32(0xffffffff); e.u64(priv) })
	if rv != ckrMechanismInvalid {
		t.Fatalf("CKM_RSA_PKCS decryption: rv %#x", rv)
	}
}

// getAttrRV is getAttr for a call that may fail as a whole.
func (cl *client) getAttrRV(s, o uint64, typ uint32) (uint64, *decoder) {
	cl.t.Helper()
	return cl.call(callGetAttributeValue, func(e *encoder) { e.u64(s); e.u64(o); e.u32(1); e.u32(typ); e.u32(64) })
}

// A signature asked with a buffer too small, or with none: the answer is
// the length only (CKR_OK on the wire, as p11-kit's server answers, which
// its client turns into CKR_BUFFER_TOO_SMALL for a buffer too small), and
// the operation stays for the next call, which returns the signature.
func TestLengthQueryKeepsTheOperation(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	cl.ok(cl.call(callSignInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(h) }))
	for _, room := range []uint32{0, 16} {
		d := cl.ok(cl.call(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("data")); e.u32(room) }))
		d.part("ay")
		if valid, n := d.u8(), d.u32(); valid != 0 || n != 32 {
			t.Fatalf("room %d: valid %d length %d", room, valid, n)
		}
	}
	d := cl.ok(cl.call(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("data")); e.u32(64) }))
	if tag := d.Bytes(); len(tag) != 32 {
		t.Fatalf("tag of %d bytes", len(tag))
	}
	rv, _ := cl.call(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("data")); e.u32(64) })
	if rv != ckrOperationNotInitialized {
		t.Fatalf("the operation did not end with its result: rv %#x", rv)
	}
}

// Multi-part operations: C_*Update over the core's streams, of more than
// a message's worth of data; the result equals the one-shot's.
func TestMultiPartOverStreams(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	part := make([]byte, 512<<10)
	for i := range part {
		part[i] = byte(i)
	}
	// Digest of 3 × 512 KiB, more than one request may carry.
	cl.ok(cl.call(callDigestInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256); e.u32(0xffffffff) }))
	for range 3 {
		cl.ok(cl.call(callDigestUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array(part) }))
	}
	d := cl.ok(cl.call(callDigestFinal, func(e *encoder) { e.u64(s); e.u32(64) }))
	sum := d.Bytes()
	want := sha256.New()
	for range 3 {
		want.Write(part)
	}
	if !bytes.Equal(sum, want.Sum(nil)) {
		t.Fatalf("multi-part digest %x", sum)
	}
	// One shot of 512 KiB: a stream too.
	cl.ok(cl.call(callDigestInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256); e.u32(0xffffffff) }))
	d = cl.ok(cl.call(callDigest, func(e *encoder) { e.u64(s); e.u8(1); e.array(part); e.u32(64) }))
	if one := sha256.Sum256(part); !bytes.Equal(d.Bytes(), one[:]) {
		t.Fatal("one-shot digest of 512 KiB")
	}
	// HMAC in parts, verified in parts and in one shot.
	cl.ok(cl.call(callSignInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(h) }))
	for _, p := range []string{"multi", "-part"} {
		cl.ok(cl.call(callSignUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte(p)) }))
	}
	tag := cl.ok(cl.call(callSignFinal, func(e *encoder) { e.u64(s); e.u32(64) })).Bytes()
	cl.ok(cl.call(callVerifyInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(h) }))
	cl.ok(cl.call(callVerify, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("multi-part")); e.u8(1); e.array(tag) }))
	cl.ok(cl.call(callVerifyInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(h) }))
	cl.ok(cl.call(callVerifyUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("multi-pars")) }))
	rv, _ := cl.call(callVerifyFinal, func(e *encoder) { e.u64(s); e.u8(1); e.array(tag) })
	if rv != ckrSignatureInvalid {
		t.Fatalf("a changed message verified in parts: rv %#x", rv)
	}
}

// ECDSA with a hash in parts: the stream's ASN.1 signature comes back as
// PKCS #11's r ‖ s, and verifies in one shot and in parts.
func TestECDSAMultiPart(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	d := cl.ok(cl.call(callGenerateKeyPair, func(e *encoder) {
		e.u64(s)
		e.u32(ckmECKeyPairGen)
		e.u32(0xffffffff)
		writeAttrs(e, []tmplAttr{{ckaECParams, oidP256}, boolAttr(ckaToken, false), boolAttr(ckaVerify, true)})
		writeAttrs(e, []tmplAttr{boolAttr(ckaSign, true)})
	}))
	pub, priv := d.Ulong(), d.Ulong()
	cl.ok(cl.call(callSignInit, func(e *encoder) { e.u64(s); e.u32(ckmECDSASHA256); e.u32(0xffffffff); e.u64(priv) }))
	for _, p := range []string{"in ", "parts"} {
		cl.ok(cl.call(callSignUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte(p)) }))
	}
	sig := cl.ok(cl.call(callSignFinal, func(e *encoder) { e.u64(s); e.u32(128) })).Bytes()
	if len(sig) != 64 {
		t.Fatalf("signature of %d bytes", len(sig))
	}
	cl.ok(cl.call(callVerifyInit, func(e *encoder) { e.u64(s); e.u32(ckmECDSASHA256); e.u32(0xffffffff); e.u64(pub) }))
	cl.ok(cl.call(callVerify, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("in parts")); e.u8(1); e.array(sig) }))
	cl.ok(cl.call(callVerifyInit, func(e *encoder) { e.u64(s); e.u32(ckmECDSASHA256); e.u32(0xffffffff); e.u64(pub) }))
	cl.ok(cl.call(callVerifyUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("in parts")) }))
	cl.ok(cl.call(callVerifyFinal, func(e *encoder) { e.u64(s); e.u8(1); e.array(sig) }))
}

// A VM generation change (a snapshot restored, a clone) under an open
// multi-part operation: the operation fails (CKR_DEVICE_ERROR, the core's
// GENERATION_CHANGED), and a new one on the same session works.
func TestGenerationChangeUnderAnOperation(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("bumping the generation needs root")
	}
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	sign := func() {
		cl.ok(cl.call(callSignInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(h) }))
		cl.ok(cl.call(callSignUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("before")) }))
	}
	sign()
	bump(t, tf)
	rv, _ := cl.call(callSignUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("after")) })
	if rv != ckrDeviceError {
		t.Fatalf("an update after the generation changed: rv %#x", rv)
	}
	if rv, _ := cl.call(callSignFinal, func(e *encoder) { e.u64(s); e.u32(64) }); rv != ckrOperationNotInitialized {
		t.Fatalf("the failed operation is still there: rv %#x", rv)
	}
	sign()
	if tag := cl.ok(cl.call(callSignFinal, func(e *encoder) { e.u64(s); e.u32(64) })).Bytes(); len(tag) != 32 {
		t.Fatalf("a new operation after the change: %d bytes", len(tag))
	}
}

// bump changes the machine generation, as an orchestrator would.
func bump(t *testing.T, tf *testFront) {
	t.Helper()
	id := server.Identity{PID: int32(os.Getpid()), UID: 0, GID: 0, Pidfd: -1}
	ss, err := tf.srv.NewSession(context.Background(), "test-admin", id)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	rep, err := ss.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: 1,
		Ops: []*wire.Op{{Op: &wire.Op_GenerationBump{GenerationBump: &wire.GenerationBump{KernelReseeded: true}}}}})
	if err != nil || rep.Status != wire.Status_STATUS_OK || rep.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("bump: %v %v", err, rep)
	}
}

// The C module refuses a request longer than the front takes before
// sending it: its bound is the front's.
func TestModuleRequestBound(t *testing.T) {
	src, err := os.ReadFile("../../pkcs11/keywarden-pkcs11.c")
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^#define MAX_REQUEST \((\d+)u << (\d+)\)$`).FindSubmatch(src)
	if m == nil {
		t.Fatal("no MAX_REQUEST in the module")
	}
	a, _ := strconv.Atoi(string(m[1]))
	b, _ := strconv.Atoi(string(m[2]))
	if a<<b != maxBody {
		t.Fatalf("the module's MAX_REQUEST is %d, the front's maxBody %d", a<<b, maxBody)
	}
}

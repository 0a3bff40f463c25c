package p11front

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/sha512"
	"crypto/x509"
	"encoding/asn1"
	"hash"
	"os"
	"testing"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// coreECDH makes an ECDH P-256 key named name through the core, as the
// test's own uid, and returns its public key.
func coreECDH(t *testing.T, tf *testFront, name string, exportable, wrappable bool) *ecdh.PublicKey {
	t.Helper()
	id := server.Identity{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Pidfd: -1}
	ss, err := tf.srv.NewSession(context.Background(), "test-core", id)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	rep, err := ss.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: 1,
		Ops: []*wire.Op{{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
			Name: name, Type: wire.KeyType_KEY_TYPE_ECDH_P256, Exportable: exportable, Wrappable: wrappable,
			Usage: uint32(wire.Usage_USAGE_DERIVE)}}}}}})
	if err != nil || rep.Status != wire.Status_STATUS_OK || rep.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("ECDH key: %v %v", err, rep)
	}
	pub, err := x509.ParsePKIXPublicKey(rep.Results[0].GetKey().GetInfo().GetPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	dh, err := pub.(*ecdsa.PublicKey).ECDH()
	if err != nil {
		t.Fatal(err)
	}
	return dh
}

// ecdhDerive calls C_DeriveKey with CKM_ECDH1_DERIVE.
func (cl *client) ecdhDerive(s, base, kdf uint64, shared, public []byte, as ...tmplAttr) (uint64, uint64) {
	cl.t.Helper()
	rv, d := cl.call(callDeriveKey, func(e *encoder) {
		e.u64(s)
		e.u32(ckmECDH1Derive)
		e.u64(kdf)
		e.array(shared)
		e.array(public)
		e.u64(base)
		writeAttrs(e, as)
	})
	if rv != ckrOK {
		return rv, 0
	}
	return rv, d.Ulong()
}

// x963KDF is ANSI X9.63's KDF, written from SEC 1 section 3.6.1.
func x963KDF(h func() hash.Hash, z, shared []byte, n int) []byte {
	var out []byte
	for c := byte(1); len(out) < n; c++ {
		hh := h()
		hh.Write(z)
		hh.Write([]byte{0, 0, 0, c})
		hh.Write(shared)
		out = hh.Sum(out)
	}
	return out[:n]
}

// CKM_ECDH1_DERIVE from a P-256 key of the daemon's: CKD_NULL gives the
// shared secret (a generic secret as long as it by default), the SHA-2
// KDFs X9.63 of it with the shared data; the peer's point is taken raw or
// wrapped in an OCTET STRING; what is not offered is refused with the
// code PKCS #11 gives it.
func TestECDH1Derive(t *testing.T) {
	tf := newTestFront(t)
	mine := coreECDH(t, tf, "dh", true, true)
	peer, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	point := peer.PublicKey().Bytes()
	wrapped := mustDER(point)

	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	hs := cl.find(s, tmplAttr{ckaLabel, []byte("dh")}, ulongAttr(ckaClass, ckoPrivateKey))
	if len(hs) != 1 {
		t.Fatalf("private objects labelled dh: %v", hs)
	}
	base := hs[0]
	for _, a := range []struct {
		typ  uint32
		want []byte
	}{{ckaKeyType, ulongVal(ckkEC)}, {ckaDerive, boolVal(true)}, {ckaSign, boolVal(false)}, {ckaECParams, oidP256}} {
		if rv, v := cl.getAttr(s, base, a.typ); rv != ckrOK || !bytes.Equal(v, a.want) {
			t.Fatalf("attribute %#x of the ECDH key: rv %#x, %x", a.typ, rv, v)
		}
	}
	pubs := cl.find(s, tmplAttr{ckaLabel, []byte("dh")}, ulongAttr(ckaClass, ckoPublicKey))
	if rv, v := cl.getAttr(s, pubs[0], ckaECPoint); rv != ckrOK || !bytes.Equal(v, mustDER(mine.Bytes())) {
		t.Fatalf("CKA_EC_POINT: rv %#x, %x", rv, v)
	}

	secret := func(as ...tmplAttr) []tmplAttr {
		return append([]tmplAttr{ulongAttr(ckaClass, ckoSecretKey), boolAttr(ckaToken, false), boolAttr(ckaSensitive, false)}, as...)
	}
	generic := ulongAttr(ckaKeyType, ckkGenericSecret)
	data := []byte("shared data")
	raw := func(z []byte) []byte { return z }
	for _, tc := range []struct {
		name   string
		kdf    uint64
		shared []byte
		der    bool
		tmpl   []tmplAttr
		want   func(z []byte) []byte
	}{
		{"raw point, generic secret of the secret's length", ckdNull, nil, false, secret(generic), raw},
		{"DER point, AES", ckdNull, nil, true, secret(ulongAttr(ckaKeyType, ckkAES), ulongAttr(ckaValueLen, 32)), raw},
		{"SHA-256 KDF", ckdSHA256KDF, data, false, secret(generic, ulongAttr(ckaValueLen, 64)),
			func(z []byte) []byte { return x963KDF(sha256.New, z, data, 64) }},
		{"SHA-384 KDF, no shared data", ckdSHA384KDF, nil, true, secret(generic, ulongAttr(ckaValueLen, 48)),
			func(z []byte) []byte { return x963KDF(sha512.New384, z, nil, 48) }},
		{"SHA-512 KDF", ckdSHA512KDF, data, false, secret(ulongAttr(ckaKeyType, ckkAES)),
			func(z []byte) []byte { return x963KDF(sha512.New, z, data, 32) }},
	} {
		// A peer of its own each: the same bytes as two key types would
		// be refused (the core's copy rule).
		peer, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		z, err := peer.ECDH(mine)
		if err != nil {
			t.Fatal(err)
		}
		public := peer.PublicKey().Bytes()
		if tc.der {
			public = mustDER(public)
		}
		rv, h := cl.ecdhDerive(s, base, tc.kdf, tc.shared, public, tc.tmpl...)
		if rv != ckrOK {
			t.Fatalf("%s: rv %#x", tc.name, rv)
		}
		if rv, v := cl.getAttr(s, h, ckaValue); rv != ckrOK || !bytes.Equal(v, tc.want(z)) {
			t.Fatalf("%s: CKA_VALUE rv %#x, differs from the stdlib's: %t", tc.name, rv, !bytes.Equal(v, tc.want(z)))
		}
	}
	// The same secret again as another type is refused, not a second
	// key type for the same bytes.
	rv, _ := cl.ecdhDerive(s, base, ckdNull, nil, point, secret(generic)...)
	if rv != ckrOK {
		t.Fatalf("raw derive: rv %#x", rv)
	}
	if rv, _ := cl.ecdhDerive(s, base, ckdNull, nil, point, secret(ulongAttr(ckaKeyType, ckkAES))...); rv != ckrTemplateInconsistent {
		t.Fatalf("the same secret as AES: rv %#x", rv)
	}

	offCurve := bytes.Clone(point)
	offCurve[len(offCurve)-1] ^= 1
	hmacKey := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32), boolAttr(ckaDerive, true))
	for _, tc := range []struct {
		name   string
		base   uint64
		kdf    uint64
		shared []byte
		public []byte
		tmpl   []tmplAttr
		want   uint64
	}{
		{"SHA-1 KDF", base, ckdSHA1KDF, nil, point, secret(generic), ckrMechanismParamInvalid},
		{"SHA-224 KDF", base, ckdSHA224KDF, nil, point, secret(generic), ckrMechanismParamInvalid},
		{"unknown KDF", base, 99, nil, point, secret(generic), ckrMechanismParamInvalid},
		{"CKD_NULL with shared data", base, ckdNull, data, point, secret(generic), ckrMechanismParamInvalid},
		{"no point", base, ckdNull, nil, nil, secret(generic), ckrMechanismParamInvalid},
		{"a P-384 point", base, ckdNull, nil, make([]byte, 97), secret(generic), ckrMechanismParamInvalid},
		{"DER with trailing bytes", base, ckdNull, nil, append(bytes.Clone(wrapped), 0), secret(generic), ckrMechanismParamInvalid},
		{"point off the curve", base, ckdNull, nil, offCurve, secret(generic), ckrMechanismParamInvalid},
		{"raw secret longer than the shared secret", base, ckdNull, nil, point, secret(generic, ulongAttr(ckaValueLen, 64)), ckrTemplateInconsistent},
		{"into a private key", base, ckdNull, nil, point, []tmplAttr{ulongAttr(ckaClass, ckoPrivateKey), ulongAttr(ckaKeyType, ckkEC), {ckaECParams, oidP256}}, ckrTemplateInconsistent},
		{"from an HMAC key", hmacKey, ckdNull, nil, point, secret(generic), ckrKeyTypeInconsistent},
	} {
		if rv, _ := cl.ecdhDerive(s, tc.base, tc.kdf, tc.shared, tc.public, tc.tmpl...); rv != tc.want {
			t.Errorf("%s: rv %#x, want %#x", tc.name, rv, tc.want)
		}
	}

	// The mechanism is listed, for deriving on named P-256/P-384 curves
	// (and with X25519 keys, of 255 bits).
	d := cl.ok(cl.call(callGetMechanismInfo, func(e *encoder) { e.u64(slotID); e.u64(ckmECDH1Derive) }))
	if lo, hi, flags := d.Ulong(), d.Ulong(), d.Ulong(); lo != 255 || hi != 384 || flags != ckfMechDerive|ecFlags {
		t.Fatalf("CKM_ECDH1_DERIVE info: %d %d %#x", lo, hi, flags)
	}
}

// A key derived from a non-exportable ECDH key is never exportable: asked
// for, it is refused; made sensitive, its value cannot be read.
func TestECDH1DeriveNonExportable(t *testing.T) {
	tf := newTestFront(t)
	coreECDH(t, tf, "dh", false, false)
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	base := cl.find(s, tmplAttr{ckaLabel, []byte("dh")}, ulongAttr(ckaClass, ckoPrivateKey))[0]
	tmpl := func(sensitive bool) []tmplAttr {
		return []tmplAttr{ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkGenericSecret), boolAttr(ckaToken, false),
			boolAttr(ckaSensitive, sensitive)}
	}
	if rv, _ := cl.ecdhDerive(s, base, ckdNull, nil, peer.PublicKey().Bytes(), tmpl(false)...); rv != ckrTemplateInconsistent {
		t.Fatalf("an exportable child of a non-exportable key: rv %#x", rv)
	}
	rv, h := cl.ecdhDerive(s, base, ckdNull, nil, peer.PublicKey().Bytes(), tmpl(true)...)
	if rv != ckrOK {
		t.Fatalf("a sensitive child: rv %#x", rv)
	}
	if rv, v := cl.getAttr(s, h, ckaValue); rv != ckrAttributeSensitive || v != nil {
		t.Fatalf("CKA_VALUE of the child: rv %#x, %d bytes", rv, len(v))
	}
	if rv, v := cl.getAttr(s, h, ckaSensitive); rv != ckrOK || !bytes.Equal(v, boolVal(true)) {
		t.Fatalf("CKA_SENSITIVE of the child: rv %#x, %x", rv, v)
	}
}

func mustDER(b []byte) []byte {
	out, err := asn1.Marshal(b)
	if err != nil {
		panic(err)
	}
	return out
}

// Attacks on a key derived by CKM_ECDH1_DERIVE from a non-exportable,
// non-wrappable ECDH key, whose bytes the caller computes from the
// peer's private key: it is not made extractable at derivation or after,
// not made readable after, not wrapped; as a wrapping key (the caller
// knows it) it wraps no key; malformed points (the identity, an empty
// OCTET STRING, the public object as base) get a typed refusal.
func TestECDH1DeriveAttacks(t *testing.T) {
	tf := newTestFront(t)
	coreECDH(t, tf, "dh", false, false)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	base := cl.find(s, tmplAttr{ckaLabel, []byte("dh")}, ulongAttr(ckaClass, ckoPrivateKey))[0]
	pubObj := cl.find(s, tmplAttr{ckaLabel, []byte("dh")}, ulongAttr(ckaClass, ckoPublicKey))[0]
	point := func() []byte {
		p, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return p.PublicKey().Bytes()
	}
	aes := func(as ...tmplAttr) []tmplAttr {
		return append([]tmplAttr{ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkAES), boolAttr(ckaToken, false)}, as...)
	}
	if rv, _ := cl.ecdhDerive(s, base, ckdNull, nil, point(), aes(boolAttr(ckaExtractable, true))...); rv != ckrTemplateInconsistent {
		t.Fatalf("an extractable child of a non-wrappable key: rv %#x", rv)
	}
	if rv, _ := cl.ecdhDerive(s, base, ckdSHA256KDF, []byte("x"), point(), aes(boolAttr(ckaSensitive, false), boolAttr(ckaExtractable, false))...); rv != ckrTemplateInconsistent {
		t.Fatalf("a non-sensitive X9.63 child of a non-exportable key: rv %#x", rv)
	}
	rv, h := cl.ecdhDerive(s, base, ckdNull, nil, point(), aes(boolAttr(ckaWrap, true), boolAttr(ckaUnwrap, true), boolAttr(ckaEncrypt, false), boolAttr(ckaDecrypt, false))...)
	if rv != ckrOK {
		t.Fatalf("a wrapping child: rv %#x", rv)
	}
	for _, a := range []tmplAttr{boolAttr(ckaSensitive, false), boolAttr(ckaExtractable, true)} {
		if rv, _ := cl.call(callSetAttributeValue, func(e *encoder) { e.u64(s); e.u64(h); writeAttrs(e, []tmplAttr{a}) }); rv == ckrOK {
			t.Fatalf("C_SetAttributeValue %#x on the child", a.typ)
		}
	}
	if rv, v := cl.getAttr(s, h, ckaValue); rv != ckrAttributeSensitive || v != nil {
		t.Fatalf("CKA_VALUE of the child: rv %#x", rv)
	}
	victim := cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32), boolAttr(ckaExtractable, true))
	if rv, blob := cl.wrapKey(s, ckmAESKeyWrap, h, victim); rv == ckrOK {
		t.Fatalf("a key the caller computes wrapped another: %d bytes", len(blob))
	}
	kek := cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32), boolAttr(ckaWrap, true), boolAttr(ckaUnwrap, true),
		boolAttr(ckaEncrypt, false), boolAttr(ckaDecrypt, false), boolAttr(ckaExtractable, false))
	_, child := cl.ecdhDerive(s, base, ckdSHA384KDF, nil, point(), aes()...)
	if rv, blob := cl.wrapKey(s, ckmAESKeyWrap, kek, child); rv == ckrOK {
		t.Fatalf("the child of a non-wrappable key wrapped: %d bytes", len(blob))
	}

	for _, tc := range []struct {
		name   string
		base   uint64
		kdf    uint64
		public []byte
	}{
		{"the identity", base, ckdNull, []byte{0}},
		{"the identity in DER", base, ckdSHA256KDF, mustDER([]byte{0})},
		{"an empty OCTET STRING", base, ckdNull, mustDER(nil)},
		{"a huge DER length", base, ckdNull, []byte{4, 0x84, 0xff, 0xff, 0xff, 0xff}},
		{"x beyond the field", base, ckdNull, append([]byte{2}, bytes.Repeat([]byte{0xff}, 32)...)},
		{"a hybrid point", base, ckdNull, append([]byte{6}, point()[1:]...)},
		{"the public object as base", pubObj, ckdNull, point()},
	} {
		if rv, _ := cl.ecdhDerive(s, tc.base, tc.kdf, nil, tc.public, aes()...); rv != ckrMechanismParamInvalid && rv != ckrKeyTypeInconsistent {
			t.Errorf("%s: rv %#x", tc.name, rv)
		}
	}
	if rv, _ := cl.ecdhDerive(s, base, ckdSHA512KDF, bytes.Repeat([]byte{1}, 60<<10), point(), aes()...); rv == ckrGeneralError {
		t.Fatalf("60 KiB of shared data: rv %#x", rv)
	}
	if rv, _ := cl.ecdhDerive(s, base, ckdNull, nil, point(), aes()...); rv != ckrOK {
		t.Fatalf("the front after the malformed calls: rv %#x", rv)
	}
}

// A derived key is always sensitive, and never extractable, only if it
// is itself sensitive (not extractable) and its base key was always
// sensitive (never extractable) when it was derived, as PKCS #11 has it:
// not from an exportable, wrappable ECDH key; from a generated HMAC key
// that is neither, and from a key derived from that one in turn; always
// sensitive but not never extractable from a base key that is sensitive
// but extractable (a derived key is never more extractable than its base
// key, so an extractable child needs one).
func TestDerivedKeyProvenance(t *testing.T) {
	tf := newTestFront(t)
	coreECDH(t, tf, "dh", true, true)
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	base := cl.find(s, tmplAttr{ckaLabel, []byte("dh")}, ulongAttr(ckaClass, ckoPrivateKey))[0]
	child := func(extractable bool) []tmplAttr {
		return []tmplAttr{ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkGenericSecret), boolAttr(ckaToken, false),
			boolAttr(ckaSensitive, true), boolAttr(ckaExtractable, extractable), boolAttr(ckaDerive, true)}
	}
	rv, fromDH := cl.ecdhDerive(s, base, ckdNull, nil, peer.PublicKey().Bytes(), child(false)...)
	if rv != ckrOK {
		t.Fatalf("ECDH derive: rv %#x", rv)
	}
	hkdf := func(from uint64, extractable bool) uint64 {
		d := cl.ok(cl.call(callDeriveKey, func(e *encoder) {
			e.u64(s)
			e.u32(ckmHKDFDerive)
			e.u8(1)
			e.u8(1)
			e.u64(ckmSHA256)
			e.u64(ckfHKDFSaltData)
			e.array([]byte("salt"))
			e.u64(0)
			e.array([]byte("info"))
			e.u64(from)
			writeAttrs(e, append(child(extractable), ulongAttr(ckaValueLen, 32)))
		}))
		return d.Ulong()
	}
	hmacKey := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32), boolAttr(ckaDerive, true),
		boolAttr(ckaSensitive, true), boolAttr(ckaExtractable, false))
	fromHMAC := hkdf(hmacKey, false)
	grandchild := hkdf(fromHMAC, false)
	extractable := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32), boolAttr(ckaDerive, true),
		boolAttr(ckaSensitive, true), boolAttr(ckaExtractable, true))
	extractableChild := hkdf(extractable, true)
	fromExtractable := hkdf(extractable, false)
	// Extractable once, then switched off: still never "never extractable",
	// nor is a key derived from it afterwards.
	onceExtractable := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32), boolAttr(ckaDerive, true),
		boolAttr(ckaSensitive, true), boolAttr(ckaExtractable, true))
	cl.ok(cl.call(callSetAttributeValue, func(e *encoder) {
		e.u64(s)
		e.u64(onceExtractable)
		writeAttrs(e, []tmplAttr{boolAttr(ckaExtractable, false)})
	}))
	fromOnceExtractable := hkdf(onceExtractable, false)

	for _, k := range []struct {
		name                   string
		h                      uint64
		extractable            bool
		always, neverExtracted bool
	}{
		{"generated HMAC key", hmacKey, false, true, true},
		{"child of the ECDH key", fromDH, false, false, false},
		{"child of the HMAC key", fromHMAC, false, true, true},
		{"grandchild of the HMAC key", grandchild, false, true, true},
		{"extractable HMAC key", extractable, true, true, false},
		{"extractable child of the extractable key", extractableChild, true, true, false},
		{"unextractable child of the extractable key", fromExtractable, false, true, false},
		{"key extractable once", onceExtractable, false, true, false},
		{"child of the key extractable once", fromOnceExtractable, false, true, false},
	} {
		for _, a := range []struct {
			t    uint32
			want bool
		}{{ckaSensitive, true}, {ckaExtractable, k.extractable}, {ckaAlwaysSensitive, k.always}, {ckaNeverExtractable, k.neverExtracted}} {
			if rv, v := cl.getAttr(s, k.h, a.t); rv != ckrOK || !bytes.Equal(v, boolVal(a.want)) {
				t.Errorf("%s: attribute %#x: rv %#x, %x, want %t", k.name, a.t, rv, v, a.want)
			}
		}
	}
}

package p11front

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"testing"
)

// X25519 peer values of small order (RFC 7748's low-order points, the
// field's p-1, p, p+1, and the same with the top bit set) make a shared
// secret of zeros: every derivation with one is refused, no key made.
// A value not reduced mod p, or with the top bit set, is the value
// reduced (RFC 7748, 5): with the base point it gives the key's public
// value, nothing private.
func TestAttackX25519PeerValues(t *testing.T) {
	tf := newTestFront(t)
	mine := coreX25519(t, tf, "xdh", true)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	priv := cl.find(s, tmplAttr{ckaLabel, []byte("xdh")}, ulongAttr(ckaClass, ckoPrivateKey))[0]
	secret := []tmplAttr{ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkGenericSecret), boolAttr(ckaToken, false), boolAttr(ckaSensitive, false)}
	before := len(cl.find(s))
	le := func(h string) []byte {
		b, err := hex.DecodeString(h)
		if err != nil || len(b) != 32 {
			t.Fatalf("%s: %v", h, err)
		}
		return b
	}
	top := func(b []byte) []byte { c := bytes.Clone(b); c[31] |= 0x80; return c }
	small := map[string][]byte{
		"0":        make([]byte, 32),
		"1":        le("0100000000000000000000000000000000000000000000000000000000000000"),
		"order 8":  le("e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
		"order 8'": le("5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
		"p-1":      le("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
		"p":        le("edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
		"p+1":      le("eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
	}
	for name, u := range small {
		for _, v := range [][]byte{u, top(u), mustDER(u)} {
			for _, kdf := range []uint64{ckdNull, ckdSHA256KDF} {
				if rv, h := cl.ecdhDerive(s, priv, kdf, nil, v, secret...); rv == ckrOK {
					_, val := cl.getAttr(s, h, ckaValue)
					t.Errorf("a peer value of small order (%s, %x), KDF %#x: a key made, %x", name, v, kdf, val)
				}
			}
		}
	}
	if after := len(cl.find(s)); after != before {
		t.Fatalf("%d objects before the derivations of small order, %d after", before, after)
	}
	nine := le("0900000000000000000000000000000000000000000000000000000000000000")
	for name, v := range map[string][]byte{
		"9": nine, "p+9": le("f6ffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"), "9, top bit": top(nine),
	} {
		rv, h := cl.ecdhDerive(s, priv, ckdNull, nil, v, secret...)
		if rv != ckrOK {
			t.Fatalf("%s as the peer's value: rv %#x", name, rv)
		}
		if rv, val := cl.getAttr(s, h, ckaValue); rv != ckrOK || !bytes.Equal(val, mine.Bytes()) {
			t.Fatalf("%s as the peer's value: %x, want the public value %x", name, val, mine.Bytes())
		}
	}
}

// A key derived from a non-exportable X25519 key is never exportable nor
// wrappable, and no attribute of the key pair's public object, nor any
// the private one lets be read, holds the private value.
func TestAttackX25519NonExportable(t *testing.T) {
	tf := newTestFront(t)
	coreX25519(t, tf, "xdh", false)
	peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	base := cl.find(s, tmplAttr{ckaLabel, []byte("xdh")}, ulongAttr(ckaClass, ckoPrivateKey))[0]
	tmpl := func(as ...tmplAttr) []tmplAttr {
		return append([]tmplAttr{ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkGenericSecret), boolAttr(ckaToken, false)}, as...)
	}
	for name, as := range map[string][]tmplAttr{
		"not sensitive":             {boolAttr(ckaSensitive, false)},
		"extractable":               {boolAttr(ckaSensitive, true), boolAttr(ckaExtractable, true)},
		"an AES key, not sensitive": {ulongAttr(ckaKeyType, ckkAES), ulongAttr(ckaValueLen, 16), boolAttr(ckaSensitive, false)},
	} {
		for _, kdf := range []uint64{ckdNull, ckdSHA256KDF} {
			rv, h := cl.ecdhDerive(s, base, kdf, nil, peer.PublicKey().Bytes(), tmpl(as...)...)
			if rv != ckrOK {
				continue
			}
			if rv, v := cl.getAttr(s, h, ckaValue); rv != ckrAttributeSensitive || v != nil {
				t.Errorf("%s, KDF %#x: CKA_VALUE of the child: rv %#x, %d bytes", name, kdf, rv, len(v))
			}
			if rv, v := cl.getAttr(s, h, ckaExtractable); rv != ckrOK || !bytes.Equal(v, boolVal(false)) {
				t.Errorf("%s, KDF %#x: CKA_EXTRACTABLE of the child: rv %#x, %x", name, kdf, rv, v)
			}
		}
	}

	// A short child (whose value a signature would give away a byte at a
	// time) is never made: derived keys are AES-256 and HMAC keys.
	for _, n := range []uint64{1, 2, 16, 31} {
		for _, typ := range []uint64{ckkGenericSecret, ckkAES} {
			as := []tmplAttr{ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, typ), boolAttr(ckaToken, false),
				ulongAttr(ckaValueLen, n)}
			if rv, h := cl.ecdhDerive(s, base, ckdNull, nil, peer.PublicKey().Bytes(), as...); rv == ckrOK {
				_, l := cl.getAttr(s, h, ckaValueLen)
				t.Errorf("a child of type %#x and %d bytes: made, CKA_VALUE_LEN %x", typ, n, l)
			}
		}
	}

	ok := []tmplAttr{ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkGenericSecret), boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32)}
	if rv, _ := cl.ecdhDerive(s, base, ckdNull, nil, peer.PublicKey().Bytes(), ok...); rv != ckrOK {
		t.Fatalf("a child of 32 bytes: rv %#x", rv)
	}

	// A pair made through the front, asked exportable: its private value
	// is never read through PKCS #11, its public object has none, and
	// it derives nothing.
	d := cl.ok(cl.call(callGenerateKeyPair, func(e *encoder) {
		e.u64(s)
		e.u32(ckmECMontgomeryGen)
		e.u32(0xffffffff)
		writeAttrs(e, []tmplAttr{boolAttr(ckaToken, false)})
		writeAttrs(e, []tmplAttr{boolAttr(ckaDerive, true), boolAttr(ckaToken, false), boolAttr(ckaSensitive, false), boolAttr(ckaExtractable, true)})
	}))
	pub, priv := d.Ulong(), d.Ulong()
	if rv, v := cl.getAttr(s, priv, ckaValue); rv == ckrOK {
		t.Errorf("CKA_VALUE of the private key: %d bytes", len(v))
	}
	if rv, v := cl.getAttr(s, pub, ckaValue); rv == ckrOK {
		t.Errorf("CKA_VALUE of the public key: %d bytes", len(v))
	}
	if rv, _ := cl.ecdhDerive(s, pub, ckdNull, nil, peer.PublicKey().Bytes(), tmpl(boolAttr(ckaSensitive, false))...); rv == ckrOK {
		t.Error("a derivation from the public object")
	}
}

// An X25519 key is a key agreement key only: a pair asked with a
// signing or decrypting usage is refused or made without it, and no
// signature (Ed25519's, ECDSA's) or decryption starts with one.
func TestAttackX25519OnlyDerives(t *testing.T) {
	tf := newTestFront(t)
	coreX25519(t, tf, "xdh", true)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	privs := []uint64{cl.find(s, tmplAttr{ckaLabel, []byte("xdh")}, ulongAttr(ckaClass, ckoPrivateKey))[0]}
	for _, u := range []uint32{ckaSign, ckaDecrypt, ckaUnwrap} {
		rv, d := cl.call(callGenerateKeyPair, func(e *encoder) {
			e.u64(s)
			e.u32(ckmECMontgomeryGen)
			e.u32(0xffffffff)
			writeAttrs(e, []tmplAttr{boolAttr(ckaToken, false)})
			writeAttrs(e, []tmplAttr{boolAttr(ckaToken, false), boolAttr(u, true)})
		})
		if rv != ckrOK {
			continue
		}
		d.Ulong()
		priv := d.Ulong()
		if rv, v := cl.getAttr(s, priv, u); rv == ckrOK && bytes.Equal(v, boolVal(true)) {
			t.Errorf("an X25519 pair asked with usage %#x has it", u)
		}
		privs = append(privs, priv)
	}
	for _, k := range privs {
		for _, m := range []struct {
			call int
			mech uint32
		}{{callSignInit, ckmEDDSA}, {callSignInit, ckmECDSA}, {callSignInit, ckmECDSASHA256}, {callDecryptInit, ckmRSAPKCSOAEP}} {
			if rv := cl.initOp(m.call, s, m.mech, k); rv == ckrOK {
				t.Errorf("%s with mechanism %#x and an X25519 key: CKR_OK", calls[m.call].name, m.mech)
			}
		}
	}
}

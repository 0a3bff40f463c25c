package mech

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/x509"
	"encoding/pem"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// stdECDH returns the crypto/ecdh form of k's exported private key.
func stdECDH(t testing.TB, k *Key) *ecdh.PrivateKey {
	t.Helper()
	switch p := stdPrivate(t, k).(type) {
	case *ecdh.PrivateKey:
		return p
	case *ecdsa.PrivateKey:
		dh, err := p.ECDH()
		wantOK(t, err)
		return dh
	default:
		t.Fatalf("exported %s key is a %T", k.Spec().Name, p)
		return nil
	}
}

// peerForms returns the accepted encodings of a peer public key.
func peerForms(t testing.TB, pub *ecdh.PublicKey) map[string][]byte {
	t.Helper()
	spki, err := x509.MarshalPKIXPublicKey(pub)
	wantOK(t, err)
	forms := map[string][]byte{
		"SPKI DER": spki,
		"SPKI PEM": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}),
		"raw":      pub.Bytes(),
	}
	if pub.Curve() != ecdh.X25519() {
		// SEC 1 compressed: 02 or 03 (the parity of y), then x.
		u := pub.Bytes()
		n := (len(u) - 1) / 2
		forms["compressed"] = append([]byte{2 | u[len(u)-1]&1}, u[1:1+n]...)
	}
	return forms
}

func TestDeriveECDH(t *testing.T) {
	for _, typ := range []wire.KeyType{tX25519, tDH256, tDH384} {
		t.Run(spec(typ).Name, func(t *testing.T) {
			a := testKey(t, typ)
			defer a.Destroy()
			b, err := Generate(spec(typ))
			wantOK(t, err)
			defer b.Destroy()
			salt, info := []byte("salt"), []byte("info")
			bStd := stdECDH(t, b)
			shared, err := stdECDH(t, a).ECDH(bStd.PublicKey())
			wantOK(t, err)
			for _, h := range append([]wire.HashAlg{hNone}, allHashes...) {
				alg := h
				if alg == hNone {
					alg = hSHA256
				}
				for _, out := range []wire.KeyType{tAES, tHMAC256, tHMAC512} {
					want, err := hkdf.Key(hashFunc(alg), shared, salt, string(info), spec(out).SecretLen)
					wantOK(t, err)
					for name, peer := range peerForms(t, bStd.PublicKey()) {
						d, err := a.Derive(peer, h, salt, info, spec(out))
						if err != nil {
							t.Fatalf("%s peer: %v", name, err)
						}
						got, _ := d.Export(fRaw)
						if d.Class() != key.Secret || d.Spec() != spec(out) || !bytes.Equal(got, want) {
							t.Fatalf("%v %s peer: derived key differs from stdlib ECDH+HKDF", alg, name)
						}
						d.Destroy()
					}
				}
			}
			// Both sides agree.
			d1, err := a.Derive(b.PublicDER(), hNone, nil, nil, spec(tHMAC256))
			wantOK(t, err)
			d2, err := b.Derive(a.PublicDER(), hNone, nil, nil, spec(tHMAC256))
			wantOK(t, err)
			m1, _ := d1.MAC([]byte("x"), nil)
			m2, _ := d2.MAC([]byte("x"), nil)
			if !bytes.Equal(m1, m2) {
				t.Fatal("the two sides derived different keys")
			}

			// Refusals.
			_, err = a.Derive(b.PublicDER(), hNone, nil, nil, spec(tEd))
			wantErr(t, err, stInvalid, "derived key type must be a secret key type")
			_, err = a.Derive(b.PublicDER(), hNone, nil, nil, nil)
			wantErr(t, err, stInvalid, "unknown key type")
			_, err = a.Derive(b.PublicDER(), wire.HashAlg(50), nil, nil, spec(tAES))
			wantErr(t, err, stInvalid, "unsupported hash algorithm")
			for _, other := range []wire.KeyType{tX25519, tDH256, tDH384, tEd, tP256, tRSA2048} {
				if other == typ || (typ == tDH256 && other == tP256) {
					continue
				}
				o := testKey(t, other)
				_, err := a.Derive(o.PublicDER(), hNone, nil, nil, spec(tAES))
				wantErr(t, err, stInvalid, "")
				o.Destroy()
			}
			for _, peer := range [][]byte{nil, {}, {0}, {4}, {2}, make([]byte, 31), make([]byte, 33), make([]byte, 65), make([]byte, 97), []byte("-----BEGIN PUBLIC KEY-----\n")} {
				_, err := a.Derive(peer, hNone, nil, nil, spec(tAES))
				wantErr(t, err, stInvalid, "")
			}
			pub := publicOf(t, a)
			_, err = pub.Derive(b.PublicDER(), hNone, nil, nil, spec(tAES))
			wantErr(t, err, stInvalid, "operation requires a private key")
		})
	}
}

// TestDeriveX25519LowOrder checks that low-order peer points, which give
// an all-zero shared secret, are refused.
func TestDeriveX25519LowOrder(t *testing.T) {
	k := testKey(t, tX25519)
	defer k.Destroy()
	lowOrder := [][]byte{
		make([]byte, 32),                       // 0
		append([]byte{1}, make([]byte, 31)...), // 1
		unhexOne(t, "e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800"),
		unhexOne(t, "5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157"),
		unhexOne(t, "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f"),
	}
	for _, p := range lowOrder {
		_, err := k.Derive(p, hNone, nil, nil, spec(tAES))
		wantErr(t, err, stInvalid, "invalid peer public key")
		spki, err := x509.MarshalPKIXPublicKey(mustX25519Pub(t, p))
		wantOK(t, err)
		_, err = k.Derive(spki, hNone, nil, nil, spec(tAES))
		wantErr(t, err, stInvalid, "invalid peer public key")
	}
}

func mustX25519Pub(t testing.TB, b []byte) *ecdh.PublicKey {
	t.Helper()
	p, err := ecdh.X25519().NewPublicKey(b)
	wantOK(t, err)
	return p
}

func unhexOne(t testing.TB, s string) []byte {
	t.Helper()
	v, err := unhex(s)
	wantOK(t, err)
	return v[0]
}

func TestDeriveHMAC(t *testing.T) {
	for _, tc := range []struct {
		typ wire.KeyType
		own wire.HashAlg
	}{{tHMAC256, hSHA256}, {tHMAC384, hSHA384}, {tHMAC512, hSHA512}} {
		k := testKey(t, tc.typ)
		raw, _ := k.Export(fRaw)
		for _, h := range append([]wire.HashAlg{hNone}, allHashes...) {
			alg := h
			if alg == hNone {
				alg = tc.own
			}
			want, _ := hkdf.Key(hashFunc(alg), raw, []byte("s"), "i", 32)
			d, err := k.Derive(nil, h, []byte("s"), []byte("i"), spec(tAES))
			wantOK(t, err)
			got, _ := d.Export(fRaw)
			if !bytes.Equal(got, want) {
				t.Fatalf("%v/%v: derived key differs from stdlib HKDF", tc.typ, h)
			}
			// The derived AES key works and is independent of its parent.
			_, err = d.Encrypt([]byte("pt"), nil, hNone, nil)
			wantOK(t, err)
			d.Destroy()
			if !bytes.Equal(raw, k.secretBytes()) {
				t.Fatal("Destroy of the child wiped the parent")
			}
		}
		// Different info, different key.
		d1, _ := k.Derive(nil, hNone, nil, []byte("a"), spec(tHMAC256))
		d2, _ := k.Derive(nil, hNone, nil, []byte("b"), spec(tHMAC256))
		if hmac.Equal(d1.secretBytes(), d2.secretBytes()) {
			t.Fatal("info ignored")
		}
		_, err := k.Derive([]byte{1}, hNone, nil, nil, spec(tAES))
		wantErr(t, err, stInvalid, "HMAC derivation takes no peer key")
		_, err = k.Derive(nil, hNone, nil, nil, spec(tRSA2048))
		wantErr(t, err, stInvalid, "derived key type must be a secret key type")
		k.Destroy()
	}
}

// handX963 is ANSI X9.63's KDF written out from SEC 1 section 3.6.1, apart
// from the package's: H(Z || counter || SharedInfo) for counter = 1, 2, ...
func handX963(h wire.HashAlg, z, shared []byte, n int) []byte {
	var out []byte
	for c := byte(1); len(out) < n; c++ {
		hh := hashFunc(h)()
		hh.Write(append(append(bytes.Clone(z), 0, 0, 0, c), shared...))
		out = hh.Sum(out)
	}
	return out[:n]
}

func TestX963KnownAnswer(t *testing.T) {
	// NIST CAVS ansx963_2001, SHA-256, 192-bit Z, no SharedInfo, COUNT = 0.
	z := unhexOne(t, "96c05619d56c328ab95fe84b18264b08725b85e33fd34f08")
	want := unhexOne(t, "443024c3dae66b95e6f5670601558f71")
	if got := x963(hashFunc(hSHA256), z, nil, 16); !bytes.Equal(got, want) {
		t.Fatalf("x963 = %x, want %x", got, want)
	}
}

func TestDeriveRawAndX963(t *testing.T) {
	none, x963kdf := wire.DeriveKdf_DERIVE_KDF_NONE, wire.DeriveKdf_DERIVE_KDF_X963
	for _, typ := range []wire.KeyType{tX25519, tDH256, tDH384} {
		t.Run(spec(typ).Name, func(t *testing.T) {
			a := testKey(t, typ)
			defer a.Destroy()
			b, err := Generate(spec(typ))
			wantOK(t, err)
			defer b.Destroy()
			bStd := stdECDH(t, b)
			shared, err := stdECDH(t, a).ECDH(bStd.PublicKey())
			wantOK(t, err)
			for _, out := range []wire.KeyType{tAES, tHMAC256, tHMAC384, tHMAC512} {
				n := spec(out).SecretLen
				for name, peer := range peerForms(t, bStd.PublicKey()) {
					d, err := a.DeriveKDF(none, peer, hNone, nil, nil, spec(out))
					if n > len(shared) {
						wantErr(t, err, stInvalid, "the new key is longer than the shared secret")
					} else {
						wantOK(t, err)
						got, _ := d.Export(fRaw)
						// PKCS #11: truncation removes bytes from the leading end.
						if !bytes.Equal(got, shared[len(shared)-n:]) {
							t.Fatalf("%s %s peer: raw derive differs from the stdlib's shared secret", spec(out).Name, name)
						}
						d.Destroy()
					}
					for _, h := range []wire.HashAlg{hSHA256, hSHA384, hSHA512} {
						d, err := a.DeriveKDF(x963kdf, peer, h, nil, []byte("shared data"), spec(out))
						wantOK(t, err)
						got, _ := d.Export(fRaw)
						if !bytes.Equal(got, handX963(h, shared, []byte("shared data"), n)) {
							t.Fatalf("%v %s %s peer: X9.63 derive differs from the hand KDF", h, spec(out).Name, name)
						}
						d.Destroy()
					}
				}
			}
			peer := bStd.PublicKey().Bytes()
			for _, tc := range []struct {
				kdf        wire.DeriveKdf
				h          wire.HashAlg
				salt, info []byte
				msg        string
			}{
				{none, hSHA256, nil, nil, "the raw derivation takes no hash and no info"},
				{none, hNone, nil, []byte("i"), "the raw derivation takes no hash and no info"},
				{none, hNone, []byte("s"), nil, "the raw and X9.63 derivations take no salt"},
				{x963kdf, hSHA256, []byte("s"), nil, "the raw and X9.63 derivations take no salt"},
				{x963kdf, hNone, nil, nil, "the X9.63 derivation takes SHA-256, SHA-384 or SHA-512"},
				{x963kdf, hSHA3256, nil, nil, "the X9.63 derivation takes SHA-256, SHA-384 or SHA-512"},
				{wire.DeriveKdf(99), hNone, nil, nil, "unknown key derivation function"},
			} {
				_, err := a.DeriveKDF(tc.kdf, peer, tc.h, tc.salt, tc.info, spec(tAES))
				wantErr(t, err, stInvalid, tc.msg)
			}
			// The point is checked as for HKDF: not on the curve, refused.
			bad := bytes.Clone(peer)
			bad[len(bad)-1] ^= 1
			if typ != tX25519 {
				_, err = a.DeriveKDF(none, bad, hNone, nil, nil, spec(tAES))
				if err == nil {
					t.Fatal("raw derive took a point off the curve")
				}
			}
		})
	}
	// HMAC parents: HKDF only.
	k := testKey(t, tHMAC256)
	defer k.Destroy()
	for _, kdf := range []wire.DeriveKdf{none, x963kdf} {
		_, err := k.DeriveKDF(kdf, nil, hSHA256, nil, nil, spec(tAES))
		wantErr(t, err, stInvalid, "the raw and X9.63 derivations take an X25519 or ECDH key")
	}
}

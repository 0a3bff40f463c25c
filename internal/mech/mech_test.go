package mech

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha512"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// TestGenerate makes a key of every type and checks its class, spec,
// public half and that it survives an export/import round trip.
func TestGenerate(t *testing.T) {
	for _, typ := range key.Types() {
		s := spec(typ)
		t.Run(s.Name, func(t *testing.T) {
			k, err := Generate(s)
			wantOK(t, err)
			defer k.Destroy()
			if k.Spec() != s {
				t.Errorf("Spec() = %v, want %v", k.Spec(), s)
			}
			if !s.Asymmetric {
				if k.Class() != key.Secret || len(k.secretBytes()) != s.SecretLen || k.PublicDER() != nil {
					t.Fatalf("class %v, %d secret bytes, public %x", k.Class(), len(k.secretBytes()), k.PublicDER())
				}
				_, err := k.Public(fUnspec)
				wantErr(t, err, stInvalid, "operation not supported by this key type")
				raw, err := k.Export(fUnspec)
				wantOK(t, err)
				if !bytes.Equal(raw, k.secretBytes()) {
					t.Fatal("Export(RAW) is not the key")
				}
				return
			}
			if k.Class() != key.Private || k.PublicDER() == nil {
				t.Fatalf("class %v, public %x", k.Class(), k.PublicDER())
			}
			if rk, ok := stdPrivate(t, k).(*rsa.PrivateKey); ok && rk.N.BitLen() != rsaBits(s) {
				t.Fatalf("modulus has %d bits", rk.N.BitLen())
			}
			for _, f := range []wire.KeyFormat{fUnspec, fPKCS8DER, fPKCS8PEM} {
				b, err := k.Export(f)
				wantOK(t, err)
				k2, err := Import(s, f, b)
				wantOK(t, err)
				if k2.Class() != key.Private || !bytes.Equal(k2.PublicDER(), k.PublicDER()) ||
					!bytes.Equal(k2.secretBytes(), k.secretBytes()) {
					t.Fatalf("format %v: round trip changed the key", f)
				}
				k2.Destroy()
			}
			for _, f := range []wire.KeyFormat{fRaw, fSPKIDER, wire.KeyFormat(99)} {
				_, err := k.Export(f)
				wantErr(t, err, stInvalid, "unsupported key format")
			}
			pub, err := k.Public(fSPKIDER)
			wantOK(t, err)
			if !bytes.Equal(pub, k.PublicDER()) {
				t.Fatal("Public(SPKI_DER) != PublicDER()")
			}
		})
	}
}

func TestGenerateRefusesBadSpecs(t *testing.T) {
	bad := []*key.Spec{nil, {}, {Type: tAES, Family: key.FamilyRSA}, {Type: wire.KeyType(99)}}
	for _, s := range bad {
		_, err := Generate(s)
		wantErr(t, err, stInvalid, "unknown key type")
		_, err = Import(s, fRaw, make([]byte, 32))
		wantErr(t, err, stInvalid, "unknown key type")
	}
}

func TestAESGCM(t *testing.T) {
	k := testKey(t, tAES)
	defer k.Destroy()
	raw, err := k.Export(fRaw)
	wantOK(t, err)
	block, _ := aes.NewCipher(raw)
	std, _ := cipher.NewGCM(block)

	for _, n := range []int{0, 1, 16, 255, 4096} {
		pt := make([]byte, n)
		rand.Read(pt)
		for _, aad := range [][]byte{nil, []byte("header")} {
			prefix := []byte("prefix")
			ct, err := k.Encrypt(pt, aad, hNone, prefix)
			wantOK(t, err)
			if !bytes.HasPrefix(ct, []byte("prefix")) || len(ct) != len(prefix)+12+n+16 {
				t.Fatalf("ciphertext of %d bytes has length %d", n, len(ct))
			}
			ct = ct[len(prefix):]
			// The standard library opens it with the exported key.
			got, err := std.Open(nil, ct[:12], ct[12:], aad)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("stdlib Open: %v", err)
			}
			got, err = k.Decrypt(ct, aad, hNone, []byte("x"))
			if err != nil || !bytes.Equal(got, append([]byte("x"), pt...)) {
				t.Fatalf("Decrypt: %v", err)
			}
			// And mech opens what the standard library seals.
			nonce := make([]byte, 12)
			rand.Read(nonce)
			sct := std.Seal(append([]byte{}, nonce...), nonce, pt, aad)
			got, err = k.Decrypt(sct, aad, hNone, nil)
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("Decrypt of stdlib ciphertext: %v", err)
			}
			// Tampering anywhere, or another aad, fails with one message.
			for i := range ct {
				bad := bytes.Clone(ct)
				bad[i] ^= 0x80
				_, err := k.Decrypt(bad, aad, hNone, nil)
				wantErr(t, err, stInvalid, "decryption failed")
			}
			_, err = k.Decrypt(ct, []byte("other"), hNone, nil)
			wantErr(t, err, stInvalid, "decryption failed")
			if !errors.Is(err, ErrDecryption) {
				t.Fatalf("a failed decryption %v does not match ErrDecryption", err)
			}
		}
	}
	// Nonces differ between encryptions of the same message.
	a, _ := k.Encrypt([]byte("m"), nil, hNone, nil)
	b, _ := k.Encrypt([]byte("m"), nil, hNone, nil)
	if bytes.Equal(a[:12], b[:12]) {
		t.Fatal("nonce repeated")
	}
	for n := 0; n < 12+16+2; n++ {
		_, err := k.Decrypt(make([]byte, n), nil, hNone, nil)
		wantErr(t, err, stInvalid, "decryption failed")
	}
	_, err = k.Encrypt([]byte("m"), nil, hSHA256, nil)
	wantErr(t, err, stInvalid, "")
	_, err = k.Decrypt(a, nil, hSHA256, nil)
	wantErr(t, err, stInvalid, "")
}

func TestImportSecret(t *testing.T) {
	for _, tc := range []struct {
		typ    wire.KeyType
		n      int
		wantOK bool
	}{
		{tAES, 32, true}, {tAES, 31, false}, {tAES, 33, false}, {tAES, 16, false}, {tAES, 0, false},
		{tHMAC256, 16, true}, {tHMAC256, 15, false}, {tHMAC256, 1024, true}, {tHMAC256, 1025, false},
		{tHMAC384, 48, true}, {tHMAC512, 200, true}, {tHMAC512, 0, false},
	} {
		for _, f := range allFormats {
			data := make([]byte, tc.n)
			rand.Read(data)
			k, err := Import(spec(tc.typ), f, data)
			switch {
			case f != fUnspec && f != fRaw:
				wantErr(t, err, stInvalid, "unsupported key format")
			case !tc.wantOK:
				wantErr(t, err, stInvalid, "secret key has wrong length")
			default:
				wantOK(t, err)
				out, _ := k.Export(fRaw)
				if !bytes.Equal(out, data) || k.Class() != key.Secret {
					t.Fatalf("%v: export differs from import", tc.typ)
				}
				// Import copies: changing the input leaves the key alone.
				data[0] ^= 1
				if bytes.Equal(k.secretBytes(), data) {
					t.Fatal("Import aliases its input")
				}
				k.Destroy()
			}
		}
	}
}

func TestHMAC(t *testing.T) {
	for _, tc := range []struct {
		typ wire.KeyType
		alg wire.HashAlg
	}{
		{tHMAC256, hSHA256}, {tHMAC384, hSHA384}, {tHMAC512, hSHA512},
	} {
		t.Run(tc.typ.String(), func(t *testing.T) {
			k := testKey(t, tc.typ)
			defer k.Destroy()
			raw, _ := k.Export(fRaw)
			for _, n := range []int{0, 1, 64, 256, 1000} {
				data := make([]byte, n)
				rand.Read(data)
				m := hmac.New(hashFunc(tc.alg), raw)
				m.Write(data)
				want := m.Sum(nil)
				for i := 0; i < 3; i++ { // pooled states must reset
					got, err := k.MAC(data, []byte("p"))
					wantOK(t, err)
					if !bytes.Equal(got, append([]byte("p"), want...)) {
						t.Fatalf("MAC of %d bytes differs from crypto/hmac", n)
					}
				}
				wantOK(t, k.VerifyMAC(data, want))
				bad := bytes.Clone(want)
				bad[len(bad)-1] ^= 1
				wantErr(t, k.VerifyMAC(data, bad), stVerify, "MAC does not verify")
				wantErr(t, k.VerifyMAC(data, want[:len(want)-1]), stVerify, "MAC does not verify")
				wantErr(t, k.VerifyMAC(data, nil), stVerify, "MAC does not verify")
				wantErr(t, k.VerifyMAC(append(data, 0), want), stVerify, "MAC does not verify")
			}
		})
	}
}

func TestHMACConcurrent(t *testing.T) {
	k := testKey(t, tHMAC256)
	defer k.Destroy()
	want, _ := k.MAC([]byte("concurrent"), nil)
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 200; i++ {
				got, err := k.MAC([]byte("concurrent"), nil)
				if err != nil || !bytes.Equal(got, want) {
					t.Error("concurrent MAC differs")
					return
				}
				if err := k.VerifyMAC([]byte("concurrent"), want); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
}

func TestHash(t *testing.T) {
	std := map[wire.HashAlg]crypto.Hash{
		hSHA256: crypto.SHA256, hSHA384: crypto.SHA384, hSHA512: crypto.SHA512,
		hSHA3256: crypto.SHA3_256, hSHA3512: crypto.SHA3_512,
	}
	data := []byte("The quick brown fox jumps over the lazy dog")
	for alg, ch := range std {
		h := ch.New()
		h.Write(data)
		want := h.Sum(nil)
		got, err := Hash(alg, data, []byte("x"))
		wantOK(t, err)
		if !bytes.Equal(got, append([]byte("x"), want...)) {
			t.Errorf("%v differs from the standard library", alg)
		}
		if HashSize(alg) != ch.Size() {
			t.Errorf("HashSize(%v) = %d, want %d", alg, HashSize(alg), ch.Size())
		}
	}
	for _, alg := range []wire.HashAlg{hNone, wire.HashAlg(99), wire.HashAlg(-1)} {
		_, err := Hash(alg, data, nil)
		wantErr(t, err, stInvalid, "unsupported hash algorithm")
		_, err = NewHashStream(alg)
		wantErr(t, err, stInvalid, "unsupported hash algorithm")
		if HashSize(alg) != 0 {
			t.Errorf("HashSize(%v) = %d", alg, HashSize(alg))
		}
	}
}

func TestEd25519(t *testing.T) {
	k := testKey(t, tEd)
	defer k.Destroy()
	pub := stdPublic(t, k).(ed25519.PublicKey)
	msg := []byte("a message")

	// Pure Ed25519.
	sig, err := k.Sign(SignParams{}, msg)
	wantOK(t, err)
	if !ed25519.Verify(pub, msg, sig) {
		t.Fatal("stdlib does not verify pure Ed25519 signature")
	}
	priv := stdPrivate(t, k).(ed25519.PrivateKey)
	if !bytes.Equal(sig, ed25519.Sign(priv, msg)) {
		t.Fatal("signature differs from the stdlib's with the exported key")
	}
	wantOK(t, k.Verify(SignParams{}, msg, sig))
	wantErr(t, k.Verify(SignParams{}, msg[1:], sig), stVerify, "signature does not verify")
	wantErr(t, k.Verify(SignParams{}, msg, sig[1:]), stVerify, "signature does not verify")

	// Ed25519ph over a given digest.
	d := sha512.Sum512(msg)
	ph := SignParams{Hash: hSHA512, Prehashed: true}
	sig, err = k.Sign(ph, d[:])
	wantOK(t, err)
	wantOK(t, ed25519.VerifyWithOptions(pub, d[:], sig, &ed25519.Options{Hash: crypto.SHA512}))
	wantOK(t, k.Verify(ph, d[:], sig))
	// SHA-512 without Prehashed: Ed25519ph, and the message is hashed here.
	sig2, err := k.Sign(SignParams{Hash: hSHA512}, msg)
	wantOK(t, err)
	if !bytes.Equal(sig, sig2) {
		t.Fatal("Ed25519ph over message differs from over its digest")
	}
	wantErr(t, k.Verify(SignParams{}, msg, sig), stVerify, "signature does not verify")

	for _, p := range []SignParams{
		{Prehashed: true},
		{Hash: hSHA256},
		{Hash: hSHA3512, Prehashed: true},
		{Padding: wire.Padding_PADDING_PSS},
	} {
		_, err := k.Sign(p, d[:])
		wantErr(t, err, stInvalid, "")
		wantErr(t, k.Verify(p, d[:], sig), stInvalid, "")
	}
	_, err = k.Sign(ph, d[:63])
	wantErr(t, err, stInvalid, "digest length does not match hash")

	// The public key verifies but does not sign.
	pk := publicOf(t, k)
	wantOK(t, pk.Verify(ph, d[:], sig))
	_, err = pk.Sign(SignParams{}, msg)
	wantErr(t, err, stInvalid, "operation requires a private key")
}

func TestECDSA(t *testing.T) {
	for _, typ := range []wire.KeyType{tP256, tP384} {
		t.Run(typ.String(), func(t *testing.T) {
			k := testKey(t, typ)
			defer k.Destroy()
			pub := stdPublic(t, k).(*ecdsa.PublicKey)
			priv := stdPrivate(t, k).(*ecdsa.PrivateKey)
			pk := publicOf(t, k)
			msg := []byte("a message")
			for _, h := range append([]wire.HashAlg{hNone}, allHashes...) {
				alg := h
				if alg == hNone {
					alg = map[wire.KeyType]wire.HashAlg{tP256: hSHA256, tP384: hSHA384}[typ]
				}
				d := digest(alg, msg)
				for _, pre := range []bool{false, true} {
					p := SignParams{Hash: h, Prehashed: pre}
					data := msg
					if pre {
						data = d
					}
					sig, err := k.Sign(p, data)
					wantOK(t, err)
					if !ecdsa.VerifyASN1(pub, d, sig) {
						t.Fatalf("%v: stdlib does not verify", p)
					}
					wantOK(t, k.Verify(p, data, sig))
					wantOK(t, pk.Verify(p, data, sig))
					// A stdlib signature with the exported key verifies.
					ssig, _ := ecdsa.SignASN1(rand.Reader, priv, d)
					wantOK(t, pk.Verify(p, data, ssig))
					wantErr(t, pk.Verify(p, data, ssig[:len(ssig)-1]), stVerify, "signature does not verify")
					wantErr(t, pk.Verify(p, data, nil), stVerify, "signature does not verify")
				}
				wantErr(t, k.Verify(SignParams{Hash: h}, msg[1:], mustSign(t, k, SignParams{Hash: h}, msg)), stVerify, "")
				_, err := k.Sign(SignParams{Hash: h, Prehashed: true}, d[1:])
				wantErr(t, err, stInvalid, "digest length does not match hash")
			}
			_, err := k.Sign(SignParams{Padding: wire.Padding_PADDING_PKCS1V15}, msg)
			wantErr(t, err, stInvalid, "")
			_, err = k.Sign(SignParams{Hash: wire.HashAlg(42)}, msg)
			wantErr(t, err, stInvalid, "")
			_, err = pk.Sign(SignParams{}, msg)
			wantErr(t, err, stInvalid, "operation requires a private key")
		})
	}
}

func mustSign(t testing.TB, k *Key, p SignParams, data []byte) []byte {
	t.Helper()
	sig, err := k.Sign(p, data)
	wantOK(t, err)
	return sig
}

func TestRSA(t *testing.T) {
	types := []wire.KeyType{tRSA2048, tRSA3072, tRSA4096}
	for _, typ := range types {
		t.Run(typ.String(), func(t *testing.T) {
			k := testKey(t, typ)
			defer k.Destroy()
			pub := stdPublic(t, k).(*rsa.PublicKey)
			priv := stdPrivate(t, k).(*rsa.PrivateKey)
			pk := publicOf(t, k)
			msg := []byte("a message")
			hashes := allHashes
			if typ != tRSA2048 {
				hashes = []wire.HashAlg{hNone} // the rest is the same code
			}
			for _, h := range hashes {
				alg := h
				if alg == hNone {
					alg = hSHA256
				}
				ch, _ := cryptoHash(alg)
				d := digest(alg, msg)
				// PSS, salt length = hash length.
				p := SignParams{Hash: h}
				sig := mustSign(t, k, p, msg)
				wantOK(t, rsa.VerifyPSS(pub, ch, d, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}))
				wantOK(t, pk.Verify(p, msg, sig))
				wantOK(t, pk.Verify(SignParams{Hash: h, Padding: wire.Padding_PADDING_PSS, Prehashed: true}, d, sig))
				wantErr(t, pk.Verify(p, msg[1:], sig), stVerify, "signature does not verify")
				wantErr(t, pk.Verify(SignParams{Hash: h, Padding: wire.Padding_PADDING_PKCS1V15}, msg, sig), stVerify, "")
				// Verify takes any PSS salt length.
				for _, salt := range []int{0, 20, rsa.PSSSaltLengthAuto} {
					ssig, err := rsa.SignPSS(rand.Reader, priv, ch, d, &rsa.PSSOptions{SaltLength: salt})
					wantOK(t, err)
					wantOK(t, pk.Verify(p, msg, ssig))
				}
				// PKCS #1 v1.5 is deterministic: identical to the stdlib's.
				p1 := SignParams{Hash: h, Padding: wire.Padding_PADDING_PKCS1V15}
				sig = mustSign(t, k, p1, msg)
				ssig, err := rsa.SignPKCS1v15(nil, priv, ch, d)
				wantOK(t, err)
				if !bytes.Equal(sig, ssig) {
					t.Fatalf("%v: PKCS #1 v1.5 signature differs from the stdlib's", alg)
				}
				wantOK(t, pk.Verify(p1, msg, sig))
				wantErr(t, pk.Verify(p1, msg, sig[1:]), stVerify, "signature does not verify")

				// OAEP both ways, label = aad.
				label := []byte("label")
				ct, err := pk.Encrypt(msg, label, h, nil)
				wantOK(t, err)
				pt, err := rsa.DecryptOAEP(ch.New(), nil, priv, ct, label)
				if err != nil || !bytes.Equal(pt, msg) {
					t.Fatalf("%v: stdlib DecryptOAEP: %v", alg, err)
				}
				sct, err := rsa.EncryptOAEP(ch.New(), rand.Reader, pub, msg, label)
				wantOK(t, err)
				pt, err = k.Decrypt(sct, label, h, []byte("x"))
				if err != nil || !bytes.Equal(pt, append([]byte("x"), msg...)) {
					t.Fatalf("%v: Decrypt of stdlib ciphertext: %v", alg, err)
				}
				_, err = k.Decrypt(sct, []byte("other"), h, nil)
				wantErr(t, err, stInvalid, "decryption failed")
			}
			// Longest plaintext: k - 2*hLen - 2.
			max := pub.Size() - 2*32 - 2
			_, err := k.Encrypt(make([]byte, max), nil, hNone, nil)
			wantOK(t, err)
			_, err = k.Encrypt(make([]byte, max+1), nil, hNone, nil)
			wantErr(t, err, stInvalid, "plaintext too long")
			for _, ct := range [][]byte{nil, {1}, make([]byte, pub.Size()), make([]byte, pub.Size()+1), bytes.Repeat([]byte{0xff}, pub.Size())} {
				_, err := k.Decrypt(ct, nil, hNone, nil)
				wantErr(t, err, stInvalid, "decryption failed")
			}
			_, err = k.Encrypt(msg, nil, wire.HashAlg(77), nil)
			wantErr(t, err, stInvalid, "unsupported hash algorithm")
			_, err = k.Sign(SignParams{Padding: wire.Padding(9)}, msg)
			wantErr(t, err, stInvalid, "unsupported padding")
			_, err = pk.Decrypt(mustEncrypt(t, pk, msg), nil, hNone, nil)
			wantErr(t, err, stInvalid, "operation requires a private key")
			_, err = pk.Sign(SignParams{}, msg)
			wantErr(t, err, stInvalid, "operation requires a private key")
		})
	}
}

func mustEncrypt(t testing.TB, k *Key, pt []byte) []byte {
	t.Helper()
	ct, err := k.Encrypt(pt, nil, hNone, nil)
	wantOK(t, err)
	return ct
}

// TestUnsupported checks that each operation a type cannot do at all says
// so, for every type.
func TestUnsupported(t *testing.T) {
	const msg = "operation not supported by this key type"
	for _, typ := range key.Types() {
		k := testKey(t, typ)
		f := k.Spec().Family
		t.Run(k.Spec().Name, func(t *testing.T) {
			defer k.Destroy()
			check := func(op string, can bool, err error) {
				t.Helper()
				if can {
					return
				}
				if err == nil {
					t.Fatalf("%s succeeded", op)
				}
				wantErr(t, err, stInvalid, msg)
			}
			_, err := k.Encrypt([]byte("x"), nil, hNone, nil)
			check("Encrypt", f == key.FamilyAES || f == key.FamilyRSA, err)
			_, err = k.Decrypt(make([]byte, 64), nil, hNone, nil)
			check("Decrypt", f == key.FamilyAES || f == key.FamilyRSA, err)
			signer := f == key.FamilyEd25519 || f == key.FamilyECDSA || f == key.FamilyRSA
			_, err = k.Sign(SignParams{}, []byte("x"))
			check("Sign", signer, err)
			check("Verify", signer, k.Verify(SignParams{}, []byte("x"), make([]byte, 64)))
			_, err = k.NewSignStream(SignParams{}, false)
			check("NewSignStream", signer, err)
			_, err = k.NewSignStream(SignParams{}, true)
			check("NewSignStream(verify)", signer, err)
			_, err = k.MAC([]byte("x"), nil)
			check("MAC", f == key.FamilyHMAC, err)
			check("VerifyMAC", f == key.FamilyHMAC, k.VerifyMAC([]byte("x"), make([]byte, 32)))
			_, err = k.NewMACStream(false)
			check("NewMACStream", f == key.FamilyHMAC, err)
			_, err = k.Derive(nil, hNone, nil, nil, spec(tAES))
			check("Derive", f == key.FamilyHMAC || f == key.FamilyX25519 || f == key.FamilyECDH, err)
		})
	}
}

// TestDestroy checks that every operation on a destroyed key fails with
// NOT_FOUND, without panicking, and that the canonical bytes are zero.
func TestDestroy(t *testing.T) {
	for _, typ := range key.Types() {
		k := testKey(t, typ)
		t.Run(k.Spec().Name, func(t *testing.T) {
			pub := k.PublicDER()
			var stream Stream
			switch k.Spec().Family {
			case key.FamilyHMAC:
				stream, _ = k.NewMACStream(false)
			case key.FamilyEd25519, key.FamilyECDSA, key.FamilyRSA:
				stream, _ = k.NewSignStream(SignParams{}, false)
			}
			secret := k.secretBytes()
			if len(secret) == 0 || !bytes.ContainsFunc(secret, func(r rune) bool { return r != 0 }) {
				t.Fatal("no canonical secret before Destroy")
			}
			k.Destroy()
			if !bytes.Equal(secret, make([]byte, len(secret))) {
				t.Fatal("Destroy left secret bytes")
			}
			k.Destroy() // idempotent
			if k.Spec() == nil || k.PublicDER() != nil || (pub == nil) == k.Spec().Asymmetric {
				t.Fatal("Spec/PublicDER after Destroy")
			}
			destroyedOps(t, k)
			if stream != nil {
				stream.Write([]byte("x"))
				_, err := stream.Final(nil)
				wantErr(t, err, stNotFound, "key destroyed")
				stream.Destroy()
			}
		})
	}
	// A nil or zero Key behaves as a destroyed one.
	var nk *Key
	destroyedOps(t, nk)
	destroyedOps(t, new(Key))
	new(Key).Destroy()
	nk.Destroy()
	if nk.Spec() != nil || nk.Class() != wire.KeyClass_KEY_CLASS_UNSPECIFIED {
		t.Fatal("nil key has a spec or class")
	}
}

func destroyedOps(t *testing.T, k *Key) {
	t.Helper()
	const msg = "key destroyed"
	errs := map[string]error{}
	_, errs["Export"] = k.Export(fUnspec)
	_, errs["Public"] = k.Public(fUnspec)
	_, errs["Encrypt"] = k.Encrypt([]byte("x"), nil, hNone, nil)
	_, errs["Decrypt"] = k.Decrypt(make([]byte, 64), nil, hNone, nil)
	_, errs["Sign"] = k.Sign(SignParams{}, []byte("x"))
	errs["Verify"] = k.Verify(SignParams{}, []byte("x"), make([]byte, 64))
	_, errs["MAC"] = k.MAC([]byte("x"), nil)
	errs["VerifyMAC"] = k.VerifyMAC([]byte("x"), make([]byte, 32))
	_, errs["Derive"] = k.Derive(nil, hNone, nil, nil, spec(tAES))
	_, errs["NewMACStream"] = k.NewMACStream(false)
	_, errs["NewSignStream"] = k.NewSignStream(SignParams{}, true)
	for op, err := range errs {
		t.Run(op, func(t *testing.T) { wantErr(t, err, stNotFound, msg) })
	}
}

// TestErrorsCarryNoSecrets checks, over a spread of failures, that the
// error text never contains the key's bytes in any usual encoding.
func TestErrorsCarryNoSecrets(t *testing.T) {
	k := testKey(t, tHMAC256)
	defer k.Destroy()
	secret := k.secretBytes()
	var errs []error
	errs = append(errs, k.VerifyMAC([]byte("x"), secret))
	_, err := Import(spec(tAES), fRaw, secret[:31])
	errs = append(errs, err)
	_, err = k.Derive(secret, hNone, nil, nil, spec(tAES))
	errs = append(errs, err)
	for _, err := range errs {
		checkWireError(t, err)
		s := err.Error()
		for _, enc := range []string{string(secret), fmt.Sprintf("%x", secret), fmt.Sprintf("%X", secret), fmt.Sprint(secret)} {
			if bytes.Contains([]byte(s), []byte(enc)) {
				t.Fatalf("error %q contains the key", s)
			}
		}
	}
}

// TestConcurrentUse runs every operation of every type from several
// goroutines at once; run with -race.
func TestConcurrentUse(t *testing.T) {
	for _, typ := range key.Types() {
		k := testKey(t, typ)
		var wg sync.WaitGroup
		for g := 0; g < 4; g++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := 0; i < 5; i++ {
					k.Export(fUnspec)
					k.PublicDER()
					switch k.Spec().Family {
					case key.FamilyAES, key.FamilyRSA:
						ct, err := k.Encrypt([]byte("pt"), nil, hNone, nil)
						if err == nil {
							_, err = k.Decrypt(ct, nil, hNone, nil)
						}
						if err != nil {
							t.Error(err)
						}
					}
					if k.canSign() {
						sig, err := k.Sign(SignParams{}, []byte("m"))
						if err == nil {
							err = k.Verify(SignParams{}, []byte("m"), sig)
						}
						if err != nil {
							t.Error(err)
						}
					}
					switch k.Spec().Family {
					case key.FamilyHMAC:
						s, _ := k.NewMACStream(false)
						s.Write([]byte("m"))
						s.Final(nil)
						fallthrough
					case key.FamilyX25519, key.FamilyECDH:
						var peer []byte
						if k.Spec().Family != key.FamilyHMAC {
							peer = k.PublicDER()
						}
						d, err := k.Derive(peer, hNone, nil, nil, spec(tAES))
						if err != nil {
							t.Error(err)
						} else {
							d.Destroy()
						}
					}
				}
			}()
		}
		wg.Wait()
		k.Destroy()
	}
}

package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"crypto/x509"
	"errors"
	"hash"
	"testing"

	"github.com/keywarden/keywarden"
)

var ctx = context.Background()

// TestEveryMechanism round-trips every key type through the daemon and
// checks each result with the standard library, using the public key or
// the exported key.
func TestEveryMechanism(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	msg := []byte("keywarden end-to-end message")

	t.Run("aes256-gcm", func(t *testing.T) {
		k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true})
		aad := []byte("header")
		ct, err := k.Encrypt(ctx, msg, aad)
		if err != nil {
			t.Fatal(err)
		}
		if len(ct) != 7+12+len(msg)+16 || string(ct[:3]) != "KW\x01" || ct[6] != 1 {
			t.Fatalf("ciphertext of %d bytes, want header(KW 1, version 1)||nonce||ct||tag = %d", len(ct), 7+12+len(msg)+16)
		}
		pt, err := k.Decrypt(ctx, ct, aad)
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("DecryptData = %q, %v", pt, err)
		}
		// The standard library opens it with the exported key.
		raw, err := k.Export(ctx, keywarden.FormatRaw)
		if err != nil {
			t.Fatal(err)
		}
		block, _ := aes.NewCipher(raw)
		gcm, _ := cipher.NewGCM(block)
		pt, err = gcm.Open(nil, ct[7:19], ct[19:], aad)
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("stdlib Open = %q, %v", pt, err)
		}
		// And the daemon opens what the standard library sealed, under
		// the header that names version 1.
		nonce := make([]byte, 12)
		rand.Read(nonce)
		theirs := gcm.Seal(append([]byte("KW\x01\x00\x00\x00\x01"), nonce...), nonce, msg, nil)
		if pt, err := k.Decrypt(ctx, theirs, nil); err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("DecryptData of stdlib ciphertext = %q, %v", pt, err)
		}
		// Nonces are fresh each time.
		ct2, _ := k.Encrypt(ctx, msg, aad)
		if bytes.Equal(ct[7:19], ct2[7:19]) {
			t.Fatal("two encryptions used the same nonce")
		}
		// Tampering, wrong AAD and truncation all fail the same way.
		for name, bad := range map[string][]byte{
			"flipped": flip(ct, len(ct)-1), "short": ct[:10], "empty": nil,
		} {
			if _, err := k.Decrypt(ctx, bad, aad); !errors.Is(err, keywarden.ErrInvalidArgument) {
				t.Errorf("%s ciphertext: %v, want ErrInvalidArgument", name, err)
			}
		}
		if _, err := k.Decrypt(ctx, ct, []byte("other")); !errors.Is(err, keywarden.ErrInvalidArgument) {
			t.Errorf("wrong aad: %v", err)
		}
	})

	for _, tc := range []struct {
		typ keywarden.KeyType
		h   func() hash.Hash
	}{
		{keywarden.HMACSHA256, sha256.New},
		{keywarden.HMACSHA384, sha512.New384},
		{keywarden.HMACSHA512, sha512.New},
	} {
		t.Run(string(tc.typ), func(t *testing.T) {
			k := generate(t, c, keywarden.KeySpec{Type: tc.typ, Exportable: true})
			tag, err := k.MAC(ctx, msg)
			if err != nil {
				t.Fatal(err)
			}
			raw, err := k.Export(ctx, keywarden.FormatRaw)
			if err != nil {
				t.Fatal(err)
			}
			m := hmac.New(tc.h, raw)
			m.Write(msg)
			if !bytes.Equal(tag, m.Sum(nil)) {
				t.Fatal("tag differs from the standard library's")
			}
			if err := k.VerifyMAC(ctx, msg, tag); err != nil {
				t.Fatal(err)
			}
			if err := k.VerifyMAC(ctx, msg, flip(tag, 0)); !errors.Is(err, keywarden.ErrVerification) {
				t.Fatalf("bad tag: %v, want ErrVerification", err)
			}
			if err := k.VerifyMAC(ctx, msg, tag[:10]); !errors.Is(err, keywarden.ErrVerification) {
				t.Fatalf("short tag: %v, want ErrVerification", err)
			}
		})
	}

	t.Run("hashes", func(t *testing.T) {
		for h, want := range map[crypto.Hash][]byte{
			crypto.SHA256:   sum(sha256.New(), msg),
			crypto.SHA384:   sum(sha512.New384(), msg),
			crypto.SHA512:   sum(sha512.New(), msg),
			crypto.SHA3_256: sum(sha3.New256(), msg),
			crypto.SHA3_512: sum(sha3.New512(), msg),
		} {
			got, err := c.Hash(ctx, h, msg)
			if err != nil || !bytes.Equal(got, want) {
				t.Errorf("%v: %x, %v", h, got, err)
			}
		}
	})

	t.Run("ed25519", func(t *testing.T) {
		k := generate(t, c, keywarden.KeySpec{Type: keywarden.Ed25519})
		pub := k.Public().(ed25519.PublicKey)
		sig, err := k.SignMessageContext(ctx, msg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !ed25519.Verify(pub, msg, sig) {
			t.Fatal("stdlib rejects the signature")
		}
		if err := k.Verify(ctx, msg, sig, nil); err != nil {
			t.Fatal(err)
		}
		if err := k.Verify(ctx, msg, flip(sig, 5), nil); !errors.Is(err, keywarden.ErrVerification) {
			t.Fatalf("bad signature: %v", err)
		}
		// Ed25519ph over a SHA-512 digest.
		digest := sha512.Sum512(msg)
		sig, err = k.SignDigest(ctx, digest[:], &keywarden.SignOptions{Hash: crypto.SHA512})
		if err != nil {
			t.Fatal(err)
		}
		if err := ed25519.VerifyWithOptions(pub, digest[:], sig, &ed25519.Options{Hash: crypto.SHA512}); err != nil {
			t.Fatalf("stdlib rejects the Ed25519ph signature: %v", err)
		}
	})

	for _, tc := range []struct {
		typ  keywarden.KeyType
		hash crypto.Hash // the default
	}{
		{keywarden.ECDSAP256, crypto.SHA256},
		{keywarden.ECDSAP384, crypto.SHA384},
	} {
		t.Run(string(tc.typ), func(t *testing.T) {
			k := generate(t, c, keywarden.KeySpec{Type: tc.typ})
			pub := k.Public().(*ecdsa.PublicKey)
			sig, err := k.SignMessageContext(ctx, msg, nil)
			if err != nil {
				t.Fatal(err)
			}
			h := tc.hash.New()
			h.Write(msg)
			if !ecdsa.VerifyASN1(pub, h.Sum(nil), sig) {
				t.Fatal("stdlib rejects the signature")
			}
			// Every supported hash, message and digest.
			for _, hh := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512, crypto.SHA3_256, crypto.SHA3_512} {
				o := &keywarden.SignOptions{Hash: hh}
				sig, err := k.SignMessageContext(ctx, msg, o)
				if err != nil {
					t.Fatalf("%v: %v", hh, err)
				}
				dg := sum(hh.New(), msg)
				if !ecdsa.VerifyASN1(pub, dg, sig) {
					t.Fatalf("%v: stdlib rejects the signature", hh)
				}
				if err := k.VerifyDigest(ctx, dg, sig, o); err != nil {
					t.Fatalf("%v: VerifyDigest: %v", hh, err)
				}
			}
			if err := k.Verify(ctx, []byte("other"), sig, nil); !errors.Is(err, keywarden.ErrVerification) {
				t.Fatalf("wrong message: %v", err)
			}
		})
	}

	for _, typ := range []keywarden.KeyType{keywarden.RSA2048, keywarden.RSA3072, keywarden.RSA4096} {
		t.Run(string(typ), func(t *testing.T) {
			if typ != keywarden.RSA2048 && testing.Short() {
				t.Skip("slow key generation")
			}
			k := generate(t, c, keywarden.KeySpec{Type: typ, Exportable: true})
			pub := k.Public().(*rsa.PublicKey)
			bits := map[keywarden.KeyType]int{keywarden.RSA2048: 2048, keywarden.RSA3072: 3072, keywarden.RSA4096: 4096}[typ]
			if pub.N.BitLen() != bits {
				t.Fatalf("modulus of %d bits", pub.N.BitLen())
			}
			dg := sha256.Sum256(msg)
			sig, err := k.SignMessageContext(ctx, msg, nil)
			if err != nil {
				t.Fatal(err)
			}
			if err := rsa.VerifyPSS(pub, crypto.SHA256, dg[:], sig, nil); err != nil {
				t.Fatalf("stdlib rejects the PSS signature: %v", err)
			}
			sig, err = k.SignMessageContext(ctx, msg, &keywarden.SignOptions{Padding: keywarden.PaddingPKCS1v15})
			if err != nil {
				t.Fatal(err)
			}
			if err := rsa.VerifyPKCS1v15(pub, crypto.SHA256, dg[:], sig); err != nil {
				t.Fatalf("stdlib rejects the PKCS #1 v1.5 signature: %v", err)
			}
			if err := k.Verify(ctx, msg, sig, &keywarden.SignOptions{Padding: keywarden.PaddingPKCS1v15}); err != nil {
				t.Fatal(err)
			}
			if err := k.Verify(ctx, msg, sig, nil); !errors.Is(err, keywarden.ErrVerification) {
				t.Fatalf("PKCS #1 v1.5 signature checked as PSS: %v", err)
			}
			// OAEP both ways.
			ct, err := k.Encrypt(ctx, msg, []byte("label"))
			if err != nil {
				t.Fatal(err)
			}
			der, err := k.Export(ctx, keywarden.FormatPKCS8DER)
			if err != nil {
				t.Fatal(err)
			}
			priv, err := x509.ParsePKCS8PrivateKey(der)
			if err != nil {
				t.Fatal(err)
			}
			pt, err := rsa.DecryptOAEP(sha256.New(), nil, priv.(*rsa.PrivateKey), ct, []byte("label"))
			if err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("stdlib DecryptOAEP = %q, %v", pt, err)
			}
			theirs, _ := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, msg, nil)
			if pt, err := k.Decrypt(ctx, theirs, nil); err != nil || !bytes.Equal(pt, msg) {
				t.Fatalf("DecryptData of stdlib OAEP = %q, %v", pt, err)
			}
			if _, err := k.Decrypt(ctx, flip(theirs, 3), nil); !errors.Is(err, keywarden.ErrInvalidArgument) {
				t.Fatalf("tampered OAEP: %v", err)
			}
		})
	}

	for _, tc := range []struct {
		typ   keywarden.KeyType
		curve ecdh.Curve
	}{
		{keywarden.X25519, ecdh.X25519()},
		{keywarden.ECDHP256, ecdh.P256()},
		{keywarden.ECDHP384, ecdh.P384()},
	} {
		t.Run(string(tc.typ), func(t *testing.T) {
			k := generate(t, c, keywarden.KeySpec{Type: tc.typ, Exportable: true})
			peer, _ := tc.curve.GenerateKey(rand.Reader)
			peerDER, _ := x509.MarshalPKIXPublicKey(peer.PublicKey())
			for name, p := range map[string][]byte{"spki": peerDER, "raw": peer.PublicKey().Bytes()} {
				derived, err := k.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true, Ephemeral: true},
					keywarden.DeriveParams{Peer: p, Salt: []byte("salt"), Info: []byte("info")})
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				got, err := derived.Export(ctx, keywarden.FormatRaw)
				if err != nil {
					t.Fatal(err)
				}
				// The peer computes the same key with the standard library.
				mine := k.Public().(*ecdh.PublicKey)
				secret, err := peer.ECDH(mine)
				if err != nil {
					t.Fatal(err)
				}
				want, _ := hkdf.Key(sha256.New, secret, []byte("salt"), "info", 32)
				if !bytes.Equal(got, want) {
					t.Fatalf("%s: derived key differs from the peer's", name)
				}
			}
			// A derived key from a non-exportable parent stays inside.
			locked := generate(t, c, keywarden.KeySpec{Type: tc.typ})
			if _, err := locked.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true},
				keywarden.DeriveParams{Peer: peerDER}); !errors.Is(err, keywarden.ErrPolicyViolation) {
				t.Fatalf("exportable child of a locked parent: %v", err)
			}
			child, err := locked.Derive(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true}, keywarden.DeriveParams{Peer: peerDER})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := child.MAC(ctx, msg); err != nil {
				t.Fatalf("derived HMAC key: %v", err)
			}
			if _, err := child.Export(ctx, keywarden.FormatRaw); !errors.Is(err, keywarden.ErrPolicyViolation) {
				t.Fatalf("export of a derived key of a locked parent: %v", err)
			}
		})
	}

	t.Run("hkdf from hmac key", func(t *testing.T) {
		k := generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA384, Exportable: true})
		child, err := k.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true, Ephemeral: true},
			keywarden.DeriveParams{Salt: []byte("s"), Info: []byte("i")})
		if err != nil {
			t.Fatal(err)
		}
		got, _ := child.Export(ctx, keywarden.FormatRaw)
		ikm, _ := k.Export(ctx, keywarden.FormatRaw)
		want, _ := hkdf.Key(sha512.New384, ikm, []byte("s"), "i", 32)
		if !bytes.Equal(got, want) {
			t.Fatal("HKDF output differs from the standard library's")
		}
	})
}

// TestImportExportFormats imports keys the standard library made, in every
// format, and exports them back.
func TestImportExportFormats(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	edPub, edPriv, _ := ed25519.GenerateKey(rand.Reader)
	ecPriv, _ := ecdsa.GenerateKey(ecdhCurve(), rand.Reader)
	rsaPriv, _ := rsa.GenerateKey(rand.Reader, 2048)
	xPriv, _ := ecdh.X25519().GenerateKey(rand.Reader)
	for _, tc := range []struct {
		typ  keywarden.KeyType
		priv any
		pub  any
	}{
		{keywarden.Ed25519, edPriv, edPub},
		{keywarden.ECDSAP256, ecPriv, &ecPriv.PublicKey},
		{keywarden.RSA2048, rsaPriv, &rsaPriv.PublicKey},
		{keywarden.X25519, xPriv, xPriv.PublicKey()},
	} {
		t.Run(string(tc.typ), func(t *testing.T) {
			der, err := x509.MarshalPKCS8PrivateKey(tc.priv)
			if err != nil {
				t.Fatal(err)
			}
			for _, f := range []struct {
				name   string
				format keywarden.KeyFormat
				data   []byte
			}{
				{"pkcs8 der", keywarden.FormatPKCS8DER, der},
				{"pkcs8 pem", keywarden.FormatPKCS8PEM, pemBlock("PRIVATE KEY", der)},
				{"auto der", keywarden.FormatAuto, der},
				{"auto pem", keywarden.FormatAuto, pemBlock("PRIVATE KEY", der)},
			} {
				k, err := c.Import(ctx, keywarden.KeySpec{Type: tc.typ, Exportable: true, Ephemeral: true}, f.format, f.data)
				if err != nil {
					t.Fatalf("%s: %v", f.name, err)
				}
				if k.Info().Class != keywarden.ClassPrivate {
					t.Fatalf("%s: class %s", f.name, k.Info().Class)
				}
				back, err := k.Export(ctx, keywarden.FormatPKCS8DER)
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(back, der) {
					t.Fatalf("%s: PKCS #8 export differs from the import", f.name)
				}
				spki, _ := x509.MarshalPKIXPublicKey(tc.pub)
				if got, err := k.ExportPublic(ctx, keywarden.FormatSPKIDER); err != nil || !bytes.Equal(got, spki) {
					t.Fatalf("%s: public key differs: %v", f.name, err)
				}
			}
			spki, _ := x509.MarshalPKIXPublicKey(tc.pub)
			pk, err := c.Import(ctx, keywarden.KeySpec{Type: tc.typ, Ephemeral: true}, keywarden.FormatAuto, pemBlock("PUBLIC KEY", spki))
			if err != nil {
				t.Fatal(err)
			}
			if pk.Info().Class != keywarden.ClassPublic {
				t.Fatalf("public import has class %s", pk.Info().Class)
			}
			if got, err := pk.Export(ctx, keywarden.FormatSPKIDER); err != nil || !bytes.Equal(got, spki) {
				t.Fatalf("public key object exports as %v", err)
			}
			// Imported from DER, used after other messages went through the
			// same connection: the daemon kept its own copy of the key.
			pk2, err := c.Import(ctx, keywarden.KeySpec{Type: tc.typ, Ephemeral: true}, keywarden.FormatSPKIDER, spki)
			if err != nil {
				t.Fatal(err)
			}
			for range 3 {
				c.Ping(ctx, bytes.Repeat([]byte{0xAA}, 4096))
			}
			if got, err := pk2.ExportPublic(ctx, keywarden.FormatSPKIDER); err != nil || !bytes.Equal(got, spki) {
				t.Fatalf("public key imported from DER changed: %v", err)
			}
		})
	}
	t.Run("mismatched type", func(t *testing.T) {
		der, _ := x509.MarshalPKCS8PrivateKey(edPriv)
		for _, typ := range []keywarden.KeyType{keywarden.ECDSAP256, keywarden.RSA2048, keywarden.X25519, keywarden.AES256GCM} {
			if _, err := c.Import(ctx, keywarden.KeySpec{Type: typ, Ephemeral: true}, keywarden.FormatAuto, der); !errors.Is(err, keywarden.ErrInvalidArgument) {
				t.Errorf("Ed25519 key imported as %s: %v", typ, err)
			}
		}
	})
	t.Run("raw secret", func(t *testing.T) {
		raw := make([]byte, 32)
		rand.Read(raw)
		k, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true, Ephemeral: true}, keywarden.FormatRaw, raw)
		if err != nil {
			t.Fatal(err)
		}
		if back, _ := k.Export(ctx, keywarden.FormatRaw); !bytes.Equal(back, raw) {
			t.Fatal("raw export differs")
		}
		if _, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, keywarden.FormatRaw, raw[:16]); !errors.Is(err, keywarden.ErrInvalidArgument) {
			t.Fatalf("16-byte AES-256 key: %v", err)
		}
	})
}

func generate(t *testing.T, c *keywarden.Client, spec keywarden.KeySpec) *keywarden.Key {
	t.Helper()
	spec.Ephemeral = spec.Ephemeral || spec.Name == ""
	k, err := c.Generate(ctx, spec)
	if err != nil {
		t.Fatalf("generate %s: %v", spec.Type, err)
	}
	return k
}

func flip(b []byte, i int) []byte {
	c := append([]byte{}, b...)
	c[i] ^= 1
	return c
}

func sum(h hash.Hash, b []byte) []byte {
	h.Write(b)
	return h.Sum(nil)
}

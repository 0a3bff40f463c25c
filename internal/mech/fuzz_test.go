package mech

import (
	"bytes"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// The fuzz targets check that no input makes Import, Derive or Decrypt
// panic, and that every failure is a clean *wire.Error. Seeds live in
// testdata/fuzz/<name>/ (valid and near-valid encodings made with the
// standard library) and are added below.

// fuzzAESKey is the fixed AES key of FuzzDecrypt, so that the seed corpus
// can hold valid ciphertexts: bytes 0x00..0x1f.
func fuzzAESKey() []byte {
	b := make([]byte, 32)
	for i := range b {
		b[i] = byte(i)
	}
	return b
}

func FuzzImport(f *testing.F) {
	for _, typ := range []wire.KeyType{tEd, tP256, tX25519} {
		for _, e := range encodings(f, stdKey(typ)) {
			f.Add(e.data)
		}
	}
	f.Add([]byte(selfTestRSAKey))
	f.Add(make([]byte, 32))
	f.Add([]byte("-----BEGIN PRIVATE KEY-----\n-----END PRIVATE KEY-----\n"))
	formats := append(allFormats, wire.KeyFormat(-1), wire.KeyFormat(1000))
	f.Fuzz(func(t *testing.T, data []byte) {
		orig := bytes.Clone(data)
		for _, typ := range key.Types() {
			s := spec(typ)
			for _, fm := range formats {
				k, err := Import(s, fm, data)
				if err != nil {
					checkWireError(t, err)
					continue
				}
				if !s.ClassOK(k.Class()) || k.Spec() != s {
					t.Fatalf("%s %v: class %v", s.Name, fm, k.Class())
				}
				// Whatever was accepted exports and re-imports as itself.
				out, err := k.Export(fUnspec)
				if err != nil {
					t.Fatalf("%s %v: export of an imported key: %v", s.Name, fm, err)
				}
				k2, err := Import(s, fUnspec, out)
				if err != nil {
					t.Fatalf("%s %v: re-import: %v", s.Name, fm, err)
				}
				if !bytes.Equal(k2.PublicDER(), k.PublicDER()) || !bytes.Equal(k2.secretBytes(), k.secretBytes()) {
					t.Fatalf("%s %v: re-import differs", s.Name, fm)
				}
				k.Destroy()
				k2.Destroy()
			}
		}
		if !bytes.Equal(data, orig) {
			t.Fatal("Import modified its input")
		}
	})
}

func FuzzDerivePeer(f *testing.F) {
	var keys []*Key
	for _, typ := range []wire.KeyType{tX25519, tDH256, tDH384} {
		k := testKey(f, typ)
		keys = append(keys, k)
		f.Add(k.PublicDER())
		pem, _ := k.Public(fSPKIPEM)
		f.Add(pem)
		f.Add(k.dhPub.Bytes())
	}
	hm := testKey(f, tHMAC256)
	f.Add([]byte{})
	f.Add(make([]byte, 32))
	f.Add([]byte{2})
	f.Fuzz(func(t *testing.T, peer []byte) {
		for _, k := range keys {
			d, err := k.Derive(peer, hNone, nil, nil, spec(tAES))
			if err != nil {
				checkWireError(t, err)
				if wire.StatusOf(err) != stInvalid {
					t.Fatalf("status %v", wire.StatusOf(err))
				}
				continue
			}
			if d.Class() != key.Secret || len(d.secretBytes()) != 32 {
				t.Fatal("bad derived key")
			}
			d.Destroy()
		}
		d, err := hm.Derive(peer, hNone, nil, nil, spec(tHMAC512))
		if (err == nil) != (len(peer) == 0) {
			t.Fatalf("HMAC derive with %d peer bytes: %v", len(peer), err)
		}
		checkWireError(t, err)
		if d != nil {
			d.Destroy()
		}
	})
}

func FuzzDecrypt(f *testing.F) {
	aesKey, err := Import(spec(tAES), fRaw, fuzzAESKey())
	wantOK(f, err)
	rsaKey, err := Import(spec(tRSA2048), fUnspec, []byte(selfTestRSAKey))
	wantOK(f, err)
	for _, pt := range []string{"", "x", "a longer plaintext of some size"} {
		ct, _ := aesKey.Encrypt([]byte(pt), []byte("aad"), hNone, nil)
		f.Add(ct, []byte("aad"), byte(0))
		ct, _ = rsaKey.Encrypt([]byte(pt), []byte("aad"), hSHA384, nil)
		f.Add(ct, []byte("aad"), byte(hSHA384))
	}
	f.Add([]byte{}, []byte{}, byte(0))
	f.Fuzz(func(t *testing.T, ct, aad []byte, h byte) {
		alg := wire.HashAlg(h % 7)
		for _, k := range []*Key{aesKey, rsaKey} {
			hh := alg
			if k == aesKey {
				hh = hNone
			}
			pt, err := k.Decrypt(ct, aad, hh, nil)
			if err != nil {
				checkWireError(t, err)
				if we := err.(*wire.Error); we.Public != "decryption failed" && we.Public != "unsupported hash algorithm" {
					t.Fatalf("decryption error %q gives a reason", we.Public)
				}
				continue
			}
			// Accepted: it must be a ciphertext of pt under this key.
			if k == aesKey && len(ct) != len(pt)+28 {
				t.Fatal("AES-GCM accepted a ciphertext of the wrong length")
			}
		}
	})
}

// FuzzVerify checks that no signature, tag, digest or parameter makes
// Verify or VerifyMAC panic or succeed wrongly.
func FuzzVerify(f *testing.F) {
	var keys []*Key
	for _, typ := range []wire.KeyType{tEd, tP256, tP384, tRSA2048} {
		k := testKey(f, typ)
		keys = append(keys, publicOf(f, k))
		sig, _ := k.Sign(SignParams{}, []byte("msg"))
		f.Add([]byte("msg"), sig, byte(0), byte(0), false)
		k.Destroy()
	}
	hm := testKey(f, tHMAC512)
	tag, _ := hm.MAC([]byte("msg"), nil)
	f.Add([]byte("msg"), tag, byte(0), byte(0), false)
	f.Add(make([]byte, 64), make([]byte, 64), byte(3), byte(0), true)
	f.Fuzz(func(t *testing.T, data, sig []byte, h, pad byte, pre bool) {
		p := SignParams{Hash: wire.HashAlg(h % 7), Padding: wire.Padding(pad % 4), Prehashed: pre}
		for _, k := range keys {
			err := k.Verify(p, data, sig)
			checkWireError(t, err)
			if err == nil && string(data) != "msg" {
				t.Fatalf("%s: a signature over fuzzed data verified", k.Spec().Name)
			}
			if s, err := k.NewSignStream(SignParams{Hash: p.Hash, Padding: p.Padding}, true); err == nil {
				s.Write(data)
				_, err := s.Final(sig)
				checkWireError(t, err)
			} else {
				checkWireError(t, err)
			}
		}
		err := hm.VerifyMAC(data, sig)
		checkWireError(t, err)
		if err == nil && string(data) != "msg" {
			t.Fatal("a MAC over fuzzed data verified")
		}
	})
}

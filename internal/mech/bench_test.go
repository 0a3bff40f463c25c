package mech

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"testing"
)

// Each benchmark compares mech with the same operation done directly with
// the standard library ("stdlib"), the yardstick of docs/performance.md.

func BenchmarkAESGCMSeal256(b *testing.B) {
	k := testKey(b, tAES)
	defer k.Destroy()
	pt := make([]byte, 256)
	dst := make([]byte, 0, 256+28)
	b.Run("mech", func(b *testing.B) {
		b.SetBytes(int64(len(pt)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := k.Encrypt(pt, nil, hNone, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("mech-each512", func(b *testing.B) {
		// A run of 512, as a batch's: per message.
		b.SetBytes(int64(len(pt)))
		b.ReportAllocs()
		in := func(int) (pt2, aad, dst2 []byte) { return pt, nil, dst }
		done := func(_ int, _ []byte, err error) {
			if err != nil {
				b.Fatal(err)
			}
		}
		for i := 0; i < b.N; i += 512 {
			if err := k.EncryptEach(min(512, b.N-i), hNone, in, done); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		raw, _ := k.Export(fRaw)
		block, _ := aes.NewCipher(raw)
		aead, _ := cipher.NewGCMWithRandomNonce(block)
		b.SetBytes(int64(len(pt)))
		b.ReportAllocs()
		for b.Loop() {
			aead.Seal(dst, nil, pt, nil)
		}
	})
}

func BenchmarkHMACSHA256_256(b *testing.B) {
	k := testKey(b, tHMAC256)
	defer k.Destroy()
	data := make([]byte, 256)
	dst := make([]byte, 0, 32)
	b.Run("mech", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			if _, err := k.MAC(data, dst); err != nil {
				b.Fatal(err)
			}
		}
	})
	raw, _ := k.Export(fRaw)
	// The usual stdlib call: a new HMAC per message, key schedule included.
	b.Run("stdlib", func(b *testing.B) {
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			m := hmac.New(sha256.New, raw)
			m.Write(data)
			m.Sum(dst)
		}
	})
	// The fastest stdlib use: one HMAC reused with Reset.
	b.Run("stdlib-reused", func(b *testing.B) {
		m := hmac.New(sha256.New, raw)
		b.SetBytes(int64(len(data)))
		b.ReportAllocs()
		for b.Loop() {
			m.Reset()
			m.Write(data)
			m.Sum(dst)
		}
	})
}

func BenchmarkEd25519Sign(b *testing.B) {
	k := testKey(b, tEd)
	defer k.Destroy()
	msg := make([]byte, 64)
	b.Run("mech", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := k.Sign(SignParams{}, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		priv := stdPrivate(b, k).(ed25519.PrivateKey)
		b.ReportAllocs()
		for b.Loop() {
			ed25519.Sign(priv, msg)
		}
	})
}

func BenchmarkECDSAP256Sign(b *testing.B) {
	k := testKey(b, tP256)
	defer k.Destroy()
	msg := make([]byte, 64)
	b.Run("mech", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			if _, err := k.Sign(SignParams{}, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stdlib", func(b *testing.B) {
		priv := stdPrivate(b, k).(*ecdsa.PrivateKey)
		b.ReportAllocs()
		for b.Loop() {
			d := sha256.Sum256(msg)
			if _, err := ecdsa.SignASN1(rand.Reader, priv, d[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
}

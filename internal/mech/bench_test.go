package mech

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"testing"

	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
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

func BenchmarkECDSAP256Sign(b *testing.B) { benchSign(b, tP256) }

func BenchmarkECDSAP384Sign(b *testing.B) { benchSign(b, tP384) }

func BenchmarkRSA2048PSSSign(b *testing.B) { benchSign(b, tRSA2048) }

// benchSign signs a 64-byte message with a key of type typ through mech,
// and with the standard library outside and inside secmem.Do
// ("stdlib-secret"): the difference between the last two is what
// runtime/secret costs the standard library's signing, mostly the record
// it keeps of every allocation (an ECDSA signature makes about 60).
func benchSign(b *testing.B, typ wire.KeyType) {
	k := testKey(b, typ)
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
	sign := stdSign(b, k)
	b.Run("stdlib", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d := sha256.Sum256(msg)
			if err := sign(d[:]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("stdlib-secret", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d := sha256.Sum256(msg)
			var err error
			secmem.Do(func() { err = sign(d[:]) })
			if err != nil {
				b.Fatal(err)
			}
		}
	})
}

// stdSign returns a function that signs a SHA-256 digest with the
// standard library's form of k, as mech does with SignParams{}.
func stdSign(t testing.TB, k *Key) func(digest []byte) error {
	t.Helper()
	switch priv := stdPrivate(t, k).(type) {
	case *ecdsa.PrivateKey:
		return func(d []byte) error {
			_, err := ecdsa.SignASN1(rand.Reader, priv, d)
			return err
		}
	case *rsa.PrivateKey:
		opts := &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}
		return func(d []byte) error {
			_, err := rsa.SignPSS(rand.Reader, priv, crypto.SHA256, d, opts)
			return err
		}
	}
	t.Fatalf("no digest signature for %s", k.Spec().Name)
	return nil
}

package wrap

import (
	"bytes"
	"crypto"
	"crypto/aes"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// The fuzz targets check that unwrapping never panics, fails only with
// ErrUnwrap (or aes.KeySizeError for a wrapping key of invalid size), and
// accepts only canonical input: a blob that opens is exactly what wrapping
// its result gives. Seed corpora are in testdata/fuzz/<target>/ besides
// the seeds added here.

// checkUnwrapErr fails unless err is nil, ErrUnwrap, or a KeySizeError
// for a key of invalid size.
func checkUnwrapErr(t *testing.T, kek []byte, err error) {
	var kse aes.KeySizeError
	switch {
	case err == nil, err == ErrUnwrap:
		if len(kek) != 16 && len(kek) != 24 && len(kek) != 32 {
			t.Fatalf("%d-byte kek: %v", len(kek), err)
		}
	case errors.As(err, &kse):
		if len(kek) == 16 || len(kek) == 24 || len(kek) == 32 {
			t.Fatalf("%d-byte kek: %v", len(kek), err)
		}
	default:
		t.Fatalf("unexpected error %v", err)
	}
}

func FuzzUnwrapKW(f *testing.F) {
	for _, v := range kwVectors {
		f.Add(unhex(f, v.kek), unhex(f, v.ct))
	}
	f.Fuzz(func(t *testing.T, kek, ct []byte) {
		p, err := UnwrapKW(kek, ct)
		checkUnwrapErr(t, kek, err)
		if err != nil {
			if p != nil {
				t.Fatal("plaintext with an error")
			}
			return
		}
		again, err := WrapKW(kek, p)
		if err != nil || !bytes.Equal(again, ct) {
			t.Fatalf("UnwrapKW(%x) = %x, but WrapKW gives %x, %v", ct, p, again, err)
		}
	})
}

func FuzzUnwrapKWP(f *testing.F) {
	for _, v := range kwpVectors {
		f.Add(unhex(f, v.kek), unhex(f, v.ct))
	}
	f.Fuzz(func(t *testing.T, kek, ct []byte) {
		p, err := UnwrapKWP(kek, ct)
		checkUnwrapErr(t, kek, err)
		if err != nil {
			if p != nil {
				t.Fatal("plaintext with an error")
			}
			return
		}
		again, err := WrapKWP(kek, p)
		if err != nil || !bytes.Equal(again, ct) {
			t.Fatalf("UnwrapKWP(%x) = %x, but WrapKWP gives %x, %v", ct, p, again, err)
		}
	})
}

// fuzzKEK is the 32-byte key of the KWW2 and KWW3 seeds in testdata/fuzz.
var fuzzKEK = func() []byte {
	k := make([]byte, 32)
	for i := range k {
		k[i] = byte(i)
	}
	return k
}()

func FuzzOpenKeyword(f *testing.F) {
	for _, typ := range []key.Type{wire.KeyType_KEY_TYPE_AES256_GCM, wire.KeyType_KEY_TYPE_ECDSA_P384} {
		blob, err := SealKeyword(fuzzKEK, bytes.Repeat([]byte{0x42}, 48), fullAttributes(key.Lookup(typ)))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(fuzzKEK, blob)
	}
	f.Fuzz(func(t *testing.T, kek, blob []byte) {
		m, a, err := OpenKeyword(kek, blob)
		var kse aes.KeySizeError
		switch {
		case len(kek) != 32:
			if !errors.As(err, &kse) {
				t.Fatalf("%d-byte kek: %v", len(kek), err)
			}
			return
		case err == ErrUnwrap || err == ErrLegacyKeyword:
			if m != nil || a != (Attributes{}) {
				t.Fatal("result with an error")
			}
			return
		case err != nil:
			t.Fatalf("unexpected error %v", err)
		}
		// It opened: the attributes pass Check and their encoding is the
		// one in the blob (one encoding per set of attributes).
		if err := a.Check(); err != nil {
			t.Fatalf("opened attributes fail Check: %v", err)
		}
		l := int(binary.BigEndian.Uint16(blob[4:]))
		if enc := appendAttributes(nil, &a); !bytes.Equal(enc, blob[6:6+l]) {
			t.Fatalf("attributes %x re-encode as %x", blob[6:6+l], enc)
		}
		extra := 32 // KWW3: the salt
		if blob[3] == '2' {
			extra = 12 // KWW2: the nonce
		}
		if len(m) == 0 || len(m) > MaxMaterial || len(blob) != 6+l+extra+len(m)+16 {
			t.Fatalf("%d bytes of material from a %d-byte blob", len(m), len(blob))
		}
	})
}

func FuzzUnwrapRSAKWP(f *testing.F) {
	priv := testRSAKey(f, 2048)
	for _, n := range []int{1, 32, 121} {
		blob, err := WrapRSAKWP(&priv.PublicKey, crypto.SHA256, bytes.Repeat([]byte{7}, n))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(false, blob)
	}
	// sha1 asks for SHA-1, which is refused whatever the blob.
	f.Fuzz(func(t *testing.T, sha1 bool, blob []byte) {
		h := crypto.SHA256
		if sha1 {
			h = crypto.SHA1
		}
		m, err := UnwrapRSAKWP(priv, h, blob)
		switch {
		case sha1:
			if err == nil || err == ErrUnwrap || m != nil {
				t.Fatalf("SHA-1: %x, %v; want the hash refused", m, err)
			}
		case err == nil:
			if len(m) == 0 {
				t.Fatal("no material")
			}
		case err == ErrUnwrap || err == ErrLegacyKeyword:
			if m != nil {
				t.Fatal("material with an error")
			}
		default:
			t.Fatalf("unexpected error %v", err)
		}
	})
}

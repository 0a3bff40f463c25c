package wrap

import (
	"bytes"
	"crypto"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha1"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

var rsaSizes = []int{2048, 3072, 4096}

var rsaKeys sync.Map // bits → *rsa.PrivateKey

// testRSAKey returns the RSA test key of the given size from
// testdata/rsaBITS.pem (PKCS #8, made with openssl genpkey; test use only).
// Generating RSA-4096 keys in every run would be slow.
func testRSAKey(t testing.TB, bits int) *rsa.PrivateKey {
	t.Helper()
	if k, ok := rsaKeys.Load(bits); ok {
		return k.(*rsa.PrivateKey)
	}
	data, err := os.ReadFile(filepath.Join("testdata", fmt.Sprintf("rsa%d.pem", bits)))
	if err != nil {
		t.Fatal(err)
	}
	block, _ := pem.Decode(data)
	if block == nil {
		t.Fatal("no PEM block")
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	priv := k.(*rsa.PrivateKey)
	if priv.N.BitLen() != bits {
		t.Fatalf("test key has %d bits", priv.N.BitLen())
	}
	rsaKeys.Store(bits, priv)
	return priv
}

func TestRSAKWPRoundTrip(t *testing.T) {
	for _, bits := range rsaSizes {
		priv := testRSAKey(t, bits)
		for _, h := range []crypto.Hash{crypto.SHA256, crypto.SHA384, crypto.SHA512} {
			for _, n := range []int{1, 7, 32, 48, 64, 121, 1217, 2400} {
				material := randBytes(n)
				blob, err := WrapRSAKWP(&priv.PublicKey, h, material)
				if err != nil {
					t.Fatalf("RSA-%d/%v/%d: %v", bits, h, n, err)
				}
				if want := priv.Size() + (n+7)/8*8 + 8; len(blob) != want {
					t.Fatalf("RSA-%d/%v/%d: blob is %d bytes, want %d", bits, h, n, len(blob), want)
				}
				got, err := UnwrapRSAKWP(priv, h, blob)
				if err != nil || !bytes.Equal(got, material) {
					t.Fatalf("RSA-%d/%v/%d: UnwrapRSAKWP = %x, %v", bits, h, n, got, err)
				}
			}
		}
	}
}

func TestRSAKWPFresh(t *testing.T) {
	priv := testRSAKey(t, 2048)
	material := randBytes(32)
	a, _ := WrapRSAKWP(&priv.PublicKey, crypto.SHA256, material)
	b, _ := WrapRSAKWP(&priv.PublicKey, crypto.SHA256, material)
	if bytes.Equal(a[priv.Size():], b[priv.Size():]) {
		t.Fatal("two wraps used the same ephemeral key")
	}
}

// TestRSAKWPRefusesSHA1 builds a well-formed blob with SHA-1 for OAEP and
// MGF1 by hand (WrapRSAKWP does not make them) and checks that unwrapping
// refuses SHA-1 as wrapping does, as docs/formats.md says: keywarden
// offers SHA-1 nowhere.
func TestRSAKWPRefusesSHA1(t *testing.T) {
	priv := testRSAKey(t, 3072)
	material := randBytes(48)
	ek := randBytes(32)
	c1, err := rsa.EncryptOAEP(sha1.New(), rand.Reader, &priv.PublicKey, ek, nil)
	if err != nil {
		t.Fatal(err)
	}
	c2, _ := WrapKWP(ek, material)
	blob := append(c1, c2...)
	got, err := UnwrapRSAKWP(priv, crypto.SHA1, blob)
	if err == nil || err == ErrUnwrap || got != nil {
		t.Fatalf("UnwrapRSAKWP with SHA-1 = %x, %v; want the hash refused", got, err)
	}
	if !strings.Contains(err.Error(), "SHA-256, SHA-384 or SHA-512") {
		t.Fatalf("the refusal does not say which hashes are taken: %v", err)
	}
	if _, err := UnwrapRSAKWP(priv, crypto.SHA256, blob); err != ErrUnwrap {
		t.Fatalf("SHA-1 blob opened as SHA-256: %v", err)
	}
	if _, err := WrapRSAKWP(&priv.PublicKey, crypto.SHA1, material); err == nil {
		t.Fatal("WrapRSAKWP made a SHA-1 blob")
	}
}

func TestRSAKWPBadEphemeralKey(t *testing.T) {
	priv := testRSAKey(t, 2048)
	for _, n := range []int{0, 1, 8, 15, 17, 31, 33, 64} {
		ek := randBytes(n)
		c1, err := rsa.EncryptOAEP(crypto.SHA256.New(), rand.Reader, &priv.PublicKey, ek, nil)
		if err != nil {
			t.Fatal(err)
		}
		// Whatever follows, an ephemeral key of this size is refused.
		c2, _ := WrapKWP(randBytes(32), randBytes(32))
		if _, err := UnwrapRSAKWP(priv, crypto.SHA256, append(c1, c2...)); err != ErrUnwrap {
			t.Fatalf("%d-byte ephemeral key: %v", n, err)
		}
	}
}

func TestRSAKWPTamper(t *testing.T) {
	priv := testRSAKey(t, 2048)
	blob, err := WrapRSAKWP(&priv.PublicKey, crypto.SHA256, randBytes(40))
	if err != nil {
		t.Fatal(err)
	}
	// Every byte of both parts, a bit at a time at both ends of the byte.
	for i := range blob {
		for _, bit := range []byte{0x01, 0x80} {
			bad := bytes.Clone(blob)
			bad[i] ^= bit
			if p, err := UnwrapRSAKWP(priv, crypto.SHA256, bad); err != ErrUnwrap || p != nil {
				t.Fatalf("flipped bit %#x of byte %d: %x, %v", bit, i, p, err)
			}
		}
	}
	for _, n := range []int{0, 1, priv.Size() - 1, priv.Size(), priv.Size() + 8, priv.Size() + 15, len(blob) - 8, len(blob) - 1} {
		if p, err := UnwrapRSAKWP(priv, crypto.SHA256, blob[:n]); err != ErrUnwrap || p != nil {
			t.Fatalf("truncated to %d bytes: %x, %v", n, p, err)
		}
	}
	if p, err := UnwrapRSAKWP(priv, crypto.SHA256, append(bytes.Clone(blob), make([]byte, 8)...)); err != ErrUnwrap || p != nil {
		t.Fatalf("extended: %x, %v", p, err)
	}
	// Another key, another hash.
	if p, err := UnwrapRSAKWP(testRSAKey(t, 3072), crypto.SHA256, blob); err != ErrUnwrap || p != nil {
		t.Fatalf("other key: %x, %v", p, err)
	}
	for _, h := range []crypto.Hash{crypto.SHA384, crypto.SHA512} {
		if p, err := UnwrapRSAKWP(priv, h, blob); err != ErrUnwrap || p != nil {
			t.Fatalf("hash %v: %x, %v", h, p, err)
		}
	}
}

func TestRSAKWPParameters(t *testing.T) {
	priv := testRSAKey(t, 2048)
	blob, _ := WrapRSAKWP(&priv.PublicKey, crypto.SHA256, randBytes(32))
	for _, h := range []crypto.Hash{0, crypto.MD5, crypto.SHA224, crypto.SHA3_256, crypto.SHA512_256, 999} {
		if _, err := WrapRSAKWP(&priv.PublicKey, h, randBytes(32)); err == nil {
			t.Errorf("WrapRSAKWP with hash %d succeeded", h)
		}
		if _, err := UnwrapRSAKWP(priv, h, blob); err == nil || err == ErrUnwrap {
			t.Errorf("UnwrapRSAKWP with hash %d: %v", h, err)
		}
	}
	if _, err := WrapRSAKWP(nil, crypto.SHA256, randBytes(32)); err == nil {
		t.Error("WrapRSAKWP with no key succeeded")
	}
	if _, err := WrapRSAKWP(&rsa.PublicKey{}, crypto.SHA256, randBytes(32)); err == nil {
		t.Error("WrapRSAKWP with an empty key succeeded")
	}
	if _, err := UnwrapRSAKWP(nil, crypto.SHA256, blob); err == nil {
		t.Error("UnwrapRSAKWP with no key succeeded")
	}
	if _, err := WrapRSAKWP(&priv.PublicKey, crypto.SHA256, nil); err == nil {
		t.Error("WrapRSAKWP of nothing succeeded")
	}
	small, err := rsa.GenerateKey(rand.Reader, 1024)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := WrapRSAKWP(&small.PublicKey, crypto.SHA256, randBytes(32)); err == nil {
		t.Error("WrapRSAKWP with RSA-1024 succeeded")
	}
	if _, err := UnwrapRSAKWP(small, crypto.SHA256, make([]byte, 200)); err == nil || err == ErrUnwrap {
		t.Errorf("UnwrapRSAKWP with RSA-1024: %v", err)
	}
}

func TestRSAKWPWipesEphemeralKey(t *testing.T) {
	priv := testRSAKey(t, 2048)
	material := randBytes(32)
	blob, _ := WrapRSAKWP(&priv.PublicKey, crypto.SHA256, material)
	var seen [][]byte
	testHookEphemeral = func(ek []byte) { seen = append(seen, ek) }
	defer func() { testHookEphemeral = nil }()

	good, err := UnwrapRSAKWP(priv, crypto.SHA256, blob)
	if err != nil || !bytes.Equal(good, material) {
		t.Fatal(err)
	}
	bad := bytes.Clone(blob)
	bad[len(bad)-1] ^= 1 // OAEP succeeds, KWP fails
	if _, err := UnwrapRSAKWP(priv, crypto.SHA256, bad); err != ErrUnwrap {
		t.Fatal(err)
	}
	if len(seen) != 2 {
		t.Fatalf("hook ran %d times", len(seen))
	}
	for i, ek := range seen {
		if len(ek) != 32 || !bytes.Equal(ek, make([]byte, 32)) {
			t.Errorf("call %d: ephemeral key after unwrap: %x", i, ek)
		}
	}
}

package mech

import (
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// Shorthands for the wire enums used throughout the tests.
const (
	tAES     = wire.KeyType_KEY_TYPE_AES256_GCM
	tHMAC256 = wire.KeyType_KEY_TYPE_HMAC_SHA256
	tHMAC384 = wire.KeyType_KEY_TYPE_HMAC_SHA384
	tHMAC512 = wire.KeyType_KEY_TYPE_HMAC_SHA512
	tEd      = wire.KeyType_KEY_TYPE_ED25519
	tP256    = wire.KeyType_KEY_TYPE_ECDSA_P256
	tP384    = wire.KeyType_KEY_TYPE_ECDSA_P384
	tRSA2048 = wire.KeyType_KEY_TYPE_RSA_2048
	tRSA3072 = wire.KeyType_KEY_TYPE_RSA_3072
	tRSA4096 = wire.KeyType_KEY_TYPE_RSA_4096
	tX25519  = wire.KeyType_KEY_TYPE_X25519
	tDH256   = wire.KeyType_KEY_TYPE_ECDH_P256
	tDH384   = wire.KeyType_KEY_TYPE_ECDH_P384

	hNone    = wire.HashAlg_HASH_ALG_UNSPECIFIED
	hSHA256  = wire.HashAlg_HASH_ALG_SHA256
	hSHA384  = wire.HashAlg_HASH_ALG_SHA384
	hSHA512  = wire.HashAlg_HASH_ALG_SHA512
	hSHA3256 = wire.HashAlg_HASH_ALG_SHA3_256
	hSHA3512 = wire.HashAlg_HASH_ALG_SHA3_512

	fUnspec   = wire.KeyFormat_KEY_FORMAT_UNSPECIFIED
	fRaw      = wire.KeyFormat_KEY_FORMAT_RAW
	fPKCS8DER = wire.KeyFormat_KEY_FORMAT_PKCS8_DER
	fPKCS8PEM = wire.KeyFormat_KEY_FORMAT_PKCS8_PEM
	fSPKIDER  = wire.KeyFormat_KEY_FORMAT_SPKI_DER
	fSPKIPEM  = wire.KeyFormat_KEY_FORMAT_SPKI_PEM

	stInvalid  = wire.Status_STATUS_INVALID_ARGUMENT
	stVerify   = wire.Status_STATUS_VERIFICATION_FAILED
	stNotFound = wire.Status_STATUS_NOT_FOUND
)

var allHashes = []wire.HashAlg{hSHA256, hSHA384, hSHA512, hSHA3256, hSHA3512}

var allFormats = []wire.KeyFormat{fUnspec, fRaw, fPKCS8DER, fPKCS8PEM, fSPKIDER, fSPKIPEM}

func spec(t wire.KeyType) *key.Spec { return key.Lookup(t) }

// stored keeps one exported key per type, so tests get fresh Keys without
// generating an RSA-4096 key each time.
var stored struct {
	sync.Mutex
	m map[wire.KeyType][]byte
}

// testKey returns a fresh Key of type typ, equal for every call in one
// test binary run (a private key for asymmetric types). The test owns it.
func testKey(t testing.TB, typ wire.KeyType) *Key {
	t.Helper()
	stored.Lock()
	defer stored.Unlock()
	if stored.m == nil {
		stored.m = map[wire.KeyType][]byte{}
	}
	b, ok := stored.m[typ]
	if !ok {
		k, err := Generate(spec(typ))
		if err != nil {
			t.Fatalf("Generate(%v): %v", typ, err)
		}
		if b, err = k.Export(fUnspec); err != nil {
			t.Fatalf("Export(%v): %v", typ, err)
		}
		k.Destroy()
		stored.m[typ] = b
	}
	k, err := Import(spec(typ), fUnspec, b)
	if err != nil {
		t.Fatalf("Import(%v): %v", typ, err)
	}
	return k
}

// publicOf returns a public-class Key for k.
func publicOf(t testing.TB, k *Key) *Key {
	t.Helper()
	p, err := Import(k.Spec(), fSPKIDER, k.PublicDER())
	if err != nil {
		t.Fatalf("import public %s: %v", k.Spec().Name, err)
	}
	if p.Class() != key.Public {
		t.Fatalf("class = %v, want public", p.Class())
	}
	return p
}

// stdPrivate returns the standard library's form of k's private key, via
// Export.
func stdPrivate(t testing.TB, k *Key) any {
	t.Helper()
	der, err := k.Export(fPKCS8DER)
	if err != nil {
		t.Fatalf("export: %v", err)
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		t.Fatalf("x509.ParsePKCS8PrivateKey of exported %s key: %v", k.Spec().Name, err)
	}
	return priv
}

// stdPublic returns the standard library's form of k's public key, via
// PublicDER.
func stdPublic(t testing.TB, k *Key) any {
	t.Helper()
	pub, err := x509.ParsePKIXPublicKey(k.PublicDER())
	if err != nil {
		t.Fatalf("x509.ParsePKIXPublicKey: %v", err)
	}
	return pub
}

// wantErr checks that err is a *wire.Error with status st and, if msg is
// not empty, that public message.
func wantErr(t testing.TB, err error, st wire.Status, msg string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want %v %q", st, msg)
	}
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("error %v (%T) is not a *wire.Error", err, err)
	}
	if we.Status != st {
		t.Fatalf("status = %v (%v), want %v", we.Status, err, st)
	}
	if msg != "" && we.Public != msg {
		t.Fatalf("message = %q, want %q", we.Public, msg)
	}
}

// wantOK fails the test on err.
func wantOK(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// checkWireError checks that a non-nil err is a *wire.Error whose message
// is short; for fuzzing and garbage tests.
func checkWireError(t testing.TB, err error) {
	t.Helper()
	if err == nil {
		return
	}
	var we *wire.Error
	if !errors.As(err, &we) {
		t.Fatalf("error %v (%T) is not a *wire.Error", err, err)
	}
	if we.Status == wire.Status_STATUS_OK || len(we.Public) > 80 || strings.ContainsAny(we.Public, "\x00\n") {
		t.Fatalf("bad error %+v", we)
	}
}

package mech

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"sync"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// stdKeys holds one standard-library key per asymmetric type.
var stdKeys = sync.OnceValue(func() map[wire.KeyType]crypto.Signer {
	m := map[wire.KeyType]crypto.Signer{}
	rsaKey := func(bits int) *rsa.PrivateKey {
		k, err := rsa.GenerateKey(rand.Reader, bits)
		if err != nil {
			panic(err)
		}
		return k
	}
	ecKey := func(c elliptic.Curve) *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(c, rand.Reader)
		if err != nil {
			panic(err)
		}
		return k
	}
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	m[tEd] = ed
	m[tP256] = ecKey(elliptic.P256())
	m[tP384] = ecKey(elliptic.P384())
	m[tRSA2048] = rsaKey(2048)
	m[tRSA3072] = rsaKey(3072)
	m[tRSA4096] = rsaKey(4096)
	m[tDH256] = m[tP256]
	m[tDH384] = m[tP384]
	return m
})

// x25519Key is the stdlib X25519 key used by the import tests (crypto/ecdh
// keys are not crypto.Signers).
var x25519Key = sync.OnceValue(func() *ecdh.PrivateKey {
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		panic(err)
	}
	return k
})

// encodings returns every accepted encoding of a stdlib private key and
// of its public key, keyed by a description, with the format to pass and
// whether it yields a private key.
type encoding struct {
	name    string
	format  wire.KeyFormat
	data    []byte
	private bool
}

func encodings(t testing.TB, priv any) []encoding {
	t.Helper()
	p8, err := x509.MarshalPKCS8PrivateKey(priv)
	wantOK(t, err)
	var pub any
	switch p := priv.(type) {
	case crypto.Signer:
		pub = p.Public()
	case *ecdh.PrivateKey:
		pub = p.PublicKey()
	}
	spki, err := x509.MarshalPKIXPublicKey(pub)
	wantOK(t, err)
	pemOf := func(typ string, b []byte) []byte { return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: b}) }
	es := []encoding{
		{"PKCS8 DER", fPKCS8DER, p8, true},
		{"PKCS8 DER detected", fUnspec, p8, true},
		{"PKCS8 PEM", fPKCS8PEM, pemOf("PRIVATE KEY", p8), true},
		{"PKCS8 PEM detected", fUnspec, pemOf("PRIVATE KEY", p8), true},
		{"PKCS8 PEM with white space", fPKCS8PEM, append(append([]byte("\n\r\n"), pemOf("PRIVATE KEY", p8)...), "\n\n"...), true},
		{"SPKI DER", fSPKIDER, spki, false},
		{"SPKI DER detected", fUnspec, spki, false},
		{"SPKI PEM", fSPKIPEM, pemOf("PUBLIC KEY", spki), false},
		{"SPKI PEM detected", fUnspec, pemOf("PUBLIC KEY", spki), false},
	}
	switch p := priv.(type) {
	case *ecdsa.PrivateKey:
		sec1, err := x509.MarshalECPrivateKey(p)
		wantOK(t, err)
		es = append(es, encoding{"SEC1 PEM", fPKCS8PEM, pemOf("EC PRIVATE KEY", sec1), true},
			encoding{"SEC1 PEM detected", fUnspec, pemOf("EC PRIVATE KEY", sec1), true})
	case *rsa.PrivateKey:
		p1 := x509.MarshalPKCS1PrivateKey(p)
		es = append(es, encoding{"PKCS1 PEM", fPKCS8PEM, pemOf("RSA PRIVATE KEY", p1), true},
			encoding{"PKCS1 PEM detected", fUnspec, pemOf("RSA PRIVATE KEY", p1), true})
	}
	return es
}

func stdKey(typ wire.KeyType) any {
	if typ == tX25519 {
		return x25519Key()
	}
	return stdKeys()[typ]
}

func asymmetricTypes() []wire.KeyType {
	var ts []wire.KeyType
	for _, typ := range key.Types() {
		if spec(typ).Asymmetric {
			ts = append(ts, typ)
		}
	}
	return ts
}

// TestImportFormats imports stdlib keys of every asymmetric type in every
// encoding and checks the result against the original.
func TestImportFormats(t *testing.T) {
	for _, typ := range asymmetricTypes() {
		priv := stdKey(typ)
		s := spec(typ)
		t.Run(s.Name, func(t *testing.T) {
			wantP8, _ := x509.MarshalPKCS8PrivateKey(priv)
			for _, e := range encodings(t, priv) {
				k, err := Import(s, e.format, e.data)
				if err != nil {
					t.Fatalf("%s: %v", e.name, err)
				}
				wantClass := key.Public
				if e.private {
					wantClass = key.Private
				}
				if k.Class() != wantClass {
					t.Fatalf("%s: class %v", e.name, k.Class())
				}
				wantSPKI := encodings(t, priv)[5].data
				if !bytes.Equal(k.PublicDER(), wantSPKI) {
					t.Fatalf("%s: PublicDER differs from x509.MarshalPKIXPublicKey", e.name)
				}
				if e.private {
					got, err := k.Export(fPKCS8DER)
					wantOK(t, err)
					if typ != tDH256 && typ != tDH384 && !bytes.Equal(got, wantP8) {
						t.Fatalf("%s: exported PKCS #8 differs", e.name)
					}
					// ECDH keys round-trip through x509 as EC keys.
					back, err := x509.ParsePKCS8PrivateKey(got)
					wantOK(t, err)
					if eq, ok := back.(interface{ Equal(crypto.PrivateKey) bool }); !ok || !eq.Equal(priv) {
						t.Fatalf("%s: exported key %T is not the imported one", e.name, back)
					}
				} else {
					_, err := k.Export(fPKCS8DER)
					wantErr(t, err, stInvalid, "unsupported key format")
					got, err := k.Export(fUnspec)
					wantOK(t, err)
					if !bytes.Equal(got, wantSPKI) {
						t.Fatalf("%s: public export differs", e.name)
					}
					pemOut, err := k.Export(fSPKIPEM)
					wantOK(t, err)
					if b, _ := pem.Decode(pemOut); b == nil || b.Type != "PUBLIC KEY" || !bytes.Equal(b.Bytes, wantSPKI) {
						t.Fatalf("%s: SPKI PEM export is wrong", e.name)
					}
				}
				// A private key in a public-only format, and the reverse.
				switch e.format {
				case fPKCS8DER:
					_, err = Import(s, fSPKIDER, e.data)
					wantErr(t, err, stInvalid, "malformed key")
				case fSPKIPEM:
					_, err = Import(s, fPKCS8PEM, e.data)
					wantErr(t, err, stInvalid, "unsupported key format")
				case fPKCS8PEM:
					_, err = Import(s, fSPKIPEM, e.data)
					wantErr(t, err, stInvalid, "unsupported key format")
				}
				_, err = Import(s, fRaw, e.data)
				wantErr(t, err, stInvalid, "unsupported key format")
				_, err = Import(s, wire.KeyFormat(42), e.data)
				wantErr(t, err, stInvalid, "unsupported key format")
				k.Destroy()
			}
		})
	}
}

// TestImportMismatch imports each key as every other asymmetric type: only
// its own type (and the ECDSA/ECDH twin on the same curve, which share
// an encoding) may accept it.
func TestImportMismatch(t *testing.T) {
	twin := map[wire.KeyType]wire.KeyType{tP256: tDH256, tDH256: tP256, tP384: tDH384, tDH384: tP384}
	for _, from := range asymmetricTypes() {
		for _, e := range encodings(t, stdKey(from)) {
			for _, to := range key.Types() {
				k, err := Import(spec(to), e.format, e.data)
				switch {
				case to == from || to == twin[from]:
					wantOK(t, err)
					k.Destroy()
				case !spec(to).Asymmetric && e.format != fUnspec:
					wantErr(t, err, stInvalid, "unsupported key format")
				case !spec(to).Asymmetric:
					// UNSPECIFIED means RAW for secret types: any bytes of
					// an acceptable length are an HMAC key.
					if err == nil {
						k.Destroy()
					} else {
						wantErr(t, err, stInvalid, "secret key has wrong length")
					}
				default:
					wantErr(t, err, stInvalid, "key does not match type "+spec(to).Name)
				}
			}
		}
	}
}

// TestImportMalformed feeds truncations, extensions and corruptions of
// valid encodings to Import: every one must fail cleanly.
func TestImportMalformed(t *testing.T) {
	for _, typ := range []wire.KeyType{tEd, tP256, tRSA2048, tX25519} {
		for _, e := range encodings(t, stdKey(typ)) {
			s := spec(typ)
			isPEM := e.data[0] != 0x30
			step := 1
			if len(e.data) > 300 {
				step = 7
			}
			for n := 0; n < len(e.data)-1; n += step {
				k, err := Import(s, e.format, e.data[:n])
				if isPEM && bytes.HasSuffix(bytes.TrimSpace(e.data[:n]), []byte("-----")) && err == nil {
					k.Destroy() // a PEM cut in its trailing white space is fine
					continue
				}
				if err == nil {
					t.Fatalf("%s %s: accepted %d of %d bytes", s.Name, e.name, n, len(e.data))
				}
				checkWireError(t, err)
			}
			// Trailing data.
			for _, tail := range [][]byte{{0}, {0x30, 0}, []byte("junk")} {
				_, err := Import(s, e.format, append(bytes.Clone(e.data), tail...))
				if err == nil {
					t.Fatalf("%s %s: accepted trailing %q", s.Name, e.name, tail)
				}
				checkWireError(t, err)
			}
			// Bit flips must never panic (most are refused; some, in
			// padding or unused fields, may be accepted).
			for i := 0; i < len(e.data); i += step {
				b := bytes.Clone(e.data)
				b[i] ^= 0x41
				k, err := Import(s, e.format, b)
				checkWireError(t, err)
				if err == nil {
					k.Destroy()
				}
			}
			if isPEM {
				_, err := Import(s, e.format, append(bytes.Clone(e.data), e.data...))
				wantErr(t, err, stInvalid, "trailing data after key")
				_, err = Import(s, e.format, append([]byte("garbage\n"), e.data...))
				wantErr(t, err, stInvalid, "")
			}
		}
	}
	// PEM with headers (for example an encrypted key) is refused.
	der, _ := x509.MarshalPKCS8PrivateKey(stdKey(tEd))
	enc := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Headers: map[string]string{"Proc-Type": "4,ENCRYPTED"}, Bytes: der})
	_, err := Import(spec(tEd), fUnspec, enc)
	wantErr(t, err, stInvalid, "encrypted or annotated PEM is not supported")
	// Unknown block types.
	for _, typ := range []string{"CERTIFICATE", "ENCRYPTED PRIVATE KEY", "OPENSSH PRIVATE KEY"} {
		_, err := Import(spec(tEd), fUnspec, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}))
		wantErr(t, err, stInvalid, "unsupported key format")
	}
	for _, data := range [][]byte{nil, {}, {0x30}, {0x30, 0x00}, []byte("-----BEGIN"), bytes.Repeat([]byte{0x30, 0x80}, 100)} {
		for _, typ := range asymmetricTypes() {
			for _, f := range allFormats {
				_, err := Import(spec(typ), f, data)
				if err == nil {
					t.Fatalf("%v %v accepted %x", typ, f, data)
				}
				checkWireError(t, err)
			}
		}
	}
}

// TestImportRSASize checks that an RSA key must have exactly the type's
// modulus size: a 2047-bit or 2049-bit key is not an rsa-2048 key.
func TestImportRSASize(t *testing.T) {
	// Keys of these odd sizes are quick to make.
	for _, bits := range []int{1024, 2047, 2049} {
		priv, err := rsa.GenerateKey(rand.Reader, bits)
		wantOK(t, err)
		der, _ := x509.MarshalPKCS8PrivateKey(priv)
		_, err = Import(spec(tRSA2048), fPKCS8DER, der)
		wantErr(t, err, stInvalid, "key does not match type rsa-2048")
		spki, _ := x509.MarshalPKIXPublicKey(&priv.PublicKey)
		_, err = Import(spec(tRSA2048), fSPKIDER, spki)
		wantErr(t, err, stInvalid, "key does not match type rsa-2048")
	}
}

// TestImportDoesNotAlias checks that the imported key does not share
// memory with the caller's buffer.
func TestImportDoesNotAlias(t *testing.T) {
	for _, typ := range asymmetricTypes() {
		for _, e := range encodings(t, stdKey(typ)) {
			data := bytes.Clone(e.data)
			k, err := Import(spec(typ), e.format, data)
			wantOK(t, err)
			want := bytes.Clone(k.PublicDER())
			sig := []byte(nil)
			if k.canSign() {
				sig, _ = k.Sign(SignParams{}, []byte("m"))
			}
			clear(data)
			if !bytes.Equal(k.PublicDER(), want) {
				t.Fatalf("%v %s: key changed with the caller's buffer", typ, e.name)
			}
			if sig != nil {
				wantOK(t, k.Verify(SignParams{}, []byte("m"), sig))
			}
			k.Destroy()
		}
	}
}

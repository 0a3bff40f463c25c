package wrap

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// materialSizes returns the lengths of canonical bytes keys of type s can
// have (see mech.Key): every length of a fixed-size type, the generated and
// extreme lengths of HMAC keys, and the PKCS #1 DER of the RSA test key.
func materialSizes(t *testing.T, s *key.Spec) []int {
	switch s.Family {
	case key.FamilyAES, key.FamilyEd25519, key.FamilyX25519:
		return []int{32}
	case key.FamilyHMAC:
		return []int{16, s.SecretLen, 1024}
	case key.FamilyECDSA, key.FamilyECDH:
		return []int{s.Strength / 4} // 32 for P-256, 48 for P-384
	case key.FamilyRSA:
		bits := map[key.Type]int{
			wire.KeyType_KEY_TYPE_RSA_2048: 2048,
			wire.KeyType_KEY_TYPE_RSA_3072: 3072,
			wire.KeyType_KEY_TYPE_RSA_4096: 4096,
		}[s.Type]
		return []int{len(x509.MarshalPKCS1PrivateKey(testRSAKey(t, bits)))}
	}
	t.Fatalf("no material sizes for %s", s.Name)
	return nil
}

// fullAttributes returns attributes of a key of type s with every field
// set and every usage the type can have.
func fullAttributes(s *key.Spec) Attributes {
	class := key.Secret
	if s.Asymmetric {
		class = key.Private
	}
	return Attributes{
		Type:            s.Type,
		Class:           class,
		Usage:           s.Capable(class),
		Exportable:      true,
		Wrappable:       true,
		Version:         0xDEADBEEF,
		ID:              key.ID{1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16},
		Name:            "backup." + s.Name + "@example-host",
		CreatedUnixNano: -1, // any int64 travels
		Encryptions:     1<<64 - 1,
		EncryptionLimit: 1 << 32,
	}
}

// lockedAttributes returns attributes of a non-exportable key of type s
// that has never been exportable, with one usage.
func lockedAttributes(s *key.Spec) Attributes {
	a := fullAttributes(s)
	a.Exportable, a.Wrappable, a.NeverExportable = false, false, true
	a.Usage = s.Capable(a.Class) & -s.Capable(a.Class) // the lowest bit
	a.Name = ""
	return a
}

func TestKeywordRoundTrip(t *testing.T) {
	kek := randBytes(32)
	for _, typ := range key.Types() {
		s := key.Lookup(typ)
		for _, n := range materialSizes(t, s) {
			full := fullAttributes(s)
			minimal := Attributes{Type: full.Type, Class: full.Class}
			for _, a := range []Attributes{full, minimal, lockedAttributes(s)} {
				material := randBytes(n)
				blob, err := SealKeyword(kek, material, a)
				if err != nil {
					t.Fatalf("%s, %d bytes: %v", s.Name, n, err)
				}
				if want := 6 + attrFixedLen + len(a.Name) + 12 + n + 16; len(blob) != want {
					t.Fatalf("%s: blob is %d bytes, want %d", s.Name, len(blob), want)
				}
				got, ga, err := OpenKeyword(kek, blob)
				if err != nil || !bytes.Equal(got, material) || ga != a {
					t.Fatalf("%s, %d bytes: OpenKeyword = %x, %+v, %v; want %+v", s.Name, n, got, ga, err, a)
				}
			}
		}
	}
}

// TestKeywordLayout pins the byte layout documented in doc.go.
func TestKeywordLayout(t *testing.T) {
	kek := randBytes(32)
	a := Attributes{
		Type:            wire.KeyType_KEY_TYPE_HMAC_SHA384,
		Class:           key.Secret,
		Usage:           key.Sign | key.Verify,
		Exportable:      false,
		Wrappable:       true,
		Version:         7,
		ID:              key.ID{0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7, 0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf},
		NeverExportable: true,
		Name:            "mac",
		CreatedUnixNano: 0x0102030405060708,
		Encryptions:     0x1112131415161718,
		EncryptionLimit: 0x2122232425262728,
	}
	material := randBytes(48)
	blob, err := SealKeyword(kek, material, a)
	if err != nil {
		t.Fatal(err)
	}
	wantHeader := unhex(t, "4b575732"+ // "KWW2"
		"003e"+ // L = 62
		"01"+ // encoding version
		"00000003"+ // HMAC-SHA384
		"00000001"+ // SECRET
		fmtUint32(uint32(key.Sign|key.Verify))+
		"06"+ // wrappable, never exportable
		"00000007"+ // version
		"a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"+
		"0102030405060708"+ // created
		"1112131415161718"+ // encryptions
		"2122232425262728"+ // encryption limit
		"03"+"6d6163") // "mac"
	if !bytes.HasPrefix(blob, wantHeader) {
		t.Fatalf("header\n got %x\nwant %x", blob[:len(wantHeader)], wantHeader)
	}
	// The rest is nonce || ciphertext || tag of AES-256-GCM, under
	// HKDF-SHA-256(kek, no salt, "keywarden KWW2 key wrap"), with the
	// header as additional data.
	sub, err := hkdf.Key(sha256.New, kek, nil, "keywarden KWW2 key wrap", 32)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := aes.NewCipher(sub)
	gcm, _ := cipher.NewGCM(b)
	rest := blob[len(wantHeader):]
	pt, err := gcm.Open(nil, rest[:12], rest[12:], wantHeader)
	if err != nil || !bytes.Equal(pt, material) {
		t.Fatalf("plain AES-256-GCM open under the subkey: %x, %v", pt, err)
	}
	// And not under the wrapping key itself, as encryption of data is.
	b, _ = aes.NewCipher(kek)
	gcm, _ = cipher.NewGCM(b)
	if _, err := gcm.Open(nil, rest[:12], rest[12:], wantHeader); err == nil {
		t.Fatal("the blob opens under the wrapping key itself")
	}
}

// A blob made the way encryption of data under the wrapping key makes
// ciphertexts (AES-256-GCM under the key's own bytes), with a well-formed
// header and attributes of the forger's choice as associated data, is not
// opened: whoever may encrypt under a wrapping key cannot forge a blob.
func TestKeywordDomainSeparation(t *testing.T) {
	kek := randBytes(32)
	a := fullAttributes(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM))
	a.Exportable, a.NeverExportable = true, false
	attrs := appendAttributes(nil, &a)
	for _, version := range []string{"KWW2", "KWW1"} {
		hdr := append([]byte(version), byte(len(attrs)>>8), byte(len(attrs)))
		hdr = append(hdr, attrs...)
		b, _ := aes.NewCipher(kek)
		gcm, _ := cipher.NewGCMWithRandomNonce(b)
		blob := gcm.Seal(hdr, nil, randBytes(32), bytes.Clone(hdr))
		m, got, err := OpenKeyword(kek, blob)
		if err == nil || m != nil || got != (Attributes{}) {
			t.Fatalf("%s blob sealed under the wrapping key itself opened: %+v, %v", version, got, err)
		}
	}
}

// A blob of the first format version is refused with its own error, which
// says what the blob is (its header is in the clear).
func TestKeywordLegacyRefused(t *testing.T) {
	kek := randBytes(32)
	attrs := appendAttributes(nil, &Attributes{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Class: key.Secret, Usage: key.Encrypt})
	hdr := append([]byte("KWW1"), 0, byte(len(attrs)))
	hdr = append(hdr, attrs...)
	b, _ := aes.NewCipher(kek)
	gcm, _ := cipher.NewGCMWithRandomNonce(b)
	blob := gcm.Seal(hdr, nil, randBytes(32), bytes.Clone(hdr))
	if _, _, err := OpenKeyword(kek, blob); err != ErrLegacyKeyword {
		t.Fatalf("KWW1 blob: %v, want ErrLegacyKeyword", err)
	}
}

func fmtUint32(v uint32) string { return hex.EncodeToString(binary.BigEndian.AppendUint32(nil, v)) }

func TestKeywordTamper(t *testing.T) {
	kek := randBytes(32)
	material := randBytes(32)
	a := fullAttributes(key.Lookup(wire.KeyType_KEY_TYPE_ED25519))
	blob, err := SealKeyword(kek, material, a)
	if err != nil {
		t.Fatal(err)
	}
	// Every bit of every byte: magic, version, length, attributes, nonce,
	// ciphertext and tag.
	for i := range blob {
		for bit := range 8 {
			bad := bytes.Clone(blob)
			bad[i] ^= 1 << bit
			if m, _, err := OpenKeyword(kek, bad); err != ErrUnwrap || m != nil {
				t.Fatalf("flipped bit %d of byte %d: %x, %v", bit, i, m, err)
			}
		}
	}
	for n := range len(blob) {
		if m, _, err := OpenKeyword(kek, blob[:n]); err != ErrUnwrap || m != nil {
			t.Fatalf("truncated to %d bytes: %x, %v", n, m, err)
		}
	}
	if m, _, err := OpenKeyword(kek, append(bytes.Clone(blob), 0)); err != ErrUnwrap || m != nil {
		t.Fatalf("extended: %x, %v", m, err)
	}
	other := bytes.Clone(kek)
	other[0] ^= 1
	if m, _, err := OpenKeyword(other, blob); err != ErrUnwrap || m != nil {
		t.Fatalf("other key: %x, %v", m, err)
	}
	if m, _, err := OpenKeyword(randBytes(32), blob); err != ErrUnwrap || m != nil {
		t.Fatalf("random key: %x, %v", m, err)
	}
}

// TestKeywordAttributeSwap: the attributes of one blob cannot be moved onto
// the ciphertext of another, even under the same key.
func TestKeywordAttributeSwap(t *testing.T) {
	kek := randBytes(32)
	s := key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM)
	weak := Attributes{Type: s.Type, Class: key.Secret, Usage: key.Encrypt}
	strong := weak
	strong.Usage, strong.Exportable = key.Encrypt|key.Decrypt, true
	b1, _ := SealKeyword(kek, randBytes(32), weak)
	b2, _ := SealKeyword(kek, randBytes(32), strong)
	// Same length attributes: splice b2's header onto b1's nonce, ciphertext and tag.
	hdr := 6 + attrFixedLen
	spliced := append(bytes.Clone(b2[:hdr]), b1[hdr:]...)
	if _, _, err := OpenKeyword(kek, spliced); err != ErrUnwrap {
		t.Fatalf("spliced blob: %v", err)
	}
}

func TestKeywordDistinctNonces(t *testing.T) {
	kek, material := randBytes(32), randBytes(32)
	a := Attributes{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Class: key.Secret}
	seen := map[string]bool{}
	for range 100 {
		blob, _ := SealKeyword(kek, material, a)
		nonce := string(blob[6+attrFixedLen : 6+attrFixedLen+12])
		if seen[nonce] {
			t.Fatal("nonce repeated")
		}
		seen[nonce] = true
	}
}

func TestKeywordSealErrors(t *testing.T) {
	kek := randBytes(32)
	good := Attributes{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Class: key.Secret, Usage: key.Encrypt}
	for _, ks := range []int{0, 16, 24, 31, 33} {
		var kse aes.KeySizeError
		if _, err := SealKeyword(make([]byte, ks), randBytes(32), good); !errors.As(err, &kse) {
			t.Errorf("SealKeyword with %d-byte kek: %v", ks, err)
		}
		if _, _, err := OpenKeyword(make([]byte, ks), make([]byte, 100)); !errors.As(err, &kse) {
			t.Errorf("OpenKeyword with %d-byte kek: %v", ks, err)
		}
	}
	if _, err := SealKeyword(kek, nil, good); err == nil {
		t.Error("sealed no material")
	}
	if _, err := SealKeyword(kek, make([]byte, MaxMaterial+1), good); err == nil {
		t.Error("sealed too much material")
	}
	if _, err := SealKeyword(kek, make([]byte, MaxMaterial), good); err != nil {
		t.Errorf("MaxMaterial bytes: %v", err)
	}
	for name, mod := range badAttributes {
		a := good
		mod(&a)
		if _, err := SealKeyword(kek, randBytes(32), a); err == nil {
			t.Errorf("%s: sealed", name)
		}
	}
}

// badAttributes make valid AES-256 attributes invalid.
var badAttributes = map[string]func(a *Attributes){
	"no type":              func(a *Attributes) { a.Type = wire.KeyType_KEY_TYPE_UNSPECIFIED },
	"unknown type":         func(a *Attributes) { a.Type = 99 },
	"negative type":        func(a *Attributes) { a.Type = -1 },
	"no class":             func(a *Attributes) { a.Class = wire.KeyClass_KEY_CLASS_UNSPECIFIED },
	"public class":         func(a *Attributes) { a.Class = key.Public },
	"private class of AES": func(a *Attributes) { a.Class = key.Private },
	"unknown class":        func(a *Attributes) { a.Class = 9 },
	"sign usage on AES":    func(a *Attributes) { a.Usage |= key.Sign },
	"unknown usage bit":    func(a *Attributes) { a.Usage |= 1 << 30 },
	"exportable and never": func(a *Attributes) { a.Exportable, a.NeverExportable = true, true },
	"bad name":             func(a *Attributes) { a.Name = "-x" },
	"name with NUL":        func(a *Attributes) { a.Name = "a\x00b" },
	"long name":            func(a *Attributes) { a.Name = strings.Repeat("a", 129) },
}

// TestKeywordRejectsMalformedAttributes seals malformed attributes under
// the right key (bypassing SealKeyword's check) and checks OpenKeyword
// refuses them although they authenticate.
func TestKeywordRejectsMalformedAttributes(t *testing.T) {
	kek := randBytes(32)
	good := Attributes{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Class: key.Secret, Usage: key.Encrypt, Name: "k"}
	enc := func(a *Attributes) []byte { return appendAttributes(nil, a) }
	cases := map[string][]byte{
		"good": enc(&good),
		"version 0": func() []byte {
			b := enc(&good)
			b[0] = 0
			return b
		}(),
		"version 2": func() []byte {
			b := enc(&good)
			b[0] = 2
			return b
		}(),
		"unknown flag": func() []byte {
			b := enc(&good)
			b[13] |= 8
			return b
		}(),
		"all flags": func() []byte {
			b := enc(&good)
			b[13] = 0xff
			return b
		}(),
		"trailing byte":  append(enc(&good), 0),
		"missing byte":   enc(&good)[:len(enc(&good))-1],
		"only fixed":     enc(&good)[:attrFixedLen],
		"name too short": append(enc(&good), 'x'), // length byte says 1, 2 follow
		"name length 200": func() []byte {
			b := enc(&Attributes{Type: good.Type, Class: good.Class})
			b[attrNameLenAt] = 200
			return append(b, bytes.Repeat([]byte{'a'}, 200)...)
		}(),
		"empty": {},
	}
	for name, mod := range badAttributes {
		a := good
		mod(&a)
		cases[name] = enc(&a)
	}
	for name, attrs := range cases {
		blob := sealRaw(t, kek, attrs, randBytes(32))
		m, a, err := OpenKeyword(kek, blob)
		if name == "good" {
			if err != nil || a != good {
				t.Errorf("good: %+v, %v", a, err)
			}
			continue
		}
		if err != ErrUnwrap || m != nil || a != (Attributes{}) {
			t.Errorf("%s: OpenKeyword = %x, %+v, %v", name, m, a, err)
		}
	}
}

// sealRaw makes a KWW2 blob with arbitrary attribute bytes.
func sealRaw(t *testing.T, kek, attrs, material []byte) []byte {
	hdr := append([]byte("KWW2"), byte(len(attrs)>>8), byte(len(attrs)))
	hdr = append(hdr, attrs...)
	aead, err := newKeywordAEAD(kek)
	if err != nil {
		t.Fatal(err)
	}
	blob, err := random.Seal(aead, hdr, material, bytes.Clone(hdr))
	if err != nil {
		t.Fatal(err)
	}
	return blob
}

func TestKeywordUnknownFormatVersion(t *testing.T) {
	kek := randBytes(32)
	attrs := appendAttributes(nil, &Attributes{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Class: key.Secret})
	for _, magic := range []string{"KWW0", "KWW3", "KWW\x02", "kww2", "KWX2"} {
		hdr := append([]byte(magic), 0, byte(len(attrs)))
		hdr = append(hdr, attrs...)
		aead, _ := newKeywordAEAD(kek)
		blob, _ := random.Seal(aead, hdr, randBytes(32), bytes.Clone(hdr))
		if _, _, err := OpenKeyword(kek, blob); err != ErrUnwrap {
			t.Errorf("magic %q: %v", magic, err)
		}
	}
}

func TestInteropFormat(t *testing.T) {
	if f := InteropFormat(nil); f != wire.KeyFormat_KEY_FORMAT_UNSPECIFIED {
		t.Errorf("nil spec: %v", f)
	}
	for _, typ := range key.Types() {
		s := key.Lookup(typ)
		want := wire.KeyFormat_KEY_FORMAT_RAW
		if s.Asymmetric {
			want = wire.KeyFormat_KEY_FORMAT_PKCS8_DER
		}
		if got := InteropFormat(s); got != want {
			t.Errorf("%s: %v, want %v", s.Name, got, want)
		}
	}
}

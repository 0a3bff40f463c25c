package wrap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/random"
)

// Attributes are the attributes of a key that travel with it in a
// keywarden wrap (KWW2) blob, authenticated together with its material.
// They are the key's intrinsic facts and restrictions; what is local to
// one daemon (owner, ACL, handles, persistence, origin, trust, rotation
// and budget policy) does not travel. doc.go gives the encoding.
type Attributes struct {
	Type       key.Type  // key type (wire.KeyType)
	Class      key.Class // key.Secret or key.Private: only keys with secret material are wrapped
	Usage      key.Usage // usage bits, within what the type and class can have
	Exportable bool      // may leave in plaintext
	Wrappable  bool      // may leave wrapped
	// NeverExportable says the key has never been exportable (PKCS #11's
	// CKA_NEVER_EXTRACTABLE); it cannot be set together with Exportable.
	NeverExportable bool
	Version         uint32 // rotation version of the material
	ID              key.ID // id of the key that was wrapped (provenance)
	Name            string // "" or a valid key name (key.ValidName)
	// CreatedUnixNano is the creation time of the wrapped key, in Unix
	// nanoseconds as on the wire (0: unknown).
	CreatedUnixNano int64
	// Encryptions is how many AES-GCM encryptions this version of the key
	// may already have made (the keystore's reserved count), and
	// EncryptionLimit the most it may make (0: none recorded). They travel
	// so that an unwrapped key does not start with a fresh random-nonce
	// budget.
	Encryptions     uint64
	EncryptionLimit uint64
}

// Limits of the keywarden wrap format.
const (
	// MaxMaterial is the largest key material SealKeyword takes, in bytes;
	// RSA-4096 in PKCS #1 DER is about 2.4 KiB.
	MaxMaterial = 16 << 10
)

// KWW2 layout constants; doc.go describes the format.
const (
	kwwMagic      = "KWW"
	kwwVersion    = '2' // the format version; "KWW" followed by it reads "KWW2"
	kwwLegacy     = '1' // the first version, which sealed under the wrapping key itself
	kwwHeaderLen  = len(kwwMagic) + 1 + 2
	attrVersion   = 1
	attrFixedLen  = 1 + 4 + 4 + 4 + 1 + 4 + 16 + 8 + 8 + 8 + 1
	attrNameLenAt = attrFixedLen - 1
	attrMaxName   = 128
	flagExport    = 1 << 0
	flagWrappable = 1 << 1
	flagNeverExp  = 1 << 2
	flagsKnown    = flagExport | flagWrappable | flagNeverExp
	gcmNonceLen   = 12
	gcmTagLen     = 16
	kwwKEKLen     = 32
	// kwwSubkeyInfo is the HKDF info of the key KWW2 seals under: a key
	// derived from the wrapping key for this format alone, so that no
	// other use of the wrapping key's bytes (AES-GCM encryption of data,
	// RFC 3394 wrapping) makes or opens a KWW2 blob.
	kwwSubkeyInfo = "keywarden KWW2 key wrap"
)

// Check reports whether a are well-formed attributes: a known key type, a
// class with secret material that the type can have, usage within what
// the type and class allow, not both exportable and never exportable, and
// an empty or valid name. It does not apply policy (the wrap/decrypt rule,
// narrowing, key strength): that is the caller's job.
func (a *Attributes) Check() error {
	s := key.Lookup(a.Type)
	switch {
	case s == nil:
		return errorf("unknown key type")
	case a.Class == key.Public || !s.ClassOK(a.Class):
		return errorf("invalid key class")
	case a.Usage&^s.Capable(a.Class) != 0:
		return errorf("usage not possible for the key type")
	case a.Exportable && a.NeverExportable:
		return errorf("an exportable key cannot be never exportable")
	case a.Name != "" && !key.ValidName(a.Name):
		return errorf("invalid key name")
	}
	return nil
}

// appendAttributes appends the canonical encoding (version 1) of a.
func appendAttributes(b []byte, a *Attributes) []byte {
	var flags byte
	if a.Exportable {
		flags |= flagExport
	}
	if a.Wrappable {
		flags |= flagWrappable
	}
	if a.NeverExportable {
		flags |= flagNeverExp
	}
	b = append(b, attrVersion)
	b = binary.BigEndian.AppendUint32(b, uint32(a.Type))
	b = binary.BigEndian.AppendUint32(b, uint32(a.Class))
	b = binary.BigEndian.AppendUint32(b, uint32(a.Usage))
	b = append(b, flags)
	b = binary.BigEndian.AppendUint32(b, a.Version)
	b = append(b, a.ID[:]...)
	b = binary.BigEndian.AppendUint64(b, uint64(a.CreatedUnixNano))
	b = binary.BigEndian.AppendUint64(b, a.Encryptions)
	b = binary.BigEndian.AppendUint64(b, a.EncryptionLimit)
	b = append(b, byte(len(a.Name)))
	return append(b, a.Name...)
}

// parseAttributes decodes exactly one canonical attribute encoding; it
// refuses an unknown version, unknown flags, a length that does not match
// and attributes that fail Check.
func parseAttributes(b []byte) (Attributes, bool) {
	var a Attributes
	if len(b) < attrFixedLen || b[0] != attrVersion {
		return a, false
	}
	flags := b[13]
	nameLen := int(b[attrNameLenAt])
	if flags&^flagsKnown != 0 || nameLen > attrMaxName || len(b) != attrFixedLen+nameLen {
		return a, false
	}
	a.Type = key.Type(int32(binary.BigEndian.Uint32(b[1:])))
	a.Class = key.Class(int32(binary.BigEndian.Uint32(b[5:])))
	a.Usage = key.Usage(binary.BigEndian.Uint32(b[9:]))
	a.Exportable = flags&flagExport != 0
	a.Wrappable = flags&flagWrappable != 0
	a.NeverExportable = flags&flagNeverExp != 0
	a.Version = binary.BigEndian.Uint32(b[14:])
	copy(a.ID[:], b[18:34])
	a.CreatedUnixNano = int64(binary.BigEndian.Uint64(b[34:]))
	a.Encryptions = binary.BigEndian.Uint64(b[42:])
	a.EncryptionLimit = binary.BigEndian.Uint64(b[50:])
	a.Name = string(b[attrFixedLen:])
	if a.Check() != nil {
		return Attributes{}, false
	}
	return a, true
}

// SealKeyword wraps material, a key's canonical bytes, under kek (an
// AES-256 key) in the keywarden wrap format (KWW2): AES-256-GCM, under a
// key derived from kek for this format alone, with a random nonce and the
// encoded attributes as authenticated data. a must
// pass Check; material is 1 to MaxMaterial bytes. Sealing is randomized:
// with random 96-bit nonces, one kek may seal at most 2^32 blobs (NIST SP
// 800-38D §8.3), far more than a daemon holds; rotate the kek before that.
func SealKeyword(kek, material []byte, a Attributes) ([]byte, error) {
	if len(kek) != kwwKEKLen {
		return nil, aes.KeySizeError(len(kek))
	}
	if len(material) == 0 || len(material) > MaxMaterial {
		return nil, errorf("key material must be 1 to 16384 bytes")
	}
	if err := a.Check(); err != nil {
		return nil, err
	}
	aead, err := newKeywordAEAD(kek)
	if err != nil {
		return nil, err
	}
	n := kwwHeaderLen + attrFixedLen + len(a.Name)
	hdr := make([]byte, 0, n+gcmNonceLen+len(material)+gcmTagLen)
	hdr = append(hdr, kwwMagic...)
	hdr = append(hdr, kwwVersion)
	hdr = binary.BigEndian.AppendUint16(hdr, uint16(attrFixedLen+len(a.Name)))
	hdr = appendAttributes(hdr, &a)
	// The AEAD appends nonce || ciphertext || tag to the header; the
	// header is also the additional data (a copy: dst and additional
	// data must not overlap).
	return random.Seal(aead, hdr, material, append([]byte(nil), hdr...))
}

// OpenKeyword opens a blob made by SealKeyword under the same kek. It
// returns the material and exactly the attributes that were sealed, which
// have passed Check. Every failure of the blob is ErrUnwrap; an invalid
// kek size is an aes.KeySizeError. The material is a fresh slice the
// caller owns and should wipe.
//
// The attributes are only as trustworthy as kek is secret: whoever knows
// kek can seal any attributes. The caller applies policy to them, and may
// narrow them, never widen them.
func OpenKeyword(kek, blob []byte) (material []byte, a Attributes, err error) {
	if len(kek) != kwwKEKLen {
		return nil, Attributes{}, aes.KeySizeError(len(kek))
	}
	if len(blob) < kwwHeaderLen || string(blob[:len(kwwMagic)]) != kwwMagic {
		return nil, Attributes{}, ErrUnwrap
	}
	switch blob[len(kwwMagic)] {
	case kwwVersion:
	case kwwLegacy:
		return nil, Attributes{}, ErrLegacyKeyword
	default:
		return nil, Attributes{}, ErrUnwrap
	}
	aadLen := kwwHeaderLen + int(binary.BigEndian.Uint16(blob[kwwHeaderLen-2:]))
	if len(blob) < aadLen+gcmNonceLen+1+gcmTagLen || len(blob) > aadLen+gcmNonceLen+MaxMaterial+gcmTagLen {
		return nil, Attributes{}, ErrUnwrap
	}
	aead, err := newKeywordAEAD(kek)
	if err != nil {
		return nil, Attributes{}, err
	}
	// Authenticate first: only authenticated attributes are parsed.
	material, err = random.Open(aead, nil, blob[aadLen:], blob[:aadLen])
	if err != nil {
		return nil, Attributes{}, ErrUnwrap
	}
	a, ok := parseAttributes(blob[kwwHeaderLen:aadLen])
	if !ok {
		clear(material)
		return nil, Attributes{}, ErrUnwrap
	}
	return material, a, nil
}

// newKeywordAEAD returns AES-256-GCM under the format's subkey of kek
// (HKDF-SHA-256, no salt, info kwwSubkeyInfo); random.Seal draws its
// 96-bit nonce and prepends it to the output, random.Open expects it there.
func newKeywordAEAD(kek []byte) (cipher.AEAD, error) {
	sub, err := hkdf.Key(sha256.New, kek, nil, kwwSubkeyInfo, kwwKEKLen)
	if err != nil {
		return nil, err
	}
	defer clear(sub)
	b, err := aes.NewCipher(sub)
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(b)
}

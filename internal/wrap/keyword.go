package wrap

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/random"
)

// Attributes are the attributes of a key that travel with it in a
// keywarden wrap (KWW3) blob, authenticated together with its material.
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

// Layout constants of the format; doc.go describes it.
const (
	kwwMagic     = "KWW"
	kwwVersion   = '3' // the format written; "KWW" followed by it reads "KWW3"
	kwwPrevious  = '2' // the second version, still opened, no longer written
	kwwLegacy    = '1' // the first version, which sealed under the wrapping key itself
	kwwHeaderLen = len(kwwMagic) + 1 + 2
	// kwwSaltLen is the length of a KWW3 blob's salt, the random value
	// from which its own AES key is derived.
	kwwSaltLen    = 32
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
	// kwwSubkeyInfo starts the HKDF info of a KWW3 blob's key, which the
	// blob's salt completes: a key derived from the wrapping key for this
	// format alone (so that no other use of the wrapping key's bytes, such
	// as RFC 3394 wrapping, makes or opens a blob) and for this blob alone
	// (so that no AES-GCM key is used twice, and the number of blobs one
	// wrapping key seals needs no counting).
	kwwSubkeyInfo = "keywarden KWW3 key wrap"
	// kww2SubkeyInfo is the HKDF info of the one key under which KWW2
	// sealed every blob of a wrapping key, with random nonces.
	kww2SubkeyInfo = "keywarden KWW2 key wrap"
)

// kwwNonce is the GCM nonce of every KWW3 blob: each blob's key seals
// that blob and nothing else, so the nonce need not vary.
var kwwNonce [gcmNonceLen]byte

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
// AES-256 key) in the keywarden wrap format (KWW3): AES-256-GCM under a
// key of this blob's own, derived from kek and a fresh random 32-byte
// salt, with the encoded attributes and the salt as authenticated data.
// a must pass Check; material is 1 to MaxMaterial bytes. Since every
// blob has its own key, used once, one kek may seal any number of blobs:
// two share a key only if their salts collide (about n^2/2^257 for n
// blobs), and no GCM nonce budget applies (doc.go).
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
	n := kwwHeaderLen + attrFixedLen + len(a.Name) // the header up to the salt
	hdr := make([]byte, 0, n+kwwSaltLen+len(material)+gcmTagLen)
	hdr = append(hdr, kwwMagic...)
	hdr = append(hdr, kwwVersion)
	hdr = binary.BigEndian.AppendUint16(hdr, uint16(attrFixedLen+len(a.Name)))
	hdr = appendAttributes(hdr, &a)
	hdr = hdr[:n+kwwSaltLen]
	salt := hdr[n:]
	if err := random.Read(salt); err != nil {
		return nil, err // no fresh randomness confirmed since a generation change
	}
	aead, err := newBlobAEAD(kek, salt)
	if err != nil {
		return nil, err
	}
	// The AEAD appends ciphertext || tag to the header, which is also the
	// additional data (a copy: dst and additional data must not overlap).
	return aead.Seal(hdr, kwwNonce[:], material, bytes.Clone(hdr)), nil
}

// OpenKeyword opens a blob made by SealKeyword under the same kek (KWW3),
// or a blob of the previous version, KWW2. It returns the material and
// exactly the attributes that were sealed, which have passed Check. A
// KWW1 blob is ErrLegacyKeyword; every other failure of the blob is
// ErrUnwrap; an invalid kek size is an aes.KeySizeError. The material is a
// fresh slice the caller owns and should wipe.
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
	attrEnd := kwwHeaderLen + int(binary.BigEndian.Uint16(blob[kwwHeaderLen-2:]))
	var aead cipher.AEAD
	var aadLen, nonceLen int
	switch blob[len(kwwMagic)] {
	case kwwVersion:
		// magic, version, length, attributes, salt || ciphertext || tag
		aadLen = attrEnd + kwwSaltLen
		if len(blob) < aadLen {
			return nil, Attributes{}, ErrUnwrap
		}
		aead, err = newBlobAEAD(kek, blob[attrEnd:aadLen])
	case kwwPrevious:
		// magic, version, length, attributes || nonce || ciphertext || tag
		aadLen, nonceLen = attrEnd, gcmNonceLen
		aead, err = newKWW2AEAD(kek)
	case kwwLegacy:
		return nil, Attributes{}, ErrLegacyKeyword
	default:
		return nil, Attributes{}, ErrUnwrap
	}
	if err != nil {
		return nil, Attributes{}, err
	}
	if body := len(blob) - aadLen - nonceLen - gcmTagLen; body < 1 || body > MaxMaterial {
		return nil, Attributes{}, ErrUnwrap
	}
	// Authenticate first: only authenticated attributes are parsed.
	if nonceLen == 0 {
		material, err = aead.Open(nil, kwwNonce[:], blob[aadLen:], blob[:aadLen])
	} else {
		material, err = aead.Open(nil, nil, blob[aadLen:], blob[:aadLen])
	}
	if err != nil {
		return nil, Attributes{}, ErrUnwrap
	}
	a, ok := parseAttributes(blob[kwwHeaderLen:attrEnd])
	if !ok {
		clear(material)
		return nil, Attributes{}, ErrUnwrap
	}
	return material, a, nil
}

// newBlobAEAD returns AES-256-GCM under a KWW3 blob's own key:
// HKDF-SHA-256 of kek with no salt and the info kwwSubkeyInfo || salt,
// where salt is the blob's 32 random bytes.
func newBlobAEAD(kek, salt []byte) (cipher.AEAD, error) {
	info := make([]byte, 0, len(kwwSubkeyInfo)+len(salt))
	info = append(append(info, kwwSubkeyInfo...), salt...)
	return subkeyAEAD(kek, string(info), cipher.NewGCM)
}

// newKWW2AEAD returns AES-256-GCM under the one key of a wrapping key
// that KWW2 used (HKDF-SHA-256, no salt, info kww2SubkeyInfo), with a
// random 96-bit nonce that Open expects before the ciphertext.
func newKWW2AEAD(kek []byte) (cipher.AEAD, error) {
	return subkeyAEAD(kek, kww2SubkeyInfo, cipher.NewGCMWithRandomNonce)
}

func subkeyAEAD(kek []byte, info string, gcm func(cipher.Block) (cipher.AEAD, error)) (cipher.AEAD, error) {
	sub, err := hkdf.Key(sha256.New, kek, nil, info, kwwKEKLen)
	if err != nil {
		return nil, err
	}
	defer clear(sub)
	b, err := aes.NewCipher(sub)
	if err != nil {
		return nil, err
	}
	return gcm(b)
}

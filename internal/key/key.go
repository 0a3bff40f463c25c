package key

import (
	"slices"

	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// ID is a key's persistent identifier: 128 random bits.
type ID [16]byte

// NewID returns a fresh random id, from package random: after a
// generation change it fails (STATUS_UNAVAILABLE) until fresh randomness
// is confirmed, rather than give two clones the same id.
func NewID() (ID, error) {
	var id ID
	err := random.Read(id[:])
	return id, err
}

// String returns the id as 32 lowercase hex digits.
func (id ID) String() string { return wire.FormatKeyID(id) }

// IDFromBytes converts the wire form of an id.
func IDFromBytes(b []byte) (ID, bool) {
	var id ID
	if len(b) != len(id) {
		return id, false
	}
	copy(id[:], b)
	return id, true
}

// ParseID parses the 32-hex-digit form of an id (wire.ParseKeyID).
func ParseID(s string) (ID, error) {
	id, err := wire.ParseKeyID(s)
	return ID(id), err
}

// Usage is a set of usage bits (the same values as wire.Usage).
type Usage uint32

const (
	Encrypt Usage = Usage(wire.Usage_USAGE_ENCRYPT)
	Decrypt Usage = Usage(wire.Usage_USAGE_DECRYPT)
	Sign    Usage = Usage(wire.Usage_USAGE_SIGN)
	Verify  Usage = Usage(wire.Usage_USAGE_VERIFY)
	Wrap    Usage = Usage(wire.Usage_USAGE_WRAP)
	Unwrap  Usage = Usage(wire.Usage_USAGE_UNWRAP)
	Derive  Usage = Usage(wire.Usage_USAGE_DERIVE)

	// AllUsages is every defined bit.
	AllUsages = Usage(wire.AllUsages)
)

// Has reports whether every bit of x is in u.
func (u Usage) Has(x Usage) bool { return u&x == x }

// String lists the bits as comma-separated names ("" for none), from the
// names package wire gives them.
func (u Usage) String() string { return wire.UsageString(uint32(u)) }

// Type is a key type; the wire enum is the model's enum.
type Type = wire.KeyType

// Class says what a key object holds.
type Class = wire.KeyClass

const (
	Secret  = wire.KeyClass_KEY_CLASS_SECRET
	Public  = wire.KeyClass_KEY_CLASS_PUBLIC
	Private = wire.KeyClass_KEY_CLASS_PRIVATE
)

// Origin says how a key object's material came to be; the wire enum is
// the model's enum.
type Origin = wire.KeyOrigin

const (
	Generated  = wire.KeyOrigin_KEY_ORIGIN_GENERATED
	Imported   = wire.KeyOrigin_KEY_ORIGIN_IMPORTED
	Derived    = wire.KeyOrigin_KEY_ORIGIN_DERIVED
	Unwrapped  = wire.KeyOrigin_KEY_ORIGIN_UNWRAPPED
	Passphrase = wire.KeyOrigin_KEY_ORIGIN_PASSPHRASE
)

// Transport are the usages of a key that moves other keys (key-transport
// keys); Data those of a key that protects data. No key has both.
const (
	Transport = Wrap | Unwrap
	Data      = Encrypt | Decrypt
)

// Family groups key types that share mechanisms.
type Family int

const (
	FamilyAES Family = iota + 1
	FamilyHMAC
	FamilyEd25519
	FamilyECDSA
	FamilyRSA
	FamilyX25519
	FamilyECDH
)

// Spec holds the static facts of one key type.
type Spec struct {
	Type   Type
	Name   string // the CLI and documentation name, e.g. "aes256-gcm" (wire.KeyTypeName)
	Family Family
	// Asymmetric types have a private and a public class; the others are
	// secret keys.
	Asymmetric bool
	// Strength is the security strength in bits (NIST SP 800-57 part 1,
	// table 2; HMAC capped at 256), used to refuse wrapping a key under a
	// weaker one. An imported secret key shorter than SecretLen is weaker:
	// its strength is at most 8 times its length.
	Strength int
	// SecretLen is the generated length of a secret key, in bytes.
	SecretLen int
	// Private and Public are the usages a key of this type can have at all,
	// per class (Secret uses Private).
	Private Usage
	Public  Usage
}

var specs = map[Type]*Spec{
	wire.KeyType_KEY_TYPE_AES256_GCM:  {Family: FamilyAES, Strength: 256, SecretLen: 32, Private: Encrypt | Decrypt | Wrap | Unwrap},
	wire.KeyType_KEY_TYPE_HMAC_SHA256: {Family: FamilyHMAC, Strength: 256, SecretLen: 32, Private: Sign | Verify | Derive},
	wire.KeyType_KEY_TYPE_HMAC_SHA384: {Family: FamilyHMAC, Strength: 256, SecretLen: 48, Private: Sign | Verify | Derive},
	wire.KeyType_KEY_TYPE_HMAC_SHA512: {Family: FamilyHMAC, Strength: 256, SecretLen: 64, Private: Sign | Verify | Derive},
	wire.KeyType_KEY_TYPE_ED25519:     {Family: FamilyEd25519, Asymmetric: true, Strength: 128, Private: Sign | Verify, Public: Verify},
	wire.KeyType_KEY_TYPE_ECDSA_P256:  {Family: FamilyECDSA, Asymmetric: true, Strength: 128, Private: Sign | Verify, Public: Verify},
	wire.KeyType_KEY_TYPE_ECDSA_P384:  {Family: FamilyECDSA, Asymmetric: true, Strength: 192, Private: Sign | Verify, Public: Verify},
	wire.KeyType_KEY_TYPE_RSA_2048:    {Family: FamilyRSA, Asymmetric: true, Strength: 112, Private: Sign | Verify | Encrypt | Decrypt | Wrap | Unwrap, Public: Verify | Encrypt | Wrap},
	wire.KeyType_KEY_TYPE_RSA_3072:    {Family: FamilyRSA, Asymmetric: true, Strength: 128, Private: Sign | Verify | Encrypt | Decrypt | Wrap | Unwrap, Public: Verify | Encrypt | Wrap},
	wire.KeyType_KEY_TYPE_RSA_4096:    {Family: FamilyRSA, Asymmetric: true, Strength: 128, Private: Sign | Verify | Encrypt | Decrypt | Wrap | Unwrap, Public: Verify | Encrypt | Wrap},
	wire.KeyType_KEY_TYPE_X25519:      {Family: FamilyX25519, Asymmetric: true, Strength: 128, Private: Derive},
	wire.KeyType_KEY_TYPE_ECDH_P256:   {Family: FamilyECDH, Asymmetric: true, Strength: 128, Private: Derive},
	wire.KeyType_KEY_TYPE_ECDH_P384:   {Family: FamilyECDH, Asymmetric: true, Strength: 192, Private: Derive},
}

func init() {
	for t, s := range specs {
		name, ok := wire.KeyTypeName(t)
		if !ok {
			panic("key: type " + t.String() + " has no name in package wire")
		}
		s.Type, s.Name = t, name
	}
}

// Lookup returns the spec of t, or nil for an unknown or unspecified type.
func Lookup(t Type) *Spec { return specs[t] }

// Types returns every supported type in enum order.
func Types() []Type {
	ts := make([]Type, 0, len(specs))
	for t := range specs {
		ts = append(ts, t)
	}
	slices.Sort(ts)
	return ts
}

// Capable returns the usages a key of this spec and class can have at all.
func (s *Spec) Capable(c Class) Usage {
	if c == Public {
		return s.Public
	}
	return s.Private
}

// ClassOK reports whether c is a valid class for keys of this spec.
func (s *Spec) ClassOK(c Class) bool {
	if s.Asymmetric {
		return c == Private || c == Public
	}
	return c == Secret
}

// ACLEntry grants one uid or gid some usages.
type ACLEntry struct {
	Group bool   // ID is a gid rather than a uid
	ID    uint32 // uid or gid
	Usage Usage
}

// Attrs are the mutable, sticky attributes of a key object. A value is
// never modified once published: a change makes a new Attrs.
type Attrs struct {
	Usage      Usage
	Exportable bool
	Wrappable  bool
	ACL        []ACLEntry
}

// MaxACLEntries bounds the ACL of one key.
const MaxACLEntries = 64

// ValidName reports whether s is a valid key name: 1-128 bytes of
// [A-Za-z0-9._@+-], the first being a letter, digit or underscore.
func ValidName(s string) bool {
	if len(s) == 0 || len(s) > 128 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_':
		case i > 0 && (c == '.' || c == '@' || c == '+' || c == '-'):
		default:
			return false
		}
	}
	return true
}

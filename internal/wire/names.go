package wire

import (
	"encoding/hex"
	"fmt"
	"strings"
)

// The names of key types and usages, and the text form of key ids: the
// one table that the client library, the CLI and the daemon all read.

// keyTypeNames lists every key type the protocol defines, in enum order,
// with the name the CLI and the documentation give it.
var keyTypeNames = []struct {
	t    KeyType
	name string
}{
	{KeyType_KEY_TYPE_AES256_GCM, "aes256-gcm"},
	{KeyType_KEY_TYPE_HMAC_SHA256, "hmac-sha256"},
	{KeyType_KEY_TYPE_HMAC_SHA384, "hmac-sha384"},
	{KeyType_KEY_TYPE_HMAC_SHA512, "hmac-sha512"},
	{KeyType_KEY_TYPE_ED25519, "ed25519"},
	{KeyType_KEY_TYPE_ECDSA_P256, "ecdsa-p256"},
	{KeyType_KEY_TYPE_ECDSA_P384, "ecdsa-p384"},
	{KeyType_KEY_TYPE_RSA_2048, "rsa-2048"},
	{KeyType_KEY_TYPE_RSA_3072, "rsa-3072"},
	{KeyType_KEY_TYPE_RSA_4096, "rsa-4096"},
	{KeyType_KEY_TYPE_X25519, "x25519"},
	{KeyType_KEY_TYPE_ECDH_P256, "ecdh-p256"},
	{KeyType_KEY_TYPE_ECDH_P384, "ecdh-p384"},
}

// KeyTypes returns every key type the protocol defines, in enum order.
func KeyTypes() []KeyType {
	ts := make([]KeyType, len(keyTypeNames))
	for i, n := range keyTypeNames {
		ts[i] = n.t
	}
	return ts
}

// KeyTypeName returns the name of t, e.g. "aes256-gcm", and false if t is
// unspecified or unknown.
func KeyTypeName(t KeyType) (string, bool) {
	for _, n := range keyTypeNames {
		if n.t == t {
			return n.name, true
		}
	}
	return "", false
}

// KeyTypeByName returns the key type named name, and false if there is
// none.
func KeyTypeByName(name string) (KeyType, bool) {
	for _, n := range keyTypeNames {
		if n.name == name {
			return n.t, true
		}
	}
	return KeyType_KEY_TYPE_UNSPECIFIED, false
}

// usageNames lists every usage bit with its name, in the order usages are
// printed.
var usageNames = []struct {
	u    Usage
	name string
}{
	{Usage_USAGE_ENCRYPT, "encrypt"}, {Usage_USAGE_DECRYPT, "decrypt"}, {Usage_USAGE_SIGN, "sign"},
	{Usage_USAGE_VERIFY, "verify"}, {Usage_USAGE_WRAP, "wrap"}, {Usage_USAGE_UNWRAP, "unwrap"},
	{Usage_USAGE_DERIVE, "derive"},
}

// AllUsages is every usage bit the protocol defines.
const AllUsages = uint32(Usage_USAGE_ENCRYPT | Usage_USAGE_DECRYPT | Usage_USAGE_SIGN | Usage_USAGE_VERIFY |
	Usage_USAGE_WRAP | Usage_USAGE_UNWRAP | Usage_USAGE_DERIVE)

// UsageString lists the usage bits of u as comma-separated names, e.g.
// "sign,verify" ("" for none); bits the protocol does not define show as
// "unknown".
func UsageString(u uint32) string {
	var parts []string
	for _, n := range usageNames {
		if u&uint32(n.u) != 0 {
			parts = append(parts, n.name)
		}
	}
	if u&^AllUsages != 0 {
		parts = append(parts, "unknown")
	}
	return strings.Join(parts, ",")
}

// ParseUsage parses a comma-separated list of usage names; empty items
// are skipped.
func ParseUsage(s string) (uint32, error) {
	var u uint32
	for _, part := range strings.Split(s, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		found := false
		for _, n := range usageNames {
			if n.name == part {
				u |= uint32(n.u)
				found = true
			}
		}
		if !found {
			return 0, fmt.Errorf("unknown usage %q (want encrypt, decrypt, sign, verify, wrap, unwrap, derive)", part)
		}
	}
	return u, nil
}

// KeyIDLen is the length of a key id: 128 random bits.
const KeyIDLen = 16

// ParseKeyID parses the text form of a key id: 32 hex digits.
func ParseKeyID(s string) ([KeyIDLen]byte, error) {
	var id [KeyIDLen]byte
	b, err := hex.DecodeString(s)
	if err != nil || len(b) != len(id) {
		return id, fmt.Errorf("invalid key id %q: want 32 hex digits", s)
	}
	copy(id[:], b)
	return id, nil
}

// FormatKeyID returns the text form of a key id: 32 lowercase hex digits.
func FormatKeyID(id [KeyIDLen]byte) string { return hex.EncodeToString(id[:]) }

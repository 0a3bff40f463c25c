package wrap

import (
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// InteropFormat says what the material of a key of type s is inside a
// standard wrapping (WrapKW, WrapKWP, WrapRSAKWP), where the other side
// expects what PKCS #11 and cloud KMS imports expect: the raw key for
// secret (AES, HMAC) keys, and a PKCS #8 PrivateKeyInfo in DER for private
// keys. It is the format to pass to mech's Export before wrapping and to
// mech's Import after unwrapping. It returns KEY_FORMAT_UNSPECIFIED for a
// nil spec.
//
// The keywarden format (SealKeyword) carries a key's canonical bytes
// instead; see the package documentation.
func InteropFormat(s *key.Spec) wire.KeyFormat {
	switch {
	case s == nil:
		return wire.KeyFormat_KEY_FORMAT_UNSPECIFIED
	case s.Asymmetric:
		return wire.KeyFormat_KEY_FORMAT_PKCS8_DER
	default:
		return wire.KeyFormat_KEY_FORMAT_RAW
	}
}

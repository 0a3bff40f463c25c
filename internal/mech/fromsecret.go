package mech

import (
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// FromSecret makes a secret key (AES or HMAC type) from bytes derived
// elsewhere, e.g. by Argon2id in a KDF worker. It copies secret the way
// Import does for raw secret keys (same length rules) and wipes the
// input, whether or not it succeeds: the caller must not use it again.
func FromSecret(s *key.Spec, secret []byte) (*Key, error) {
	defer clear(secret)
	if s == nil || s.Asymmetric {
		return nil, invalid("a derived key must be of a secret key type")
	}
	return Import(s, wire.KeyFormat_KEY_FORMAT_RAW, secret)
}

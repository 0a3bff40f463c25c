package mech

import (
	"crypto/rsa"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
)

// Canonical runs fn with the key's canonical bytes (see Key) inside
// secmem.Do, for sealing them into a store blob or wrapping them: the
// arena's own bytes for secret and private keys, the SPKI DER encoding
// for public keys. fn must neither keep nor modify the slice, and must
// wipe whatever it derives from it.
func (k *Key) Canonical(fn func(b []byte) error) error {
	if err := k.live(); err != nil {
		return err
	}
	if k.secret == nil {
		return fn(k.pubDER)
	}
	var err error
	secmem.Do(func() { err = fn(k.secret.Bytes()) })
	return err
}

// FromCanonical makes a key of spec s and class c from canonical bytes, as
// Canonical gives them. It copies b into the arena and wipes b, whether or
// not it succeeds.
func FromCanonical(s *key.Spec, c key.Class, b []byte) (k *Key, err error) {
	defer clear(b)
	if s, err = lookupSpec(s); err != nil {
		return nil, err
	}
	if c == key.Public {
		if !s.Asymmetric {
			return nil, errUnsupported()
		}
		pub, err := parseSPKI(b)
		if err != nil {
			return nil, errMalformed()
		}
		return fromPublic(s, pub)
	}
	if (c == key.Secret) == s.Asymmetric {
		return nil, errUnsupported()
	}
	secmem.Do(func() {
		if c == key.Secret {
			k, err = importSecret(s, wire.KeyFormat_KEY_FORMAT_RAW, b)
			return
		}
		sec := make([]byte, len(b))
		copy(sec, b)
		k, err = newPrivateKey(s, sec)
	})
	return k, err
}

// WithRSAPrivate runs fn with an RSA private key's expanded form, inside
// secmem.Do (for RSA-AES key unwrapping). fn must not keep it.
func (k *Key) WithRSAPrivate(fn func(priv *rsa.PrivateKey) error) error {
	if err := k.live(); err != nil {
		return err
	}
	if k.spec.Family != key.FamilyRSA || k.class != key.Private {
		return errNeedPrivate()
	}
	return k.run(func(e *expanded) error {
		if e == nil || e.rsa == nil {
			return errNeedPrivate()
		}
		return fn(e.rsa)
	})
}

// RSAPublic returns an RSA key's public half (nil for other keys).
func (k *Key) RSAPublic() *rsa.PublicKey {
	if k.live() != nil {
		return nil
	}
	return k.rsaPub
}

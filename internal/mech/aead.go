package mech

import (
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// gcmNonceSize and gcmTagSize frame an AES-256-GCM ciphertext:
// nonce || ciphertext || tag, which crypto/cipher's standard GCM opens
// with gcm.Open(nil, ct[:12], ct[12:], aad).
const (
	gcmNonceSize = 12
	gcmTagSize   = 16
)

// Encrypt encrypts pt and appends the ciphertext to dst.
//
// AES-256-GCM: the nonce is 12 random bytes, chosen here (package random:
// refused with STATUS_UNAVAILABLE after a generation change until fresh
// randomness is confirmed), and the result is nonce || ciphertext || tag; aad is the additional data and h must be
// unspecified. RSA (private or public key): OAEP with hash h (default
// SHA-256) for both the label and MGF1, and aad as the label. A plaintext
// too long for the modulus is refused. dst must not overlap pt.
func (k *Key) Encrypt(pt, aad []byte, h wire.HashAlg, dst []byte) (out []byte, err error) {
	if err := k.live(); err != nil {
		return nil, err
	}
	switch k.spec.Family {
	case key.FamilyAES:
		if h != wire.HashAlg_HASH_ALG_UNSPECIFIED {
			return nil, errHash()
		}
		err = k.run(func(e *expanded) (err error) {
			out, err = random.Seal(e.gcm, dst, pt, aad)
			return err
		})
		return out, err
	case key.FamilyRSA:
		// Public-key encryption touches no secret.
		return k.encryptOAEP(pt, aad, h, dst)
	}
	return nil, errUnsupported()
}

// Decrypt decrypts ct, made as Encrypt describes, and appends the plaintext
// to dst. Every failure that depends on ct (length, tag, padding) gives the
// same error, STATUS_INVALID_ARGUMENT "decryption failed". RSA decryption
// needs a private key. dst must not overlap ct.
func (k *Key) Decrypt(ct, aad []byte, h wire.HashAlg, dst []byte) (out []byte, err error) {
	if err := k.live(); err != nil {
		return nil, err
	}
	switch k.spec.Family {
	case key.FamilyAES:
		if h != wire.HashAlg_HASH_ALG_UNSPECIFIED {
			return nil, errHash()
		}
		if len(ct) < gcmNonceSize+gcmTagSize {
			return nil, errDecrypt()
		}
		err = k.run(func(e *expanded) error {
			var err error
			if out, err = random.Open(e.gcm, dst, ct, aad); err != nil {
				return errDecrypt()
			}
			return nil
		})
		return out, err
	case key.FamilyRSA:
		err = k.run(func(e *expanded) error {
			var err error
			out, err = k.decryptOAEP(e, ct, aad, h, dst)
			return err
		})
		return out, err
	}
	return nil, errUnsupported()
}

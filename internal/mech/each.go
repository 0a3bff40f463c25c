package mech

import (
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// EncryptEach encrypts n messages with one entry into the key's secret
// state, as n calls of Encrypt would: in(i) gives the i-th plaintext,
// additional data and destination, done(i, ...) receives its ciphertext
// or error. Batches of small messages pay the fixed cost of an operation
// (runtime/secret, the cache lookup) once, and AES-GCM nonces are drawn
// a group at a time (random.SealEach). h applies to every message.
// The returned error concerns the key as a whole (destroyed, wrong type);
// then done is not called.
func (k *Key) EncryptEach(n int, h wire.HashAlg, in func(i int) (pt, aad, dst []byte), done func(i int, out []byte, err error)) error {
	if err := k.live(); err != nil {
		return err
	}
	if k.spec.Family != key.FamilyAES {
		for i := range n {
			pt, aad, dst := in(i)
			out, err := k.Encrypt(pt, aad, h, dst)
			done(i, out, err)
		}
		return nil
	}
	if h != wire.HashAlg_HASH_ALG_UNSPECIFIED {
		return errHash()
	}
	return k.run(func(e *expanded) error {
		random.SealEach(e.gcm, n, in, done)
		return nil
	})
}

// DecryptEach is EncryptEach for Decrypt.
func (k *Key) DecryptEach(n int, h wire.HashAlg, in func(i int) (ct, aad, dst []byte), done func(i int, out []byte, err error)) error {
	if err := k.live(); err != nil {
		return err
	}
	if k.spec.Family != key.FamilyAES {
		for i := range n {
			ct, aad, dst := in(i)
			out, err := k.Decrypt(ct, aad, h, dst)
			done(i, out, err)
		}
		return nil
	}
	if h != wire.HashAlg_HASH_ALG_UNSPECIFIED {
		return errHash()
	}
	return k.run(func(e *expanded) error {
		for i := range n {
			ct, aad, dst := in(i)
			if len(ct) < gcmNonceSize+gcmTagSize {
				done(i, nil, errDecrypt())
				continue
			}
			out, err := random.Open(e.gcm, dst, ct, aad)
			if err != nil {
				done(i, nil, errDecrypt())
				continue
			}
			done(i, out, nil)
		}
		return nil
	})
}

// MACEach is EncryptEach for MAC.
func (k *Key) MACEach(n int, in func(i int) (data, dst []byte), done func(i int, out []byte, err error)) error {
	if err := k.isMAC(); err != nil {
		return err
	}
	return k.run(func(e *expanded) error {
		h := k.getMAC(e)
		for i := range n {
			data, dst := in(i)
			h.Write(data)
			done(i, h.Sum(dst), nil)
			h.Reset()
		}
		putMAC(e, h)
		return nil
	})
}

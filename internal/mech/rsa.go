package mech

import (
	"crypto"
	"crypto/rsa"
	"errors"

	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// oaepHash resolves the OAEP hash (default SHA-256).
func oaepHash(h wire.HashAlg) (crypto.Hash, error) {
	if h == wire.HashAlg_HASH_ALG_UNSPECIFIED {
		h = wire.HashAlg_HASH_ALG_SHA256
	}
	ch, ok := cryptoHash(h)
	if !ok {
		return 0, errUnknownHash()
	}
	return ch, nil
}

func (k *Key) encryptOAEP(pt, label []byte, h wire.HashAlg, dst []byte) ([]byte, error) {
	ch, err := oaepHash(h)
	if err != nil {
		return nil, err
	}
	if err := random.Await(); err != nil {
		return nil, err
	}
	ct, err := rsa.EncryptOAEPWithOptions(random.Reader, k.rsaPub, pt, &rsa.OAEPOptions{Hash: ch, Label: label})
	if err != nil {
		if errors.Is(err, rsa.ErrMessageTooLong) {
			return nil, invalid("plaintext too long")
		}
		return nil, internal("encryption failed")
	}
	return append(dst, ct...), nil
}

func (k *Key) decryptOAEP(e *expanded, ct, label []byte, h wire.HashAlg, dst []byte) ([]byte, error) {
	if e == nil || e.rsa == nil {
		return nil, errNeedPrivate()
	}
	ch, err := oaepHash(h)
	if err != nil {
		return nil, err
	}
	pt, err := e.rsa.Decrypt(nil, ct, &rsa.OAEPOptions{Hash: ch, Label: label})
	if err != nil {
		return nil, errDecrypt()
	}
	out := append(dst, pt...)
	clear(pt)
	return out, nil
}

// signRSA signs digest (made with ch) with PSS, salt length equal to the
// hash size, or PKCS #1 v1.5.
func signRSA(priv *rsa.PrivateKey, sc scheme, digest []byte) ([]byte, error) {
	var (
		sig []byte
		err error
	)
	if sc.pss {
		// The salt: a clone repeating it does no harm, so signing does not
		// wait for fresh randomness after a generation change.
		sig, err = rsa.SignPSS(random.AnyReader, priv, sc.ch, digest,
			&rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
	} else {
		sig, err = rsa.SignPKCS1v15(nil, priv, sc.ch, digest)
	}
	if err != nil {
		return nil, internal("signing failed")
	}
	return sig, nil
}

// verifyRSA checks sig over digest; PSS accepts any salt length.
func (k *Key) verifyRSA(sc scheme, digest, sig []byte) error {
	var err error
	if sc.pss {
		err = rsa.VerifyPSS(k.rsaPub, sc.ch, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthAuto})
	} else {
		err = rsa.VerifyPKCS1v15(k.rsaPub, sc.ch, digest, sig)
	}
	if err != nil {
		return errBadSignature()
	}
	return nil
}

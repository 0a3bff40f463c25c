package mech

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// scheme is a resolved set of SignParams for one key.
type scheme struct {
	hash wire.HashAlg // message hash; unspecified for pure Ed25519
	ch   crypto.Hash  // the same, as the standard library names it
	pure bool         // Ed25519 over the message itself
	pss  bool         // RSA-PSS rather than PKCS #1 v1.5
}

var ed25519ph = &ed25519.Options{Hash: crypto.SHA512}

// canSign reports whether k's type makes signatures at all.
func (k *Key) canSign() bool {
	switch k.spec.Family {
	case key.FamilyEd25519, key.FamilyECDSA, key.FamilyRSA:
		return true
	}
	return false
}

// hasPrivate reports whether k holds the private half of a key.
func (k *Key) hasPrivate() bool { return k.class == key.Private }

// scheme resolves p for k. In a stream the data is always the message,
// and Ed25519 is always Ed25519ph.
func (k *Key) scheme(p SignParams, stream bool) (scheme, error) {
	var sc scheme
	if stream && p.Prehashed {
		return sc, invalid("a stream hashes the message itself")
	}
	switch k.spec.Family {
	case key.FamilyEd25519:
		if p.Padding != wire.Padding_PADDING_UNSPECIFIED {
			return sc, invalid("padding not supported for this key type")
		}
		switch {
		case p.Hash == wire.HashAlg_HASH_ALG_UNSPECIFIED && !p.Prehashed && !stream:
			sc.pure = true
			return sc, nil
		case p.Hash == wire.HashAlg_HASH_ALG_SHA512,
			p.Hash == wire.HashAlg_HASH_ALG_UNSPECIFIED && stream:
			sc.hash, sc.ch = wire.HashAlg_HASH_ALG_SHA512, crypto.SHA512
			return sc, nil
		}
		return sc, errHash()
	case key.FamilyECDSA:
		if p.Padding != wire.Padding_PADDING_UNSPECIFIED {
			return sc, invalid("padding not supported for this key type")
		}
		sc.hash = p.Hash
		if sc.hash == wire.HashAlg_HASH_ALG_UNSPECIFIED {
			sc.hash = wire.HashAlg_HASH_ALG_SHA256
			if k.spec.Type == wire.KeyType_KEY_TYPE_ECDSA_P384 {
				sc.hash = wire.HashAlg_HASH_ALG_SHA384
			}
		}
	case key.FamilyRSA:
		switch p.Padding {
		case wire.Padding_PADDING_UNSPECIFIED, wire.Padding_PADDING_PSS:
			sc.pss = true
		case wire.Padding_PADDING_PKCS1V15:
		default:
			return sc, invalid("unsupported padding")
		}
		sc.hash = p.Hash
		if sc.hash == wire.HashAlg_HASH_ALG_UNSPECIFIED {
			sc.hash = wire.HashAlg_HASH_ALG_SHA256
		}
	default:
		return sc, errUnsupported()
	}
	ch, ok := cryptoHash(sc.hash)
	if !ok {
		return sc, errUnknownHash()
	}
	sc.ch = ch
	return sc, nil
}

// message returns what the signature primitive takes for data: data
// itself for pure Ed25519, else its digest (data when prehashed, after a
// length check).
func (sc scheme) message(data []byte, prehashed bool) ([]byte, error) {
	switch {
	case sc.pure:
		return data, nil
	case prehashed:
		if len(data) != HashSize(sc.hash) {
			return nil, invalid("digest length does not match hash")
		}
		return data, nil
	}
	return digest(sc.hash, data), nil
}

// Sign signs data as p describes. Ed25519 signatures are RFC 8032 (pure or
// Ed25519ph), ECDSA signatures ASN.1 DER, RSA signatures PSS (salt length
// equal to the hash size) or PKCS #1 v1.5. Sign needs a private key.
func (k *Key) Sign(p SignParams, data []byte) ([]byte, error) {
	if err := k.live(); err != nil {
		return nil, err
	}
	if !k.canSign() {
		return nil, errUnsupported()
	}
	if !k.hasPrivate() {
		return nil, errNeedPrivate()
	}
	sc, err := k.scheme(p, false)
	if err != nil {
		return nil, err
	}
	m, err := sc.message(data, p.Prehashed)
	if err != nil {
		return nil, err
	}
	var sig []byte
	err = k.run(func(e *expanded) error {
		var err error
		sig, err = signMessage(e, sc, m)
		return err
	})
	return sig, err
}

// Verify checks sig over data as p describes; a private or public key
// will do. A bad signature gives STATUS_VERIFICATION_FAILED; bad
// parameters give STATUS_INVALID_ARGUMENT.
func (k *Key) Verify(p SignParams, data, sig []byte) error {
	if err := k.live(); err != nil {
		return err
	}
	if !k.canSign() {
		return errUnsupported()
	}
	sc, err := k.scheme(p, false)
	if err != nil {
		return err
	}
	m, err := sc.message(data, p.Prehashed)
	if err != nil {
		return err
	}
	return k.verifyMessage(sc, m, sig)
}

// signMessage signs m, the output of scheme.message, with the expanded
// private key e. It runs inside secmem.Do.
func signMessage(e *expanded, sc scheme, m []byte) ([]byte, error) {
	switch {
	case e == nil:
	case e.ed != nil:
		if sc.pure {
			return ed25519.Sign(e.ed, m), nil
		}
		sig, err := e.ed.Sign(nil, m, ed25519ph)
		if err != nil {
			return nil, internal("signing failed")
		}
		return sig, nil
	case e.ec != nil:
		// Go 1.26 takes the randomness from its own source whatever the
		// reader, and hedges it with the key and the message: two clones
		// that draw the same bytes still never sign two messages with one
		// nonce. So signing does not wait for fresh randomness.
		sig, err := ecdsa.SignASN1(rand.Reader, e.ec, m)
		if err != nil {
			return nil, internal("signing failed")
		}
		return sig, nil
	case e.rsa != nil:
		return signRSA(e.rsa, sc, m)
	}
	return nil, errNeedPrivate()
}

// verifyMessage checks sig over m, the output of scheme.message.
func (k *Key) verifyMessage(sc scheme, m, sig []byte) error {
	ok := false
	switch {
	case k.edPub != nil:
		if sc.pure {
			ok = ed25519.Verify(k.edPub, m, sig)
		} else {
			ok = ed25519.VerifyWithOptions(k.edPub, m, sig, ed25519ph) == nil
		}
	case k.ecPub != nil:
		ok = ecdsa.VerifyASN1(k.ecPub, m, sig)
	case k.rsaPub != nil:
		return k.verifyRSA(sc, m, sig)
	default:
		return errUnsupported()
	}
	if !ok {
		return errBadSignature()
	}
	return nil
}

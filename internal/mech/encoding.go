package mech

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"crypto/x509"
	"encoding/asn1"
	"encoding/pem"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
)

// Limits on imported secret keys.
const (
	aesKeyLen     = 32
	minHMACKeyLen = 16
	maxHMACKeyLen = 1024
)

// PEM block types accepted on import.
const (
	pemPKCS8  = "PRIVATE KEY"     // PKCS #8
	pemSEC1   = "EC PRIVATE KEY"  // RFC 5915
	pemPKCS1  = "RSA PRIVATE KEY" // RFC 8017 RSAPrivateKey
	pemPublic = "PUBLIC KEY"      // SubjectPublicKeyInfo
)

func errFormat() error    { return invalid("unsupported key format") }
func errMalformed() error { return invalid("malformed key") }

func errMismatch(s *key.Spec) error {
	return invalid("key does not match type " + s.Name)
}

// Import makes a key of type s from data in format f.
//
// Secret types take RAW bytes only (UNSPECIFIED means RAW): exactly 32 for
// AES-256, 16 to 1024 for HMAC. Asymmetric types take a private key as
// PKCS #8 DER or PEM (PEM may also be "EC PRIVATE KEY" or "RSA PRIVATE
// KEY"), giving a key.Private key, or a public key as SubjectPublicKeyInfo
// DER or PEM, giving a key.Public key. UNSPECIFIED detects: PEM if data
// starts with "-----BEGIN", else PKCS #8 DER, else SPKI DER.
//
// The key inside must be exactly of type s (curve, modulus size); trailing
// data, extra PEM blocks and encrypted PEM are refused. Import never keeps
// or modifies data.
func Import(s *key.Spec, f wire.KeyFormat, data []byte) (k *Key, err error) {
	if s, err = lookupSpec(s); err != nil {
		return nil, err
	}
	// Parsing makes copies of the key (big.Ints, decoded DER): inside
	// secmem.Do they are erased once collected.
	secmem.Do(func() { k, err = importKey(s, f, data) })
	return k, err
}

func importKey(s *key.Spec, f wire.KeyFormat, data []byte) (*Key, error) {
	if !s.Asymmetric {
		return importSecret(s, f, data)
	}
	switch f {
	case wire.KeyFormat_KEY_FORMAT_PKCS8_DER:
		priv, err := parsePKCS8(data)
		if err != nil {
			return nil, err
		}
		return fromPrivate(s, priv)
	case wire.KeyFormat_KEY_FORMAT_SPKI_DER:
		pub, err := parseSPKI(data)
		if err != nil {
			return nil, err
		}
		return fromPublic(s, pub)
	case wire.KeyFormat_KEY_FORMAT_PKCS8_PEM, wire.KeyFormat_KEY_FORMAT_SPKI_PEM:
		return importPEM(s, f, data)
	case wire.KeyFormat_KEY_FORMAT_UNSPECIFIED:
		if isPEM(data) {
			return importPEM(s, f, data)
		}
		if priv, err := parsePKCS8(data); err == nil {
			return fromPrivate(s, priv)
		}
		if pub, err := parseSPKI(data); err == nil {
			return fromPublic(s, pub)
		}
		return nil, errMalformed()
	}
	return nil, errFormat()
}

// importSecret imports the raw bytes of an AES or HMAC key.
func importSecret(s *key.Spec, f wire.KeyFormat, data []byte) (*Key, error) {
	if f != wire.KeyFormat_KEY_FORMAT_UNSPECIFIED && f != wire.KeyFormat_KEY_FORMAT_RAW {
		return nil, errFormat()
	}
	switch s.Family {
	case key.FamilyAES:
		if len(data) != aesKeyLen {
			return nil, invalid("secret key has wrong length")
		}
	case key.FamilyHMAC:
		if len(data) < minHMACKeyLen || len(data) > maxHMACKeyLen {
			return nil, invalid("secret key has wrong length")
		}
	default:
		return nil, errUnsupported()
	}
	return newSecretKey(s, bytes.Clone(data))
}

// isPEM reports whether data, after leading white space, starts a PEM
// block.
func isPEM(data []byte) bool {
	return bytes.HasPrefix(bytes.TrimLeft(data, " \t\r\n"), []byte("-----BEGIN"))
}

// importPEM imports one PEM block. f restricts the accepted block types:
// PKCS8_PEM takes private keys, SPKI_PEM public keys, UNSPECIFIED either.
func importPEM(s *key.Spec, f wire.KeyFormat, data []byte) (*Key, error) {
	if !isPEM(data) {
		return nil, errMalformed()
	}
	block, rest := pem.Decode(data)
	if block == nil {
		return nil, errMalformed()
	}
	// Wipe the decoded DER of a private key once parsed (best effort).
	defer clear(block.Bytes)
	if len(bytes.TrimSpace(rest)) != 0 {
		return nil, invalid("trailing data after key")
	}
	if len(block.Headers) != 0 {
		return nil, invalid("encrypted or annotated PEM is not supported")
	}
	wantPrivate := f != wire.KeyFormat_KEY_FORMAT_SPKI_PEM
	wantPublic := f != wire.KeyFormat_KEY_FORMAT_PKCS8_PEM
	var (
		priv any
		err  error
	)
	switch {
	case block.Type == pemPKCS8 && wantPrivate:
		priv, err = parsePKCS8(block.Bytes)
	case block.Type == pemSEC1 && wantPrivate:
		if err = oneDER(block.Bytes); err == nil {
			if priv, err = x509.ParseECPrivateKey(block.Bytes); err != nil {
				err = errMalformed()
			}
		}
	case block.Type == pemPKCS1 && wantPrivate:
		if err = oneDER(block.Bytes); err == nil {
			if priv, err = x509.ParsePKCS1PrivateKey(block.Bytes); err != nil {
				err = errMalformed()
			}
		}
	case block.Type == pemPublic && wantPublic:
		pub, err := parseSPKI(block.Bytes)
		if err != nil {
			return nil, err
		}
		return fromPublic(s, pub)
	default:
		return nil, errFormat()
	}
	if err != nil {
		return nil, err
	}
	return fromPrivate(s, priv)
}

// oneDER checks that der is exactly one DER SEQUENCE with nothing after
// it. The x509 parsers do not all refuse trailing data.
func oneDER(der []byte) error {
	var v asn1.RawValue
	rest, err := asn1.Unmarshal(der, &v)
	if err != nil || len(rest) != 0 || v.Class != asn1.ClassUniversal ||
		v.Tag != asn1.TagSequence || !v.IsCompound {
		return errMalformed()
	}
	return nil
}

func parsePKCS8(der []byte) (any, error) {
	if err := oneDER(der); err != nil {
		return nil, err
	}
	priv, err := x509.ParsePKCS8PrivateKey(der)
	if err != nil {
		return nil, errMalformed()
	}
	return priv, nil
}

func parseSPKI(der []byte) (any, error) {
	if err := oneDER(der); err != nil {
		return nil, err
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return nil, errMalformed()
	}
	return pub, nil
}

// fromPrivate checks that a parsed private key is of type s, extracts its
// canonical bytes, wipes the parsed copy (best effort) and makes the Key.
func fromPrivate(s *key.Spec, priv any) (*Key, error) {
	var secret []byte
	switch p := priv.(type) {
	case *rsa.PrivateKey:
		defer wipeRSA(p)
		if s.Family != key.FamilyRSA || p.N.BitLen() != rsaBits(s) {
			return nil, errMismatch(s)
		}
		if len(p.Primes) != 2 {
			return nil, invalid("multi-prime RSA keys are not supported")
		}
		secret = x509.MarshalPKCS1PrivateKey(p)
	case *ecdsa.PrivateKey:
		defer wipeECDSA(p)
		if (s.Family != key.FamilyECDSA && s.Family != key.FamilyECDH) || p.Curve != ecdsaCurve(s) {
			return nil, errMismatch(s)
		}
		b, err := p.Bytes()
		if err != nil {
			return nil, errMalformed()
		}
		secret = b
	case ed25519.PrivateKey:
		defer clear(p)
		if s.Family != key.FamilyEd25519 || len(p) != ed25519.PrivateKeySize {
			return nil, errMismatch(s)
		}
		secret = bytes.Clone(p.Seed())
	case *ecdh.PrivateKey:
		if s.Family != key.FamilyX25519 || p.Curve() != ecdh.X25519() {
			return nil, errMismatch(s)
		}
		secret = p.Bytes()
	default:
		return nil, errMismatch(s)
	}
	return newPrivateKey(s, secret)
}

// fromPublic checks that a parsed public key is of type s and makes a
// public-class Key.
func fromPublic(s *key.Spec, pub any) (*Key, error) {
	switch p := pub.(type) {
	case *rsa.PublicKey:
		if s.Family != key.FamilyRSA || p.N.BitLen() != rsaBits(s) {
			return nil, errMismatch(s)
		}
	case *ecdsa.PublicKey:
		if (s.Family != key.FamilyECDSA && s.Family != key.FamilyECDH) || p.Curve != ecdsaCurve(s) {
			return nil, errMismatch(s)
		}
		if s.Family == key.FamilyECDH {
			dh, err := p.ECDH()
			if err != nil {
				return nil, errMalformed()
			}
			return newPublicKey(s, dh)
		}
	case ed25519.PublicKey:
		if s.Family != key.FamilyEd25519 || len(p) != ed25519.PublicKeySize {
			return nil, errMismatch(s)
		}
		// x509 returns a slice of the caller's buffer; keep our own.
		return newPublicKey(s, ed25519.PublicKey(bytes.Clone(p)))
	case *ecdh.PublicKey:
		if s.Family != key.FamilyX25519 || p.Curve() != ecdh.X25519() {
			return nil, errMismatch(s)
		}
	default:
		return nil, errMismatch(s)
	}
	return newPublicKey(s, pub)
}

// Export returns the key's bytes in format f: secret keys as RAW
// (UNSPECIFIED means RAW); private keys as PKCS8_DER (the default) or
// PKCS8_PEM; public-class keys as Public(f) does. Whether the key may be
// exported is the caller's decision. The result is a fresh slice the
// caller owns and should wipe.
func (k *Key) Export(f wire.KeyFormat) (out []byte, err error) {
	if err := k.live(); err != nil {
		return nil, err
	}
	switch k.class {
	case key.Secret:
		if f != wire.KeyFormat_KEY_FORMAT_UNSPECIFIED && f != wire.KeyFormat_KEY_FORMAT_RAW {
			return nil, errFormat()
		}
		err = k.run(func(*expanded) error {
			out = bytes.Clone(k.secret.Bytes())
			return nil
		})
		return out, err
	case key.Public:
		return k.Public(f)
	}
	if f != wire.KeyFormat_KEY_FORMAT_UNSPECIFIED && f != wire.KeyFormat_KEY_FORMAT_PKCS8_DER &&
		f != wire.KeyFormat_KEY_FORMAT_PKCS8_PEM {
		return nil, errFormat()
	}
	err = k.run(func(e *expanded) error {
		var priv any
		switch {
		case e == nil:
			return errUnsupported()
		case e.ed != nil:
			priv = e.ed
		case e.ec != nil:
			priv = e.ec
		case e.rsa != nil:
			priv = e.rsa
		case e.dh != nil:
			priv = e.dh
		default:
			return errUnsupported()
		}
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			return internal("cannot encode key")
		}
		if f != wire.KeyFormat_KEY_FORMAT_PKCS8_PEM {
			out = der
			return nil
		}
		defer clear(der)
		out = pem.EncodeToMemory(&pem.Block{Type: pemPKCS8, Bytes: der})
		return nil
	})
	return out, err
}

// Public returns the public half of an asymmetric key as SPKI_DER (the
// default) or SPKI_PEM. Secret keys have none.
func (k *Key) Public(f wire.KeyFormat) ([]byte, error) {
	if err := k.live(); err != nil {
		return nil, err
	}
	if k.class == key.Secret || k.pubDER == nil {
		return nil, errUnsupported()
	}
	switch f {
	case wire.KeyFormat_KEY_FORMAT_UNSPECIFIED, wire.KeyFormat_KEY_FORMAT_SPKI_DER:
		return bytes.Clone(k.pubDER), nil
	case wire.KeyFormat_KEY_FORMAT_SPKI_PEM:
		return pem.EncodeToMemory(&pem.Block{Type: pemPublic, Bytes: k.pubDER}), nil
	}
	return nil, errFormat()
}

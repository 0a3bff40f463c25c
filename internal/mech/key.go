package mech

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"math/big"
	"sync"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// Generate returns a fresh random key of s's type: a secret key for AES
// and HMAC types (s.SecretLen bytes), a private key otherwise. RSA keys
// have exactly the type's modulus size.
func Generate(s *key.Spec) (*Key, error) {
	s, err := lookupSpec(s)
	if err != nil {
		return nil, err
	}
	var secret []byte
	switch s.Family {
	case key.FamilyAES, key.FamilyHMAC:
		if s.SecretLen <= 0 {
			return nil, internal("key generation failed")
		}
		secret = make([]byte, s.SecretLen)
		rand.Read(secret) // never fails: Go 1.24+ crashes the program instead
		return newSecretKey(s, secret)
	case key.FamilyEd25519:
		secret = make([]byte, ed25519.SeedSize)
		rand.Read(secret)
	case key.FamilyECDSA:
		priv, err := ecdsa.GenerateKey(ecdsaCurve(s), rand.Reader)
		if err != nil {
			return nil, internal("key generation failed")
		}
		secret, err = priv.Bytes()
		wipeECDSA(priv)
		if err != nil {
			return nil, internal("key generation failed")
		}
	case key.FamilyRSA:
		priv, err := rsa.GenerateKey(rand.Reader, rsaBits(s))
		if err != nil {
			return nil, internal("key generation failed")
		}
		secret = x509.MarshalPKCS1PrivateKey(priv)
		wipeRSA(priv)
	case key.FamilyX25519, key.FamilyECDH:
		priv, err := ecdhCurve(s).GenerateKey(rand.Reader)
		if err != nil {
			return nil, internal("key generation failed")
		}
		secret = priv.Bytes()
	default:
		return nil, errUnsupported()
	}
	k, err := newPrivateKey(s, secret)
	if err != nil {
		return nil, internal("key generation failed")
	}
	return k, nil
}

// Spec returns the static facts of the key's type, as key.Lookup returns
// them. It stays valid after Destroy.
func (k *Key) Spec() *key.Spec {
	if k == nil {
		return nil
	}
	return k.spec
}

// Class returns key.Secret, key.Private or key.Public. It stays valid after
// Destroy.
func (k *Key) Class() key.Class {
	if k == nil {
		return wire.KeyClass_KEY_CLASS_UNSPECIFIED
	}
	return k.class
}

// PublicDER returns the SubjectPublicKeyInfo DER of an asymmetric key
// (private or public class), computed once when the key was made. It
// returns nil for secret keys and after Destroy. The caller must not
// modify the returned slice.
func (k *Key) PublicDER() []byte {
	if k.live() != nil {
		return nil
	}
	return k.pubDER
}

// Destroy wipes the key's secret bytes and drops every expanded form (see
// Key for what that reaches). Every later operation on k fails with
// STATUS_NOT_FOUND "key destroyed"; Spec and Class keep working. Destroy
// is idempotent and must not run concurrently with other methods of k.
func (k *Key) Destroy() {
	if k == nil {
		return
	}
	k.destroyed.Store(true)
	clear(k.secret)
	clear(k.edPriv)
	wipeECDSA(k.ecPriv)
	wipeRSA(k.rsaPriv)
	k.secret = nil
	k.aead = nil
	k.macPool = nil
	k.macHash = nil
	k.edPriv = nil
	k.ecPriv = nil
	k.rsaPriv = nil
	k.dhPriv = nil
	k.edPub = nil
	k.ecPub = nil
	k.rsaPub = nil
	k.dhPub = nil
	k.pubDER = nil
}

// live returns nil when k may be used, else the "key destroyed" error.
// A nil or zero Key counts as destroyed.
func (k *Key) live() error {
	if k == nil || k.spec == nil || k.destroyed.Load() {
		return errDestroyed()
	}
	return nil
}

// lookupSpec returns the registered spec for s, refusing nil and specs
// that do not describe a known type.
func lookupSpec(s *key.Spec) (*key.Spec, error) {
	if s == nil {
		return nil, invalid("unknown key type")
	}
	c := key.Lookup(s.Type)
	if c == nil || c.Family != s.Family || c.Asymmetric != s.Asymmetric {
		return nil, invalid("unknown key type")
	}
	return c, nil
}

// newSecretKey makes an AES or HMAC key that owns secret.
func newSecretKey(s *key.Spec, secret []byte) (*Key, error) {
	k := &Key{spec: s, class: key.Secret, secret: secret}
	switch s.Family {
	case key.FamilyAES:
		if len(secret) != 32 {
			clear(secret)
			return nil, invalid("secret key has wrong length")
		}
		block, err := aes.NewCipher(secret)
		if err != nil {
			clear(secret)
			return nil, internal("cannot expand key")
		}
		k.aead, err = cipher.NewGCMWithRandomNonce(block)
		if err != nil {
			clear(secret)
			return nil, internal("cannot expand key")
		}
	case key.FamilyHMAC:
		k.macAlg = hmacHash(s)
		k.macHash = hashFunc(k.macAlg)
		if k.macHash == nil || len(secret) == 0 {
			clear(secret)
			return nil, internal("cannot expand key")
		}
		h := k.macHash
		// The closure captures the canonical slice, not k: Destroy clears
		// that slice and drops the pool.
		k.macPool = &sync.Pool{New: func() any { return hmac.New(h, secret) }}
	default:
		clear(secret)
		return nil, errUnsupported()
	}
	return k, nil
}

// newPrivateKey makes a private key that owns secret, its canonical bytes,
// and expands it. On error secret is wiped.
func newPrivateKey(s *key.Spec, secret []byte) (*Key, error) {
	k := &Key{spec: s, class: key.Private, secret: secret}
	if err := k.expandPrivate(); err != nil {
		clear(secret)
		clear(k.edPriv)
		wipeECDSA(k.ecPriv)
		wipeRSA(k.rsaPriv)
		return nil, err
	}
	return k, nil
}

// expandPrivate builds the parsed private key and the public half from
// k.secret.
func (k *Key) expandPrivate() error {
	s := k.spec
	switch s.Family {
	case key.FamilyEd25519:
		if len(k.secret) != ed25519.SeedSize {
			return invalid("malformed key")
		}
		k.edPriv = ed25519.NewKeyFromSeed(k.secret)
		k.edPub = k.edPriv.Public().(ed25519.PublicKey) // a copy
		return k.setPubDER(k.edPub)
	case key.FamilyECDSA:
		priv, err := ecdsa.ParseRawPrivateKey(ecdsaCurve(s), k.secret)
		if err != nil {
			return invalid("malformed key")
		}
		k.ecPriv, k.ecPub = priv, &priv.PublicKey
		return k.setPubDER(k.ecPub)
	case key.FamilyRSA:
		priv, err := x509.ParsePKCS1PrivateKey(k.secret) // validates and precomputes
		if err != nil {
			return invalid("malformed key")
		}
		k.rsaPriv, k.rsaPub = priv, &priv.PublicKey
		if priv.N.BitLen() != rsaBits(s) || len(priv.Primes) != 2 {
			return invalid("key does not match type " + s.Name)
		}
		return k.setPubDER(k.rsaPub)
	case key.FamilyX25519, key.FamilyECDH:
		priv, err := ecdhCurve(s).NewPrivateKey(k.secret)
		if err != nil {
			return invalid("malformed key")
		}
		k.dhPriv, k.dhPub = priv, priv.PublicKey()
		return k.setPubDER(k.dhPub)
	}
	return errUnsupported()
}

// newPublicKey makes a public-class key from a parsed public key, which
// the caller has matched to s.
func newPublicKey(s *key.Spec, pub any) (*Key, error) {
	k := &Key{spec: s, class: key.Public}
	switch p := pub.(type) {
	case ed25519.PublicKey:
		k.edPub = p
	case *ecdsa.PublicKey:
		k.ecPub = p
	case *rsa.PublicKey:
		k.rsaPub = p
	case *ecdh.PublicKey:
		k.dhPub = p
	default:
		return nil, errUnsupported()
	}
	if err := k.setPubDER(pub); err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Key) setPubDER(pub any) error {
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return internal("cannot encode public key")
	}
	k.pubDER = der
	return nil
}

// ecdsaCurve returns the curve of an ECDSA spec (nil for other specs).
func ecdsaCurve(s *key.Spec) elliptic.Curve {
	switch s.Type {
	case wire.KeyType_KEY_TYPE_ECDSA_P256, wire.KeyType_KEY_TYPE_ECDH_P256:
		return elliptic.P256()
	case wire.KeyType_KEY_TYPE_ECDSA_P384, wire.KeyType_KEY_TYPE_ECDH_P384:
		return elliptic.P384()
	}
	return nil
}

// ecdhCurve returns the curve of an X25519 or ECDH spec (nil for others).
func ecdhCurve(s *key.Spec) ecdh.Curve {
	switch s.Type {
	case wire.KeyType_KEY_TYPE_X25519:
		return ecdh.X25519()
	case wire.KeyType_KEY_TYPE_ECDH_P256:
		return ecdh.P256()
	case wire.KeyType_KEY_TYPE_ECDH_P384:
		return ecdh.P384()
	}
	return nil
}

// rsaBits returns the modulus size of an RSA spec (0 for others).
func rsaBits(s *key.Spec) int {
	switch s.Type {
	case wire.KeyType_KEY_TYPE_RSA_2048:
		return 2048
	case wire.KeyType_KEY_TYPE_RSA_3072:
		return 3072
	case wire.KeyType_KEY_TYPE_RSA_4096:
		return 4096
	}
	return 0
}

// hmacHash returns the hash of an HMAC spec.
func hmacHash(s *key.Spec) wire.HashAlg {
	switch s.Type {
	case wire.KeyType_KEY_TYPE_HMAC_SHA256:
		return wire.HashAlg_HASH_ALG_SHA256
	case wire.KeyType_KEY_TYPE_HMAC_SHA384:
		return wire.HashAlg_HASH_ALG_SHA384
	case wire.KeyType_KEY_TYPE_HMAC_SHA512:
		return wire.HashAlg_HASH_ALG_SHA512
	}
	return wire.HashAlg_HASH_ALG_UNSPECIFIED
}

// wipeECDSA overwrites the limbs of the private scalar's big.Int mirror
// (best effort: the FIPS module keeps its own copy, which only the garbage
// collector reclaims). priv must not be used afterwards.
func wipeECDSA(priv *ecdsa.PrivateKey) {
	if priv != nil {
		//lint:ignore SA1019 D is deprecated for use; here it is only wiped.
		wipeBig(priv.D)
	}
}

// wipeRSA overwrites the limbs of every private value of priv (best
// effort, as for wipeECDSA). priv must not be used afterwards.
func wipeRSA(priv *rsa.PrivateKey) {
	if priv == nil {
		return
	}
	wipeBig(priv.D)
	for _, p := range priv.Primes {
		wipeBig(p)
	}
	pc := &priv.Precomputed
	wipeBig(pc.Dp)
	wipeBig(pc.Dq)
	wipeBig(pc.Qinv)
	// CRTValues is empty: only two-prime keys are accepted.
}

// wipeBig zeroes x's limbs and leaves x a well-formed zero.
func wipeBig(x *big.Int) {
	if x == nil {
		return
	}
	clear(x.Bits())
	x.SetInt64(0)
}

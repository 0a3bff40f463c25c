package mech

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"math/big"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
)

// Generate returns a fresh random key of s's type: a secret key for AES
// and HMAC types (s.SecretLen bytes), a private key otherwise. RSA keys
// have exactly the type's modulus size.
//
// The bytes come from package random, so after a generation change
// Generate fails with STATUS_UNAVAILABLE until fresh randomness is
// confirmed. Go's RSA key generation ignores the reader it is given and
// draws from the kernel: an RSA key waits until the kernel's generator is
// known to have re-seeded (random.AwaitKernel).
func Generate(s *key.Spec) (k *Key, err error) {
	if s, err = lookupSpec(s); err != nil {
		return nil, err
	}
	if s.Family == key.FamilyRSA {
		err = random.AwaitKernel()
	} else {
		err = random.Await()
	}
	if err != nil {
		return nil, err
	}
	secmem.Do(func() { k, err = generate(s) })
	return k, err
}

// maxScalarTries bounds the draws of an ECDSA or ECDH scalar: each is out
// of range with probability below 2^-32 for the curves supported.
const maxScalarTries = 16

// randomScalar draws a private scalar for a NIST curve of n bytes,
// checked by valid (which refuses zero and values not below the order).
func randomScalar(n int, valid func([]byte) bool) ([]byte, error) {
	b := make([]byte, n)
	for range maxScalarTries {
		if err := random.Read(b); err != nil {
			return nil, err
		}
		if valid(b) {
			return b, nil
		}
	}
	clear(b)
	return nil, internal("key generation failed")
}

// generate runs inside secmem.Do: the generators' temporaries are erased.
func generate(s *key.Spec) (*Key, error) {
	var secret []byte
	switch s.Family {
	case key.FamilyAES, key.FamilyHMAC:
		if s.SecretLen <= 0 {
			return nil, internal("key generation failed")
		}
		secret = make([]byte, s.SecretLen)
		if err := random.Read(secret); err != nil {
			return nil, err
		}
		return newSecretKey(s, secret)
	case key.FamilyEd25519:
		secret = make([]byte, ed25519.SeedSize)
		if err := random.Read(secret); err != nil {
			return nil, err
		}
	case key.FamilyECDSA:
		// The scalar is drawn here (Go's ecdsa.GenerateKey would take it
		// from the standard library's source, not ours).
		var err error
		curve := ecdsaCurve(s)
		secret, err = randomScalar((curve.Params().BitSize+7)/8, func(b []byte) bool {
			priv, err := ecdsa.ParseRawPrivateKey(curve, b)
			if err != nil {
				return false
			}
			wipeECDSA(priv)
			return true
		})
		if err != nil {
			return nil, err
		}
	case key.FamilyRSA:
		// Go ignores the reader (Go 1.26): Generate waited for the kernel.
		priv, err := rsa.GenerateKey(rand.Reader, rsaBits(s))
		if err != nil {
			return nil, internal("key generation failed")
		}
		secret = x509.MarshalPKCS1PrivateKey(priv)
		wipeRSA(priv)
	case key.FamilyX25519, key.FamilyECDH:
		// The scalar is drawn here, as for ECDSA.
		curve := ecdhCurve(s)
		n := 32 // X25519
		if s.Family == key.FamilyECDH {
			n = (ecdsaCurve(s).Params().BitSize + 7) / 8
		}
		var err error
		if secret, err = randomScalar(n, func(b []byte) bool {
			_, err := curve.NewPrivateKey(b)
			return err == nil
		}); err != nil {
			return nil, err
		}
	default:
		return nil, errUnsupported()
	}
	k, err := newPrivateKey(s, secret)
	if err != nil {
		if wire.StatusOf(err) == wire.Status_STATUS_RESOURCE_EXHAUSTED {
			return nil, err
		}
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

// errCorrupted reports a canary found overwritten when a key was freed.
var errCorrupted = internal("key memory corrupted")

// Destroy wipes the key's canonical bytes in the arena and its expanded
// state, and forgets its public half. Every later operation on k fails
// with STATUS_NOT_FOUND "key destroyed"; Spec and Class keep working.
// Destroy is idempotent and must not run concurrently with other methods
// of k. It reports an error when it found the key's memory overwritten
// past its end (the key is destroyed regardless).
func (k *Key) Destroy() error {
	if k == nil || k.destroyed.Swap(true) {
		return nil
	}
	k.expMu.Lock()
	if e := k.exp.Swap(nil); e != nil {
		e.wipe()
	}
	k.expMu.Unlock()
	cache.remove(k)
	var err error
	if k.secret != nil {
		if k.secret.Free() != nil {
			err = errCorrupted
		}
		k.secret = nil
	}
	k.macHash = nil
	k.edPub = nil
	k.ecPub = nil
	k.rsaPub = nil
	k.dhPub = nil
	k.pubDER = nil
	return err
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

// newSecretKey makes an AES or HMAC key from its raw bytes, which it
// copies into the arena and then wipes. It runs inside secmem.Do.
func newSecretKey(s *key.Spec, secret []byte) (*Key, error) {
	defer clear(secret)
	switch s.Family {
	case key.FamilyAES, key.FamilyHMAC:
	default:
		return nil, errUnsupported()
	}
	return newKey(s, key.Secret, secret)
}

// newPrivateKey makes a private key from its canonical bytes, which it
// copies into the arena and then wipes. It runs inside secmem.Do.
func newPrivateKey(s *key.Spec, secret []byte) (*Key, error) {
	defer clear(secret)
	if !s.Asymmetric {
		return nil, errUnsupported()
	}
	return newKey(s, key.Private, secret)
}

// newKey expands canonical bytes sec (which validates them), derives the
// public half, stores sec in the arena and caches the expansion: a key
// just made is about to be used.
func newKey(s *key.Spec, c key.Class, sec []byte) (*Key, error) {
	e, err := build(s, sec)
	if err != nil {
		return nil, err
	}
	k := &Key{spec: s, class: c}
	if s.Family == key.FamilyHMAC {
		k.macAlg = hmacHash(s)
		k.macHash = hashFunc(k.macAlg)
		if k.macHash == nil {
			return nil, internal("cannot expand key")
		}
	}
	if s.Asymmetric {
		if err := k.setPublicFrom(e); err != nil {
			e.wipe()
			return nil, err
		}
	}
	if k.secret, err = store(sec); err != nil {
		e.wipe()
		return nil, err
	}
	k.used.Store(time.Now().UnixNano())
	k.exp.Store(e)
	cache.add(k)
	return k, nil
}

// setPublicFrom derives the public half from an expanded private key. The
// public objects are parsed anew from the SPKI encoding, so that none of
// them points into the private key (which would keep it alive).
func (k *Key) setPublicFrom(e *expanded) error {
	var pub any
	switch {
	case e.ed != nil:
		pub = e.ed.Public()
	case e.ec != nil:
		pub = e.ec.Public()
	case e.rsa != nil:
		pub = e.rsa.Public()
	case e.dh != nil:
		pub = e.dh.Public()
	default:
		return errUnsupported()
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return internal("cannot encode public key")
	}
	parsed, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		return internal("cannot encode public key")
	}
	if ec, ok := parsed.(*ecdsa.PublicKey); ok && k.spec.Family == key.FamilyECDH {
		if parsed, err = ec.ECDH(); err != nil {
			return internal("cannot encode public key")
		}
	}
	if err := k.setPub(parsed); err != nil {
		return err
	}
	k.pubDER = der
	return nil
}

// setPub sets the public half from a parsed public key.
func (k *Key) setPub(pub any) error {
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
		return errUnsupported()
	}
	return nil
}

// newPublicKey makes a public-class key from a parsed public key, which
// the caller has matched to s.
func newPublicKey(s *key.Spec, pub any) (*Key, error) {
	k := &Key{spec: s, class: key.Public}
	if err := k.setPub(pub); err != nil {
		return nil, err
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

package mech

import (
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"hash"
	"sync"
	"sync/atomic"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// Key is the material of one key object: its secret or private bytes, its
// public half, and expanded state cached for speed. Every method is safe
// for concurrent use, except Destroy, which the caller must not run
// concurrently with any other method of the same Key.
//
// # Memory
//
// A key's secret exists in exactly one canonical form, the byte slice
// secret, from which every other form is built (see expand):
//
//   - AES and HMAC keys: the raw key;
//   - Ed25519: the 32-byte seed (RFC 8032);
//   - ECDSA and ECDH P-256/P-384: the private scalar, big-endian, of the
//     curve's size;
//   - X25519: the 32-byte scalar (RFC 7748);
//   - RSA: the PKCS #1 DER encoding of the private key.
//
// The expanded forms cached next to it (the AEAD, the pool of keyed HMAC
// states, the ed25519.PrivateKey, *ecdsa.PrivateKey, *rsa.PrivateKey and
// *ecdh.PrivateKey) are derived from secret and may be dropped and rebuilt
// at any time. Destroy zeroes secret and the ed25519.PrivateKey in place,
// overwrites the big.Int limbs of the ECDSA and RSA keys (best effort), and
// drops every reference, so that only copies internal to the standard
// library (expanded AES round keys, HMAC pads, the FIPS module's own copy
// of a scalar) remain for the garbage collector. A later change moves
// secret into the locked arena and builds the expanded forms inside
// runtime/secret; keeping one canonical slice is what makes that a local
// change.
//
// Public keys (class key.Public) have no secret; only the public fields and
// pubDER are set.
type Key struct {
	spec  *key.Spec
	class key.Class

	// destroyed is set first thing by Destroy; every operation checks it.
	destroyed atomic.Bool

	// secret is the canonical secret (see above); nil for public keys.
	secret []byte

	// Expanded private state, built from secret by expand.
	aead    cipher.AEAD        // AES-256-GCM with random nonces; safe for concurrent use
	macPool *sync.Pool         // of hash.Hash from hmac.New, Reset before Put
	macHash func() hash.Hash   // the HMAC key's hash
	macAlg  wire.HashAlg       // and its wire name
	edPriv  ed25519.PrivateKey // seed || public key
	ecPriv  *ecdsa.PrivateKey
	rsaPriv *rsa.PrivateKey // with Precomputed values
	dhPriv  *ecdh.PrivateKey

	// Public half of asymmetric keys (both classes).
	edPub  ed25519.PublicKey
	ecPub  *ecdsa.PublicKey
	rsaPub *rsa.PublicKey
	dhPub  *ecdh.PublicKey
	pubDER []byte // SubjectPublicKeyInfo, computed once when the Key is made
}

// SignParams selects the signature scheme details.
//
// Hash: for ECDSA and RSA the message hash (unspecified: SHA-256 for P-256
// and RSA, SHA-384 for P-384). For Ed25519: unspecified means pure Ed25519
// over the message; SHA-512 together with Prehashed means Ed25519ph over a
// 64-byte SHA-512 digest. Prehashed: data is already the digest. Padding:
// RSA only; unspecified means PSS with salt length equal to the hash size.
type SignParams struct {
	Hash      wire.HashAlg
	Prehashed bool
	Padding   wire.Padding
}

// Stream is a streaming (init/update/final) hash, MAC or signature
// computation. Write never fails. Final returns the digest, tag or
// signature; for verifying streams it checks sig and returns (nil, nil) on
// success or an error with STATUS_VERIFICATION_FAILED. After Final the
// stream is spent. Destroy wipes internal state and may be called at any
// time. A Stream is not safe for concurrent use.
type Stream interface {
	Write(p []byte)
	Final(sig []byte) ([]byte, error)
	Destroy()
}

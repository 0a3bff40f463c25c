package mech

import (
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rsa"
	"hash"
	"sync"
	"sync/atomic"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
)

// Key is the material of one key object: its secret or private bytes, its
// public half, and expanded state cached for speed. Every method is safe
// for concurrent use, except Destroy, which the caller must not run
// concurrently with any other method of the same Key.
//
// # Memory
//
// A key's secret exists at rest in exactly one place, its canonical bytes
// in the locked arena (package secmem; see SetArena):
//
//   - AES and HMAC keys: the raw key;
//   - Ed25519: the 32-byte seed (RFC 8032);
//   - ECDSA and ECDH P-256/P-384: the private scalar, big-endian, of the
//     curve's size;
//   - X25519: the 32-byte scalar (RFC 7748);
//   - RSA: the PKCS #1 DER encoding of the private key.
//
// Every method that touches them runs inside secmem.Do (runtime/secret):
// it copies the canonical bytes into a heap buffer made there, and builds
// from it the expanded forms the standard library works with (the AEAD,
// the HMAC key, the ed25519.PrivateKey, *ecdsa.PrivateKey, *rsa.PrivateKey
// or *ecdh.PrivateKey). Those are cached while the key is in use and
// dropped after an idle period (see SetCacheIdle) or at once when the key
// is destroyed; having been allocated inside secmem.Do, they are erased
// when the garbage collector frees them. An idle key therefore exists only
// in the arena. (The standard library also refuses, or crashes on, key
// memory outside the Go heap: it takes weak pointers to it.)
//
// Public keys (class key.Public) have no secret; only the public fields and
// pubDER are set.
type Key struct {
	spec  *key.Spec
	class key.Class

	// destroyed is set first thing by Destroy; every operation checks it.
	destroyed atomic.Bool

	// secret holds the canonical bytes (see above); nil for public keys.
	secret *secmem.Buf

	// exp is the expanded state, built from secret by expand, or nil.
	exp   atomic.Pointer[expanded]
	used  atomic.Int64 // when exp was last used, in Unix nanoseconds
	expMu sync.Mutex   // serializes building exp

	macHash func() hash.Hash // the HMAC key's hash
	macAlg  wire.HashAlg     // and its wire name

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

package mech

import (
	"crypto"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/sha512"
	"hash"

	"github.com/keywarden/keywarden/internal/wire"
)

// HashSize returns the digest size in bytes of alg, or 0 for an unknown or
// unspecified algorithm.
func HashSize(alg wire.HashAlg) int {
	switch alg {
	case wire.HashAlg_HASH_ALG_SHA256, wire.HashAlg_HASH_ALG_SHA3_256:
		return 32
	case wire.HashAlg_HASH_ALG_SHA384:
		return 48
	case wire.HashAlg_HASH_ALG_SHA512, wire.HashAlg_HASH_ALG_SHA3_512:
		return 64
	}
	return 0
}

// cryptoHash maps a wire hash to the standard library's identifier. It
// reports false for an unknown or unspecified algorithm.
func cryptoHash(alg wire.HashAlg) (crypto.Hash, bool) {
	switch alg {
	case wire.HashAlg_HASH_ALG_SHA256:
		return crypto.SHA256, true
	case wire.HashAlg_HASH_ALG_SHA384:
		return crypto.SHA384, true
	case wire.HashAlg_HASH_ALG_SHA512:
		return crypto.SHA512, true
	case wire.HashAlg_HASH_ALG_SHA3_256:
		return crypto.SHA3_256, true
	case wire.HashAlg_HASH_ALG_SHA3_512:
		return crypto.SHA3_512, true
	}
	return 0, false
}

// hashFunc returns a constructor for alg, or nil for an unknown algorithm.
func hashFunc(alg wire.HashAlg) func() hash.Hash {
	switch alg {
	case wire.HashAlg_HASH_ALG_SHA256:
		return sha256.New
	case wire.HashAlg_HASH_ALG_SHA384:
		return sha512.New384
	case wire.HashAlg_HASH_ALG_SHA512:
		return sha512.New
	case wire.HashAlg_HASH_ALG_SHA3_256:
		return func() hash.Hash { return sha3.New256() }
	case wire.HashAlg_HASH_ALG_SHA3_512:
		return func() hash.Hash { return sha3.New512() }
	}
	return nil
}

func errUnknownHash() error {
	return invalid("unsupported hash algorithm")
}

// Hash appends the digest of data under alg to dst and returns the result.
func Hash(alg wire.HashAlg, data, dst []byte) ([]byte, error) {
	switch alg {
	case wire.HashAlg_HASH_ALG_SHA256:
		d := sha256.Sum256(data)
		return append(dst, d[:]...), nil
	case wire.HashAlg_HASH_ALG_SHA384:
		d := sha512.Sum384(data)
		return append(dst, d[:]...), nil
	case wire.HashAlg_HASH_ALG_SHA512:
		d := sha512.Sum512(data)
		return append(dst, d[:]...), nil
	case wire.HashAlg_HASH_ALG_SHA3_256:
		d := sha3.Sum256(data)
		return append(dst, d[:]...), nil
	case wire.HashAlg_HASH_ALG_SHA3_512:
		d := sha3.Sum512(data)
		return append(dst, d[:]...), nil
	}
	return nil, errUnknownHash()
}

// digest hashes data with alg, which the caller has validated.
func digest(alg wire.HashAlg, data []byte) []byte {
	d, _ := Hash(alg, data, nil)
	return d
}

package mech

import (
	"crypto/hmac"
	"hash"
	"sync"

	"github.com/keywarden/keywarden/internal/key"
)

// maxTagSize is the largest HMAC tag (SHA-512).
const maxTagSize = 64

// getMAC returns a keyed HMAC state from the key's pool, ready for Write.
// Pooled states have already run the key schedule, so a MAC of a short
// message costs the hashing alone; putMAC resets a state and returns it.
func (k *Key) getMAC() (hash.Hash, error) {
	if err := k.live(); err != nil {
		return nil, err
	}
	if k.spec.Family != key.FamilyHMAC || k.macPool == nil {
		return nil, errUnsupported()
	}
	h, ok := k.macPool.Get().(hash.Hash)
	if !ok {
		return nil, internal("MAC state unavailable")
	}
	return h, nil
}

func putMAC(pool *sync.Pool, h hash.Hash) {
	h.Reset()
	pool.Put(h)
}

// MAC appends the HMAC of data under the key's own hash to dst.
func (k *Key) MAC(data, dst []byte) ([]byte, error) {
	h, err := k.getMAC()
	if err != nil {
		return nil, err
	}
	h.Write(data)
	out := h.Sum(dst)
	putMAC(k.macPool, h)
	return out, nil
}

// VerifyMAC checks tag, which must be the full-length HMAC of data, in
// constant time. A mismatch gives STATUS_VERIFICATION_FAILED.
func (k *Key) VerifyMAC(data, tag []byte) error {
	h, err := k.getMAC()
	if err != nil {
		return err
	}
	var buf [maxTagSize]byte
	h.Write(data)
	sum := h.Sum(buf[:0])
	putMAC(k.macPool, h)
	ok := hmac.Equal(sum, tag)
	clear(buf[:])
	if !ok {
		return errBadMAC()
	}
	return nil
}

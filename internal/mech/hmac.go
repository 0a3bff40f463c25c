package mech

import (
	"crypto/hmac"

	"github.com/keywarden/keywarden/internal/key"
)

// maxTagSize is the largest HMAC tag (SHA-512).
const maxTagSize = 64

// MAC appends the HMAC of data under the key's own hash to dst.
func (k *Key) MAC(data, dst []byte) (out []byte, err error) {
	if err := k.isMAC(); err != nil {
		return nil, err
	}
	err = k.run(func(e *expanded) error {
		h := k.getMAC(e)
		h.Write(data)
		out = h.Sum(dst)
		putMAC(e, h)
		return nil
	})
	return out, err
}

// isMAC checks that k is a live HMAC key.
func (k *Key) isMAC() error {
	if err := k.live(); err != nil {
		return err
	}
	if k.spec.Family != key.FamilyHMAC {
		return errUnsupported()
	}
	return nil
}

// VerifyMAC checks tag, which must be the full-length HMAC of data, in
// constant time. A mismatch gives STATUS_VERIFICATION_FAILED.
func (k *Key) VerifyMAC(data, tag []byte) error {
	if err := k.isMAC(); err != nil {
		return err
	}
	return k.run(func(e *expanded) error {
		h := k.getMAC(e)
		var buf [maxTagSize]byte
		h.Write(data)
		sum := h.Sum(buf[:0])
		putMAC(e, h)
		ok := hmac.Equal(sum, tag)
		clear(buf[:])
		if !ok {
			return errBadMAC()
		}
		return nil
	})
}

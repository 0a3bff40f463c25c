package wrap

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/subtle"
	"encoding/binary"
	"math"
	"math/bits"
)

// semiblock is the unit of RFC 3394: half an AES block.
const semiblock = 8

// kwIV is the default initial value of RFC 3394 §2.2.3.1.
var kwIV = [semiblock]byte{0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6, 0xA6}

// kwpICV is the constant first half of RFC 5649's alternative initial
// value (§3); the second half is the plaintext length.
var kwpICV = [4]byte{0xA6, 0x59, 0x59, 0xA6}

// WrapKW wraps plaintext under kek with AES key wrap (RFC 3394, NIST SP
// 800-38F KW) and the default initial value. kek is an AES-128, -192 or
// -256 key; plaintext is a multiple of 8 bytes, at least 16. The result is
// 8 bytes longer than plaintext. Wrapping is deterministic.
func WrapKW(kek, plaintext []byte) ([]byte, error) {
	if len(plaintext) < 2*semiblock || len(plaintext)%semiblock != 0 {
		return nil, errorf("KW plaintext must be a multiple of 8 bytes, at least 16")
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err // aes.KeySizeError
	}
	return wrapCore(b, kwIV, plaintext), nil
}

// UnwrapKW reverses WrapKW. Any failure of the ciphertext (length,
// integrity check) is ErrUnwrap; an invalid kek size is an
// aes.KeySizeError, a fault of the caller rather than of the data. The
// result is a fresh slice the caller owns and should wipe.
func UnwrapKW(kek, ciphertext []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(ciphertext) < 3*semiblock || len(ciphertext)%semiblock != 0 {
		return nil, ErrUnwrap
	}
	a, p := unwrapCore(b, ciphertext)
	if subtle.ConstantTimeCompare(a[:], kwIV[:]) != 1 {
		clear(p)
		return nil, ErrUnwrap
	}
	return p, nil
}

// WrapKWP wraps plaintext under kek with AES key wrap with padding (RFC
// 5649, NIST SP 800-38F KWP). kek is an AES-128, -192 or -256 key;
// plaintext is 1 to 2^32-1 bytes of any length. The result is plaintext
// padded to a multiple of 8 bytes, plus 8. Wrapping is deterministic.
func WrapKWP(kek, plaintext []byte) ([]byte, error) {
	if len(plaintext) == 0 || uint64(len(plaintext)) > math.MaxUint32 {
		return nil, errorf("KWP plaintext must be 1 to 2^32-1 bytes")
	}
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	var aiv [semiblock]byte
	copy(aiv[:4], kwpICV[:])
	binary.BigEndian.PutUint32(aiv[4:], uint32(len(plaintext)))
	padded := make([]byte, (len(plaintext)+semiblock-1)/semiblock*semiblock)
	copy(padded, plaintext)
	defer clear(padded)
	if len(padded) == semiblock {
		// One semiblock: a single AES block encryption of AIV || P (§4.1).
		out := make([]byte, 2*semiblock)
		copy(out, aiv[:])
		copy(out[semiblock:], padded)
		b.Encrypt(out, out)
		return out, nil
	}
	return wrapCore(b, aiv, padded), nil
}

// UnwrapKWP reverses WrapKWP, with the same errors as UnwrapKW. The checks
// of the initial value, the length and the padding run in constant time
// and fail together.
func UnwrapKWP(kek, ciphertext []byte) ([]byte, error) {
	b, err := aes.NewCipher(kek)
	if err != nil {
		return nil, err
	}
	if len(ciphertext) < 2*semiblock || len(ciphertext)%semiblock != 0 {
		return nil, ErrUnwrap
	}
	var (
		a [semiblock]byte
		p []byte
	)
	if len(ciphertext) == 2*semiblock {
		var blk [2 * semiblock]byte
		b.Decrypt(blk[:], ciphertext)
		copy(a[:], blk[:semiblock])
		p = make([]byte, semiblock)
		copy(p, blk[semiblock:])
		clear(blk[:])
	} else {
		a, p = unwrapCore(b, ciphertext)
	}

	// §3: the ICV matches, 8*(n-1) < MLI <= 8*n, and the padding is zero.
	mli := uint64(binary.BigEndian.Uint32(a[4:]))
	n := uint64(len(p))
	ok := subtle.ConstantTimeCompare(a[:4], kwpICV[:])
	ok &= lessOrEq(n-semiblock+1, mli) & lessOrEq(mli, n)
	var pad byte
	for i := n - semiblock; i < n; i++ {
		// Bytes at or after MLI are padding and must be zero.
		pad |= p[i] & byte(-lessOrEq(mli, i))
	}
	ok &= subtle.ConstantTimeByteEq(pad, 0)
	if ok != 1 {
		clear(p)
		return nil, ErrUnwrap
	}
	return p[:mli:mli], nil
}

// lessOrEq returns 1 if x <= y and 0 otherwise, in constant time.
func lessOrEq(x, y uint64) int {
	_, borrow := bits.Sub64(y, x, 0) // borrow is 1 exactly when y < x
	return int(1 - borrow)
}

// wrapCore is the wrapping process W of RFC 3394 §2.2.1 (the index-based
// form) with initial value iv, for len(p)/8 >= 2 semiblocks. It returns
// the 8+len(p) bytes C = A || R[1] || ... || R[n].
func wrapCore(b cipher.Block, iv [semiblock]byte, p []byte) []byte {
	n := len(p) / semiblock
	out := make([]byte, semiblock+len(p))
	copy(out[semiblock:], p)
	var blk [2 * semiblock]byte // A || R[i]
	copy(blk[:semiblock], iv[:])
	for j := range 6 {
		for i := 1; i <= n; i++ {
			r := out[semiblock*i : semiblock*(i+1)]
			copy(blk[semiblock:], r)
			b.Encrypt(blk[:], blk[:])
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(blk[:semiblock], binary.BigEndian.Uint64(blk[:semiblock])^t)
			copy(r, blk[semiblock:])
		}
	}
	copy(out, blk[:semiblock])
	clear(blk[:])
	return out
}

// unwrapCore is the unwrapping process W⁻¹ of RFC 3394 §2.2.2 (index
// form) for len(c)/8 >= 3 semiblocks. It returns the recovered initial
// value A and the plaintext semiblocks in a fresh slice; checking A is the
// caller's job.
func unwrapCore(b cipher.Block, c []byte) (a [semiblock]byte, p []byte) {
	n := len(c)/semiblock - 1
	p = make([]byte, len(c)-semiblock)
	copy(p, c[semiblock:])
	var blk [2 * semiblock]byte
	copy(blk[:semiblock], c[:semiblock])
	for j := 5; j >= 0; j-- {
		for i := n; i >= 1; i-- {
			r := p[semiblock*(i-1) : semiblock*i]
			t := uint64(n*j + i)
			binary.BigEndian.PutUint64(blk[:semiblock], binary.BigEndian.Uint64(blk[:semiblock])^t)
			copy(blk[semiblock:], r)
			b.Decrypt(blk[:], blk[:])
			copy(r, blk[semiblock:])
		}
	}
	copy(a[:], blk[:semiblock])
	clear(blk[:])
	return a, p
}

// Package shamir splits a secret, such as keywarden's 32-byte master key,
// into n shares of which any k reconstruct it and any k-1 reveal nothing
// (Shamir's secret sharing over GF(2^8)), and reads and writes the text
// files in which operators keep the shares.
//
// shamir owns only the mathematics and the share file format. It never
// decides who holds shares or when the daemon unseals, never logs, and
// never puts share or secret bytes in an error. It does not verify that a
// reconstructed secret is the right one: k well-formed shares always
// interpolate to some secret, so the caller must check the result (the
// daemon does, by opening what the master key seals).
//
// # The mathematics
//
// Every byte s of the secret is shared on its own. Split draws k-1 random
// bytes a_1..a_{k-1} and forms the polynomial
//
//	f(x) = s + a_1·x + a_2·x^2 + ... + a_{k-1}·x^{k-1}
//
// over GF(2^8), the field of FIPS-197 §4.2 (bytes as polynomials over
// GF(2) modulo x^8+x^4+x^3+x+1, addition is XOR). Share i, for
// i = 1..n, holds f(i) for every byte of the secret: a share is as long as
// the secret, plus its header. Combine evaluates at x = 0 the polynomial
// through k shares by Lagrange interpolation,
//
//	f(0) = Σ_i y_i · Π_{j≠i} x_j / (x_i - x_j)
//
// which is s. Any k-1 shares are consistent with every value of s, each
// for exactly one choice of the random coefficients (a Vandermonde system
// in the k-1 unknowns is invertible when the x are distinct and nonzero),
// so they say nothing about s. That is why x = 0 is never a share, the x
// must be distinct, n is at most 255 (the nonzero elements), the
// coefficients are uniform (including zero), and k is at least 2.
//
// With more than k shares Combine uses the first k and checks that the
// others lie on the same polynomials, which catches a damaged share or one
// of another split. With exactly k shares there is nothing to check: that
// is what commitments are for.
//
// # Commitments
//
// Commit makes a commitment to a share: SHA-256 of the label "keywarden
// share commitment v1", a zero byte, the split id, the threshold and x (a
// byte each) and the share's bytes. Kept beside the split (keywarden keeps
// the n commitments in the master record, where unseal reads them before
// it takes a share), they tell the share that was issued from any other
// with its split and number, one share at a time, without the secret: a
// share that is damaged beyond what its checksum catches, or altered, is
// named instead of making k shares combine to a wrong secret that nothing
// can attribute. They hide the shares: a share is as many uniformly random
// bytes as the secret, so recovering it from its commitment is a preimage
// search over 2^256 values for a 32-byte key (and with k-1 other shares in
// hand, a search for the secret itself, which the master record's check
// value already allows). Whoever can change the record can change the
// commitments too, and so have good shares refused (as any change to the
// store can deny service), never a bad one taken: the secret they combine
// to is still checked.
//
// # Constant time
//
// The secret bytes, the coefficients and the share values pass only
// through multiplication and XOR. Multiplication is the shift-and-reduce
// of FIPS-197 §4.2.1 with masks instead of branches, and inversion is
// exponentiation to the power 254 by a fixed chain of multiplications: no
// branch and no table index depends on a field element, so timing and the
// cache reveal nothing of them. (Logarithm tables, the common shortcut,
// would be indexed by secret bytes.) Only the x coordinates, which are
// public, choose which elements are combined. The loops run under
// crypto/subtle.WithDataIndependentTiming, which asks processors that have
// such a mode to keep instruction timing independent of data.
//
// # Share files
//
// A share file is text that an operator can print, keep and type back:
//
//	# keywarden key share 3 of split 5f1c0a9e7b2d4c68: any 3 shares of this split reconstruct the key.
//	keywarden-share-v1:5f1c0a9e7b2d4c68:3:3:<data>:<check>
//
// Lines starting with '#' and blank lines are comments; exactly one line is
// the share, with six fields separated by ':':
//
//  1. keywarden-share-v1: the format and its version;
//  2. the split id: 8 random bytes as 16 hex digits, common to the n
//     shares of one split, so that shares of two splits are never mixed;
//  3. the threshold k, decimal, 2 to 255;
//  4. the x coordinate (the share's number), decimal, 1 to 255;
//  5. the share's bytes in hex (64 digits for a 32-byte key);
//  6. a checksum: the CRC-32C (Castagnoli polynomial) of the line up to the
//     last ':' (fields 1 to 5 and the colons between them, hex in
//     lowercase), as 8 hex digits, big-endian.
//
// Numbers have no leading zeros; Encode writes lowercase hex and Parse
// accepts either case, and white space around a line.
//
// The checksum is there for mistakes, not attacks: whoever can change a
// share file can recompute any checksum that needs no key, and a keyed one
// could not be checked before the shares are combined. For mistakes a CRC
// is better than a truncated hash of the same size: a wrong hex digit
// changes at most 8 bits of the checksummed text and two swapped
// neighbours at most 16, and a CRC of degree 32 detects every error
// confined to 32 consecutive bits, where a 32-bit hash catches each only
// with probability 1 - 2^-32. CRC-32C also has a larger Hamming distance
// than the older IEEE CRC-32 at these lengths. Other damage is caught with
// probability 1 - 2^-32 either way. Parse reports
// a mismatch as "share 3 of split … has a typo", and Combine reports shares
// of different splits and too few shares in those words.
package shamir

package shamir

// Arithmetic in GF(2^8) with the reduction polynomial of AES,
// x^8 + x^4 + x^3 + x + 1 (0x11B, FIPS-197 §4.2). An element is a byte
// whose bit i is the coefficient of x^i. Addition and subtraction are both
// XOR.
//
// Every function here runs in time independent of its arguments: no
// branch and no memory index depends on an element's value. Lookup tables
// of logarithms, the usual shortcut, are indexed by secret bytes and leak
// them through the cache; the loops below cost a few nanoseconds per
// multiplication, which splitting and combining a key never notices.

// mul returns a·b: the product of the polynomials a and b modulo 0x11B.
// It is the shift-and-add ("xtime") multiplication of FIPS-197 §4.2.1,
// with masks in place of the branches: for each bit of b, a is added to
// the product when the bit is set, then a is multiplied by x, subtracting
// the polynomial when a's degree reaches 8.
func mul(a, b byte) byte {
	var p byte
	for range 8 {
		p ^= a & -(b & 1)       // add a if the low bit of b is set
		a = a<<1 ^ 0x1B&-(a>>7) // a·x, reduced if bit 7 was set
		b >>= 1
	}
	return p
}

// inv returns the multiplicative inverse of a, and 0 for 0 (as the AES
// S-box defines it). The nonzero elements form a group of order 255, so
// a^254 = a^-1; a^254 = a^2 · a^4 · a^8 · ... · a^128 is computed by a
// fixed sequence of seven squarings and six multiplications.
func inv(a byte) byte {
	s := mul(a, a) // a^2
	r := s
	for range 6 {
		s = mul(s, s) // a^4, a^8, ..., a^128
		r = mul(r, s)
	}
	return r
}

// evalAt returns, for each byte position b, the value at x of the
// polynomial with coefficients coef[0][b] (the constant term),
// coef[1][b], ..., by Horner's rule.
func evalAt(coef [][]byte, x byte, out []byte) {
	last := len(coef) - 1
	copy(out, coef[last])
	for j := last - 1; j >= 0; j-- {
		for b := range out {
			out[b] = mul(out[b], x) ^ coef[j][b]
		}
	}
}

// interpolate sets out, for each byte position b, to the value at x of the
// unique polynomial of degree below len(xs) through the points
// (xs[i], ys[i][b]), by Lagrange's formula:
//
//	f(x) = Σ_i ys[i] · Π_{j≠i} (x - xs[j]) / (xs[i] - xs[j])
//
// The xs must be distinct; they are public (they are written on the
// shares), but the ys are secret, and are only ever multiplied.
func interpolate(xs []byte, ys [][]byte, x byte, out []byte) {
	clear(out)
	for i, xi := range xs {
		num, den := byte(1), byte(1)
		for j, xj := range xs {
			if j != i {
				num = mul(num, x^xj)
				den = mul(den, xi^xj)
			}
		}
		l := mul(num, inv(den))
		for b, y := range ys[i] {
			out[b] ^= mul(l, y)
		}
	}
}

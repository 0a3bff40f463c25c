package shamir

import (
	"math/bits"
	"testing"
)

// TestMulFIPS197 checks multiplication against the worked examples of
// FIPS-197 (AES), §4.2 and §4.2.1.
func TestMulFIPS197(t *testing.T) {
	for _, tc := range []struct{ a, b, want byte }{
		{0x57, 0x83, 0xc1}, // §4.2
		{0x57, 0x02, 0xae}, // §4.2.1, xtime({57})
		{0x57, 0x04, 0x47}, // §4.2.1
		{0x57, 0x08, 0x8e}, // §4.2.1
		{0x57, 0x10, 0x07}, // §4.2.1
		{0x57, 0x13, 0xfe}, // §4.2.1
		{0x57, 0x01, 0x57},
		{0x57, 0x00, 0x00},
	} {
		if got := mul(tc.a, tc.b); got != tc.want {
			t.Errorf("{%02x}·{%02x} = {%02x}, want {%02x}", tc.a, tc.b, got, tc.want)
		}
		if got := mul(tc.b, tc.a); got != tc.want {
			t.Errorf("{%02x}·{%02x} = {%02x}, want {%02x}", tc.b, tc.a, got, tc.want)
		}
	}
}

// slowMul is an independent reference: carry-less multiplication into 16
// bits, then reduction modulo 0x11B by long division.
func slowMul(a, b byte) byte {
	var p uint16
	for i := range 8 {
		if b>>i&1 == 1 {
			p ^= uint16(a) << i
		}
	}
	for i := 15; i >= 8; i-- {
		if p>>i&1 == 1 {
			p ^= 0x11B << (i - 8)
		}
	}
	return byte(p)
}

func TestMulAllPairs(t *testing.T) {
	for a := range 256 {
		for b := range 256 {
			if got, want := mul(byte(a), byte(b)), slowMul(byte(a), byte(b)); got != want {
				t.Fatalf("mul(%#02x, %#02x) = %#02x, reference %#02x", a, b, got, want)
			}
		}
	}
}

// TestInverseTable checks the whole inverse table: every nonzero element
// times its inverse is 1, inversion is an involution and a bijection, 0
// maps to 0, and the table equals one built independently from powers of
// the generator {03}.
func TestInverseTable(t *testing.T) {
	if inv(0) != 0 {
		t.Errorf("inv(0) = %#02x, want 0", inv(0))
	}
	var seen [256]bool
	for a := 1; a < 256; a++ {
		x := inv(byte(a))
		if mul(byte(a), x) != 1 {
			t.Errorf("{%02x}·inv = {%02x}, want {01}", a, mul(byte(a), x))
		}
		if inv(x) != byte(a) {
			t.Errorf("inv(inv({%02x})) = {%02x}", a, inv(x))
		}
		if seen[x] {
			t.Errorf("inverse {%02x} repeated", x)
		}
		seen[x] = true
	}

	// exp[i] = 3^i; {03} generates the multiplicative group, so
	// inv(3^i) = 3^(255-i).
	var exp [255]byte
	e := byte(1)
	for i := range exp {
		exp[i] = e
		e = slowMul(e, 3)
	}
	if e != 1 {
		t.Fatalf("3^255 = %#02x, want 1", e)
	}
	for i, v := range exp {
		if got, want := inv(v), exp[(255-i)%255]; got != want {
			t.Errorf("inv({%02x}) = {%02x}, want {%02x}", v, got, want)
		}
	}
}

// TestSBox checks inversion through the AES S-box, which is the affine map
// of FIPS-197 §5.1.1 applied to the inverse: its first row (FIPS-197
// Figure 7, x = 0) and the example of §5.1.1, S({53}) = {ed}.
func TestSBox(t *testing.T) {
	sbox := func(x byte) byte {
		b := inv(x)
		return b ^ bits.RotateLeft8(b, 1) ^ bits.RotateLeft8(b, 2) ^
			bits.RotateLeft8(b, 3) ^ bits.RotateLeft8(b, 4) ^ 0x63
	}
	row0 := []byte{0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76}
	for i, want := range row0 {
		if got := sbox(byte(i)); got != want {
			t.Errorf("S({%02x}) = {%02x}, want {%02x}", i, got, want)
		}
	}
	for _, tc := range []struct{ in, want byte }{{0x53, 0xed}, {0xff, 0x16}, {0x10, 0xca}} {
		if got := sbox(tc.in); got != tc.want {
			t.Errorf("S({%02x}) = {%02x}, want {%02x}", tc.in, got, tc.want)
		}
	}
}

func TestInterpolateAtPoints(t *testing.T) {
	// f(x) = 0x42 + 0x17·x + 0xa9·x^2, one byte wide.
	coef := [][]byte{{0x42}, {0x17}, {0xa9}}
	xs := []byte{7, 200, 31}
	ys := make([][]byte, len(xs))
	for i, x := range xs {
		ys[i] = make([]byte, 1)
		evalAt(coef, x, ys[i])
	}
	out := make([]byte, 1)
	for x := range 256 {
		want := make([]byte, 1)
		evalAt(coef, byte(x), want)
		interpolate(xs, ys, byte(x), out)
		if out[0] != want[0] {
			t.Fatalf("interpolated f(%d) = %#02x, want %#02x", x, out[0], want[0])
		}
	}
}

func BenchmarkMul(b *testing.B) {
	var acc byte = 1
	for i := range b.N {
		acc = mul(acc^byte(i), 0x57)
	}
	_ = acc
}

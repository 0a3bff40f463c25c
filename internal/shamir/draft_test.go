package shamir

import (
	"bytes"
	"testing"
)

// TestDraftMcGrewTSS03 is the test case of the TSS draft itself
// (draft-mcgrew-tss-03, "Threshold Secret Sharing", §9): secret 7465737400
// ("test" and a NUL), M = 2, N = 2, share index 1 = B9FA07E185 and share
// index 2 = F5409B4511. The draft uses this package's field (its EXP table,
// Figure 1, is the powers of {03} modulo 0x11B) and share layout (the index
// as x, then one byte per secret byte), so the shares combine to the secret
// as they are.
func TestDraftMcGrewTSS03(t *testing.T) {
	s1 := Share{Threshold: 2, X: 1, Y: []byte{0xB9, 0xFA, 0x07, 0xE1, 0x85}}
	s2 := Share{Threshold: 2, X: 2, Y: []byte{0xF5, 0x40, 0x9B, 0x45, 0x11}}
	want := []byte("test\x00")
	for _, shares := range [][]Share{{s1, s2}, {s2, s1}} {
		got, err := Combine(shares)
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("Combine = %x, %v; want %x", got, err, want)
		}
	}
	// The degree-1 coefficients are secret XOR share 1; the polynomials
	// then give share 2 at x = 2.
	for b := range want {
		a1 := want[b] ^ s1.Y[b]
		if y := want[b] ^ mul(a1, 2); y != s2.Y[b] {
			t.Fatalf("byte %d: f(2) = %#02x, want %#02x", b, y, s2.Y[b])
		}
	}
}

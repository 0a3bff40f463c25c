package shamir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	mrand "math/rand/v2"
	"strings"
	"testing"
)

// seeded returns a deterministic reader for tests.
func seeded(seed uint64) io.Reader {
	return mrand.NewChaCha8([32]byte{byte(seed), byte(seed >> 8), 'k', 'w'})
}

func mustSplit(t *testing.T, secret []byte, k, n int) []Share {
	t.Helper()
	shares, err := Split(secret, k, n, nil)
	if err != nil {
		t.Fatalf("Split(k=%d, n=%d): %v", k, n, err)
	}
	return shares
}

// subsets calls f with every subset of shares of size m, in index order.
func subsets(shares []Share, m int, f func([]Share)) {
	var rec func(start int, cur []Share)
	rec = func(start int, cur []Share) {
		if len(cur) == m {
			f(cur)
			return
		}
		for i := start; i < len(shares); i++ {
			rec(i+1, append(cur, shares[i]))
		}
	}
	rec(0, make([]Share, 0, m))
}

// TestAnyKReconstruct: for every k <= n <= 7, every subset of k shares,
// and every subset of more than k, gives back the secret.
func TestAnyKReconstruct(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	for n := 2; n <= 7; n++ {
		for k := 2; k <= n; k++ {
			shares := mustSplit(t, secret, k, n)
			for m := k; m <= n; m++ {
				subsets(shares, m, func(sub []Share) {
					got, err := Combine(sub)
					if err != nil {
						t.Fatalf("k=%d n=%d, %d shares: %v", k, n, m, err)
					}
					if !bytes.Equal(got, secret) {
						t.Fatalf("k=%d n=%d, %d shares: wrong secret", k, n, m)
					}
				})
			}
			// Order does not matter.
			rev := make([]Share, k)
			for i := range rev {
				rev[i] = shares[n-1-i]
			}
			if got, err := Combine(rev); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("k=%d n=%d, reversed: %v", k, n, err)
			}
		}
	}
}

func TestLargeSplits(t *testing.T) {
	long := make([]byte, MaxSecretLen)
	rand.Read(long)
	if got, err := Combine(mustSplit(t, long, 3, 5)[1:4]); err != nil || !bytes.Equal(got, long) {
		t.Fatalf("secret of %d bytes: %v", len(long), err)
	}

	secret := make([]byte, 32)
	rand.Read(secret)
	shares := mustSplit(t, secret, 255, 255)
	got, err := Combine(shares)
	if err != nil || !bytes.Equal(got, secret) {
		t.Fatalf("255 of 255: %v", err)
	}
	if _, err := Combine(shares[:254]); err == nil {
		t.Fatal("254 of a 255-threshold split combined")
	}

	one := mustSplit(t, []byte{0x5a}, 2, 255)
	for i, s := range one {
		if s.X != byte(i+1) || len(s.Y) != 1 {
			t.Fatalf("share %d: x=%d, %d bytes", i, s.X, len(s.Y))
		}
	}
	got, err = Combine([]Share{one[254], one[0]})
	if err != nil || got[0] != 0x5a {
		t.Fatalf("shares 255 and 1: %x, %v", got, err)
	}
}

// TestFewerThanKRevealNothing checks the property that makes the scheme
// secure, exhaustively over a field element: k-1 shares are consistent
// with every secret, each through exactly one choice of the random
// coefficients. So the distribution of k-1 shares is uniform whatever the
// secret is.
func TestFewerThanKRevealNothing(t *testing.T) {
	// k = 2: one share y = s + a·x. For every x and every secret s, the
	// 256 coefficients a give 256 distinct values of y.
	for x := 1; x < 256; x++ {
		for _, s := range []byte{0x00, 0x01, 0x5a, 0xff} {
			var hit [256]bool
			for a := range 256 {
				y := make([]byte, 1)
				evalAt([][]byte{{s}, {byte(a)}}, byte(x), y)
				if hit[y[0]] {
					t.Fatalf("x=%d s=%#02x: two coefficients give y=%#02x", x, s, y[0])
				}
				hit[y[0]] = true
			}
		}
	}
	// k = 3: two shares at x1, x2. For each secret, the 65536 coefficient
	// pairs give 65536 distinct share pairs.
	for _, xs := range [][2]byte{{1, 2}, {3, 200}, {254, 255}} {
		for _, s := range []byte{0x00, 0xa7} {
			hit := make([]bool, 1<<16)
			y1, y2 := make([]byte, 1), make([]byte, 1)
			for a := range 1 << 16 {
				coef := [][]byte{{s}, {byte(a)}, {byte(a >> 8)}}
				evalAt(coef, xs[0], y1)
				evalAt(coef, xs[1], y2)
				v := int(y1[0])<<8 | int(y2[0])
				if hit[v] {
					t.Fatalf("x=%v s=%#02x: share pair %#04x from two coefficient pairs", xs, s, v)
				}
				hit[v] = true
			}
		}
	}
}

// TestSplitUsesRandom: the split is a function of the random source, the
// coefficients reach the shares, and a failing source fails Split.
func TestSplitUsesRandom(t *testing.T) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	a, err := Split(secret, 3, 5, seeded(1))
	if err != nil {
		t.Fatal(err)
	}
	b, _ := Split(secret, 3, 5, seeded(1))
	c, _ := Split(secret, 3, 5, seeded(2))
	for i := range a {
		if !bytes.Equal(a[i].Y, b[i].Y) || a[i].SplitID != b[i].SplitID {
			t.Fatal("same random source, different shares")
		}
		if bytes.Equal(a[i].Y, c[i].Y) {
			t.Fatal("different random source, same share")
		}
		if bytes.Equal(a[i].Y, secret) {
			t.Fatal("share equals the secret")
		}
		if a[i].SplitID != a[0].SplitID {
			t.Fatal("shares of one split carry different ids")
		}
	}
	if a[0].SplitID == c[0].SplitID {
		t.Fatal("two splits share an id")
	}

	if _, err := Split(secret, 3, 5, strings.NewReader("short")); err == nil {
		t.Fatal("Split with an exhausted random source succeeded")
	}
	if string(secret) != "0123456789abcdef0123456789abcdef" {
		t.Fatal("Split changed the secret")
	}
}

func TestSplitRejects(t *testing.T) {
	s32 := make([]byte, 32)
	for _, tc := range []struct {
		name   string
		secret []byte
		k, n   int
	}{
		{"empty secret", nil, 2, 3},
		{"secret too long", make([]byte, MaxSecretLen+1), 2, 3},
		{"k=1", s32, 1, 3},
		{"k=0", s32, 0, 3},
		{"n<k", s32, 4, 3},
		{"n=256", s32, 2, 256},
		{"negative", s32, -1, -1},
	} {
		if _, err := Split(tc.secret, tc.k, tc.n, nil); !errors.Is(err, ErrInvalid) {
			t.Errorf("%s: got %v, want ErrInvalid", tc.name, err)
		}
	}
}

func TestCombineErrors(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	shares := mustSplit(t, secret, 3, 5)
	other := mustSplit(t, secret, 3, 5)

	// Too few.
	_, err := Combine(shares[:2])
	var ne *NotEnoughError
	if !errors.As(err, &ne) || ne.Need != 3 || ne.Have != 2 || err.Error() != "need 3 shares, have 2" {
		t.Errorf("2 of 3: %v", err)
	}
	if _, err := Combine(nil); !errors.As(err, &ne) {
		t.Errorf("no shares: %v", err)
	}

	// Two splits, told apart by their ids.
	mixed := []Share{shares[0], shares[1], other[2]}
	_, err = Combine(mixed)
	if !errors.Is(err, ErrMixedSplits) || !strings.Contains(err.Error(), shares[0].SplitID.String()) ||
		!strings.Contains(err.Error(), other[0].SplitID.String()) {
		t.Errorf("mixed splits: %v", err)
	}

	// Two splits with the same id (a forged or colliding id): detected when
	// there is a share to spare, not with exactly k.
	forged := other[2]
	forged.SplitID = shares[0].SplitID
	_, err = Combine([]Share{shares[0], shares[1], shares[3], forged})
	if !errors.Is(err, ErrInconsistent) {
		t.Errorf("forged id, k+1 shares: %v", err)
	}
	got, err := Combine([]Share{shares[0], shares[1], forged})
	if err != nil || bytes.Equal(got, secret) {
		t.Errorf("forged id, k shares: %v (a wrong secret without error is expected)", err)
	}

	// A damaged share among k+1.
	damaged := shares[4]
	damaged.Y = bytes.Clone(damaged.Y)
	damaged.Y[31] ^= 0x01
	if _, err := Combine([]Share{shares[0], shares[1], shares[2], damaged}); !errors.Is(err, ErrInconsistent) {
		t.Errorf("damaged extra share: %v", err)
	}
	if _, err := Combine([]Share{damaged, shares[0], shares[1], shares[2]}); !errors.Is(err, ErrInconsistent) {
		t.Errorf("damaged first share: %v", err)
	}

	withX := func(s Share, x byte) Share { s.X = x; return s }
	withK := func(s Share, k int) Share { s.Threshold = k; return s }
	withY := func(s Share, y []byte) Share { s.Y = y; return s }
	for _, tc := range []struct {
		name   string
		shares []Share
		msg    string
	}{
		{"duplicate", []Share{shares[0], shares[1], shares[1]}, "share 2 of split " + shares[0].SplitID.String() + " is given twice"},
		{"zero x", []Share{shares[0], shares[1], withX(shares[2], 0)}, "x = 0"},
		{"thresholds differ", []Share{shares[0], shares[1], withK(shares[2], 2)}, "disagree on the threshold"},
		{"threshold 1", []Share{withK(shares[0], 1), withK(shares[1], 1)}, "threshold 1"},
		{"threshold 256", []Share{withK(shares[0], 256)}, "threshold 256"},
		{"lengths differ", []Share{shares[0], shares[1], withY(shares[2], shares[2].Y[:31])}, "different lengths"},
		{"empty", []Share{withY(shares[0], nil), withY(shares[1], nil)}, "holds 0 bytes"},
	} {
		_, err := Combine(tc.shares)
		if !errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("%s: got %v, want ErrInvalid mentioning %q", tc.name, err, tc.msg)
		}
	}
}

func BenchmarkSplit3of5(b *testing.B) {
	secret := make([]byte, 32)
	for b.Loop() {
		Split(secret, 3, 5, nil)
	}
}

func BenchmarkCombine3(b *testing.B) {
	shares, _ := Split(make([]byte, 32), 3, 5, nil)
	for b.Loop() {
		Combine(shares[:3])
	}
}

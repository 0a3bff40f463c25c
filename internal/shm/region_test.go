package shm

import (
	"math"
	"testing"
)

func TestSpan(t *testing.T) {
	for _, c := range []struct {
		size   int
		off, n uint64
		lo, hi int
		ok     bool
	}{
		{4096, 0, 4096, 0, 4096, true},
		{4096, 0, 0, 0, 0, true},
		{4096, 4096, 0, 4096, 4096, true},
		{4096, 100, 200, 100, 300, true},
		{4096, 0, 4097, 0, 0, false},
		{4096, 4097, 0, 0, 0, false},
		{4096, 4000, 97, 0, 0, false},
		{4096, 1, math.MaxUint64, 0, 0, false}, // off+n wraps to 0
		{4096, math.MaxUint64, 1, 0, 0, false}, // likewise
		{4096, math.MaxUint64, math.MaxUint64, 0, 0, false},
		{4096, 1 << 63, 1 << 63, 0, 0, false}, // wraps to exactly 0
		{0, 0, 0, 0, 0, true},
		{-1, 0, 0, 0, 0, false},
	} {
		lo, hi, ok := Span(c.size, c.off, c.n)
		if ok != c.ok || (ok && (lo != c.lo || hi != c.hi)) {
			t.Errorf("Span(%d, %d, %d) = %d, %d, %v; want %d, %d, %v", c.size, c.off, c.n, lo, hi, ok, c.lo, c.hi, c.ok)
		}
	}
}

func TestOverlap(t *testing.T) {
	for _, c := range []struct {
		a0, a1, b0, b1 int
		want           bool
	}{
		{0, 10, 10, 20, false},
		{0, 10, 9, 20, true},
		{5, 6, 0, 100, true},
		{0, 0, 0, 100, false}, // empty
		{10, 20, 0, 10, false},
		{10, 20, 0, 11, true},
	} {
		if got := Overlap(c.a0, c.a1, c.b0, c.b1); got != c.want {
			t.Errorf("Overlap(%d, %d, %d, %d) = %v", c.a0, c.a1, c.b0, c.b1, got)
		}
		if got := Overlap(c.b0, c.b1, c.a0, c.a1); got != c.want {
			t.Errorf("Overlap(%d, %d, %d, %d) = %v (swapped)", c.b0, c.b1, c.a0, c.a1, got)
		}
	}
}

// FuzzSpan checks that a region Span accepts lies inside the mapping and
// has the length asked, whatever the numbers.
func FuzzSpan(f *testing.F) {
	f.Add(4096, uint64(0), uint64(4096))
	f.Add(4096, uint64(1), uint64(math.MaxUint64))
	f.Add(1<<20, uint64(1<<63), uint64(1<<63))
	f.Fuzz(func(t *testing.T, size int, off, n uint64) {
		lo, hi, ok := Span(size, off, n)
		if !ok {
			return
		}
		if lo < 0 || hi < lo || hi > size || uint64(lo) != off || uint64(hi-lo) != n {
			t.Fatalf("Span(%d, %d, %d) = %d, %d", size, off, n, lo, hi)
		}
	})
}

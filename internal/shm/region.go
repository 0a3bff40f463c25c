package shm

// Span returns the bounds in a mapping of size bytes of the region of n
// bytes at off, and whether the region lies wholly inside it. The
// arithmetic cannot overflow: off and n are any 64-bit values a peer
// chose, and off+n is never computed.
func Span(size int, off, n uint64) (lo, hi int, ok bool) {
	if size < 0 {
		return 0, 0, false
	}
	s := uint64(size)
	if off > s || n > s-off {
		return 0, 0, false
	}
	return int(off), int(off + n), true
}

// Overlap reports whether the regions [alo, ahi) and [blo, bhi) share a
// byte. Empty regions share none.
func Overlap(alo, ahi, blo, bhi int) bool {
	return alo < ahi && blo < bhi && alo < bhi && blo < ahi
}

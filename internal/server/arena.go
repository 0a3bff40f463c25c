package server

// arena hands out output buffers for the operations of one request from a
// few large allocations, and wipes them once the reply is sent: outputs
// (plaintext among them) are copied into the encoded reply and are not
// needed after.
type arena struct {
	buf   []byte   // current chunk; len is what has been handed out
	spent [][]byte // earlier chunks of this request
	// attach are descriptors to pass with the reply (generation_map);
	// not owned by the request.
	attach []int
}

const (
	arenaChunk   = 64 << 10
	arenaMaxKeep = 1 << 20
)

// take returns an empty slice with room for n bytes. Appending up to n
// bytes to it does not allocate.
func (a *arena) take(n int) []byte {
	if cap(a.buf)-len(a.buf) < n {
		if len(a.buf) > 0 {
			a.spent = append(a.spent, a.buf)
		}
		a.buf = make([]byte, 0, max(arenaChunk, n))
	}
	l := len(a.buf)
	a.buf = a.buf[:l+n]
	return a.buf[l : l : l+n]
}

// reset makes the arena reusable. When the last request needed more than
// one chunk, the next starts with one chunk as large as all of them, up to
// arenaMaxKeep.
func (a *arena) reset() {
	a.attach = a.attach[:0]
	if len(a.spent) > 0 {
		total := len(a.buf)
		for _, b := range a.spent {
			total += len(b)
		}
		a.spent = nil
		if total <= arenaMaxKeep {
			a.buf = make([]byte, 0, total)
			return
		}
	}
	a.buf = a.buf[:0]
}

// wipe zeroes everything handed out since the last reset.
func (a *arena) wipe() {
	clear(a.buf)
	for _, b := range a.spent {
		clear(b)
	}
	a.reset()
}

package server

import (
	"sync"

	"github.com/keywarden/keywarden/internal/wire"
)

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
	// The request's results (results): the arena's own for a request of
	// at most maxKeptResults operations, else bigRes, borrowed from
	// bigResults until reset.
	res    resultSlabs
	bigRes *resultSlabs
}

// resultSlabs hold the results of a request's operations.
type resultSlabs struct {
	vals []wire.Result
	ptrs []*wire.Result
}

// maxKeptResults is the most results an arena keeps room for between
// requests; larger requests share bigResults.
const maxKeptResults = 256

var bigResults = sync.Pool{New: func() any { return new(resultSlabs) }}

// results returns n zero results and n pointers for the reply, which stay
// the request's until reset: the reply must be encoded before.
func (a *arena) results(n int) ([]wire.Result, []*wire.Result) {
	sl := &a.res
	if n > maxKeptResults {
		if a.bigRes == nil {
			a.bigRes = bigResults.Get().(*resultSlabs)
		}
		sl = a.bigRes
	}
	if len(sl.vals) > 0 || cap(sl.vals) < n {
		// In use already (a second request before reset), or too small.
		vals, ptrs := make([]wire.Result, n), make([]*wire.Result, n)
		if len(sl.vals) == 0 {
			sl.vals, sl.ptrs = vals, ptrs
		}
		return vals, ptrs
	}
	sl.vals, sl.ptrs = sl.vals[:n], sl.ptrs[:n]
	return sl.vals, sl.ptrs
}

// clear zeroes the results handed out, which may point into the request
// and the arena, and makes them free.
func (sl *resultSlabs) clear() {
	clear(sl.vals)
	clear(sl.ptrs)
	sl.vals, sl.ptrs = sl.vals[:0], sl.ptrs[:0]
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
	a.res.clear()
	if a.bigRes != nil {
		a.bigRes.clear()
		bigResults.Put(a.bigRes)
		a.bigRes = nil
	}
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

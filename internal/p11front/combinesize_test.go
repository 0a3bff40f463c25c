package p11front

import (
	"testing"

	"github.com/keywarden/keywarden/internal/server"
)

// Calls deferred together stay within half the core's message size,
// whatever the size of the front's reads: with a 64 KiB limit, seven
// encryptions of 4 KiB go together, not an eighth.
func TestDeferredCallsWithinMessageSize(t *testing.T) {
	tf := newTestFrontLimits(t, server.Limits{MaxMessageBytes: 64 << 10})
	c := &conn{f: tf.Front, collecting: true}
	op := &operation{kind: opEncrypt, key: &keyState{handle: 1}}
	data := make([]byte, 4<<10)
	n := 0
	for c.mayDefer(op, data) {
		c.pend = append(c.pend, &deferred{op: op, size: combinedSize(data)})
		n++
		if n > maxCombined {
			t.Fatal("no bound")
		}
	}
	if want := (64 << 10) / 2 / combinedSize(data); n != want {
		t.Errorf("%d calls of 4 KiB deferred together under a 64 KiB message size, want %d", n, want)
	}
	// Small calls: the count bound.
	c.pend = nil
	n = 0
	for c.mayDefer(op, data[:32]) {
		c.pend = append(c.pend, &deferred{op: op, size: combinedSize(data[:32])})
		n++
	}
	if n != min(maxCombined, (64<<10)/2/combinedSize(data[:32])) {
		t.Errorf("%d small calls deferred together", n)
	}
}

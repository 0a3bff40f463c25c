package wire

import (
	"bytes"
	"testing"
)

func TestPackedRoundTrip(t *testing.T) {
	msgs := [][]byte{nil, []byte("a"), bytes.Repeat([]byte("b"), 300)}
	var b []byte
	for _, m := range msgs {
		b = AppendPackedMessage(b, m)
	}
	for i, m := range msgs {
		got, rest, ok := NextPackedMessage(b)
		if !ok || !bytes.Equal(got, m) {
			t.Fatalf("message %d: %v %q", i, ok, got)
		}
		b = rest
	}
	if len(b) != 0 {
		t.Fatal("bytes left")
	}
	e := AppendPackedEntry(nil, Status_STATUS_PERMISSION_DENIED, 7, []byte("why"))
	if len(e) > PackedEntryBound(3) {
		t.Fatalf("entry of %d bytes, bound %d", len(e), PackedEntryBound(3))
	}
	st, kv, d, rest, ok := NextPackedEntry(e)
	if !ok || st != Status_STATUS_PERMISSION_DENIED || kv != 7 || string(d) != "why" || len(rest) != 0 {
		t.Fatalf("entry: %v %v %d %q %d", ok, st, kv, d, len(rest))
	}
	for n := range e {
		if _, _, _, _, ok := NextPackedEntry(e[:n]); ok {
			t.Fatalf("entry cut to %d bytes read", n)
		}
	}
}

// FuzzPacked: the readers of packed messages and entries never read past
// their input, and what they read encodes back to the same bytes.
func FuzzPacked(f *testing.F) {
	f.Add(AppendPackedMessage(AppendPackedMessage(nil, []byte("ab")), nil))
	f.Add(AppendPackedEntry(AppendPackedEntry(nil, 0, 1, []byte("ct")), Status_STATUS_INVALID_ARGUMENT, 0, []byte("bad")))
	f.Add([]byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		for rest := b; len(rest) > 0; {
			m, r, ok := NextPackedMessage(rest)
			if !ok {
				break
			}
			if len(r) >= len(rest) || len(m) > len(rest) {
				t.Fatal("no progress")
			}
			rest = r
		}
		for rest := b; len(rest) > 0; {
			st, kv, d, r, ok := NextPackedEntry(rest)
			if !ok {
				break
			}
			if len(r) >= len(rest) || len(d) > len(rest) {
				t.Fatal("no progress")
			}
			e := AppendPackedEntry(nil, st, kv, d)
			if len(e) > PackedEntryBound(len(d)) {
				t.Fatal("bound exceeded")
			}
			if st2, kv2, d2, _, ok := NextPackedEntry(e); !ok || st2 != st || kv2 != kv || !bytes.Equal(d2, d) {
				t.Fatal("entry does not round-trip")
			}
			rest = r
		}
	})
}

package stream

import (
	"bytes"
	"errors"
	"io"
	"testing"
)

// FuzzReader feeds the decoder arbitrary streams under a fixed key (the
// corpus in testdata/fuzz/FuzzReader holds streams sealed under it). It
// must never panic, never return more plaintext than the data could
// carry, and decide alike whatever its batch size; an error names a
// chunk and one of the package's errors.
func FuzzReader(f *testing.F) {
	c := LocalCipher(gcmKey(f, 7), 1)
	for _, n := range []int{0, 1, csize, 2*csize + 3} {
		f.Add(seal(f, c, bytes.Repeat([]byte{'a'}, n), nil, small))
	}
	f.Add([]byte("KW\x02\x0a0123456789abcdef"))
	f.Add([]byte("KW\x01"))
	f.Add([]byte("KW\x03\x0a0123456789abcdef\x00\x05abcde"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var outs [][]byte
		var errs []error
		for _, batch := range []int{1, 2, 5} {
			r, err := NewReader(c, bytes.NewReader(data), nil, &Options{Batch: batch})
			var got []byte
			if err == nil {
				got, err = io.ReadAll(r)
			}
			outs, errs = append(outs, got), append(errs, err)
			if len(got) > len(data) {
				t.Fatalf("%d bytes of plaintext from %d bytes", len(got), len(data))
			}
			if err == nil {
				continue
			}
			var ce *ChunkError
			if !errors.Is(err, ErrNotStream) && !errors.Is(err, ErrTruncated) && !errors.Is(err, ErrMalformed) && !errors.Is(err, ErrEnvelope) && !errors.As(err, &ce) {
				t.Fatalf("unexpected error %v", err)
			}
		}
		for i := 1; i < len(outs); i++ {
			if !bytes.Equal(outs[i], outs[0]) || (errs[i] == nil) != (errs[0] == nil) {
				t.Fatalf("batch sizes disagree: %d bytes, %v; %d bytes, %v", len(outs[0]), errs[0], len(outs[i]), errs[i])
			}
			if errs[0] != nil && errs[i].Error() != errs[0].Error() {
				t.Fatalf("batch sizes disagree: %v; %v", errs[0], errs[i])
			}
		}
	})
}

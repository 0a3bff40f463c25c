package stream

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"io"
	"testing"
)

func gcmKey(t testing.TB, seed byte) cipher.AEAD {
	t.Helper()
	k := bytes.Repeat([]byte{seed}, 32)
	b, err := aes.NewCipher(k)
	if err != nil {
		t.Fatal(err)
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		t.Fatal(err)
	}
	return g
}

// small streams: 1 KiB chunks, 3 to a batch, so that a few KiB cross
// every boundary.
var small = &Options{ChunkShift: 10, Batch: 3}

const csize = 1 << 10

func seal(t testing.TB, c Cipher, pt, aad []byte, opts *Options) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := NewWriter(c, &out, aad, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := w.Write(pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func open(c Cipher, ct, aad []byte, opts *Options) ([]byte, error) {
	r, err := NewReader(c, bytes.NewReader(ct), aad, opts)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(r)
}

// openWriteTo reads a stream with WriteTo, as io.Copy does.
func openWriteTo(c Cipher, ct, aad []byte) ([]byte, error) {
	r, err := NewReader(c, bytes.NewReader(ct), aad, small)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	_, err = r.WriteTo(&out)
	return out.Bytes(), err
}

func random(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// chunkAt returns the bounds of chunk i of a stream whose plaintext had n
// bytes.
func chunkAt(i int) (int, int) {
	start := HeaderSize + i*(csize+ChunkOverhead)
	return start, start + csize + ChunkOverhead
}

func TestRoundTrip(t *testing.T) {
	c := LocalCipher(gcmKey(t, 1), 1)
	for _, n := range []int{0, 1, csize - 1, csize, csize + 1, 3 * csize, 3*csize + 1, 7*csize + 5, 9 * csize} {
		for _, opts := range []*Options{small, {ChunkShift: 10, Batch: 1}, nil} {
			pt := random(n)
			ct := seal(t, c, pt, []byte("ctx"), opts)
			chunks := max(1, (n+csize-1)/csize)
			if opts != nil && len(ct) != HeaderSize+n+chunks*ChunkOverhead {
				t.Errorf("n=%d: stream of %d bytes, want %d", n, len(ct), HeaderSize+n+chunks*ChunkOverhead)
			}
			// Read back with another batch size: the format does not depend on it.
			got, err := open(c, ct, []byte("ctx"), &Options{Batch: 2})
			if err != nil {
				t.Fatalf("n=%d: %v", n, err)
			}
			if !bytes.Equal(got, pt) {
				t.Fatalf("n=%d: plaintext differs", n)
			}
		}
	}
}

// ReadFrom and WriteTo (io.Copy's paths) make and read the same streams
// as Write and Read, from readers that return little at a time.
func TestReadFromWriteTo(t *testing.T) {
	c := LocalCipher(gcmKey(t, 1), 1)
	for _, n := range []int{0, 1, csize, 3 * csize, 3*csize + 1, 10*csize + 7} {
		pt := random(n)
		var out bytes.Buffer
		w, err := NewWriter(c, &out, nil, small)
		if err != nil {
			t.Fatal(err)
		}
		if m, err := w.ReadFrom(iotestOneByte{bytes.NewReader(pt)}); err != nil || m != int64(n) {
			t.Fatalf("n=%d: ReadFrom %d, %v", n, m, err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		chunks := max(1, (n+csize-1)/csize)
		if out.Len() != HeaderSize+n+chunks*ChunkOverhead {
			t.Fatalf("n=%d: %d bytes", n, out.Len())
		}
		got, err := openWriteTo(c, out.Bytes(), nil)
		if err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("n=%d: WriteTo: %d bytes, %v", n, len(got), err)
		}
		if got, err := open(c, out.Bytes(), nil, nil); err != nil || !bytes.Equal(got, pt) {
			t.Fatalf("n=%d: Read: %d bytes, %v", n, len(got), err)
		}
	}
}

func TestWriteInPieces(t *testing.T) {
	c := LocalCipher(gcmKey(t, 1), 1)
	pt := random(5*csize + 17)
	var out bytes.Buffer
	w, err := NewWriter(c, &out, nil, small)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < len(pt); i += 7 {
		w.Write(pt[i:min(i+7, len(pt))])
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	r, err := NewReader(c, iotestOneByte{bytes.NewReader(out.Bytes())}, nil, small)
	if err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
}

// iotestOneByte reads one byte at a time.
type iotestOneByte struct{ r io.Reader }

func (o iotestOneByte) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	return o.r.Read(p[:1])
}

// attack describes a change to a sealed stream of 6.5 chunks and the
// error that must stop it, at the chunk it must name.
func TestAttacks(t *testing.T) {
	c := LocalCipher(gcmKey(t, 1), 1)
	pt := random(6*csize + csize/2) // chunks 0..6, the last one short
	a := seal(t, c, pt, []byte("ctx"), small)
	b := seal(t, c, pt, []byte("ctx"), small) // same key, same plaintext, another stream
	other := seal(t, LocalCipher(gcmKey(t, 2), 1), pt, []byte("ctx"), small)
	full := seal(t, c, pt[:6*csize], []byte("ctx"), small) // chunks 0..5, the last one full
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	ch := func(s []byte, i int) []byte {
		from, to := chunkAt(i)
		return s[from:min(to, len(s))]
	}
	upto := func(s []byte, i int) []byte { from, _ := chunkAt(i); return s[:from] }
	from := func(s []byte, i int) []byte { f, _ := chunkAt(i); return s[f:] }

	cases := []struct {
		name  string
		data  []byte
		aad   string
		want  error
		chunk uint64
	}{
		{"truncated after chunk 3", upto(a, 4), "ctx", ErrTruncated, 3},
		{"final chunk removed", upto(a, 6), "ctx", ErrTruncated, 5},
		{"truncated inside chunk 2", a[:HeaderSize+2*(csize+ChunkOverhead)+100], "ctx", ErrAuthentication, 2},
		{"truncated inside the final chunk's overhead", a[:len(a)-len(ch(a, 6))+20], "ctx", ErrTruncated, 6},
		{"header only", a[:HeaderSize], "ctx", ErrTruncated, 0},
		{"chunks 1 and 2 swapped", cat(upto(a, 1), ch(a, 2), ch(a, 1), from(a, 3)), "ctx", ErrAuthentication, 1},
		{"chunk 2 repeated", cat(upto(a, 3), ch(a, 2), from(a, 3)), "ctx", ErrAuthentication, 3},
		{"chunk 4 from another stream of the same key", cat(upto(a, 4), ch(b, 4), from(a, 5)), "ctx", ErrAuthentication, 4},
		{"another stream's header", cat(b[:HeaderSize], a[HeaderSize:]), "ctx", ErrAuthentication, 0},
		{"chunk 1 from a stream of another key", cat(upto(a, 1), ch(other, 1), from(a, 2)), "ctx", ErrAuthentication, 1},
		{"another key altogether", other, "ctx", ErrAuthentication, 0},
		{"wrong additional data", a, "other", ErrAuthentication, 0},
		{"a bit flipped in chunk 5", flip(a, HeaderSize+5*(csize+ChunkOverhead)+40), "ctx", ErrAuthentication, 5},
		{"another stream's chunk appended", cat(a, ch(b, 6)), "ctx", ErrAuthentication, 6},
		{"the final chunk moved forward", cat(upto(a, 2), ch(a, 6)), "ctx", ErrAuthentication, 2},
		{"a stream appended to itself", cat(a, a[HeaderSize:]), "ctx", ErrAuthentication, 6},
		// A full final chunk followed by more.
		{"a chunk appended after a full final chunk", cat(full, ch(a, 1)), "ctx", ErrTrailing, 5},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, batch := range []int{1, 3, 64, -1} {
				var got []byte
				var err error
				if batch > 0 {
					got, err = open(c, tc.data, []byte(tc.aad), &Options{Batch: batch})
				} else {
					got, err = openWriteTo(c, tc.data, []byte(tc.aad))
				}
				var ce *ChunkError
				if !errors.Is(err, tc.want) || !errors.As(err, &ce) || ce.Index != tc.chunk {
					t.Fatalf("batch %d: got %v, want %v at chunk %d", batch, err, tc.want, tc.chunk)
				}
				// What was returned is an authenticated prefix, never more.
				if len(got) > int(tc.chunk)*csize || !bytes.Equal(got, pt[:len(got)]) {
					t.Fatalf("batch %d: %d bytes returned before the failure at chunk %d", batch, len(got), tc.chunk)
				}
			}
		})
	}
}

func flip(b []byte, i int) []byte {
	c := bytes.Clone(b)
	c[i] ^= 1
	return c
}

func TestEmptyFinalChunkAfterData(t *testing.T) {
	c := LocalCipher(gcmKey(t, 1), 1)
	// Made by hand: a full chunk 0 and an empty final chunk 1, which no
	// writer makes (it would make chunk 0 final).
	hdr, _ := NewHeader(10)
	chunks := []Chunk{
		{Index: 0, AAD: hdr.AAD(nil, 0, false, nil), In: random(csize)},
		{Index: 1, Final: true, AAD: hdr.AAD(nil, 1, true, nil), In: nil},
	}
	if err := c.Seal(chunks); err != nil {
		t.Fatal(err)
	}
	data := bytes.Join([][]byte{hdr[:], chunks[0].Out, chunks[1].Out}, nil)
	_, err := open(c, data, nil, nil)
	var ce *ChunkError
	if !errors.Is(err, ErrMalformed) || !errors.As(err, &ce) || ce.Index != 1 {
		t.Fatalf("got %v, want ErrMalformed at chunk 1", err)
	}
}

func TestHeader(t *testing.T) {
	c := LocalCipher(gcmKey(t, 1), 1)
	if _, err := open(c, []byte("KW\x01\x00\x00\x00\x01"), nil, nil); !errors.Is(err, ErrNotStream) {
		t.Errorf("one-shot ciphertext: %v", err)
	}
	if _, err := open(c, nil, nil, nil); !errors.Is(err, ErrNotStream) {
		t.Errorf("empty: %v", err)
	}
	if _, err := open(c, []byte("KW\x02\x10"), nil, nil); !errors.Is(err, ErrTruncated) {
		t.Errorf("short header: %v", err)
	}
	for _, s := range []byte{0, 9, 20, 21, 255} {
		h := append([]byte("KW\x02"), s)
		h = append(h, make([]byte, IDSize)...)
		if _, err := open(c, h, nil, nil); !errors.Is(err, ErrMalformed) {
			t.Errorf("chunk shift %d: %v", s, err)
		}
	}
	if _, err := NewHeader(20); err == nil {
		t.Error("NewHeader(20) accepted")
	}
	h1, _ := NewHeader(16)
	h2, _ := NewHeader(16)
	if h1 == h2 {
		t.Error("two headers with one stream id")
	}
}

// failing fails every chunk with err, or the whole call with callErr.
type failing struct {
	Cipher
	err, callErr error
}

func (f failing) Seal(chunks []Chunk) error {
	if f.callErr != nil {
		return f.callErr
	}
	for i := range chunks {
		chunks[i].Err = f.err
	}
	return nil
}

func (f failing) Open(chunks []Chunk) error { return f.Seal(chunks) }

func TestCipherErrors(t *testing.T) {
	denied := errors.New("permission denied")
	var out bytes.Buffer
	w, _ := NewWriter(failing{err: denied}, &out, nil, small)
	w.Write(random(10))
	if err := w.Close(); !errors.Is(err, denied) {
		t.Fatalf("seal: %v", err)
	}
	good := seal(t, LocalCipher(gcmKey(t, 1), 1), random(10), nil, small)
	if _, err := open(failing{err: denied}, good, nil, nil); !errors.Is(err, denied) || errors.Is(err, ErrAuthentication) {
		t.Fatalf("open: %v", err)
	}
	down := errors.New("daemon unreachable")
	if _, err := open(failing{callErr: down}, good, nil, nil); !errors.Is(err, down) {
		t.Fatalf("open: %v", err)
	}
	// A failed writer stays failed.
	w, _ = NewWriter(failing{callErr: down}, &out, nil, small)
	w.Write(random(10))
	if err := w.Close(); !errors.Is(err, down) {
		t.Fatal(err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, down) {
		t.Fatal(err)
	}
}

// A writer writes nothing, not even the header, before its first chunk
// is sealed: a failure leaves no partial stream behind.
func TestNothingBeforeFirstChunk(t *testing.T) {
	var out bytes.Buffer
	w, _ := NewWriter(LocalCipher(gcmKey(t, 1), 1), &out, nil, small)
	w.Write(random(3 * csize))
	if out.Len() != 0 {
		t.Fatalf("%d bytes written before Close", out.Len())
	}
	w.Close()
	if out.Len() == 0 {
		t.Fatal("nothing written")
	}
}

// A chunk's error names the chunk once, with the cause's own words.
func TestChunkErrorText(t *testing.T) {
	err := &ChunkError{Index: 7, Err: errors.New("keywarden: encrypt: permission denied")}
	if got, want := err.Error(), "keywarden: stream chunk 7: encrypt: permission denied"; got != want {
		t.Fatalf("%q, want %q", got, want)
	}
}

type failingReader struct {
	data []byte
	err  error
}

func (f *failingReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, f.err
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

// An input that fails to read does not become a stream: Close returns the
// failure and seals nothing, so no reader takes the part read for the
// whole; Abort does the same for a writer fed by Write.
func TestInputFailureNotSealed(t *testing.T) {
	c := LocalCipher(gcmKey(t, 1), 1)
	readErr := errors.New("disk on fire")
	var out bytes.Buffer
	w, err := NewWriter(c, &out, nil, small)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, &failingReader{data: random(5 * csize), err: readErr}); !errors.Is(err, readErr) {
		t.Fatalf("copy: %v", err)
	}
	if err := w.Close(); !errors.Is(err, readErr) {
		t.Fatalf("Close after a failed read: %v, want the read's error", err)
	}
	if _, err := open(c, out.Bytes(), nil, small); !errors.Is(err, ErrTruncated) {
		t.Fatalf("what was written reads as %v, want truncated", err)
	}

	out.Reset()
	w, _ = NewWriter(c, &out, nil, small)
	w.Write(random(5 * csize))
	w.Abort()
	if err := w.Close(); err == nil {
		t.Fatal("Close after Abort sealed the stream")
	}
	if _, err := open(c, out.Bytes(), nil, small); err == nil {
		t.Fatal("an aborted stream reads as whole")
	}
	for _, b := range w.buf[:cap(w.buf)] {
		if b != 0 {
			t.Fatal("Abort left plaintext in the buffer")
		}
	}
}

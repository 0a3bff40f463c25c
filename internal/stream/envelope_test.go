package stream

import (
	"bytes"
	"crypto/cipher"
	"crypto/subtle"
	"errors"
	"io"
	"testing"
)

// namedKey stands for the daemon in these tests: it seals and opens data
// keys under a fixed AES-GCM key, with the additional data it is given.
type namedKey struct{ g cipher.AEAD }

func (n namedKey) wrap(t testing.TB, dk, aad []byte) []byte {
	t.Helper()
	nonce := random(12)
	return n.g.Seal(nonce, nonce, dk, aad)
}

func (n namedKey) open(wrapped, aad []byte) ([]byte, error) {
	if len(wrapped) < 12 {
		return nil, errors.New("short")
	}
	return n.g.Open(nil, wrapped[:12], wrapped[12:], aad)
}

// sealEnvelope makes an envelope stream of pt under a fresh data key, as
// the client library does.
func sealEnvelope(t testing.TB, nk namedKey, pt, aad []byte, opts *Options) []byte {
	t.Helper()
	shift := 10
	if opts != nil && opts.ChunkShift != 0 {
		shift = opts.ChunkShift
	}
	hdr, err := NewEnvelopeHeader(shift)
	if err != nil {
		t.Fatal(err)
	}
	dk := random(DataKeySize)
	pre, err := Preamble(nk.wrap(t, dk, DataKeyAAD(nil, hdr, aad)))
	if err != nil {
		t.Fatal(err)
	}
	c, err := EnvelopeCipher(dk)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	w := NewWriterHeader(c, &out, hdr, pre, aad, opts)
	if _, err := w.Write(pt); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func openEnvelope(nk namedKey, ct, aad []byte, opts *Options) ([]byte, error) {
	r := bytes.NewReader(ct)
	var b [HeaderSize]byte
	n, _ := io.ReadFull(r, b[:])
	hdr, err := ParseHeader(b[:n])
	if err != nil {
		return nil, err
	}
	sr, err := NewEnvelopeReader(r, hdr, aad, opts, nk.open)
	if err != nil {
		return nil, err
	}
	return io.ReadAll(sr)
}

func TestEnvelopeRoundTrip(t *testing.T) {
	nk := namedKey{gcmKey(t, 9)}
	for _, n := range []int{0, 1, csize - 1, csize, csize + 1, 7*csize + 5, 600 << 10} {
		for _, opts := range []*Options{small, {ChunkShift: 10}, {ChunkShift: 16}} {
			pt := random(n)
			ct := sealEnvelope(t, nk, pt, []byte("ctx"), opts)
			if !IsStream(ct) || ct[2] != envelopeFormat {
				t.Fatalf("%d bytes: not an envelope stream", n)
			}
			size := 1 << opts.ChunkShift
			chunks := max(1, (n+size-1)/size)
			if want := HeaderSize + 2 + 12 + DataKeySize + 16 + n + chunks*EnvelopeOverhead; len(ct) != want {
				t.Fatalf("%d bytes in chunks of %d: %d bytes of stream, want %d", n, size, len(ct), want)
			}
			got, err := openEnvelope(nk, ct, []byte("ctx"), &Options{Batch: 5})
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("%d bytes in chunks of %d: %v", n, size, err)
			}
		}
	}
}

// TestEnvelopeAttacks: the changes a daemon-sealed stream must detect
// are detected in an envelope stream too, at the same chunk, and so are
// changes to the wrapped data key.
func TestEnvelopeAttacks(t *testing.T) {
	nk := namedKey{gcmKey(t, 1)}
	pt := random(6*csize + csize/2)
	a := sealEnvelope(t, nk, pt, []byte("ctx"), small)
	b := sealEnvelope(t, nk, pt, []byte("ctx"), small)
	other := sealEnvelope(t, namedKey{gcmKey(t, 2)}, pt, []byte("ctx"), small)
	full := sealEnvelope(t, nk, pt[:6*csize], []byte("ctx"), small)
	pre := HeaderSize + 2 + 12 + DataKeySize + 16
	at := func(i int) (int, int) { s := pre + i*(csize+EnvelopeOverhead); return s, s + csize + EnvelopeOverhead }
	cat := func(parts ...[]byte) []byte { return bytes.Join(parts, nil) }
	ch := func(s []byte, i int) []byte { f, to := at(i); return s[f:min(to, len(s))] }
	upto := func(s []byte, i int) []byte { f, _ := at(i); return s[:f] }
	from := func(s []byte, i int) []byte { f, _ := at(i); return s[f:] }
	cases := []struct {
		name  string
		data  []byte
		aad   string
		want  error
		chunk int64 // -1: refused before any chunk (the data key)
	}{
		{"truncated after chunk 3", upto(a, 4), "ctx", ErrTruncated, 3},
		{"final chunk removed", upto(a, 6), "ctx", ErrTruncated, 5},
		{"truncated inside chunk 2", a[:pre+2*(csize+EnvelopeOverhead)+100], "ctx", ErrAuthentication, 2},
		{"chunks 1 and 2 swapped", cat(upto(a, 1), ch(a, 2), ch(a, 1), from(a, 3)), "ctx", ErrAuthentication, 1},
		{"chunk 2 repeated", cat(upto(a, 3), ch(a, 2), from(a, 3)), "ctx", ErrAuthentication, 3},
		{"chunk 4 from another stream of the same key", cat(upto(a, 4), ch(b, 4), from(a, 5)), "ctx", ErrAuthentication, 4},
		{"the final chunk moved forward", cat(upto(a, 2), ch(a, 6)), "ctx", ErrAuthentication, 2},
		{"a bit flipped in chunk 5", flip(a, pre+5*(csize+EnvelopeOverhead)+40), "ctx", ErrAuthentication, 5},
		{"a chunk appended after a full final chunk", cat(full, ch(a, 1)), "ctx", ErrTrailing, 5},
		{"header only", a[:HeaderSize], "ctx", ErrTruncated, -1},
		{"cut inside the wrapped key", a[:pre-3], "ctx", ErrTruncated, -1},
		{"preamble only", a[:pre], "ctx", ErrTruncated, 0},
		{"another stream's data key", cat(a[:HeaderSize], b[HeaderSize:pre], a[pre:]), "ctx", nil, -1},
		{"another stream's header", cat(b[:HeaderSize], a[HeaderSize:]), "ctx", nil, -1},
		{"a data key of another named key", other, "ctx", nil, -1},
		{"wrong additional data", a, "other", nil, -1},
		{"a bit flipped in the wrapped key", flip(a, HeaderSize+20), "ctx", nil, -1},
		{"a wrapped key length of 0", cat(a[:HeaderSize], []byte{0, 0}, a[HeaderSize+2:]), "ctx", ErrMalformed, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			for _, batch := range []int{1, 3, 64} {
				got, err := openEnvelope(nk, tc.data, []byte(tc.aad), &Options{Batch: batch})
				if err == nil {
					t.Fatalf("batch %d: accepted", batch)
				}
				var ce *ChunkError
				isChunk := errors.As(err, &ce)
				switch {
				case tc.chunk < 0 && isChunk:
					t.Fatalf("batch %d: %v, want a refusal before any chunk", batch, err)
				case tc.chunk >= 0 && (!isChunk || ce.Index != uint64(tc.chunk)):
					t.Fatalf("batch %d: %v, want an error at chunk %d", batch, err, tc.chunk)
				case tc.want != nil && !errors.Is(err, tc.want):
					t.Fatalf("batch %d: %v, want %v", batch, err, tc.want)
				}
				if len(got) > max(0, int(tc.chunk))*csize || !bytes.Equal(got, pt[:len(got)]) {
					t.Fatalf("batch %d: %d bytes returned before the failure", batch, len(got))
				}
			}
		})
	}
}

// TestEnvelopeNotDaemonStream: neither kind of stream is read as the
// other.
func TestEnvelopeNotDaemonStream(t *testing.T) {
	nk := namedKey{gcmKey(t, 1)}
	env := sealEnvelope(t, nk, random(3*csize), nil, small)
	if _, err := NewReader(LocalCipher(gcmKey(t, 1), 1), bytes.NewReader(env), nil, small); err == nil {
		t.Fatal("an envelope stream opened without its data key")
	}
	daemon := seal(t, LocalCipher(gcmKey(t, 1), 1), random(3*csize), nil, small)
	if _, err := openEnvelope(nk, daemon, nil, small); !errors.Is(err, ErrNotStream) {
		t.Fatalf("a daemon-sealed stream read as an envelope: %v", err)
	}
}

// TestEnvelopeNoncesDiffer: no two chunks of a stream share a nonce, the
// final one included, in a batch sealed in parallel too.
func TestEnvelopeNoncesDiffer(t *testing.T) {
	nk := namedKey{gcmKey(t, 1)}
	ct := sealEnvelope(t, nk, random(1000*csize+1), nil, &Options{ChunkShift: 10, Batch: 500})
	pre := HeaderSize + 2 + 12 + DataKeySize + 16
	seen := map[string]bool{}
	for i := 0; pre+i*(csize+EnvelopeOverhead) < len(ct); i++ {
		at := pre + i*(csize+EnvelopeOverhead)
		n := string(ct[at : at+12])
		if seen[n] {
			t.Fatalf("chunk %d: nonce repeats", i)
		}
		seen[n] = true
	}
	if len(seen) != 1001 {
		t.Fatalf("%d chunks, want 1001", len(seen))
	}
}

// FuzzEnvelopeReader feeds the envelope reader arbitrary streams under a
// fixed named key; as FuzzReader, it must never panic and must decide
// alike whatever its batch size.
func FuzzEnvelopeReader(f *testing.F) {
	nk := namedKey{gcmKey(f, 7)}
	for _, n := range []int{0, 1, csize, 2*csize + 3} {
		f.Add(sealEnvelope(f, nk, bytes.Repeat([]byte{'a'}, n), nil, small))
	}
	f.Add([]byte("KW\x03\x0a0123456789abcdef\x00\x05abcde"))
	f.Fuzz(func(t *testing.T, data []byte) {
		var outs [][]byte
		var errs []error
		for _, batch := range []int{1, 2, 5} {
			got, err := openEnvelope(nk, data, nil, &Options{Batch: batch})
			outs, errs = append(outs, got), append(errs, err)
			if len(got) > len(data) {
				t.Fatalf("%d bytes of plaintext from %d bytes", len(got), len(data))
			}
		}
		for i := 1; i < len(outs); i++ {
			if !bytes.Equal(outs[i], outs[0]) || (errs[i] == nil) != (errs[0] == nil) {
				t.Fatalf("batch sizes disagree: %d bytes, %v; %d bytes, %v", len(outs[0]), errs[0], len(outs[i]), errs[i])
			}
		}
	})
}

// TestEnvelopeClonedWriterNoKeystreamReuse: a writer cloned mid-stream
// (its process restored twice from one snapshot of a VM) goes on with the
// same data key and header in both copies, each sealing its own data as
// the same chunk. The two chunks must not share a nonce: with one, the
// XOR of their ciphertexts is that of their plaintexts, and GCM's
// authentication key follows from the tags.
func TestEnvelopeClonedWriterNoKeystreamReuse(t *testing.T) {
	nk := namedKey{gcmKey(t, 3)}
	hdr, err := NewEnvelopeHeader(10)
	if err != nil {
		t.Fatal(err)
	}
	dk := random(DataKeySize)
	pre, err := Preamble(nk.wrap(t, dk, DataKeyAAD(nil, hdr, nil)))
	if err != nil {
		t.Fatal(err)
	}
	p1, p2 := random(csize), random(csize)
	clone := func(pt []byte) []byte {
		c, err := EnvelopeCipher(dk)
		if err != nil {
			t.Fatal(err)
		}
		var out bytes.Buffer
		w := NewWriterHeader(c, &out, hdr, pre, nil, small)
		if _, err := w.Write(pt); err != nil {
			t.Fatal(err)
		}
		if err := w.Close(); err != nil {
			t.Fatal(err)
		}
		return out.Bytes()[HeaderSize+len(pre):]
	}
	c1, c2 := clone(p1), clone(p2)
	want := make([]byte, csize)
	subtle.XORBytes(want, p1, p2)
	got := make([]byte, csize)
	for off := 0; off+csize <= min(len(c1), len(c2)); off++ {
		subtle.XORBytes(got, c1[off:off+csize], c2[off:off+csize])
		if bytes.Equal(got, want) {
			t.Fatalf("the two copies' chunk 0 share a nonce: the XOR of their plaintexts is that of their ciphertexts (at byte %d)", off)
		}
	}
	for _, c := range [][]byte{c1, c2} {
		if got, err := openEnvelope(nk, append(append(hdr[:], pre...), c...), nil, small); err != nil || !(bytes.Equal(got, p1) || bytes.Equal(got, p2)) {
			t.Fatalf("a copy's stream does not read back: %v", err)
		}
	}
}

type failingWriter struct{}

func (failingWriter) Write([]byte) (int, error) { return 0, errors.New("disk full") }

// TestWriterCloseWipesAfterFailure: a writer whose output failed still
// wipes the plaintext it buffered when it is closed.
func TestWriterCloseWipesAfterFailure(t *testing.T) {
	c, err := EnvelopeCipher(random(DataKeySize))
	if err != nil {
		t.Fatal(err)
	}
	hdr, err := NewEnvelopeHeader(10)
	if err != nil {
		t.Fatal(err)
	}
	w := NewWriterHeader(c, failingWriter{}, hdr, []byte{0, 1, 0}, nil, small)
	secret := bytes.Repeat([]byte{0xa5}, 3*csize+7)
	if _, err := w.Write(secret); err == nil {
		t.Fatal("a write to a failing output succeeded")
	}
	if err := w.Close(); err == nil {
		t.Fatal("Close after a failed write succeeded")
	}
	if bytes.Contains(w.buf[:cap(w.buf)], []byte{0xa5, 0xa5, 0xa5, 0xa5}) {
		t.Fatal("the plaintext stays in the writer's buffer after Close")
	}
}

// TestEnvelopeDataKeyHolderCanRewrite pins what docs/security.md says an
// envelope stream gives up: whoever opens the data key (decrypt usage is
// enough) can replace the stream's content, keeping its header and
// wrapped key, and a reader accepts the result.
func TestEnvelopeDataKeyHolderCanRewrite(t *testing.T) {
	nk := namedKey{gcmKey(t, 4)}
	orig := sealEnvelope(t, nk, random(3*csize), []byte("ctx"), small)
	hdr, err := ParseHeader(orig)
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(orig[HeaderSize:])
	wrapped, err := ReadWrappedKey(r)
	if err != nil {
		t.Fatal(err)
	}
	dk, err := nk.open(wrapped, DataKeyAAD(nil, hdr, []byte("ctx"))) // an ordinary decryption
	if err != nil {
		t.Fatal(err)
	}
	c, err := EnvelopeCipher(dk)
	if err != nil {
		t.Fatal(err)
	}
	pre, _ := Preamble(wrapped)
	var forged bytes.Buffer
	w := NewWriterHeader(c, &forged, hdr, pre, []byte("ctx"), small)
	w.Write([]byte("the reader's own text"))
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	if got, err := openEnvelope(nk, forged.Bytes(), []byte("ctx"), small); err != nil || string(got) != "the reader's own text" {
		t.Fatalf("the documented limit no longer holds (update docs/security.md): %q, %v", got, err)
	}
}

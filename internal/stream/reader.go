package stream

import (
	"errors"
	"fmt"
	"io"
)

// Reader decrypts a stream. Read returns only plaintext of chunks that
// authenticated in their place; the first failure ends the stream with
// an error (a *ChunkError) and the plaintext returned before it is an
// authenticated prefix of the stream, not all of it. io.EOF comes only
// after the final chunk authenticated as the final one.
type Reader struct {
	c      Cipher
	r      io.Reader
	hdr    Header
	aad    []byte
	ctSize int // a full chunk's ciphertext
	batch  int
	in     []byte // ciphertext read, not yet opened: batch chunks and one byte more
	keep   int    // bytes of in carried over to the next round
	chunks []Chunk
	aads   []byte
	next   int // the chunk whose plaintext Read returns next
	// failed is the chunk that failed, after r.chunks: Read reports it
	// once their plaintext is consumed (diagnosing it calls the Cipher,
	// which may reuse the memory they point into).
	failed *Chunk
	// later is a framing error found beyond r.chunks, reported after them.
	later error
	index uint64
	done  bool // the final chunk was read
	err   error
}

// NewReader reads the header from r and returns a Reader of the stream,
// opened by c with aad as the caller's additional data.
func NewReader(c Cipher, r io.Reader, aad []byte, opts *Options) (*Reader, error) {
	var b [HeaderSize]byte
	n, err := io.ReadFull(r, b[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	hdr, err := ParseHeader(b[:n])
	if err != nil {
		return nil, err
	}
	if hdr.Envelope() {
		return nil, ErrEnvelope
	}
	return NewReaderHeader(c, r, hdr, aad, opts), nil
}

// NewReaderHeader returns a Reader of the stream whose header, already
// read and parsed, is hdr, and whose chunks follow in r.
func NewReaderHeader(c Cipher, r io.Reader, hdr Header, aad []byte, opts *Options) *Reader {
	b := opts.batch(hdr.ChunkSize())
	ct := hdr.ChunkSize() + hdr.Overhead()
	return &Reader{c: c, r: r, hdr: hdr, aad: append([]byte(nil), aad...), ctSize: ct, batch: b,
		in: make([]byte, b*ct+1)}
}

// Cipher returns the Cipher that opens the stream's chunks.
func (r *Reader) Cipher() Cipher { return r.c }

// Header returns the stream's header.
func (r *Reader) Header() Header { return r.hdr }

// Read returns plaintext.
func (r *Reader) Read(p []byte) (int, error) {
	for {
		for r.next < len(r.chunks) {
			c := &r.chunks[r.next]
			if len(c.Out) > 0 {
				n := copy(p, c.Out)
				c.Out = c.Out[n:]
				if n > 0 || len(p) == 0 {
					return n, nil
				}
			}
			r.next++
		}
		if r.failed != nil {
			r.err, r.failed = r.diagnose(*r.failed), nil
		} else if r.later != nil {
			r.err, r.later = r.later, nil
		}
		if r.err != nil {
			return 0, r.err
		}
		if r.done {
			return 0, io.EOF
		}
		r.err = r.fill()
	}
}

// WriteTo writes the plaintext to w as it is authenticated, without a
// copy through an intermediate buffer (io.Copy uses it).
func (r *Reader) WriteTo(w io.Writer) (int64, error) {
	var total int64
	for {
		for r.next < len(r.chunks) {
			c := &r.chunks[r.next]
			if len(c.Out) > 0 {
				n, err := w.Write(c.Out)
				total += int64(n)
				c.Out = c.Out[n:]
				if err != nil {
					return total, err
				}
			}
			r.next++
		}
		if r.failed != nil {
			r.err, r.failed = r.diagnose(*r.failed), nil
		} else if r.later != nil {
			r.err, r.later = r.later, nil
		}
		if r.err != nil {
			return total, r.err
		}
		if r.done {
			return total, nil
		}
		r.err = r.fill()
	}
}

// fill reads and opens the next batch of chunks. It keeps in r.chunks
// those that authenticated before the first that did not, which it keeps
// in r.failed, or before a framing error, kept in r.later. It returns
// only errors of reading and of the Cipher itself.
func (r *Reader) fill() error {
	r.chunks, r.next = r.chunks[:0], 0
	copy(r.in, r.in[len(r.in)-r.keep:])
	n, err := io.ReadFull(r.r, r.in[r.keep:])
	n += r.keep
	r.keep = 0
	eof := false
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		eof = true
	case err != nil:
		return err
	}
	data := r.in[:n]
	var k int // chunks in this round
	if !eof {
		// A byte beyond them: these chunks are not the last.
		k = r.batch
		r.keep = 1
	} else {
		if n == 0 {
			// The header alone, or a stream cut right after a chunk that
			// a byte followed when it was read: that byte is here, so
			// only the header can end here.
			return &ChunkError{Index: r.index, Err: ErrTruncated}
		}
		k = (n + r.ctSize - 1) / r.ctSize
		last := n - (k-1)*r.ctSize
		switch {
		case last < r.hdr.Overhead():
			r.later = &ChunkError{Index: r.index + uint64(k-1), Err: ErrTruncated}
		case last == r.hdr.Overhead() && r.index+uint64(k-1) > 0:
			r.later = &ChunkError{Index: r.index + uint64(k-1), Err: fmt.Errorf("%w: an empty final chunk after data", ErrMalformed)}
		}
		if r.later != nil {
			// The chunks before it come first: a failure among them is
			// the one to report.
			if k--; k == 0 {
				return nil
			}
			eof = false
		}
	}
	r.aads = r.aads[:0]
	for i := range k {
		final := eof && i == k-1
		r.aads = r.hdr.AAD(r.aads, r.index+uint64(i), final, r.aad)
		end := min((i+1)*r.ctSize, len(data))
		r.chunks = append(r.chunks, Chunk{Index: r.index + uint64(i), Final: final, In: data[i*r.ctSize : end]})
	}
	per := len(r.aads) / k
	for i := range r.chunks {
		r.chunks[i].AAD = r.aads[i*per : (i+1)*per]
	}
	if err := r.c.Open(r.chunks); err != nil {
		r.chunks = r.chunks[:0]
		return err
	}
	for i := range r.chunks {
		c := &r.chunks[i]
		if c.Err == nil {
			continue
		}
		failed := *c
		r.failed = &failed
		clear(r.chunks[i:])
		r.chunks = r.chunks[:i]
		return nil
	}
	r.index += uint64(k)
	r.done = eof
	return nil
}

// diagnose names why c failed: a chunk that fails in its place but opens
// with the other final flag tells truncation (a non-final chunk last) or
// trailing data (a final chunk followed by more) apart from tampering.
func (r *Reader) diagnose(c Chunk) error {
	if !errors.Is(c.Err, ErrAuthentication) {
		return &ChunkError{Index: c.Index, Err: c.Err}
	}
	alt := []Chunk{{Index: c.Index, Final: !c.Final, AAD: r.hdr.AAD(nil, c.Index, !c.Final, r.aad), In: c.In}}
	if err := r.c.Open(alt); err == nil && alt[0].Err == nil {
		clear(alt[0].Out)
		if c.Final {
			return &ChunkError{Index: c.Index, Err: ErrTruncated}
		}
		return &ChunkError{Index: c.Index, Err: ErrTrailing}
	}
	return &ChunkError{Index: c.Index, Err: c.Err}
}

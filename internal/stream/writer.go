package stream

import (
	"errors"
	"fmt"
	"io"
)

// Options tune a Writer or a Reader. The zero value means the defaults.
type Options struct {
	// ChunkShift is the base-2 logarithm of the chunk size a Writer
	// makes (default DefaultChunkShift). A Reader takes it from the
	// header.
	ChunkShift int
	// Batch is how many chunks go to the Cipher at once (default: as
	// many as BatchBytes holds, at least one). Memory is about twice
	// Batch chunks.
	Batch int
}

func (o *Options) batch(chunkSize int) int {
	if o == nil || o.Batch <= 0 {
		return max(1, BatchBytes/chunkSize)
	}
	return o.Batch
}

// Writer encrypts what is written to it into a stream. Close must be
// called to seal the final chunk; until then the output is a truncated
// stream that no Reader accepts.
type Writer struct {
	c      Cipher
	w      io.Writer
	hdr    Header
	aad    []byte
	size   int
	batch  int
	buf    []byte // plaintext not yet sealed, at most batch chunks
	chunks []Chunk
	aads   []byte
	index  uint64
	begun  bool
	closed bool
	// preamble follows the header: an envelope stream's wrapped data key.
	preamble []byte
	err      error
}

// NewWriter starts a stream to w, sealed by c, each chunk authenticating
// aad too. It writes nothing until the first chunk is sealed.
func NewWriter(c Cipher, w io.Writer, aad []byte, opts *Options) (*Writer, error) {
	shift := DefaultChunkShift
	if opts != nil && opts.ChunkShift != 0 {
		shift = opts.ChunkShift
	}
	hdr, err := NewHeader(shift)
	if err != nil {
		return nil, err
	}
	return NewWriterHeader(c, w, hdr, nil, aad, opts), nil
}

// NewWriterHeader starts a stream to w with the header hdr, followed by
// preamble (an envelope stream's wrapped data key), sealed by c. It
// writes nothing until the first chunk is sealed.
func NewWriterHeader(c Cipher, w io.Writer, hdr Header, preamble, aad []byte, opts *Options) *Writer {
	b := opts.batch(hdr.ChunkSize())
	return &Writer{c: c, w: w, hdr: hdr, preamble: append([]byte(nil), preamble...), aad: append([]byte(nil), aad...),
		size: hdr.ChunkSize(), batch: b, buf: make([]byte, 0, b*hdr.ChunkSize())}
}

// Header returns the stream's header.
func (w *Writer) Header() Header { return w.hdr }

// Write buffers p and seals every full batch of chunks that more data
// follows.
func (w *Writer) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, errors.New("keywarden: stream write after Close")
	}
	n := len(p)
	for len(p) > 0 {
		if len(w.buf) == cap(w.buf) {
			// More data follows: none of these chunks is the last.
			if err := w.flush(false); err != nil {
				return n - len(p), err
			}
		}
		k := copy(w.buf[len(w.buf):cap(w.buf)], p)
		w.buf = w.buf[:len(w.buf)+k]
		p = p[k:]
	}
	return n, nil
}

// ReadFrom reads r to its end into the chunks, without a copy through an
// intermediate buffer (io.Copy uses it).
func (w *Writer) ReadFrom(r io.Reader) (int64, error) {
	if w.err != nil {
		return 0, w.err
	}
	if w.closed {
		return 0, errors.New("keywarden: stream write after Close")
	}
	var total int64
	for {
		if len(w.buf) == cap(w.buf) {
			// Seal only once more data is known to follow: the last
			// chunks may be the final ones.
			var one [1]byte
			n, err := io.ReadFull(r, one[:])
			if n == 0 {
				if err == io.EOF {
					return total, nil
				}
				return total, w.inputFailed(err)
			}
			if err := w.flush(false); err != nil {
				return total, err
			}
			w.buf = append(w.buf, one[0])
			total++
		}
		n, err := r.Read(w.buf[len(w.buf):cap(w.buf)])
		w.buf = w.buf[:len(w.buf)+n]
		total += int64(n)
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, w.inputFailed(err)
		}
	}
}

// inputFailed makes a failure to read the input the stream's: Close then
// returns it instead of sealing what was read as if it were the whole
// input (a reader would accept the truncated plaintext as complete).
func (w *Writer) inputFailed(err error) error {
	w.err = fmt.Errorf("keywarden: reading the input to encrypt: %w", err)
	return w.err
}

// Abort ends the stream without sealing its final chunk, so that no
// reader accepts what was written as a whole stream, and wipes the
// plaintext it holds. Use it instead of Close when the input could not be
// read to its end.
func (w *Writer) Abort() {
	if w.err == nil {
		w.err = errors.New("keywarden: the stream was aborted")
	}
	w.closed = true
	clear(w.buf[:cap(w.buf)])
}

// Close seals the rest, its last chunk marked final, and writes it, and
// wipes the plaintext it held, also when the stream failed before. It
// does not close the underlying writer.
func (w *Writer) Close() error {
	if w.err != nil {
		// The stream failed and will not be sealed: its plaintext goes.
		clear(w.buf[:cap(w.buf)])
		return w.err
	}
	if w.closed {
		return nil
	}
	w.closed = true
	err := w.flush(true)
	clear(w.buf[:cap(w.buf)])
	return err
}

// flush seals the buffered plaintext: full chunks only unless final,
// when the last chunk (short, or empty if the stream is) is the final one.
func (w *Writer) flush(final bool) error {
	n := len(w.buf) / w.size
	if final {
		n = max(1, (len(w.buf)+w.size-1)/w.size)
	}
	w.chunks = w.chunks[:0]
	w.aads = w.aads[:0]
	for i := range n {
		last := final && i == n-1
		w.aads = w.hdr.AAD(w.aads, w.index+uint64(i), last, w.aad)
		end := min((i+1)*w.size, len(w.buf))
		w.chunks = append(w.chunks, Chunk{Index: w.index + uint64(i), Final: last, In: w.buf[i*w.size : end]})
	}
	per := len(w.aads) / max(1, n)
	for i := range w.chunks {
		w.chunks[i].AAD = w.aads[i*per : (i+1)*per]
	}
	if err := w.c.Seal(w.chunks); err != nil {
		w.err = err
		return err
	}
	if !w.begun {
		if _, err := w.w.Write(append(w.hdr[:], w.preamble...)); err != nil {
			w.err = err
			return err
		}
		w.begun = true
	}
	for i := range w.chunks {
		c := &w.chunks[i]
		if c.Err != nil {
			w.err = &ChunkError{Index: c.Index, Err: c.Err}
			return w.err
		}
		if len(c.Out) != len(c.In)+w.hdr.Overhead() {
			w.err = &ChunkError{Index: c.Index, Err: errors.New("the cipher returned a ciphertext of the wrong size (not AES-256-GCM?)")}
			return w.err
		}
		if _, err := w.w.Write(c.Out); err != nil {
			w.err = err
			return err
		}
	}
	w.index += uint64(n)
	clear(w.buf)
	w.buf = w.buf[:0]
	return nil
}

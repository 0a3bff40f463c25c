package keywarden

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"strings"

	"github.com/keywarden/keywarden/internal/stream"
	"github.com/keywarden/keywarden/internal/wire"
)

// Errors of a stream ciphertext that does not decrypt. Each comes inside
// a *StreamError naming the chunk (errors.Is matches them through it).
var (
	// ErrNotStream: the data does not start with a stream header.
	ErrNotStream = stream.ErrNotStream
	// ErrStreamTruncated: the data ends before the stream's final chunk.
	ErrStreamTruncated = stream.ErrTruncated
	// ErrStreamTrailing: more data follows the stream's final chunk.
	ErrStreamTrailing = stream.ErrTrailing
	// ErrStreamAuthentication: a chunk does not decrypt in its place:
	// altered, reordered, repeated, taken from another stream, or not
	// made with this key and additional data.
	ErrStreamAuthentication = stream.ErrAuthentication
	// ErrStreamMalformed: the stream's framing is invalid.
	ErrStreamMalformed = stream.ErrMalformed
)

// StreamError is the failure of one chunk of a stream: its Index (from 0)
// and what went wrong (one of the ErrStream errors, or the daemon's
// refusal).
type StreamError = stream.ChunkError

// StreamOptions tune EncryptWriter and DecryptReader. The zero value (or
// nil) means the defaults.
type StreamOptions struct {
	// ChunkSize is the plaintext size of each chunk a writer makes: a
	// power of two from 1 KiB to 512 KiB whose ciphertext fits in one of the
	// daemon's messages. The default, 64 KiB, fits every daemon. A reader
	// takes the size from the stream.
	ChunkSize int
	// Batch is how many chunks go to the daemon at once, in as many
	// requests as its limits need (default: 4 MiB of them, 64 chunks of
	// the default size). Memory is about twice Batch chunks.
	Batch int
	// DataKey makes EncryptWriter write an envelope stream ('K' 'W' 3):
	// the daemon makes a fresh data key for the stream and seals it under
	// the key (one operation, one audit record), and the chunks are
	// sealed with the data key in this process, at the speed of the
	// processor rather than of a round trip per batch. What it gives up
	// (docs/formats.md, "Envelope streams"): the data key is in this
	// process's memory while the stream is written or read, and whoever
	// copies it then can decrypt that stream later without the daemon.
	// A reader recognises either kind of stream whatever this says.
	DataKey bool
}

func (o *StreamOptions) internal() (*stream.Options, error) {
	s := &stream.Options{}
	if o == nil {
		return s, nil
	}
	if o.ChunkSize != 0 {
		if o.ChunkSize < 0 || bits.OnesCount(uint(o.ChunkSize)) != 1 {
			return nil, argError("encrypt", "the chunk size must be a power of two")
		}
		s.ChunkShift = bits.TrailingZeros(uint(o.ChunkSize))
		if s.ChunkShift < stream.MinChunkShift || s.ChunkShift > stream.MaxChunkShift {
			return nil, argError("encrypt", "the chunk size must be from %d to %d bytes", 1<<stream.MinChunkShift, 1<<stream.MaxChunkShift)
		}
	}
	s.Batch = o.Batch
	return s, nil
}

// IsStreamCiphertext reports whether data starts like a stream made by
// EncryptWriter ('K' 'W' 2) rather than a one-shot ciphertext ('K' 'W' 1).
func IsStreamCiphertext(data []byte) bool { return stream.IsStream(data) }

// EncryptWriter encrypts everything written to it with k, an AES-256-GCM
// key, into w, in the chunked stream format (docs/formats.md): each chunk
// is one encryption by the daemon, whose additional data binds the
// stream's random id, the chunk's index and whether it is the last, and
// aad. The key never leaves the daemon. Close must be called: it seals
// the final chunk, without which no reader accepts the stream.
type EncryptWriter struct {
	sw *stream.Writer
	dc wiper
}

// wiper is a stream cipher that holds outputs until told to wipe them.
type wiper interface{ wipe() }

// EncryptWriter starts a stream ciphertext written to w. Nothing is
// written to w until the first chunks are encrypted.
func (k *Key) EncryptWriter(ctx context.Context, w io.Writer, aad []byte, opts *StreamOptions) (*EncryptWriter, error) {
	so, err := opts.internal()
	if err != nil {
		return nil, err
	}
	if opts != nil && opts.DataKey {
		return k.envelopeWriter(ctx, w, aad, so)
	}
	dc, err := k.streamCipher(ctx, "encrypt", so.ChunkShift)
	if err != nil {
		return nil, err
	}
	sw, err := stream.NewWriter(dc, w, aad, so)
	if err != nil {
		return nil, err
	}
	return &EncryptWriter{sw: sw, dc: dc}, nil
}

// Write encrypts p, a batch of chunks at a time.
func (e *EncryptWriter) Write(p []byte) (int, error) { return e.sw.Write(p) }

// ReadFrom encrypts what it reads from r, to r's end (io.Copy uses it).
func (e *EncryptWriter) ReadFrom(r io.Reader) (int64, error) { return e.sw.ReadFrom(r) }

// Abort ends the stream without its final chunk, so that no reader
// accepts what was written as a whole stream, and wipes the plaintext
// and keys the writer holds. Call it instead of Close when the input
// could not be read to its end (ReadFrom, and so io.Copy, makes Close
// fail in that case by itself).
func (e *EncryptWriter) Abort() {
	e.sw.Abort()
	e.dc.wipe()
}

// Close encrypts and writes the rest, ending with the final chunk. It
// does not close the underlying writer.
func (e *EncryptWriter) Close() error {
	err := e.sw.Close()
	e.dc.wipe()
	return err
}

// DecryptReader decrypts a stream made by EncryptWriter. Read returns
// plaintext only from chunks that decrypted in their place, and io.EOF
// only after the final chunk did; any failure (truncation, reordering,
// repetition, a chunk from another stream, another key or additional
// data, tampering) is an error, a *StreamError naming the chunk. What was
// read before an error is then only a prefix of the plaintext, and must
// be discarded with the rest.
type DecryptReader struct {
	sr *stream.Reader
	dc wiper
}

// DecryptReader reads the stream's header from r and returns a reader of
// its plaintext.
func (k *Key) DecryptReader(ctx context.Context, r io.Reader, aad []byte, opts *StreamOptions) (*DecryptReader, error) {
	so, err := opts.internal()
	if err != nil {
		return nil, err
	}
	var b [stream.HeaderSize]byte
	n, err := io.ReadFull(r, b[:])
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, err
	}
	hdr, err := stream.ParseHeader(b[:n])
	if err != nil {
		return nil, err
	}
	if hdr.Envelope() {
		return k.envelopeReader(ctx, r, hdr, aad, so)
	}
	dc, err := k.streamCipher(ctx, "decrypt", int(hdr[3]))
	if err != nil {
		return nil, err
	}
	return &DecryptReader{sr: stream.NewReaderHeader(dc, r, hdr, aad, so), dc: dc}, nil
}

// Read returns plaintext.
func (d *DecryptReader) Read(p []byte) (int, error) { return d.sr.Read(p) }

// WriteTo writes the plaintext to w, chunk by chunk as each is
// authenticated (io.Copy uses it); its error is Read's.
func (d *DecryptReader) WriteTo(w io.Writer) (int64, error) { return d.sr.WriteTo(w) }

// Close wipes the plaintext the reader still holds. It does not close
// the underlying reader.
func (d *DecryptReader) Close() error {
	d.dc.wipe()
	return nil
}

// streamCipher checks that k can seal or open chunks of 2^shift bytes.
func (k *Key) streamCipher(ctx context.Context, op string, shift int) (*daemonCipher, error) {
	if t := k.Type(); t != AES256GCM {
		return nil, argError(op, "stream encryption needs an AES-256-GCM key, not %s", t)
	}
	if shift == 0 {
		shift = stream.DefaultChunkShift
	}
	if need := 1<<shift + stream.ChunkOverhead; need > k.c.MaxData() {
		return nil, argError(op, "chunks of %d bytes do not fit in this daemon's messages (at most %d bytes of data)", 1<<shift, k.c.MaxData())
	}
	return &daemonCipher{ctx: ctx, k: k, b: k.c.NewBatch()}, nil
}

// daemonCipher seals and opens chunks as the daemon's encrypt and
// decrypt operations, a batch of chunks at a time.
type daemonCipher struct {
	ctx context.Context
	k   *Key
	b   *Batch
	res []*BatchResult
}

func (d *daemonCipher) run(chunks []stream.Chunk, seal bool) error {
	d.wipe()
	for i := range chunks {
		c := &chunks[i]
		if seal {
			d.res = append(d.res, d.b.Encrypt(d.k, c.In, c.AAD))
		} else {
			d.res = append(d.res, d.b.Decrypt(d.k, c.In, c.AAD))
		}
	}
	if err := d.b.Do(d.ctx); err != nil {
		return err
	}
	for i, r := range d.res {
		chunks[i].Out, chunks[i].Err = r.data, r.err
		if !seal && r.err != nil && notThisChunk(r.err) {
			chunks[i].Err = stream.ErrAuthentication
		}
	}
	return nil
}

// notThisChunk reports a decryption refused because of the chunk itself:
// it does not authenticate, or it names a version the key lacks.
func notThisChunk(err error) bool {
	var e *Error
	if !errors.As(err, &e) {
		return false
	}
	return e.Code == CodeInvalidArgument || (e.Code == CodeNotFound && strings.Contains(e.Message, "version"))
}

func (d *daemonCipher) Seal(chunks []stream.Chunk) error { return d.run(chunks, true) }
func (d *daemonCipher) Open(chunks []stream.Chunk) error { return d.run(chunks, false) }

// wipe clears the outputs of the last call (plaintext, when opening) and
// forgets them.
func (d *daemonCipher) wipe() {
	for _, r := range d.res {
		clear(r.data)
	}
	clear(d.res)
	d.res = d.res[:0]
	d.b.Reset()
}

// envelopeWriter starts an envelope stream: the daemon makes its data key
// and seals it under k, bound to the stream's header and aad.
func (k *Key) envelopeWriter(ctx context.Context, w io.Writer, aad []byte, so *stream.Options) (*EncryptWriter, error) {
	if t := k.Type(); t != AES256GCM {
		return nil, argError("encrypt", "stream encryption needs an AES-256-GCM key, not %s", t)
	}
	shift := so.ChunkShift
	if shift == 0 {
		shift = stream.DefaultChunkShift
	}
	hdr, err := stream.NewEnvelopeHeader(shift)
	if err != nil {
		return nil, err
	}
	res, err := k.c.do(ctx, "data-key", &wire.Op{Op: &wire.Op_DataKey{DataKey: &wire.DataKey{
		Handle: k.handle, Length: stream.DataKeySize, Aad: stream.DataKeyAAD(nil, hdr, aad), Plaintext: true}}})
	if err != nil {
		return nil, err
	}
	dk := res.GetDataKey()
	c, err := stream.EnvelopeCipher(dk.GetPlaintext())
	clear(dk.GetPlaintext())
	if err != nil {
		return nil, err
	}
	pre, err := stream.Preamble(dk.GetCiphertext())
	if err != nil {
		return nil, err
	}
	ec := envelopeWiper{c}
	return &EncryptWriter{sw: stream.NewWriterHeader(c, w, hdr, pre, aad, so), dc: ec}, nil
}

// envelopeReader reads an envelope stream: the daemon opens its data key
// (a decryption under k, audited as one).
func (k *Key) envelopeReader(ctx context.Context, r io.Reader, hdr stream.Header, aad []byte, so *stream.Options) (*DecryptReader, error) {
	if t := k.Type(); t != AES256GCM {
		return nil, argError("decrypt", "stream decryption needs an AES-256-GCM key, not %s", t)
	}
	sr, err := stream.NewEnvelopeReader(r, hdr, aad, so, func(wrapped, dkAAD []byte) ([]byte, error) {
		dk, err := k.Decrypt(ctx, wrapped, dkAAD)
		if err != nil && notThisChunk(err) {
			return nil, fmt.Errorf("keywarden: the stream's data key does not open under this key and additional data: %w", stream.ErrAuthentication)
		}
		return dk, err
	})
	if err != nil {
		return nil, err
	}
	return &DecryptReader{sr: sr, dc: envelopeWiper{sr.Cipher()}}, nil
}

// envelopeWiper wipes an envelope stream's cipher's outputs.
type envelopeWiper struct{ c stream.Cipher }

func (e envelopeWiper) wipe() {
	if w, ok := e.c.(interface{ Wipe() }); ok {
		w.Wipe()
	}
}

package stream

import (
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
)

// The header: 'K' 'W' 2 (every chunk sealed by the daemon) or 'K' 'W' 3
// (an envelope stream: chunks sealed with a data key, see envelope.go) ‖
// chunk size (1: its base-2 logarithm) ‖ stream id (16 random bytes).
// One-shot ciphertexts start 'K' 'W' 1.
const (
	HeaderSize     = 3 + 1 + IDSize
	IDSize         = 16
	formatByte     = 0x02
	envelopeFormat = 0x03

	// ChunkOverhead is what the daemon's AES-GCM ciphertext adds to each
	// chunk: 'K' 'W' 1 ‖ key version (4) ‖ nonce (12), and the tag (16).
	ChunkOverhead = 7 + 12 + 16

	// MinChunkShift and MaxChunkShift bound the chunk sizes a reader
	// accepts: 1 KiB to 512 KiB of plaintext (a daemon's messages hold at
	// most 1 MiB, less what a request needs besides the data).
	MinChunkShift = 10
	MaxChunkShift = 19
	// DefaultChunkShift is the chunk size a Writer uses unless told
	// otherwise: 64 KiB, which fits in one message of every daemon (the
	// smallest message limit a daemon accepts is 64 KiB; a chunk's
	// ciphertext needs 64 KiB + 35 bytes plus the request's framing,
	// see docs/formats.md) — the default limit is 256 KiB.
	DefaultChunkShift = 16

	// BatchBytes is how much plaintext a Writer or Reader hands its
	// Cipher at once, in whole chunks (at least one): 64 chunks of the
	// default size. It bounds their memory, whatever the chunk size a
	// stream's header names.
	BatchBytes = 4 << 20
)

// Errors a Reader returns, each inside a *ChunkError naming the chunk
// where the stream stopped making sense (except ErrNotStream, which is
// about the header).
var (
	// ErrNotStream: the data does not start with a stream header.
	ErrNotStream = errors.New("not a keywarden stream (it does not start with 'K' 'W' 2 or 3)")
	// ErrTruncated: the data ends before the stream's final chunk.
	ErrTruncated = errors.New("the stream is truncated: it ends before its final chunk")
	// ErrTrailing: a chunk sealed as the final one is followed by more data.
	ErrTrailing = errors.New("data follows the stream's final chunk")
	// ErrAuthentication: a chunk does not open in its place: it was
	// altered, moved, repeated or taken from another stream, or the key
	// or additional data is not the one it was made with.
	ErrAuthentication = errors.New("the chunk does not authenticate here: altered, out of order, repeated, from another stream, or not this key and additional data")
	// ErrEnvelope: an envelope stream was given to a reader of streams
	// the daemon seals; it is opened with its data key (NewEnvelopeReader).
	ErrEnvelope = errors.New("keywarden: an envelope stream is opened with its data key (NewEnvelopeReader)")
	// ErrMalformed: the framing is invalid (an empty final chunk after
	// data, which no writer makes).
	ErrMalformed = errors.New("the stream is malformed")
)

// ChunkError is a failure of one chunk: Index counts from 0.
type ChunkError struct {
	Index uint64
	Err   error
}

func (e *ChunkError) Error() string {
	return fmt.Sprintf("keywarden: stream chunk %d: %s", e.Index, strings.TrimPrefix(e.Err.Error(), "keywarden: "))
}

func (e *ChunkError) Unwrap() error { return e.Err }

// Chunk is one chunk on its way through a Cipher.
type Chunk struct {
	Index uint64
	Final bool
	// AAD is the additional data the chunk is sealed with (see AAD).
	AAD []byte
	// In is the plaintext (Seal) or ciphertext (Open).
	In []byte
	// Out is set by the Cipher: the ciphertext or plaintext. It may point
	// into the Cipher's memory, valid until its next call.
	Out []byte
	// Err is set by the Cipher when this chunk failed. A chunk that does
	// not authenticate has an Err matching ErrAuthentication.
	Err error
}

// Cipher seals and opens chunks, each one AES-GCM operation in the
// daemon's ciphertext format, with Chunk.AAD as its additional data. A
// returned error means the chunks could not be processed at all (the
// daemon could not be reached); the failure of a chunk goes in its Err.
type Cipher interface {
	Seal(chunks []Chunk) error
	Open(chunks []Chunk) error
}

// Header is a stream's header.
type Header [HeaderSize]byte

// NewHeader makes the header of a stream whose chunks the daemon seals,
// with a fresh random stream id.
func NewHeader(shift int) (Header, error) { return newHeader(formatByte, shift) }

// NewEnvelopeHeader makes the header of an envelope stream, with a fresh
// random stream id.
func NewEnvelopeHeader(shift int) (Header, error) { return newHeader(envelopeFormat, shift) }

func newHeader(format byte, shift int) (Header, error) {
	var h Header
	if shift < MinChunkShift || shift > MaxChunkShift {
		return h, fmt.Errorf("keywarden: stream chunk size 2^%d out of range 2^%d to 2^%d", shift, MinChunkShift, MaxChunkShift)
	}
	h[0], h[1], h[2], h[3] = 'K', 'W', format, byte(shift)
	if _, err := rand.Read(h[4:]); err != nil {
		return h, err
	}
	return h, nil
}

// ParseHeader checks the first HeaderSize bytes of a stream.
func ParseHeader(b []byte) (Header, error) {
	var h Header
	if !IsStream(b) {
		return h, ErrNotStream
	}
	if len(b) < HeaderSize {
		return h, fmt.Errorf("keywarden: %w: the stream header is cut short", ErrTruncated)
	}
	copy(h[:], b)
	if s := int(h[3]); s < MinChunkShift || s > MaxChunkShift {
		return h, fmt.Errorf("keywarden: %w: chunk size 2^%d out of range 2^%d to 2^%d", ErrMalformed, s, MinChunkShift, MaxChunkShift)
	}
	return h, nil
}

// IsStream reports whether b starts like a stream ('K' 'W' 2 or 3).
func IsStream(b []byte) bool {
	return len(b) >= 3 && b[0] == 'K' && b[1] == 'W' && (b[2] == formatByte || b[2] == envelopeFormat)
}

// ChunkSize is the plaintext size of every chunk but the last.
func (h *Header) ChunkSize() int { return 1 << h[3] }

// Envelope reports whether the stream is an envelope stream, its chunks
// sealed with a data key rather than by the daemon.
func (h *Header) Envelope() bool { return h[2] == envelopeFormat }

// Overhead is what sealing adds to each chunk of the stream.
func (h *Header) Overhead() int {
	if h.Envelope() {
		return EnvelopeOverhead
	}
	return ChunkOverhead
}

// AAD appends to dst the additional data of chunk index: the header,
// the index (8 bytes, big-endian), 1 if it is the final chunk and 0 if
// not, and the caller's additional data.
func (h *Header) AAD(dst []byte, index uint64, final bool, aad []byte) []byte {
	dst = append(dst, h[:]...)
	dst = binary.BigEndian.AppendUint64(dst, index)
	f := byte(0)
	if final {
		f = 1
	}
	dst = append(dst, f)
	return append(dst, aad...)
}

// LocalCipher seals and opens chunks in this process with aead, an
// AES-256-GCM key (version names it in the chunks it seals, as the
// daemon's key versions do; Open refuses chunks of another version).
func LocalCipher(aead cipher.AEAD, version uint32) Cipher {
	return &localCipher{aead: aead, version: version}
}

type localCipher struct {
	aead    cipher.AEAD
	version uint32
	buf     []byte
}

func (l *localCipher) Seal(chunks []Chunk) error {
	l.buf = l.buf[:0]
	var offs []int
	for i := range chunks {
		c := &chunks[i]
		start := len(l.buf)
		l.buf = append(l.buf, 'K', 'W', 1)
		l.buf = binary.BigEndian.AppendUint32(l.buf, l.version)
		nonce := len(l.buf)
		l.buf = append(l.buf, make([]byte, 12)...)
		if _, err := rand.Read(l.buf[nonce:]); err != nil {
			return err
		}
		l.buf = l.aead.Seal(l.buf, l.buf[nonce:nonce+12], c.In, c.AAD)
		offs = append(offs, start, len(l.buf))
	}
	for i := range chunks {
		chunks[i].Out, chunks[i].Err = l.buf[offs[2*i]:offs[2*i+1]], nil
	}
	return nil
}

func (l *localCipher) Open(chunks []Chunk) error {
	l.buf = l.buf[:0]
	var offs []int
	for i := range chunks {
		c := &chunks[i]
		start := len(l.buf)
		ct := c.In
		c.Err = nil
		if len(ct) < ChunkOverhead || ct[0] != 'K' || ct[1] != 'W' || ct[2] != 1 || binary.BigEndian.Uint32(ct[3:7]) != l.version {
			c.Err = ErrAuthentication
		} else if out, err := l.aead.Open(l.buf, ct[7:19], ct[19:], c.AAD); err != nil {
			c.Err = ErrAuthentication
		} else {
			l.buf = out
		}
		offs = append(offs, start, len(l.buf))
	}
	for i := range chunks {
		if chunks[i].Err == nil {
			chunks[i].Out = l.buf[offs[2*i]:offs[2*i+1]]
		}
	}
	return nil
}

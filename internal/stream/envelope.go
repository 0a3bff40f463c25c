package stream

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sync"
)

// Envelope streams ('K' 'W' 3) are for data too large to send through
// the daemon at the speed of a disk: the daemon makes a fresh data key
// for each stream and returns it both in plain and sealed under the named
// key; the chunks are sealed with the data key in the caller's process,
// and the sealed data key follows the header. Reading one starts by
// asking the daemon to open the data key. The format:
//
//	header (20) ‖ wrapped key length (2, big-endian) ‖ wrapped key ‖ chunks
//
// The wrapped key is a one-shot ciphertext of the named key whose
// additional data is DataKeyAAD. Chunk i is AES-256-GCM under the data
// key, with a random nonce that the chunk carries and the same additional
// data as a daemon-sealed stream's chunk (Header.AAD): nonce ‖ ciphertext
// ‖ tag, EnvelopeOverhead bytes more than its plaintext. The nonce is not
// derived from the chunk's place: a writer cloned mid-stream (a VM
// restored twice from one snapshot) goes on in both copies with the same
// data key and the same chunk numbers, and must still not seal two
// plaintexts under one nonce. The kernel reseeds the random source the
// nonces come from when a VM is cloned.
const (
	// EnvelopeOverhead is what sealing adds to each chunk of an envelope
	// stream: the nonce and the tag.
	EnvelopeOverhead = nonceSize + 16
	nonceSize        = 12
	// DataKeySize is the size of an envelope stream's data key.
	DataKeySize = 32
	// MaxWrappedKey bounds the wrapped key a reader accepts.
	MaxWrappedKey = 1024
)

// dataKeyLabel starts a data key's additional data, so that it differs
// from that of anything else sealed under the named key.
const dataKeyLabel = "keywarden stream data key\x00"

// DataKeyAAD appends to dst the additional data the data key of the
// envelope stream with header h is sealed with under the named key: a
// label, the header and the caller's additional data.
func DataKeyAAD(dst []byte, h Header, aad []byte) []byte {
	dst = append(dst, dataKeyLabel...)
	dst = append(dst, h[:]...)
	return append(dst, aad...)
}

// Preamble is what follows an envelope stream's header: the wrapped
// key's length and the wrapped key.
func Preamble(wrapped []byte) ([]byte, error) {
	if len(wrapped) == 0 || len(wrapped) > MaxWrappedKey {
		return nil, fmt.Errorf("keywarden: a wrapped data key of %d bytes (1 to %d)", len(wrapped), MaxWrappedKey)
	}
	return append(binary.BigEndian.AppendUint16(nil, uint16(len(wrapped))), wrapped...), nil
}

// ReadWrappedKey reads the wrapped data key that follows an envelope
// stream's header in r.
func ReadWrappedKey(r io.Reader) ([]byte, error) {
	var l [2]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return nil, wrappedKeyError(err)
	}
	n := int(binary.BigEndian.Uint16(l[:]))
	if n == 0 || n > MaxWrappedKey {
		return nil, fmt.Errorf("keywarden: %w: a wrapped data key of %d bytes (1 to %d)", ErrMalformed, n, MaxWrappedKey)
	}
	w := make([]byte, n)
	if _, err := io.ReadFull(r, w); err != nil {
		return nil, wrappedKeyError(err)
	}
	return w, nil
}

func wrappedKeyError(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return fmt.Errorf("keywarden: %w: the stream ends inside its wrapped data key", ErrTruncated)
	}
	return err
}

// NewEnvelopeReader returns a Reader of the envelope stream whose header
// is hdr (already read from r), reading its wrapped data key from r and
// opening it with open (the daemon's decryption under the named key, with
// DataKeyAAD as the additional data). The data key open returns is wiped
// once the chunks' cipher is made from it.
func NewEnvelopeReader(r io.Reader, hdr Header, aad []byte, opts *Options, open func(wrapped, dataKeyAAD []byte) ([]byte, error)) (*Reader, error) {
	if !hdr.Envelope() {
		return nil, ErrNotStream
	}
	wrapped, err := ReadWrappedKey(r)
	if err != nil {
		return nil, err
	}
	dk, err := open(wrapped, DataKeyAAD(nil, hdr, aad))
	if err != nil {
		return nil, err
	}
	c, err := EnvelopeCipher(dk)
	clear(dk)
	if err != nil {
		return nil, err
	}
	return NewReaderHeader(c, r, hdr, aad, opts), nil
}

// EnvelopeCipher seals and opens the chunks of an envelope stream with
// its data key (DataKeySize bytes; the caller may wipe it afterwards).
func EnvelopeCipher(dataKey []byte) (Cipher, error) {
	if len(dataKey) != DataKeySize {
		return nil, fmt.Errorf("keywarden: a stream data key of %d bytes (want %d)", len(dataKey), DataKeySize)
	}
	b, err := aes.NewCipher(dataKey)
	if err != nil {
		return nil, err
	}
	g, err := cipher.NewGCM(b)
	if err != nil {
		return nil, err
	}
	return &envelopeCipher{aead: g}, nil
}

type envelopeCipher struct {
	aead cipher.AEAD
	buf  []byte
}

// run seals or opens chunks, each into its own place in buf, on as many
// goroutines as there are processors when the batch is large enough to
// be worth it: a chunk's output size follows from its input's, so the
// places are known before any work starts.
func (e *envelopeCipher) run(chunks []Chunk, seal bool) {
	need, offs := 0, make([]int, len(chunks)+1)
	for i := range chunks {
		n := len(chunks[i].In)
		if seal {
			n += EnvelopeOverhead
		} else {
			n = max(0, n-EnvelopeOverhead)
		}
		need += n
		offs[i+1] = need
	}
	clear(e.buf[:cap(e.buf)])
	if cap(e.buf) < need {
		e.buf = make([]byte, need)
	}
	e.buf = e.buf[:need]
	if seal {
		// Every chunk's nonce, fresh from the random source, in its place.
		for i := range chunks {
			rand.Read(e.buf[offs[i] : offs[i]+nonceSize])
		}
	}
	one := func(i int) {
		c := &chunks[i]
		c.Out, c.Err = nil, nil
		if seal {
			dst := e.buf[offs[i] : offs[i]+nonceSize : offs[i+1]]
			c.Out = e.aead.Seal(dst, dst, c.In, c.AAD)
			return
		}
		if len(c.In) < EnvelopeOverhead {
			c.Err = ErrAuthentication
			return
		}
		dst := e.buf[offs[i]:offs[i]:offs[i+1]]
		out, err := e.aead.Open(dst, c.In[:nonceSize], c.In[nonceSize:], c.AAD)
		if err != nil {
			c.Err = ErrAuthentication
			return
		}
		c.Out = out[:len(out):len(out)]
	}
	workers := min(runtime.GOMAXPROCS(0), len(chunks))
	if workers < 2 || need < parallelBytes {
		for i := range chunks {
			one(i)
		}
		return
	}
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := w; i < len(chunks); i += workers {
				one(i)
			}
		})
	}
	wg.Wait()
}

// parallelBytes is the batch size from which run spreads chunks over
// processors.
const parallelBytes = 256 << 10

// Wipe clears the outputs of the last call (plaintext, when opening).
func (e *envelopeCipher) Wipe() { clear(e.buf[:cap(e.buf)]) }

func (e *envelopeCipher) Seal(chunks []Chunk) error { e.run(chunks, true); return nil }
func (e *envelopeCipher) Open(chunks []Chunk) error { e.run(chunks, false); return nil }

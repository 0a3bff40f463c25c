package kdf

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"time"
)

// The worker protocol (docs/kdf.md, "Worker protocol").
//
// Each direction is a byte stream that starts with the 4-byte magic and
// continues with frames:
//
//	type (1 byte) | length (4 bytes, big-endian) | payload (length bytes)
//
// Daemon to worker: one 'R' request, then any number of 'C' challenges.
// Worker to daemon: one 'A' answer per challenge, then one 'D' result or
// one 'E' error, and the worker exits. The worker writes every frame with
// one write under one lock, so answers and the result never interleave.
const (
	frameRequest   = 'R'
	frameChallenge = 'C'
	frameAnswer    = 'A'
	frameResult    = 'D'
	frameError     = 'E'
)

// magic starts both streams: "KWK" and the protocol version, 1.
var magic = [4]byte{'K', 'W', 'K', 1}

const (
	frameHeader = 5
	// maxFrame bounds a frame's payload: the request is the largest (a
	// passphrase of MaxPasswordLen plus salt, expected hash and fixed
	// fields).
	maxFrame = MaxPasswordLen + MaxSaltLen + MaxVerifyHashLen + 128
	// challengeLen is the size of a challenge and of an answer.
	challengeLen = sha256.Size
	// maxErrorLen bounds an error frame's text.
	maxErrorLen = 256
)

// op is what a request asks of the worker.
type op uint8

const (
	// opDerive returns keyLen bytes of Argon2id output.
	opDerive op = 1
	// opVerify compares Argon2id output with expected in constant time
	// and returns one byte: 1 for a match, 0 otherwise.
	opVerify op = 2
	// opMeasure runs Argon2id and returns only how long it took.
	opMeasure op = 3
)

func (o op) String() string {
	switch o {
	case opDerive:
		return "derive"
	case opVerify:
		return "verify"
	case opMeasure:
		return "measure"
	}
	return fmt.Sprintf("op(%d)", uint8(o))
}

// request is the one request a worker serves. Password, salt and
// expected alias the buffer the request was decoded from.
type request struct {
	op       op
	params   Params
	keyLen   uint32
	seed     [challengeLen]byte // the watchdog chain's first "answer"
	salt     []byte
	password []byte
	expected []byte
}

var errMalformed = errors.New("malformed frame")

// appendRequest appends r's payload to b.
func appendRequest(b []byte, r *request) []byte {
	b = append(b, byte(r.op))
	b = binary.BigEndian.AppendUint32(b, r.params.Time)
	b = binary.BigEndian.AppendUint32(b, r.params.MemoryKiB)
	b = append(b, r.params.Threads)
	b = binary.BigEndian.AppendUint32(b, r.keyLen)
	b = append(b, r.seed[:]...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.salt)))
	b = append(b, r.salt...)
	b = binary.BigEndian.AppendUint32(b, uint32(len(r.password)))
	b = append(b, r.password...)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.expected)))
	b = append(b, r.expected...)
	return b
}

// decodeRequest parses a request payload. The slices of the result alias
// p. It checks the request's shape (lengths within the package's bounds,
// nothing left over) and Params.Check without a memory maximum: the
// daemon checked that before starting the worker.
func decodeRequest(p []byte) (request, error) {
	var r request
	d := decoder{b: p}
	r.op = op(d.u8())
	r.params.Time = d.u32()
	r.params.MemoryKiB = d.u32()
	r.params.Threads = d.u8()
	r.keyLen = d.u32()
	copy(r.seed[:], d.bytes(challengeLen))
	r.salt = d.bytes(int(d.u16()))
	r.password = d.bytes(int(d.u32()))
	r.expected = d.bytes(int(d.u16()))
	if d.err || len(d.b) != 0 {
		return request{}, errMalformed
	}
	switch {
	case r.op != opDerive && r.op != opVerify && r.op != opMeasure:
		return request{}, fmt.Errorf("unknown operation %d", r.op)
	case r.params.Check(^uint32(0)) != nil:
		return request{}, errors.New("invalid parameters")
	case len(r.salt) < MinSaltLen || len(r.salt) > MaxSaltLen:
		return request{}, errors.New("invalid salt length")
	case len(r.password) > MaxPasswordLen:
		return request{}, errors.New("password too long")
	case r.op == opDerive && (r.keyLen < 1 || r.keyLen > MaxKeyLen):
		return request{}, errors.New("invalid key length")
	case r.op == opVerify && (len(r.expected) < MinVerifyHashLen || len(r.expected) > MaxVerifyHashLen):
		return request{}, errors.New("invalid expected hash length")
	case r.op != opVerify && len(r.expected) != 0:
		return request{}, errors.New("unexpected hash")
	}
	return r, nil
}

// result is what a worker returns.
type result struct {
	// elapsed is how long Argon2id took in the worker.
	elapsed time.Duration
	// maxRSSKiB is the worker's peak resident set (getrusage).
	maxRSSKiB uint64
	// out is the derived bytes (opDerive), one match byte (opVerify), or
	// empty (opMeasure).
	out []byte
}

func appendResult(b []byte, r *result) []byte {
	b = binary.BigEndian.AppendUint64(b, uint64(r.elapsed))
	b = binary.BigEndian.AppendUint64(b, r.maxRSSKiB)
	b = binary.BigEndian.AppendUint16(b, uint16(len(r.out)))
	return append(b, r.out...)
}

// decodeResult parses a result payload; out aliases p.
func decodeResult(p []byte) (result, error) {
	d := decoder{b: p}
	var r result
	r.elapsed = time.Duration(d.u64())
	r.maxRSSKiB = d.u64()
	r.out = d.bytes(int(d.u16()))
	if d.err || len(d.b) != 0 || r.elapsed < 0 {
		return result{}, errMalformed
	}
	return r, nil
}

// decoder reads big-endian fields; a short read sets err and yields zeros.
type decoder struct {
	b   []byte
	err bool
}

func (d *decoder) bytes(n int) []byte {
	if d.err || n < 0 || n > len(d.b) {
		d.err = true
		return nil
	}
	v := d.b[:n:n]
	d.b = d.b[n:]
	return v
}

func (d *decoder) u8() uint8 {
	if b := d.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (d *decoder) u16() uint16 {
	if b := d.bytes(2); b != nil {
		return binary.BigEndian.Uint16(b)
	}
	return 0
}

func (d *decoder) u32() uint32 {
	if b := d.bytes(4); b != nil {
		return binary.BigEndian.Uint32(b)
	}
	return 0
}

func (d *decoder) u64() uint64 {
	if b := d.bytes(8); b != nil {
		return binary.BigEndian.Uint64(b)
	}
	return 0
}

// appendFrame appends a whole frame to b.
func appendFrame(b []byte, typ byte, payload []byte) []byte {
	b = append(b, typ)
	b = binary.BigEndian.AppendUint32(b, uint32(len(payload)))
	return append(b, payload...)
}

// readMagic reads and checks the start of a stream.
func readMagic(r io.Reader) error {
	var m [len(magic)]byte
	if _, err := io.ReadFull(r, m[:]); err != nil {
		return err
	}
	if m != magic {
		return errors.New("not a keywarden KDF worker stream")
	}
	return nil
}

// readFrame reads one frame whose payload is at most max bytes into buf
// (grown if needed) and returns its type and payload, which aliases the
// returned buffer.
func readFrame(r io.Reader, buf []byte, max int) (typ byte, payload, newBuf []byte, err error) {
	var h [frameHeader]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, buf, err
	}
	n := binary.BigEndian.Uint32(h[1:])
	if uint64(n) > uint64(max) {
		return 0, nil, buf, fmt.Errorf("frame of %d bytes exceeds %d", n, max)
	}
	if cap(buf) < int(n) {
		clear(buf[:cap(buf)])
		buf = make([]byte, n)
	}
	buf = buf[:n]
	if _, err := io.ReadFull(r, buf); err != nil {
		if errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return 0, nil, buf, err
	}
	return h[0], buf, buf, nil
}

// chain computes the watchdog answer to challenge: HMAC-SHA256 keyed with
// the previous answer (the request's seed for the first challenge). Only
// a worker that has seen every challenge in order can answer, so a stale
// or replayed answer is detected.
func chain(prev *[challengeLen]byte, challenge []byte) [challengeLen]byte {
	m := hmac.New(sha256.New, prev[:])
	m.Write(challenge)
	var out [challengeLen]byte
	m.Sum(out[:0])
	return out
}

package kdf

import (
	"bytes"
	"encoding/binary"
	"io"
	"testing"
	"time"
)

func sampleRequest() request {
	r := request{op: opVerify, params: Params{Time: 2, MemoryKiB: 64, Threads: 1}, keyLen: 0,
		salt: []byte("somesalt"), password: []byte("password"), expected: bytes.Repeat([]byte{7}, 32)}
	for i := range r.seed {
		r.seed[i] = byte(i)
	}
	return r
}

func TestRequestRoundTrip(t *testing.T) {
	for _, r := range []request{
		sampleRequest(),
		{op: opDerive, params: Params{1, 8, 1}, keyLen: 64, salt: make([]byte, MaxSaltLen), password: make([]byte, MaxPasswordLen)},
		{op: opMeasure, params: Params{MaxTime, 1 << 20, MaxThreads}, salt: make([]byte, MinSaltLen), password: []byte("x")},
	} {
		p := appendRequest(nil, &r)
		if len(p)+frameHeader > maxFrame+frameHeader {
			t.Fatalf("request of %d bytes exceeds the frame limit %d", len(p), maxFrame)
		}
		got, err := decodeRequest(p)
		if err != nil {
			t.Fatal(err)
		}
		if got.op != r.op || got.params != r.params || got.keyLen != r.keyLen || got.seed != r.seed ||
			!bytes.Equal(got.salt, r.salt) || !bytes.Equal(got.password, r.password) || !bytes.Equal(got.expected, r.expected) {
			t.Fatalf("round trip changed the request: %+v", got)
		}
	}
}

func TestDecodeRequestRejects(t *testing.T) {
	good := sampleRequest()
	mutate := func(f func(r *request)) []byte {
		r := sampleRequest()
		f(&r)
		return appendRequest(nil, &r)
	}
	full := appendRequest(nil, &good)
	for name, p := range map[string][]byte{
		"empty":        nil,
		"truncated":    full[:len(full)-1],
		"trailing":     append(append([]byte{}, full...), 0),
		"unknown op":   mutate(func(r *request) { r.op = 9 }),
		"time 0":       mutate(func(r *request) { r.params.Time = 0 }),
		"threads 0":    mutate(func(r *request) { r.params.Threads = 0 }),
		"memory small": mutate(func(r *request) { r.params.Threads = 4; r.params.MemoryKiB = 31 }),
		"short salt":   mutate(func(r *request) { r.salt = r.salt[:7] }),
		"no expected":  mutate(func(r *request) { r.expected = nil }),
		"derive len 0": mutate(func(r *request) { r.op = opDerive; r.expected = nil; r.keyLen = 0 }),
		"derive+hash":  mutate(func(r *request) { r.op = opDerive; r.keyLen = 32 }),
	} {
		if _, err := decodeRequest(p); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestResultRoundTrip(t *testing.T) {
	r := result{elapsed: 1234 * time.Millisecond, maxRSSKiB: 5000, out: []byte("key bytes")}
	got, err := decodeResult(appendResult(nil, &r))
	if err != nil || got.elapsed != r.elapsed || got.maxRSSKiB != r.maxRSSKiB || !bytes.Equal(got.out, r.out) {
		t.Fatalf("%+v, %v", got, err)
	}
	if _, err := decodeResult([]byte{1, 2, 3}); err == nil {
		t.Fatal("short result accepted")
	}
}

func TestReadFrame(t *testing.T) {
	var stream []byte
	stream = appendFrame(stream, frameChallenge, bytes.Repeat([]byte{1}, challengeLen))
	stream = appendFrame(stream, frameResult, []byte("xyz"))
	r := bytes.NewReader(stream)
	typ, p, buf, err := readFrame(r, nil, 64)
	if err != nil || typ != frameChallenge || len(p) != challengeLen {
		t.Fatalf("%c %d %v", typ, len(p), err)
	}
	typ, p, _, err = readFrame(r, buf, 64)
	if err != nil || typ != frameResult || string(p) != "xyz" {
		t.Fatalf("%c %q %v", typ, p, err)
	}
	if _, _, _, err := readFrame(r, nil, 64); err != io.EOF {
		t.Fatalf("at the end: %v", err)
	}
	// A length over the limit is refused before anything is allocated.
	big := binary.BigEndian.AppendUint32([]byte{frameRequest}, 1<<31)
	if _, _, _, err := readFrame(bytes.NewReader(big), nil, maxFrame); err == nil {
		t.Fatal("oversized frame accepted")
	}
	if _, _, _, err := readFrame(bytes.NewReader(stream[:10]), nil, 64); err != io.ErrUnexpectedEOF {
		t.Fatalf("truncated frame: %v", err)
	}
}

// TestChain: the watchdog answer depends on every earlier challenge.
func TestChain(t *testing.T) {
	var seed [challengeLen]byte
	c1, c2 := []byte("challenge one"), []byte("challenge two")
	a1 := chain(&seed, c1)
	a2 := chain(&a1, c2)
	if b2 := chain(&seed, c2); b2 == a2 {
		t.Fatal("an answer that skips a challenge matches")
	}
	if a1 == a2 {
		t.Fatal("answers repeat")
	}
}

// FuzzWorkerStream feeds arbitrary bytes to the worker-side decoder: the
// magic, then frames, each request decoded. It must never panic or
// allocate beyond the frame limit.
func FuzzWorkerStream(f *testing.F) {
	r := sampleRequest()
	good := appendFrame(append([]byte{}, magic[:]...), frameRequest, appendRequest(nil, &r))
	f.Add(good)
	f.Add(appendFrame(append([]byte{}, good...), frameChallenge, make([]byte, challengeLen)))
	f.Add(appendFrame(append([]byte{}, magic[:]...), frameResult, appendResult(nil, &result{out: []byte{1}})))
	f.Add([]byte("KWK\x01R\xff\xff\xff\xff"))
	f.Fuzz(func(t *testing.T, b []byte) {
		rd := bytes.NewReader(b)
		if readMagic(rd) != nil {
			return
		}
		var buf []byte
		for {
			typ, p, nb, err := readFrame(rd, buf, maxFrame)
			buf = nb
			if err != nil {
				return
			}
			if len(p) > maxFrame {
				t.Fatalf("payload of %d bytes", len(p))
			}
			switch typ {
			case frameRequest:
				if req, err := decodeRequest(p); err == nil {
					if again := appendRequest(nil, &req); !bytes.Equal(again, p) {
						t.Fatalf("request re-encodes differently")
					}
				}
			case frameResult:
				decodeResult(p)
			}
		}
	})
}

package keywarden_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"io"
	"testing"

	"github.com/keywarden/keywarden"
)

func aesKey(t *testing.T, c *keywarden.Client) *keywarden.Key {
	t.Helper()
	k, err := c.Generate(context.Background(), keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func encryptStream(t *testing.T, k *keywarden.Key, pt, aad []byte, opts *keywarden.StreamOptions) []byte {
	t.Helper()
	var out bytes.Buffer
	w, err := k.EncryptWriter(context.Background(), &out, aad, opts)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.Copy(w, bytes.NewReader(pt)); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return out.Bytes()
}

func decryptStream(k *keywarden.Key, ct, aad []byte) ([]byte, error) {
	r, err := k.DecryptReader(context.Background(), bytes.NewReader(ct), aad, nil)
	if err != nil {
		return nil, err
	}
	defer r.Close()
	return io.ReadAll(r)
}

func TestEncryptWriterRoundTrip(t *testing.T) {
	c := dial(t)
	k := aesKey(t, c)
	small := &keywarden.StreamOptions{ChunkSize: 4096, Batch: 3}
	for _, n := range []int{0, 1, 4095, 4096, 4097, 3*4096 + 1, 64<<10 - 1, 64 << 10, 64<<10 + 1, 5<<20 + 3} {
		for _, opts := range []*keywarden.StreamOptions{nil, small} {
			pt := make([]byte, n)
			rand.Read(pt)
			ct := encryptStream(t, k, pt, []byte("label"), opts)
			if !keywarden.IsStreamCiphertext(ct) {
				t.Fatalf("n=%d: no stream header", n)
			}
			got, err := decryptStream(k, ct, []byte("label"))
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("n=%d opts=%v: %d bytes, %v", n, opts, len(got), err)
			}
		}
	}
}

// Each chunk is an ordinary ciphertext of the key, with the documented
// additional data: header ‖ index ‖ final ‖ aad.
func TestStreamChunkIsOneShotCiphertext(t *testing.T) {
	c := dial(t)
	k := aesKey(t, c)
	pt := bytes.Repeat([]byte("x"), 4096+10)
	ct := encryptStream(t, k, pt, []byte("aad"), &keywarden.StreamOptions{ChunkSize: 4096})
	hdr := ct[:20]
	if hdr[3] != 12 {
		t.Fatalf("chunk size byte %d, want 12", hdr[3])
	}
	chunk1 := ct[20+4096+35:]
	ad := append(bytes.Clone(hdr), binary.BigEndian.AppendUint64(nil, 1)...)
	ad = append(ad, 1)
	ad = append(ad, "aad"...)
	got, err := k.Decrypt(context.Background(), chunk1, ad)
	if err != nil || !bytes.Equal(got, pt[4096:]) {
		t.Fatalf("chunk 1 as a one-shot ciphertext: %q, %v", got, err)
	}
}

// Attacks on streams through the daemon: each fails, naming the chunk.
func TestDecryptReaderAttacks(t *testing.T) {
	c := dial(t)
	k := aesKey(t, c)
	other := aesKey(t, c)
	const cs = 4096
	opts := &keywarden.StreamOptions{ChunkSize: cs, Batch: 2}
	pt := make([]byte, 5*cs+100)
	rand.Read(pt)
	a := encryptStream(t, k, pt, nil, opts)
	b := encryptStream(t, k, pt, nil, opts)
	o := encryptStream(t, other, pt, nil, opts)
	at := func(s []byte, i int) int { return 20 + i*(cs+35) }
	ch := func(s []byte, i int) []byte { return s[at(s, i):min(at(s, i+1), len(s))] }
	cat := func(p ...[]byte) []byte { return bytes.Join(p, nil) }
	cases := []struct {
		name  string
		data  []byte
		aad   string
		want  error
		chunk uint64
	}{
		{"truncated", a[:at(a, 3)], "", keywarden.ErrStreamTruncated, 2},
		{"final chunk removed", a[:at(a, 5)], "", keywarden.ErrStreamTruncated, 4},
		{"reordered", cat(a[:at(a, 1)], ch(a, 2), ch(a, 1), a[at(a, 3):]), "", keywarden.ErrStreamAuthentication, 1},
		{"duplicated", cat(a[:at(a, 2)], ch(a, 1), a[at(a, 2):]), "", keywarden.ErrStreamAuthentication, 2},
		{"spliced from another stream", cat(a[:at(a, 3)], ch(b, 3), a[at(a, 4):]), "", keywarden.ErrStreamAuthentication, 3},
		{"a chunk from another key", cat(a[:at(a, 2)], ch(o, 2), a[at(a, 3):]), "", keywarden.ErrStreamAuthentication, 2},
		{"wrong additional data", a, "x", keywarden.ErrStreamAuthentication, 0},
	}
	for _, tc := range cases {
		got, err := decryptStream(k, tc.data, []byte(tc.aad))
		var se *keywarden.StreamError
		if !errors.Is(err, tc.want) || !errors.As(err, &se) || se.Index != tc.chunk {
			t.Errorf("%s: %v; want %v at chunk %d", tc.name, err, tc.want, tc.chunk)
		}
		if !bytes.Equal(got, pt[:len(got)]) || len(got) > int(tc.chunk)*cs {
			t.Errorf("%s: %d bytes returned", tc.name, len(got))
		}
	}
	if _, err := decryptStream(k, []byte("KW\x01abc"), nil); !errors.Is(err, keywarden.ErrNotStream) {
		t.Errorf("one-shot given as stream: %v", err)
	}
}

func TestStreamNeedsAESKey(t *testing.T) {
	c := dial(t)
	ctx := context.Background()
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.RSA2048, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := k.EncryptWriter(ctx, io.Discard, nil, nil); !errors.Is(err, keywarden.ErrInvalidArgument) {
		t.Fatalf("RSA key: %v", err)
	}
	a := aesKey(t, c)
	if _, err := a.EncryptWriter(ctx, io.Discard, nil, &keywarden.StreamOptions{ChunkSize: 1000}); err == nil {
		t.Fatal("chunk size 1000 accepted")
	}
	if _, err := a.EncryptWriter(ctx, io.Discard, nil, &keywarden.StreamOptions{ChunkSize: 1 << 19}); err == nil { // 512 KiB: more than a default message
		t.Fatal("chunks larger than a message accepted")
	}
}

// Envelope streams: the daemon makes and seals the data key, the chunks
// are sealed here; a reader tells the two kinds apart by themselves.
func TestEnvelopeStreamRoundTrip(t *testing.T) {
	c := dial(t)
	k := aesKey(t, c)
	for _, n := range []int{0, 1, 4097, 64<<10 + 1, 5<<20 + 3} {
		for _, opts := range []*keywarden.StreamOptions{{DataKey: true}, {DataKey: true, ChunkSize: 4096, Batch: 3}} {
			pt := make([]byte, n)
			rand.Read(pt)
			ct := encryptStream(t, k, pt, []byte("label"), opts)
			if !keywarden.IsStreamCiphertext(ct) || ct[2] != 3 {
				t.Fatalf("n=%d: not an envelope stream header: % x", n, ct[:3])
			}
			got, err := decryptStream(k, ct, []byte("label"))
			if err != nil || !bytes.Equal(got, pt) {
				t.Fatalf("n=%d opts=%+v: %d bytes, %v", n, opts, len(got), err)
			}
		}
	}
}

// The data key opens only with the key that sealed it, the stream's own
// header and the additional data; a key without decrypt usage cannot read
// the stream; chunks are bound to their place as in any stream.
func TestEnvelopeStreamAttacks(t *testing.T) {
	c := dial(t)
	ctx := context.Background()
	k := aesKey(t, c)
	other := aesKey(t, c)
	const cs = 4096
	opts := &keywarden.StreamOptions{DataKey: true, ChunkSize: cs, Batch: 2}
	pt := make([]byte, 5*cs+100)
	rand.Read(pt)
	a := encryptStream(t, k, pt, nil, opts)
	b := encryptStream(t, k, pt, nil, opts)
	pre := 20 + 2 + int(binary.BigEndian.Uint16(a[20:22]))
	at := func(i int) int { return pre + i*(cs+28) } // a chunk: nonce (12) ‖ ciphertext ‖ tag (16)
	ch := func(s []byte, i int) []byte { return s[at(i):min(at(i+1), len(s))] }
	cat := func(p ...[]byte) []byte { return bytes.Join(p, nil) }
	for _, tc := range []struct {
		name string
		key  *keywarden.Key
		data []byte
		aad  string
	}{
		{"another key", other, a, ""},
		{"wrong additional data", k, a, "x"},
		{"another stream's header", k, cat(b[:20], a[20:]), ""},
		{"another stream's data key", k, cat(a[:20], b[20:pre], a[pre:]), ""},
	} {
		if got, err := decryptStream(tc.key, tc.data, []byte(tc.aad)); !errors.Is(err, keywarden.ErrStreamAuthentication) || len(got) != 0 {
			t.Errorf("%s: %d bytes, %v; want the data key refused", tc.name, len(got), err)
		}
	}
	spliced := cat(a[:at(3)], ch(b, 3), a[at(4):])
	var se *keywarden.StreamError
	if _, err := decryptStream(k, spliced, nil); !errors.Is(err, keywarden.ErrStreamAuthentication) || !errors.As(err, &se) || se.Index != 3 {
		t.Errorf("a chunk of another stream: %v", err)
	}
	if _, err := decryptStream(k, a[:at(5)], nil); !errors.Is(err, keywarden.ErrStreamTruncated) {
		t.Errorf("final chunk removed: %v", err)
	}

	encOnly, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true, Usage: keywarden.UsageEncrypt})
	if err != nil {
		t.Fatal(err)
	}
	ct := encryptStream(t, encOnly, pt, nil, opts)
	if _, err := decryptStream(encOnly, ct, nil); err == nil || errors.Is(err, keywarden.ErrStreamAuthentication) {
		t.Errorf("an encrypt-only key read its envelope stream: %v", err)
	}
}

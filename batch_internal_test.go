package keywarden

import (
	"bytes"
	"context"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// TestBatchChunks: a batch of small operations goes in requests as large
// as the daemon takes, every operation of which the daemon's reply budget
// lets it execute (protocol.md section 4), whether their results are as
// large as the client estimates or refusals, and two of which fit in the
// Client's room for replies: 512 AES-GCM encryptions, decryptions or
// MACs of 256 bytes make one request (they made 3 to 5 in requests of at
// most 64 KiB, and each request costs both processes a round of system
// calls and the daemon an audit record).
func TestBatchChunks(t *testing.T) {
	c := &Client{limits: Limits{MaxMessageBytes: wire.DefaultMaxMessageBytes, MaxInFlight: wire.DefaultMaxInFlight,
		MaxBatchOps: wire.DefaultMaxBatchOps}, replyBudget: 1 << 19}
	aes := &Key{c: c, handle: 1, typ: AES256GCM, info: KeyInfo{Type: AES256GCM}}
	hm := &Key{c: c, handle: 3, typ: HMACSHA256, info: KeyInfo{Type: HMACSHA256}}
	rsa := &Key{c: c, handle: 2, typ: RSA4096, info: KeyInfo{Type: RSA4096}}

	// executesAll runs the daemon's reply budget over a request of ops
	// whose results are each of size(i) bytes.
	executesAll := func(ch chunk, bound, size func(i int) int) bool {
		budget, s, n := c.limits.MaxMessageBytes-64, 0, ch.to-ch.from
		for i := ch.from; i < ch.to; i++ {
			if s+bound(i)+4*(n-(i-ch.from)-1) > budget {
				return false
			}
			s += size(i) + 4
		}
		return true
	}
	check := func(name string, b *Batch, want int, bound, result func(i int) int) {
		t.Helper()
		chunks := b.chunks()
		if len(chunks) != want {
			t.Fatalf("%d %s in %d requests, want %d", b.Len(), name, len(chunks), want)
		}
		for _, ch := range chunks {
			if !executesAll(ch, bound, result) {
				t.Fatalf("%s: the daemon refuses some of a request for its reply's size", name)
			}
			// Refusals, each a status and a message of up to 240 bytes.
			if !executesAll(ch, bound, func(int) int { return 252 }) {
				t.Fatalf("%s: the daemon refuses some of a request of refusals for its reply's size", name)
			}
			if 2*ch.rep > c.replyBudget {
				t.Fatalf("%s: a request's reply of up to %d bytes, two of which exceed the room of %d", name, ch.rep, c.replyBudget)
			}
		}
	}
	// A result: its data, a key version and the framing.
	result := func(data int) func(int) int { return func(int) int { return data + 12 } }
	ct := make([]byte, 256+aesGCMOverhead)
	b := c.NewBatch()
	for range 512 {
		b.Decrypt(aes, ct, nil)
	}
	check("decryptions", b, 1, func(int) int { return 64 + len(ct) }, result(256))
	b = c.NewBatch()
	for range 512 {
		b.Encrypt(aes, make([]byte, 256), nil)
	}
	check("encryptions", b, 1, func(int) int { return 64 + 256 + 512 }, result(len(ct)))
	b = c.NewBatch()
	for range 512 {
		b.MAC(hm, make([]byte, 256))
	}
	check("MACs", b, 1, func(int) int { return 64 + 512 }, result(64))
	b = c.NewBatch()
	for range 4096 {
		b.MAC(hm, nil)
	}
	check("MACs of nothing", b, 5, func(int) int { return 64 + 512 }, result(64))

	// With the kernel's default socket buffers (wmem_max 212992), the
	// replies of two requests still fit in the room for replies.
	c.replyBudget = 212992
	b = c.NewBatch()
	for range 512 {
		b.Decrypt(aes, ct, nil)
	}
	check("decryptions, small socket buffers", b, 2, func(int) int { return 64 + len(ct) }, result(256))

	// RSA-OAEP ciphertexts are as large as the modulus, whatever the
	// plaintext: the bound stays that of the largest modulus.
	if got := rsa.ciphertextBound(16); got < 512 {
		t.Fatalf("RSA ciphertext bound %d, below a 4096-bit modulus", got)
	}
}

// TestKeyTypeKept: a key the daemon makes knows its type, which sizes the
// requests of batches.
func TestKeyTypeKept(t *testing.T) {
	ctx := context.Background()
	c, err := Dial(ctx, "") // the daemon of TestMain (example_test.go)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, err := c.Generate(ctx, KeySpec{Type: AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if k.typ != AES256GCM || k.ciphertextBound(256) != 256+aesGCMOverhead {
		t.Fatalf("generated key: type %q, bound %d", k.typ, k.ciphertextBound(256))
	}
	ct, err := k.Encrypt(ctx, make([]byte, 256), nil)
	if err != nil || len(ct) != k.ciphertextBound(256) {
		t.Fatalf("ciphertext of %d bytes (%v), bound %d: the overhead is not the daemon's", len(ct), err, k.ciphertextBound(256))
	}
}

// TestBatchLargeRequests: through a real daemon, a batch of 512 small
// AES-GCM encryptions, their decryptions and 512 MACs each go in one
// request, and the daemon executes every operation of it; a batch of
// refusals (MACs on a closed key) gets each its own refusal, none refused
// for the reply's size.
func TestBatchLargeRequests(t *testing.T) {
	ctx := context.Background()
	c, err := Dial(ctx, "") // the daemon of TestMain (example_test.go)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	aes, err := c.Generate(ctx, KeySpec{Type: AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	hm, err := c.Generate(ctx, KeySpec{Type: HMACSHA256, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	const n = 512
	do := func(name string, b *Batch, res []*BatchResult) {
		t.Helper()
		if got := len(b.chunks()); got != 1 {
			t.Fatalf("%s: %d requests, want 1", name, got)
		}
		if err := b.Do(ctx); err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			if r.Err() != nil {
				t.Fatalf("%s: %d of %d: %v", name, i, n, r.Err())
			}
		}
	}
	pts := make([][]byte, n)
	b := c.NewBatch()
	enc := make([]*BatchResult, n)
	for i := range enc {
		pts[i] = []byte(strings.Repeat(string(rune('a'+i%26)), 256))
		enc[i] = b.Encrypt(aes, pts[i], nil)
	}
	do("encryptions", b, enc)
	b = c.NewBatch()
	dec := make([]*BatchResult, n)
	for i := range dec {
		ct, _ := enc[i].Bytes()
		dec[i] = b.Decrypt(aes, ct, nil)
	}
	do("decryptions", b, dec)
	for i, r := range dec {
		if pt, _ := r.Bytes(); !bytes.Equal(pt, pts[i]) {
			t.Fatalf("decryption %d gave another plaintext", i)
		}
	}
	b = c.NewBatch()
	macs := make([]*BatchResult, n)
	for i := range macs {
		macs[i] = b.MAC(hm, pts[i])
	}
	do("MACs", b, macs)

	if err := hm.Close(ctx); err != nil {
		t.Fatal(err)
	}
	b = c.NewBatch()
	refused := make([]*BatchResult, 4*n)
	for i := range refused {
		refused[i] = b.MAC(hm, nil)
	}
	if err := b.Do(ctx); err != nil {
		t.Fatal(err)
	}
	for i, r := range refused {
		if r.Err() == nil || CodeOf(r.Err()) == CodeResourceExhausted {
			t.Fatalf("MAC %d on a closed key: %v", i, r.Err())
		}
	}
}

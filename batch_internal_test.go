package keywarden

import (
	"context"
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// TestBatchChunks: a batch of small AES-GCM encryptions goes in requests
// of up to pipelineChunk bytes whose replies the daemon is sure to have
// room for, estimated from the real ciphertext size: 512 encryptions of
// 256 bytes make 3 requests (with the generic bound of any key type they
// made 7, and each request costs the daemon an audit record).
func TestBatchChunks(t *testing.T) {
	c := &Client{limits: Limits{MaxMessageBytes: wire.DefaultMaxMessageBytes, MaxInFlight: wire.DefaultMaxInFlight,
		MaxBatchOps: wire.DefaultMaxBatchOps}}
	aes := &Key{c: c, handle: 1, typ: AES256GCM, info: KeyInfo{Type: AES256GCM}}
	rsa := &Key{c: c, handle: 2, typ: RSA4096, info: KeyInfo{Type: RSA4096}}

	b := c.NewBatch()
	for range 512 {
		b.Encrypt(aes, make([]byte, 256), nil)
	}
	chunks := b.chunks()
	if len(chunks) != 3 {
		t.Fatalf("512 AES-GCM encryptions of 256 bytes in %d requests, want 3", len(chunks))
	}
	for _, ch := range chunks {
		rep := 0
		for i := ch.from; i < ch.to; i++ {
			rep += 256 + aesGCMOverhead + 32
		}
		if rep > pipelineChunk {
			t.Fatalf("a request's reply of %d bytes exceeds %d", rep, pipelineChunk)
		}
	}

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

package keywarden_test

import (
	"context"
	"crypto"
	"crypto/rand"
	"testing"

	"github.com/keywarden/keywarden"
)

// BenchmarkSharedMemory1M measures a megabyte through the connection's
// shared memory, to the daemon of TestMain (example_test.go, in this
// process: -benchmem counts its allocations too): Encrypt returns a fresh
// slice, AppendEncrypt reuses the caller's as cipher.AEAD's Seal does.
func BenchmarkSharedMemory1M(b *testing.B) {
	ctx := context.Background()
	c, err := keywarden.Dial(ctx, "")
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		b.Fatal(err)
	}
	msg := make([]byte, 1<<20)
	rand.Read(msg)
	b.Run("Encrypt", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if _, err := k.Encrypt(ctx, msg, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("AppendEncrypt", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		buf := make([]byte, 0, len(msg)+35)
		for b.Loop() {
			if buf, err = k.AppendEncrypt(ctx, buf[:0], msg, nil); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("Hash", func(b *testing.B) {
		b.SetBytes(int64(len(msg)))
		for b.Loop() {
			if _, err := c.Hash(ctx, crypto.SHA256, msg); err != nil {
				b.Fatal(err)
			}
		}
	})
}

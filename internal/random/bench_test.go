package random

import (
	"crypto/rand"
	"testing"
)

// The cost of a 12-byte AES-GCM nonce from the daemon's source, against
// crypto/rand, which is what AES-GCM with random nonces used before:
//
//	go test -run '^$' -bench . ./internal/random
func BenchmarkNonce(b *testing.B) {
	s := New(Config{})
	buf := make([]byte, 12)
	b.Run("source", func(b *testing.B) {
		for b.Loop() {
			s.Read(buf)
		}
	})
	b.Run("crypto-rand", func(b *testing.B) {
		for b.Loop() {
			rand.Read(buf)
		}
	})
	b.Run("source-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 12)
			for pb.Next() {
				s.Read(buf)
			}
		})
	})
	b.Run("crypto-rand-parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			buf := make([]byte, 12)
			for pb.Next() {
				rand.Read(buf)
			}
		})
	})
}

// BenchmarkKey is a 32-byte read: an AES key or a key id and a half.
func BenchmarkKey(b *testing.B) {
	s := New(Config{})
	buf := make([]byte, 32)
	b.Run("source", func(b *testing.B) {
		for b.Loop() {
			s.Read(buf)
		}
	})
	b.Run("crypto-rand", func(b *testing.B) {
		for b.Loop() {
			rand.Read(buf)
		}
	})
}

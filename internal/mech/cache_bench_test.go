package mech

import (
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// BenchmarkCacheChurn: encryptions that cycle over more keys than the
// cache of expanded state holds, so that nearly every one misses and
// evicts: what a daemon with many keys, each used now and then, pays.
func BenchmarkCacheChurn(b *testing.B) {
	const n = DefaultCacheMax + DefaultCacheMax/4
	keys := make([]*Key, n)
	for i := range keys {
		k, err := Generate(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM))
		if err != nil {
			b.Fatal(err)
		}
		keys[i] = k
	}
	defer func() {
		for _, k := range keys {
			k.Destroy()
		}
	}()
	pt := make([]byte, 256)
	i := 0
	for b.Loop() {
		if _, err := keys[i%n].Encrypt(pt, nil, 0, nil); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkCacheHits is BenchmarkCacheChurn over fewer keys than the cache
// holds: every encryption finds its key's state.
func BenchmarkCacheHits(b *testing.B) {
	const n = DefaultCacheMax / 4
	keys := make([]*Key, n)
	for i := range keys {
		k, err := Generate(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM))
		if err != nil {
			b.Fatal(err)
		}
		keys[i] = k
	}
	defer func() {
		for _, k := range keys {
			k.Destroy()
		}
	}()
	pt := make([]byte, 256)
	i := 0
	for b.Loop() {
		if _, err := keys[i%n].Encrypt(pt, nil, 0, nil); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

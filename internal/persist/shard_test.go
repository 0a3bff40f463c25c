package persist

import (
	"bytes"
	"testing"
)

func TestShardHeaderKeys(t *testing.T) {
	for i := range uint32(MaxShards) {
		k := ShardHeaderKey(i)
		if !IsHeaderKey(k) {
			t.Fatalf("%q is not a header key", k)
		}
		if got, ok := HeaderKeyShard(k); !ok || got != i {
			t.Fatalf("HeaderKeyShard(%q) = %d, %v, want %d", k, got, ok, i)
		}
	}
	for _, k := range []string{"header/", "header/0", "header/01", "header/64", "header/1000", "header/x", "header/-1", "headers", "master", "header/1/2"} {
		if i, ok := HeaderKeyShard([]byte(k)); ok {
			t.Errorf("HeaderKeyShard(%q) = %d, a shard", k, i)
		}
	}
	for _, n := range []uint32{1, 2, 4, 16, 64} {
		if !ShardsOK(n) {
			t.Errorf("ShardsOK(%d) = false", n)
		}
		for b := range 256 {
			if s := ShardOf([]byte{byte(b), 7}, n); s >= n || s != uint32(b)%n {
				t.Fatalf("ShardOf(%d, %d) = %d", b, n, s)
			}
		}
	}
	for _, n := range []uint32{0, 3, 12, 128} {
		if ShardsOK(n) {
			t.Errorf("ShardsOK(%d) = true", n)
		}
	}
}

// FuzzHeaderKeyShard: whatever a meta key is, it is the header key of at
// most one shard, the one it names.
func FuzzHeaderKeyShard(f *testing.F) {
	for _, s := range []string{"header", "header/1", "header/15", "header/63", "header/64", "header/01", "header/", "master"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, k []byte) {
		i, ok := HeaderKeyShard(k)
		if ok && (i >= MaxShards || !bytes.Equal(ShardHeaderKey(i), k)) {
			t.Fatalf("HeaderKeyShard(%q) = %d, whose key is %q", k, i, ShardHeaderKey(i))
		}
		if ok && !IsHeaderKey(k) {
			t.Fatalf("%q is shard %d's header key but not a header key", k, i)
		}
	})
}

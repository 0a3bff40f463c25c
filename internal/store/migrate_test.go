package store_test

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/store"
)

// A bbolt store migrates into etcd and back, in transactions of a bounded
// size, and each copy is checked key by key; a destination that holds
// keys is refused, and a copy that differs is caught.
func TestMigrateBoltEtcdAndBack(t *testing.T) {
	c := etcdtest.Start(t, 1)
	src, err := store.OpenBolt(filepath.Join(t.TempDir(), "a"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	buckets := [][]byte{[]byte("meta"), []byte("keys"), []byte("empty")}
	if err := src.Update(func(tx store.Tx) error {
		tx.Put([]byte("meta"), []byte("header"), []byte("h"))
		for i := range 300 {
			tx.Put([]byte("keys"), fmt.Appendf(nil, "k%04d", i), fmt.Appendf(nil, "value %d", i))
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	mid, err := store.OpenEtcd(store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/migrate/", MaxTxnOps: 128})
	if err != nil {
		t.Fatal(err)
	}
	defer mid.Close()
	n, err := store.Migrate(src, mid, buckets, 100)
	if err != nil || n != 301 {
		t.Fatalf("bolt to etcd: %d keys, %v", n, err)
	}
	back, err := store.OpenBolt(filepath.Join(t.TempDir(), "b"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer back.Close()
	if n, err := store.Migrate(mid, back, buckets, 100); err != nil || n != 301 {
		t.Fatalf("etcd to bolt: %d keys, %v", n, err)
	}
	if err := store.Compare(src, back, buckets); err != nil {
		t.Fatal(err)
	}
	if _, err := store.Migrate(src, mid, buckets, 100); err == nil || !strings.Contains(err.Error(), "not empty") {
		t.Fatalf("a migration into a store with keys: %v", err)
	}
	back.Update(func(tx store.Tx) error { return tx.Put([]byte("keys"), []byte("k0007"), []byte("changed")) })
	if err := store.Compare(src, back, buckets); err == nil {
		t.Fatalf("a changed copy compares equal: %v", err)
	}
}

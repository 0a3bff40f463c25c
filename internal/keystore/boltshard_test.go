package keystore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
)

// shardedBolt makes a shared store of several shards with x in shard 1
// and y in shard 2, and migrates it into a bbolt file in a new directory
// (closed).
func shardedBolt(t *testing.T) (dir string, x, y *Object) {
	t.Helper()
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/bolt-shards/", true)
	n := a.shardCount()
	x, y = obj(t, 1, "x", false), obj(t, 1, "y", false)
	a.mine.Store(1)
	if err := a.Add(x); err != nil {
		t.Fatal(err)
	}
	a.mine.Store(2)
	if err := a.Add(y); err != nil {
		t.Fatal(err)
	}
	if persist.ShardOf(x.ID[:], n) != 1 || persist.ShardOf(y.ID[:], n) != 2 {
		t.Fatal("keys not in their shards")
	}
	dir = filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bdb, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	buckets := [][]byte{persist.BucketMeta, persist.BucketKeys, persist.BucketNames, persist.BucketQuarantine}
	if _, err := store.Migrate(a.db, bdb, buckets, 32); err != nil {
		t.Fatal(err)
	}
	bdb.Close()
	return dir, x, y
}

// boltGet reads bucket/k of the closed bbolt store in dir.
func boltGet(t *testing.T, dir string, bucket, k []byte) []byte {
	t.Helper()
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v []byte
	if err := db.View(func(tx store.Tx) error { v = bytes.Clone(tx.Get(bucket, k)); return nil }); err != nil {
		t.Fatal(err)
	}
	return v
}

// boltPut writes entries (bucket, key, value) into the closed bbolt store
// in dir, offline.
func boltPut(t *testing.T, dir string, entries ...[3][]byte) {
	t.Helper()
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if err := db.Update(func(tx store.Tx) error {
		for _, e := range entries {
			if err := tx.Put(e[0], e[1], e[2]); err != nil {
				return err
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// A bbolt file of several shards (a shared store migrated into one) is
// joined into one header by its first unseal: one shard put back offline
// from a copy of the file of before (its header and records), beside the
// others of now, is refused. With the shards kept, each added up on its
// own: the key destroyed since was back, beside the key created since in
// another shard, a state the file never had.
func TestBoltShardsJoinedSoNoShardRollsBackAlone(t *testing.T) {
	dir, x, _ := shardedBolt(t)
	const shX = 1
	oldHdr := boltGet(t, dir, persist.BucketMeta, persist.ShardHeaderKey(shX))
	oldX := boltGet(t, dir, persist.BucketKeys, x.ID[:])

	s := persistent(t, dir)
	x2, err := s.Get(x.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(x2); err != nil {
		t.Fatal(err)
	}
	z := obj(t, 1, "z", false)
	s.mine.Store(2)
	if err := s.Add(z); err != nil {
		t.Fatal(err)
	}
	if n := s.shardCount(); n > 1 && persist.ShardOf(z.ID[:], n) == shX {
		t.Fatal("z in x's shard")
	}
	s.Close()
	s.db.Close()

	boltPut(t, dir,
		[3][]byte{persist.BucketMeta, persist.ShardHeaderKey(shX), oldHdr},
		[3][]byte{persist.BucketKeys, x.ID[:], oldX})
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}, InsecureKDF: true})
	if err != nil {
		t.Fatal(err)
	}
	s = New(Config{MaxPerUser: 1000, DB: db, Master: m})
	t.Cleanup(func() { s.Close() })
	err = m.UnsealPassphrase(context.Background(), []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, false) })
	if err != nil {
		t.Logf("unseal refused: %v", err)
		return
	}
	_, errX := s.Get(x.ID)
	_, errZ := s.Get(z.ID)
	if errX == nil && errZ == nil {
		t.Fatalf("shard %d rolled back alone accepted: the destroyed key x is back, the newer key z in shard 2 kept", shX)
	}
	t.Logf("x: %v, z: %v", errX, errZ)
}

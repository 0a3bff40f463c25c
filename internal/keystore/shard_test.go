package keystore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// shardHeaderKey returns the etcd key of the header of key id's shard in
// s's shared store.
func shardHeaderKey(s *Store, id key.ID) string {
	db := s.db.(*store.Etcd)
	return db.BucketPrefix(persist.BucketMeta) + string(persist.ShardHeaderKey(persist.ShardOf(id[:], s.shardCount())))
}

// shardState is what etcd holds of one shard: its header and records, by
// etcd key.
type shardState map[string]string

func snapshotShard(t *testing.T, raw *clientv3.Client, s *Store, ids ...key.ID) shardState {
	t.Helper()
	keys := s.db.(*store.Etcd).BucketPrefix(persist.BucketKeys)
	st := shardState{shardHeaderKey(s, ids[0]): get(t, raw, shardHeaderKey(s, ids[0]))}
	for _, id := range ids {
		st[keys+string(id[:])] = get(t, raw, keys+string(id[:]))
	}
	return st
}

// putBack writes states to etcd in one transaction.
func putBack(t *testing.T, raw *clientv3.Client, states ...shardState) {
	t.Helper()
	var ops []clientv3.Op
	for _, st := range states {
		for k, v := range st {
			ops = append(ops, clientv3.OpPut(k, v))
		}
	}
	if _, err := raw.Txn(context.Background()).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
}

// A store of several shards, written to directly through etcd: each
// change of a shard's records or headers that keywarden did not make is
// seen by both daemons following the store, and refused by the next
// unseal. Daemon a creates x and y in one shard, b creates z in another;
// then each rotates its first key, so that both shards move on.
func TestClusterShardTamper(t *testing.T) {
	c := etcdtest.Start(t, 1)
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	type env struct {
		a, b        *Store
		keys        string // the keys bucket's etcd prefix
		x, y, z     *Object
		oldA, oldB  shardState // the shards before the rotations
		nowA, nowB  shardState // after
		shA, shB    uint32
		shardsCount uint32
	}
	for i, tc := range []struct {
		name   string
		tamper func(t *testing.T, e *env)
	}{
		{"MoveRecord", func(t *testing.T, e *env) {
			// x's record under an id of z's shard (its other bytes the
			// same), gone from its own.
			moved := e.x.ID
			moved[0] = moved[0]&^byte(e.shardsCount-1) | byte(e.shB)
			v := get(t, raw, e.keys+string(e.x.ID[:]))
			if _, err := raw.Txn(ctx).Then(clientv3.OpPut(e.keys+string(moved[:]), v), clientv3.OpDelete(e.keys+string(e.x.ID[:]))).Commit(); err != nil {
				t.Fatal(err)
			}
		}},
		{"ReplayOneShard", func(t *testing.T, e *env) {
			// x's shard as it was before the rotation, its header and
			// records, while z's shard moved on.
			putBack(t, raw, e.oldA)
		}},
		{"DeleteShard", func(t *testing.T, e *env) {
			var ops []clientv3.Op
			for k := range e.nowB {
				ops = append(ops, clientv3.OpDelete(k))
			}
			if _, err := raw.Txn(ctx).Then(ops...).Commit(); err != nil {
				t.Fatal(err)
			}
		}},
		{"SwapRecordsAcrossShards", func(t *testing.T, e *env) {
			vy, vz := get(t, raw, e.keys+string(e.y.ID[:])), get(t, raw, e.keys+string(e.z.ID[:]))
			if _, err := raw.Txn(ctx).Then(clientv3.OpPut(e.keys+string(e.y.ID[:]), vz), clientv3.OpPut(e.keys+string(e.z.ID[:]), vy)).Commit(); err != nil {
				t.Fatal(err)
			}
		}},
		{"SwapHeadersAcrossShards", func(t *testing.T, e *env) {
			ha, hb := shardHeaderKey(e.a, e.x.ID), shardHeaderKey(e.a, e.z.ID)
			if _, err := raw.Txn(ctx).Then(clientv3.OpPut(ha, e.nowB[hb]), clientv3.OpPut(hb, e.nowA[ha])).Commit(); err != nil {
				t.Fatal(err)
			}
		}},
		{"MixStatesOfTwoTimes", func(t *testing.T, e *env) {
			// z's shard as it was before, x's as it is: each shard a
			// state it had, together a state the store never had.
			putBack(t, raw, e.nowA, e.oldB)
		}},
		{"RollbackAllShards", func(t *testing.T, e *env) {
			putBack(t, raw, e.oldA, e.oldB)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("/shardtamper/%d/", i)
			e := &env{a: clusterNode(t, c.Endpoints(), prefix, true), b: clusterNode(t, c.Endpoints(), prefix, false)}
			e.shardsCount = e.a.shardCount()
			if e.shardsCount < 2 || e.b.shardCount() != e.shardsCount {
				t.Fatalf("the shared store has %d and %d shards, want several", e.shardsCount, e.b.shardCount())
			}
			e.shA, e.shB = 1, 2
			e.keys = e.a.db.(*store.Etcd).BucketPrefix(persist.BucketKeys)
			e.a.mine.Store(e.shA)
			e.b.mine.Store(e.shB)
			e.x, e.y, e.z = obj(t, 1, "x", false), obj(t, 1, "y", false), obj(t, 1, "z", false)
			for _, o := range []*Object{e.x, e.y} {
				if err := e.a.Add(o); err != nil {
					t.Fatal(err)
				}
			}
			if err := e.b.Add(e.z); err != nil {
				t.Fatal(err)
			}
			if persist.ShardOf(e.x.ID[:], e.shardsCount) != e.shA || persist.ShardOf(e.y.ID[:], e.shardsCount) != e.shA || persist.ShardOf(e.z.ID[:], e.shardsCount) != e.shB {
				t.Fatal("the keys were not created in their daemon's shard")
			}
			within(t, time.Second, "b follows a", func() bool { _, err := e.b.Get(e.y.ID); return err == nil })
			within(t, time.Second, "a follows b", func() bool { _, err := e.a.Get(e.z.ID); return err == nil })
			e.oldA = snapshotShard(t, raw, e.a, e.x.ID, e.y.ID)
			e.oldB = snapshotShard(t, raw, e.a, e.z.ID)
			if _, err := e.a.Rotate(e.x); err != nil {
				t.Fatal(err)
			}
			if _, err := e.b.Rotate(e.z); err != nil {
				t.Fatal(err)
			}
			twoVersions := func(s *Store, id key.ID) func() bool {
				return func() bool {
					o, err := s.Get(id)
					if err != nil {
						return false
					}
					defer s.Release(o)
					return len(o.Versions()) == 2
				}
			}
			within(t, time.Second, "b follows a's rotation", twoVersions(e.b, e.x.ID))
			within(t, time.Second, "a follows b's rotation", twoVersions(e.a, e.z.ID))
			e.nowA = snapshotShard(t, raw, e.a, e.x.ID, e.y.ID)
			e.nowB = snapshotShard(t, raw, e.a, e.z.ID)
			ob, err := e.b.Get(e.y.ID)
			if err != nil {
				t.Fatal(err)
			}
			tc.tamper(t, e)
			for _, s := range []*Store{e.a, e.b} {
				within(t, time.Second, "the tampering seen", func() bool {
					_, err := s.Get(e.y.ID)
					return status(err) == wire.Status_STATUS_INTERNAL && strings.Contains(err.Error(), "outside keywarden")
				})
			}
			if err := useErr(ob); status(err) != wire.Status_STATUS_INTERNAL {
				t.Fatalf("a key in memory is still used after the tampering: %v", err)
			}
			for _, s := range []*Store{e.a, e.b} {
				s.SealAll()
				err := s.Master().UnsealPassphrase(ctx, []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, false) })
				if err == nil {
					t.Fatal("the unseal accepted the tampered store")
				}
				t.Logf("unseal refused: %v", err)
			}
		})
	}
}

// A shared store of one header, made by a daemon before shards, is split
// into shards by the first unseal of a daemon that has them: every key is
// kept, the daemon still running on the store of one header refuses keys
// until it is sealed and unsealed, and then finds every key; the store of
// one header put back afterwards (everything else as it is) is refused by
// both daemons and by the next unseal.
func TestClusterShardSplitOfOneHeaderStore(t *testing.T) {
	c := etcdtest.Start(t, 1)
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	defer func(n uint32) { storeShards = n }(storeShards)
	storeShards = 1
	a := clusterNode(t, c.Endpoints(), "/split/", true)
	if a.shardCount() != 1 {
		t.Fatalf("a store of %d shards, want one header", a.shardCount())
	}
	var objs []*Object
	for i := range 20 {
		o := obj(t, 1, fmt.Sprintf("k%d", i), false)
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o)
	}
	if _, err := a.Rotate(objs[0]); err != nil {
		t.Fatal(err)
	}
	meta := a.db.(*store.Etcd).BucketPrefix(persist.BucketMeta)
	oneHeader := get(t, raw, meta+string(persist.MetaHeader))

	storeShards = 16
	b := clusterNode(t, c.Endpoints(), "/split/", false)
	if b.shardCount() != 16 {
		t.Fatalf("b unsealed a store of %d shards, want 16", b.shardCount())
	}
	for _, o := range objs {
		got, err := b.Get(o.ID)
		if err != nil {
			t.Fatalf("key %s after the split: %v", o.ID, err)
		}
		b.Release(got)
	}
	within(t, time.Second, "a refuses keys after the split elsewhere", func() bool {
		_, err := a.Get(objs[1].ID)
		return status(err) == wire.Status_STATUS_UNAVAILABLE && strings.Contains(err.Error(), "split")
	})
	a.SealAll()
	unseal(t, a)
	if a.shardCount() != 16 {
		t.Fatalf("a unsealed a store of %d shards after the split", a.shardCount())
	}
	for _, s := range []*Store{a, b} {
		for _, o := range objs {
			got, err := s.Get(o.ID)
			if err != nil {
				t.Fatalf("key %s after the split: %v", o.ID, err)
			}
			s.Release(got)
		}
	}
	// Both create in their shards and follow each other.
	x, y := obj(t, 1, "x", false), obj(t, 1, "y", false)
	if err := a.Add(x); err != nil {
		t.Fatal(err)
	}
	if err := b.Add(y); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "a follows b", func() bool { _, err := a.Get(y.ID); return err == nil })
	within(t, time.Second, "b follows a", func() bool { _, err := b.Get(x.ID); return err == nil })

	// The store of one header put back: its header, without the other
	// shards' (the records created since left as they are, or not).
	var ops []clientv3.Op
	ops = append(ops, clientv3.OpPut(meta+string(persist.MetaHeader), oneHeader))
	for i := uint32(1); i < 16; i++ {
		ops = append(ops, clientv3.OpDelete(meta+string(persist.ShardHeaderKey(i))))
	}
	if _, err := raw.Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} {
		within(t, time.Second, "the store of one header put back seen", func() bool {
			_, err := s.Get(objs[1].ID)
			return status(err) == wire.Status_STATUS_INTERNAL && strings.Contains(err.Error(), "outside keywarden")
		})
		s.SealAll()
		if err := s.Master().UnsealPassphrase(ctx, []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, false) }); err == nil {
			t.Fatal("the unseal accepted the store of one header put back")
		} else {
			t.Logf("unseal refused: %v", err)
		}
	}
}

// A store of several shards migrated from etcd into a bbolt file keeps
// every key, and its first unseal there joins its shards into one header;
// it takes new keys and destroys there, and migrated back into etcd
// (another prefix) is the same store again, split at its first unseal.
func TestClusterShardedStoreMigrateRoundTrip(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/migrate-from/", true)
	var objs []*Object
	for i := range 40 {
		o := obj(t, 1, fmt.Sprintf("k%d", i), false)
		a.mine.Store(uint32(i) % a.shardCount()) // keys in every shard
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		objs = append(objs, o)
	}
	buckets := [][]byte{persist.BucketMeta, persist.BucketKeys, persist.BucketNames, persist.BucketQuarantine}
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	bdb, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Migrate(a.db, bdb, buckets, 32); err != nil {
		t.Fatal(err)
	}
	bdb.Close()
	b := persistent(t, dir)
	if b.shardCount() != 1 {
		t.Fatalf("the bbolt copy has %d shards after its unseal, want one header", b.shardCount())
	}
	for _, o := range objs {
		got, err := b.Get(o.ID)
		if err != nil {
			t.Fatalf("key %s in the bbolt copy: %v", o.ID, err)
		}
		b.Release(got)
	}
	extra := obj(t, 1, "extra", false)
	if err := b.Add(extra); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Rotate(objs[3]); err != nil {
		t.Fatal(err)
	}
	b = reopen(t, b, dir) // the next unseal checks every shard
	e, err := store.OpenEtcd(store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/migrate-back/"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := store.Migrate(b.db, e, buckets, 32); err != nil {
		t.Fatal(err)
	}
	e.Close()
	back := clusterNode(t, c.Endpoints(), "/migrate-back/", false)
	if back.shardCount() != a.shardCount() {
		t.Fatalf("migrated back, %d shards, want %d", back.shardCount(), a.shardCount())
	}
	for _, o := range append(objs, extra) {
		got, err := back.Get(o.ID)
		if err != nil {
			t.Fatalf("key %s migrated back: %v", o.ID, err)
		}
		back.Release(got)
	}
}

// A backup of a shared store of one header, restored into the store
// after it was split, is split again by the unseal that raises it above
// the restore's floor: every key of the backup is there, the keys made
// since are not, and another daemon joins the store of shards.
func TestClusterRestoreOneHeaderBackupIntoShards(t *testing.T) {
	c := etcdtest.Start(t, 1)
	defer func(n uint32) { storeShards = n }(storeShards)
	storeShards = 1
	const prefix = "/restore-split/"
	a := clusterNode(t, c.Endpoints(), prefix, true)
	var kept []key.ID
	for i := range 10 {
		o := obj(t, 1, fmt.Sprintf("k%d", i), false)
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		kept = append(kept, o.ID)
		a.Release(o)
	}
	bk := filepath.Join(t.TempDir(), "backup")
	f, err := os.Create(bk)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	storeShards = 16
	a.SealAll()
	unseal(t, a) // splits
	if a.shardCount() != 16 {
		t.Fatalf("%d shards after the split", a.shardCount())
	}
	later := obj(t, 1, "later", false)
	if err := a.Add(later); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Restore(bk, RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	unseal(t, a)
	if a.shardCount() != 16 {
		t.Fatalf("%d shards after the restore's unseal, want 16", a.shardCount())
	}
	b := clusterNode(t, c.Endpoints(), prefix, false)
	for _, s := range []*Store{a, b} {
		for _, id := range kept {
			o, err := s.Get(id)
			if err != nil {
				t.Fatalf("key %s of the backup: %v", id, err)
			}
			s.Release(o)
		}
		if _, err := s.Get(later.ID); !errors.Is(err, errNoKey) {
			t.Fatalf("a key made after the backup, after the restore: %v", err)
		}
	}
	x := obj(t, 1, "x", false)
	if err := b.Add(x); err != nil {
		t.Fatal(err)
	}
	within(t, time.Second, "a follows b", func() bool { _, err := a.Get(x.ID); return err == nil })
}

// A master-key rotation of a store whose keys are in every shard sums
// each shard anew under the new generation and re-wraps every record:
// both daemons unseal on it afterwards and open every key.
func TestClusterShardedMasterRotation(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/shard-rotation/", true)
	b := clusterNode(t, c.Endpoints(), "/shard-rotation/", false)
	var ids []key.ID
	for i := range 3 * int(a.shardCount()) {
		o := obj(t, 1, fmt.Sprintf("k%d", i), false)
		a.mine.Store(uint32(i) % a.shardCount())
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID)
		a.Release(o)
	}
	pr, err := a.Master().PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.CommitRotation(pr); err != nil {
		t.Fatal(err)
	}
	if err := a.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} {
		s.SealAll()
		unseal(t, s)
		for _, id := range ids {
			o, err := s.Get(id)
			if err != nil {
				t.Fatalf("key %s after the rotation: %v", id, err)
			}
			s.Release(o)
		}
	}
}

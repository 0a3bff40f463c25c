package keystore

import (
	"bytes"
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
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// After a restore from a backup, someone who can write to etcd puts back
// the whole store as it was before the restore (etcd's history keeps it:
// a header with a higher epoch than the backup's, under the same master
// key, and records that add up to it), in one transaction. A key destroyed
// after the restore must not come back: the daemons following the store
// refuse their keys, and their next unseal refuses the store.
func TestClusterReplayOfStoreBeforeRestoreRefused(t *testing.T) {
	c := etcdtest.Start(t, 1)
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	const prefix = "/replay-restore/"
	a := clusterNode(t, c.Endpoints(), prefix, true)
	victim := obj(t, 1, "victim", false)
	if err := a.Add(victim); err != nil {
		t.Fatal(err)
	}
	vid := victim.ID
	a.Release(victim)
	bk := filepath.Join(t.TempDir(), "backup")
	f, err := os.Create(bk)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for i := range 10 { // the store moves on: its header's epoch rises
		o := obj(t, 1, fmt.Sprintf("pre%d", i), false)
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		a.Release(o)
	}
	bp := a.db.(*store.Etcd).Prefix() + "b/"
	before, err := raw.Get(ctx, bp, clientv3.WithPrefix()) // what an etcd reader saw before the restore
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Restore(bk, RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	unseal(t, a)
	// A second daemon joins the restored store.
	b := clusterNode(t, c.Endpoints(), prefix, false)
	o, err := a.Get(vid)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Remove(o); err != nil {
		t.Fatal(err)
	}
	a.Release(o)
	within(t, 2*time.Second, "the removal followed", func() bool {
		_, err := b.Get(vid)
		return errors.Is(err, errNoKey)
	})

	// One transaction makes the store what it was before the restore.
	now, err := raw.Get(ctx, bp, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]byte{}
	for _, kv := range before.Kvs {
		want[string(kv.Key)] = kv.Value
	}
	var ops []clientv3.Op
	for _, kv := range now.Kvs {
		if v, ok := want[string(kv.Key)]; !ok {
			ops = append(ops, clientv3.OpDelete(string(kv.Key)))
		} else if bytes.Equal(v, kv.Value) {
			delete(want, string(kv.Key))
		}
	}
	for k, v := range want {
		ops = append(ops, clientv3.OpPut(k, string(v)))
	}
	if _, err := raw.Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	for _, s := range []*Store{a, b} {
		within(t, 2*time.Second, "the replay seen", func() bool {
			_, err := s.Get(vid)
			return status(err) == wire.Status_STATUS_INTERNAL && strings.Contains(err.Error(), "outside keywarden")
		})
	}
	for name, s := range map[string]*Store{"the daemon that restored": a, "the daemon that joined": b} {
		s.SealAll()
		err := s.Master().UnsealPassphrase(ctx, []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, false) })
		if err == nil {
			t.Errorf("%s unsealed on the store of before the restore", name)
		} else if !strings.Contains(err.Error(), "rolled back") {
			t.Errorf("%s: unseal refused, but not as a rollback: %v", name, err)
		}
	}
}

// Before the first unseal after a restore, the store put back as it was
// before the restore is refused by the daemon that restored: it accepts
// only the header it wrote, or a newer one.
func TestClusterReplayBeforeFirstUnsealAfterRestore(t *testing.T) {
	c := etcdtest.Start(t, 1)
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	const prefix = "/replay-restore-sealed/"
	a := clusterNode(t, c.Endpoints(), prefix, true)
	bk := filepath.Join(t.TempDir(), "backup")
	f, err := os.Create(bk)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for i := range 3 {
		o := obj(t, 1, fmt.Sprintf("pre%d", i), false)
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		a.Release(o)
	}
	bp := a.db.(*store.Etcd).Prefix() + "b/"
	before, err := raw.Get(ctx, bp, clientv3.WithPrefix())
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Restore(bk, RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Delete(ctx, bp, clientv3.WithPrefix()); err != nil {
		t.Fatal(err)
	}
	ops := []clientv3.Op{}
	for _, kv := range before.Kvs {
		ops = append(ops, clientv3.OpPut(string(kv.Key), string(kv.Value)))
	}
	if _, err := raw.Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	err = a.Master().UnsealPassphrase(ctx, []byte("passphrase"), func(k *seal.Keys) error { return a.Verify(k, false) })
	if err == nil || !strings.Contains(err.Error(), "rolled back") {
		t.Fatalf("unseal after the store of before the restore was put back: %v", err)
	}
}

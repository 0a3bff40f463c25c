package keystore

import (
	"context"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/wire"
)

// The store header a daemon last wrote (and so remembers as checked), put
// back through etcd after another daemon's commit moved it on: both
// daemons see the replay, though the first daemon's next creation (which
// may begin from what its follower passed on, and reads that header with
// the bytes it remembers as checked) committed over it before its follower
// saw it, and the next unseal refuses the store.
func TestClusterReplayOwnLastHeader(t *testing.T) {
	c := etcdtest.Start(t, 1)
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	a := clusterNode(t, c.Endpoints(), "/replayown/", true)
	b := clusterNode(t, c.Endpoints(), "/replayown/", false)
	x, y := obj(t, 1, "x", false), obj(t, 1, "y", false)
	for _, o := range []*Object{x, y} {
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	hdr := shardHeaderKey(a, x.ID) // x's and y's: a creates in one shard
	mine := get(t, raw, hdr)       // a's last header
	within(t, time.Second, "b follows a", func() bool { _, err := b.Get(y.ID); return err == nil })
	if _, err := b.Rotate(x); err != nil { // b moves the header on
		t.Fatal(err)
	}
	within(t, time.Second, "a follows b", func() bool {
		o, err := a.Get(x.ID)
		if err != nil {
			return false
		}
		defer a.Release(o)
		return len(o.Versions()) == 2
	})
	if _, err := raw.Put(ctx, hdr, mine); err != nil {
		t.Fatal(err)
	}
	z := obj(t, 1, "z", false)
	a.Add(z) // may commit (over the header put back) or not
	for _, s := range []*Store{a, b} {
		within(t, time.Second, "the replay seen", func() bool {
			_, err := s.Get(y.ID)
			return status(err) == wire.Status_STATUS_INTERNAL && strings.Contains(err.Error(), "outside keywarden")
		})
	}
	a.SealAll()
	if err := a.Master().UnsealPassphrase(ctx, []byte("passphrase"), func(k *seal.Keys) error { return a.Verify(k, false) }); err == nil {
		t.Fatal("the unseal accepted the store with the header put back")
	}
}

// The store header a daemon last wrote, under the master key's generation
// before another daemon's rotation, put back through etcd after the first
// daemon was sealed and unsealed under the new generation: it remembers
// the header as checked under its keys of then, and does not take it under
// its keys of now; both daemons see the replay and
// the next unseal refuses the store.
func TestClusterReplayHeaderAcrossRotation(t *testing.T) {
	c := etcdtest.Start(t, 1)
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	a := clusterNode(t, c.Endpoints(), "/replayrot/", true)
	b := clusterNode(t, c.Endpoints(), "/replayrot/", false)
	x, y := obj(t, 1, "x", false), obj(t, 1, "y", false)
	for _, o := range []*Object{x, y} {
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	hdr := shardHeaderKey(a, x.ID) // x's and y's: a creates in one shard
	mine := get(t, raw, hdr)
	within(t, time.Second, "b follows a", func() bool { _, err := b.Get(y.ID); return err == nil })
	pr, err := b.Master().PrepareRotation(ctx, seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.CommitRotation(pr); err != nil {
		t.Fatal(err)
	}
	within(t, 2*time.Second, "a refuses its keys after the rotation", func() bool {
		_, err := a.Get(y.ID)
		return status(err) == wire.Status_STATUS_UNAVAILABLE
	})
	a.SealAll()
	unseal(t, a)
	if _, err := raw.Put(ctx, hdr, mine); err != nil {
		t.Fatal(err)
	}
	a.mine.Store(persist.ShardOf(x.ID[:], a.shardCount())) // z in the shard put back
	if err := a.Add(obj(t, 1, "z", false)); err == nil {
		t.Error("a creation committed over the header of the previous generation")
	}
	for _, s := range []*Store{a, b} {
		within(t, time.Second, "the replay seen", func() bool {
			_, err := s.Get(y.ID)
			return status(err) == wire.Status_STATUS_INTERNAL && strings.Contains(err.Error(), "outside keywarden")
		})
	}
	a.SealAll()
	if err := a.Master().UnsealPassphrase(ctx, []byte("passphrase"), func(k *seal.Keys) error { return a.Verify(k, false) }); err == nil {
		t.Fatal("the unseal accepted the store with the header put back")
	}
}

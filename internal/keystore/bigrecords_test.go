package keystore

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// bigKeys returns a function that makes key objects with large records:
// RSA-4096 with 64 versions (about 155 KB a record), the most a key may
// have without automatic ones. Each has its own name; the material is one
// key's, copied (generating is slow).
func bigKeys(t *testing.T) func(owner uint32, name string) *Object {
	spec := key.Lookup(wire.KeyType_KEY_TYPE_RSA_4096)
	m0, err := mech.Generate(spec)
	if err != nil {
		t.Fatal(err)
	}
	var der []byte
	m0.Canonical(func(b []byte) error { der = append([]byte(nil), b...); return nil })
	mk := func() *mech.Key {
		m, err := mech.FromCanonical(spec, m0.Class(), append([]byte(nil), der...))
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	return func(owner uint32, name string) *Object {
		o, err := NewObject(name, owner, mk(), &key.Attrs{Usage: key.Sign | key.Verify}, false, time.Now(), persist.Origin_ORIGIN_GENERATED)
		if err != nil {
			t.Fatal(err)
		}
		vs := o.Versions()
		for n := uint32(2); n <= 64; n++ {
			v := &Version{N: n, Created: time.Now(), Mat: mk()}
			v.limit.Store(DefaultEncryptionLimit)
			vs = append(vs, v)
		}
		o.vers.Store(&vs)
		o.meta.Store(&Meta{Origin: persist.Origin_ORIGIN_GENERATED, NeverExportable: true, MinVersion: 1, NextVersion: 65})
		return o
	}
}

// addBig adds n large keys to a and returns their ids.
func addBig(t *testing.T, a *Store, big func(uint32, string) *Object, n int) []key.ID {
	var ids []key.ID
	for i := range n {
		o := big(1, fmt.Sprintf("big%d", i))
		if err := a.Add(o); err != nil {
			t.Fatalf("add %d: %v", i, err)
		}
		ids = append(ids, o.ID)
		a.Release(o)
	}
	return ids
}

// A backup whose records together are more than etcd takes in one
// request (--max-request-bytes, 1.5 MiB by default) restores: each
// transaction of the restore is sized by bytes too.
func TestClusterRestoreOfLargeRecords(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/big-restore/", true)
	ids := addBig(t, a, bigKeys(t), 12)
	bk := filepath.Join(t.TempDir(), "backup")
	f, err := os.Create(bk)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	if _, err := a.Restore(bk, RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	unseal(t, a)
	for _, id := range ids {
		o, err := a.Get(id)
		if err != nil {
			t.Fatalf("a key of the backup after the restore: %v", err)
		}
		a.Release(o)
	}
}

// A backup holding a record too large for the cluster (here one
// configured with a small --max-request-bytes) is refused before the
// restore changes anything: the store keeps its keys, and unseals.
func TestClusterRestoreOfTooLargeRecordRefused(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/big-refused/", true)
	addBig(t, a, bigKeys(t), 1)
	bk := filepath.Join(t.TempDir(), "backup")
	f, err := os.Create(bk)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	small := clusterNodeOf(t, store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/big-refused/", MaxRequestBytes: 100 << 10}, false)
	kept := obj(t, 1, "kept", false)
	if err := small.Add(kept); err != nil {
		t.Fatal(err)
	}
	_, err = small.Restore(bk, RestoreOptions{Force: true})
	if status(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(err.Error(), "nothing restored") {
		t.Fatalf("restore of a record too large for the cluster: %v", err)
	}
	if o, err := small.Get(kept.ID); err != nil {
		t.Fatalf("the store after the refused restore: %v", err)
	} else {
		small.Release(o)
	}
}

// A record larger than the cluster takes in one request is refused when
// it is written, with RESOURCE_EXHAUSTED and a word on the limit; writes
// committed with it in one group are not failed with it.
func TestClusterTooLargeRecordRefusedAtWrite(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNodeOf(t, store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/big-write/", MaxRequestBytes: 100 << 10}, true)
	big := bigKeys(t)
	var wg sync.WaitGroup
	errs := make([]error, 9)
	for i := range errs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if i == 0 {
				errs[i] = a.Add(big(1, "too-big"))
			} else {
				errs[i] = a.Add(obj(t, uint32(2+i), fmt.Sprintf("small%d", i), false))
			}
		}()
	}
	wg.Wait()
	if status(errs[0]) != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(errs[0].Error(), "max-request-bytes") {
		t.Fatalf("a record too large for the cluster: %v", errs[0])
	}
	for i, err := range errs[1:] {
		if err != nil {
			t.Errorf("a small creation written with the large one (%d): %v", i, err)
		}
	}
}

// Writes of large records that arrive together are committed in groups
// within the cluster's request size: none fails, and a small write of
// another owner that comes with them neither.
func TestClusterGroupCommitOfLargeRecords(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/big-group/", true)
	big := bigKeys(t)
	var objs []*Object
	for i := range 12 {
		o := big(1, fmt.Sprintf("big%d", i))
		if err := a.Add(o); err != nil {
			t.Fatalf("add %d: %v", i, err)
		}
		objs = append(objs, o)
	}
	for round := range 3 {
		errs := make(chan error, len(objs)+1)
		for _, o := range objs {
			go func() {
				errs <- a.SetAttrs(o, func(old *key.Attrs) (*key.Attrs, error) { n := *old; return &n, nil })
			}()
		}
		go func() { errs <- a.Add(obj(t, 2, fmt.Sprintf("small%d", round), false)) }()
		for range len(objs) + 1 {
			if err := <-errs; err != nil {
				t.Errorf("round %d: %v", round, err)
			}
		}
	}
}

// A master-key rotation re-wraps large records in batches within the
// cluster's request size, and ends.
func TestClusterRewrapOfLargeRecords(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/big-rewrap/", true)
	ids := addBig(t, a, bigKeys(t), 12)
	p, err := a.Master().PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte("rotated"), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	commitRotation(t, a, p)
	if err := a.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
	if a.Master().Record().Rotation != nil {
		t.Fatal("the rotation is still open")
	}
	for _, id := range ids {
		o, err := a.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		a.Release(o)
	}
}

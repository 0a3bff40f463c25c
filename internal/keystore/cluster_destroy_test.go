package keystore

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// b creates a key named n right after a's last commit and before a's
// creation of the same name commits (forced in hookAddWriting): a's group
// reads the name as absent from its last-commit snapshot; the guard must
// refuse it, and a's Add must fail with ALREADY_EXISTS, b's key intact,
// no tamper seen by either.
func TestClusterNameRaceAfterOwnCommit(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rv-name/", true)
	b := clusterNode(t, c.Endpoints(), "/rv-name/", false)
	warm := obj(t, 1, "warm", false)
	if err := a.Add(warm); err != nil {
		t.Fatal(err)
	}
	defer a.Release(warm)
	ob := obj(t, 1, "n", false)
	var forced atomic.Bool
	setHook(t, &hookAddWriting, func() {
		if !forced.CompareAndSwap(false, true) {
			return
		}
		if err := b.Add(ob); err != nil {
			t.Errorf("b's add: %v", err)
		}
	})
	oa := obj(t, 1, "n", false)
	err := a.Add(oa)
	hookAddWriting = nil
	if status(err) != wire.Status_STATUS_ALREADY_EXISTS {
		t.Fatalf("a's add of a name b took meanwhile: %v", err)
	}
	Discard(oa)
	defer b.Release(ob)
	for _, s := range []*Store{a, b} {
		if err := s.fol.check(); err != nil {
			t.Fatalf("follower: %v", err)
		}
	}
	var got *Object
	within(t, 2*time.Second, "a opens b's key by name", func() bool {
		o, err := a.Lookup(1, "n")
		if err != nil {
			return false
		}
		got = o
		return true
	})
	defer a.Release(got)
	if got.ID != ob.ID {
		t.Fatalf("a's name n opens %s, want b's %s", got.ID, ob.ID)
	}
	if p, _ := a.Counts(); p != 2 {
		t.Fatalf("a counts %d keys, want 2", p)
	}
}

// b destroys the key between a's rotation commit and its return
// (hookRotated): a's object, with the new version installed at commit,
// is wiped (the new version's material too), and a does not reopen it.
func TestClusterDestroyDuringRotationForced(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rv-rotdestroy/", true)
	b := clusterNode(t, c.Endpoints(), "/rv-rotdestroy/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	defer a.Release(o)
	var forced atomic.Bool
	hookRotated = func(k *Object) {
		if k != o || !forced.CompareAndSwap(false, true) {
			return
		}
		var ob *Object
		within(t, 2*time.Second, "b opens version 2", func() bool {
			var err error
			if ob, err = b.Get(o.ID); err != nil {
				return false
			}
			if ob.Newest().N != 2 {
				b.Release(ob)
				return false
			}
			return true
		})
		if err := b.Remove(ob); err != nil {
			t.Errorf("b's destroy: %v", err)
		}
		b.Release(ob)
		within(t, 2*time.Second, "a's follower applies b's destroy", func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			_, ok := a.seen.get(o.ID)
			return !ok
		})
	}
	t.Cleanup(func() { hookRotated = nil })
	v, err := a.Rotate(o)
	hookRotated = nil
	if !forced.Load() {
		t.Fatal("hook did not run")
	}
	t.Logf("a's rotation: v=%v err=%v", v != nil, err)
	if err := useErr(o); !errors.Is(err, errDestroyedElsewhere) {
		t.Fatalf("a's handle after b's destroy: %v", err)
	}
	if _, err := a.Get(o.ID); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("a reopens the destroyed key: %v", err)
	}
}

// b narrows the ACL (usage) between a's rotation commit and its return:
// a's handle must be dropped, and reopening gives the narrowed usage.
func TestClusterNarrowDuringRotationForced(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rv-rotnarrow/", true)
	b := clusterNode(t, c.Endpoints(), "/rv-rotnarrow/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	defer a.Release(o)
	var forced atomic.Bool
	hookRotated = func(k *Object) {
		if k != o || !forced.CompareAndSwap(false, true) {
			return
		}
		var ob *Object
		within(t, 2*time.Second, "b opens version 2", func() bool {
			var err error
			if ob, err = b.Get(o.ID); err != nil {
				return false
			}
			if ob.Newest().N != 2 {
				b.Release(ob)
				return false
			}
			return true
		})
		err := b.SetAttrs(ob, func(old *key.Attrs) (*key.Attrs, error) {
			n := *old
			n.Usage = key.Decrypt
			return &n, nil
		})
		if err != nil {
			t.Errorf("b's narrowing: %v", err)
		}
		b.Release(ob)
		time.Sleep(300 * time.Millisecond)
	}
	t.Cleanup(func() { hookRotated = nil })
	if _, err := a.Rotate(o); err != nil {
		t.Fatal(err)
	}
	hookRotated = nil
	if o.Attrs().Usage&key.Encrypt != 0 && useErr(o) == nil {
		t.Fatalf("a still serves encrypt usage after b's narrowing")
	}
	oa, err := a.Get(o.ID)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release(oa)
	if oa.Attrs().Usage&key.Encrypt != 0 || oa.Newest().N != 2 {
		t.Fatalf("a reopens usage %v version %d", oa.Attrs().Usage, oa.Newest().N)
	}
}

// a reserves, a is sealed (its count remembered), b reserves after
// a's range, a is unsealed and reopens: a must count from b's end.
func TestClusterResumeAcrossSeal(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rv-resume/", true)
	b := clusterNode(t, c.Endpoints(), "/rv-resume/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Encrypting(o, 1); err != nil {
		t.Fatal(err)
	}
	a.SealAll()
	var ob *Object
	within(t, 2*time.Second, "b opens the key", func() bool {
		var err error
		ob, err = b.Get(o.ID)
		return err == nil && ob.Newest().reserved.Load() > 0
	})
	if _, err := b.Encrypting(ob, 1); err != nil {
		t.Fatal(err)
	}
	reserved := ob.Newest().reserved.Load()
	b.Release(ob)
	unseal(t, a)
	var oa *Object
	within(t, 2*time.Second, "a opens", func() bool {
		var err error
		oa, err = a.Get(o.ID)
		return err == nil
	})
	defer a.Release(oa)
	if u := oa.Newest().Used(); u < reserved {
		t.Fatalf("a goes on from %d under b's reservation %d", u, reserved)
	}
}

// A destroy here while this daemon's follower is still applying an
// earlier commit of another daemon to the same key (a rotation; the
// follower is held in hookFollowApply): the destroy is refused as made
// from a replaced state, so the follower never notes the other's record
// over the destroy's, and the counts and later rotations stay right.
func TestClusterDestroyOvertakesFollowedRotation(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rv-delfollow/", true)
	b := clusterNode(t, c.Endpoints(), "/rv-delfollow/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	var ob *Object
	within(t, 2*time.Second, "b opens the key", func() bool {
		var err error
		ob, err = b.Get(o.ID)
		return err == nil
	})
	held := make(chan struct{})
	release := make(chan struct{})
	var armed atomic.Bool
	armed.Store(true)
	h := func(s *Store) {
		if s == a && armed.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
	}
	hookFollowApply.Store(&h)
	t.Cleanup(func() { hookFollowApply.Store(nil) })
	if _, err := b.Rotate(ob); err != nil {
		t.Fatal(err)
	}
	b.Release(ob)
	<-held // a's follower is at b's rotation
	err := a.Remove(o)
	t.Logf("a's destroy while its follower applies b's rotation: %v", err)
	close(release)
	a.Release(o)
	time.Sleep(500 * time.Millisecond) // a's follower passes both
	var inEtcd bool
	a.db.View(func(tx store.Tx) error {
		inEtcd = tx.Get(persist.BucketKeys, o.ID[:]) != nil
		return nil
	})
	a.mu.Lock()
	_, noted := a.seen.get(o.ID)
	known := a.seen.len()
	owned := a.owned[1]
	a.mu.Unlock()
	p, _ := a.Counts()
	bp, _ := b.Counts()
	t.Logf("record in etcd %v; a notes it present %v; a: %d records known, count %d, owner 1 owns %d; b counts %d", inEtcd, noted, known, p, owned, bp)
	if noted != inEtcd || p != bp {
		t.Errorf("a's notes disagree with the store after its destroy: noted %v, in etcd %v, a counts %d, b %d", noted, inEtcd, p, bp)
	}
	pr, err := a.Master().PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	if err := a.CommitRotation(pr); err != nil {
		t.Errorf("a's master-key rotation afterwards: %v", err)
	}
}

// A destroy on a made from a state b's change replaced: b forbids the
// key's deletion (DeletionAllowed false) and a's follower has not applied
// it yet (held), so a's memory still allows it; a's delete must be
// refused ("open it again"), and the key stays.
func TestClusterDestroyAfterDeletionForbiddenElsewhere(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rv-delforbid/", true)
	b := clusterNode(t, c.Endpoints(), "/rv-delforbid/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	yes, no := true, false
	if err := a.SetLifecycle(o, Lifecycle{DeletionAllowed: &yes}); err != nil {
		t.Fatal(err)
	}
	var ob *Object
	within(t, 2*time.Second, "b opens the key", func() bool {
		var err error
		ob, err = b.Get(o.ID)
		if err == nil && !ob.Meta().DeletionAllowed {
			b.Release(ob)
			return false
		}
		return err == nil
	})
	held := make(chan struct{})
	release := make(chan struct{})
	var armed atomic.Bool
	armed.Store(true)
	h := func(s *Store) {
		if s == a && armed.CompareAndSwap(true, false) {
			close(held)
			<-release
		}
	}
	hookFollowApply.Store(&h)
	t.Cleanup(func() { hookFollowApply.Store(nil) })
	if err := b.SetLifecycle(ob, Lifecycle{DeletionAllowed: &no}); err != nil {
		t.Fatal(err)
	}
	b.Release(ob)
	<-held
	allowed := o.Meta().DeletionAllowed // what the server's destroy checks
	err := a.Remove(o)
	close(release)
	a.Release(o)
	var inEtcd bool
	a.db.View(func(tx store.Tx) error {
		inEtcd = tx.Get(persist.BucketKeys, o.ID[:]) != nil
		return nil
	})
	t.Logf("a's memory allows deletion %v; a.Remove: %v; record still in etcd: %v", allowed, err, inEtcd)
	if err == nil && !inEtcd {
		t.Errorf("a deleted the key after b's committed DeletionAllowed=false (its delete read b's record)")
	}
}

// A destroy through a handle whose object a's follower dropped (b rotated
// the key) must not report the key destroyed: the key lives on in its new
// record, so Remove says "open it again" rather than nil, on which the
// server's destroy would answer OK.
func TestClusterDestroyOfObjectChangedElsewhere(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rv-delchanged/", true)
	b := clusterNode(t, c.Endpoints(), "/rv-delchanged/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	defer a.Release(o)
	var ob *Object
	within(t, 2*time.Second, "b opens the key", func() bool {
		var err error
		ob, err = b.Get(o.ID)
		return err == nil
	})
	if _, err := b.Rotate(ob); err != nil {
		t.Fatal(err)
	}
	b.Release(ob)
	within(t, 2*time.Second, "a drops its copy", func() bool { return errors.Is(useErr(o), errChangedElsewhere) })
	err := a.Remove(o)
	var inEtcd bool
	a.db.View(func(tx store.Tx) error {
		inEtcd = tx.Get(persist.BucketKeys, o.ID[:]) != nil
		return nil
	})
	t.Logf("a.Remove of the dropped object: %v; record still in etcd: %v", err, inEtcd)
	if err == nil && inEtcd {
		t.Errorf("destroy acknowledged (nil) but the key is still in the store")
	}
}

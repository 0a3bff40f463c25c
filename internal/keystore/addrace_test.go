package keystore

import (
	"errors"
	"fmt"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// A key opened by another caller (by its name) once its record is written
// and before Add returns is the object Add made, not a second object of
// the same key: a rotation through each makes the version after the
// other's. Before, the other caller loaded an object of its own, and Add
// then installed its object over it: both made version 2, the second
// replacing the first's material in the store.
func TestAddOvertakenByLoad(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	var once atomic.Bool
	var first uint32
	o := obj(t, 1, "k", false)
	setHook(t, &hookAddWritten, func() {
		if !once.CompareAndSwap(false, true) {
			return
		}
		a, err := s.Lookup(1, "k")
		if err != nil {
			t.Errorf("the other caller's lookup: %v", err)
			return
		}
		v, err := s.Rotate(a)
		s.Release(a)
		if err != nil {
			t.Errorf("the other caller's rotation: %v", err)
			return
		}
		first = v.N
	})
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	hookAddWritten = nil
	defer s.Release(o)
	v, err := s.Rotate(o)
	if err != nil {
		t.Fatal(err)
	}
	if first != 2 || v.N != 3 {
		t.Fatalf("the rotations made versions %d and %d, want 2 and 3", first, v.N)
	}
	c, err := s.Lookup(1, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release(c)
	if c != o {
		t.Fatal("two objects of one key are loaded")
	}
	if n := len(c.Versions()); n != 3 {
		t.Fatalf("the key has %d versions, want 3", n)
	}
}

// A key created on one daemon and destroyed by another between the commit
// of its record and the end of Add is wiped on the first, as a key
// destroyed elsewhere is: its handle answers "destroyed by another daemon"
// and it is not served. Before, the follower found no object to wipe, and
// Add then installed its object: the destroyed key stayed usable there.
func TestClusterAddOvertakenByDestroyForced(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/add-race/", true)
	b := clusterNode(t, c.Endpoints(), "/add-race/", false)
	o := obj(t, 1, "k", false)
	var forced atomic.Bool
	setHook(t, &hookAddWritten, func() {
		if !forced.CompareAndSwap(false, true) {
			return
		}
		var ob *Object
		within(t, 2*time.Second, "b opens the key", func() bool {
			var err error
			ob, err = b.Get(o.ID)
			return err == nil
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
	})
	err := a.Add(o)
	hookAddWritten = nil
	if !forced.Load() {
		t.Fatal("the hook did not run")
	}
	if err != nil {
		t.Fatal(err)
	}
	defer a.Release(o)
	if err := useErr(o); !errors.Is(err, errDestroyedElsewhere) {
		t.Fatalf("the key destroyed by b during its creation on a: %v, want errDestroyedElsewhere", err)
	}
	if _, err := a.Get(o.ID); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("a opens the key b destroyed: %v", err)
	}
	if p, live := a.Counts(); p != 0 || live != 0 {
		t.Fatalf("a counts %d persistent keys, %d live", p, live)
	}
}

// A daemon notes the record it wrote (its commit functions run) before its
// follower applies a later commit of another daemon to the same key: the
// record it then knows is the other's, not its own older one. The other
// daemon's rotation is forced in between: it commits while this daemon's
// commit functions are held back. Before, the follower applied it first,
// and the commit functions then put back the older record's tag: the key's
// current record looked replaced, and the key was refused as tampered with.
func TestClusterOwnCommitNotedBeforeLaterCommitFollowed(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/note-order/", true)
	b := clusterNode(t, c.Endpoints(), "/note-order/", false)
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
	b.Release(ob)
	var forced atomic.Bool
	hookCommitting = func(s *Store) {
		if s != a || !forced.CompareAndSwap(false, true) {
			return
		}
		// a's rotation is in etcd; b rotates after it.
		var ob *Object
		within(t, 2*time.Second, "b opens a's version 2", func() bool {
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
		if _, err := b.Rotate(ob); err != nil {
			t.Errorf("b's rotation: %v", err)
		}
		b.Release(ob)
		// Time for a's follower to apply b's rotation, if it may.
		time.Sleep(300 * time.Millisecond)
	}
	t.Cleanup(func() { hookCommitting = nil })
	if _, err := a.Rotate(o); err != nil {
		t.Fatal(err)
	}
	hookCommitting = nil
	if !forced.Load() {
		t.Fatal("the hook did not run")
	}
	within(t, 2*time.Second, "a drops its copy after b's rotation", func() bool { return errors.Is(useErr(o), errChangedElsewhere) })
	oa, err := a.Get(o.ID)
	if err != nil {
		t.Fatalf("a opens the key after b's rotation: %v", err)
	}
	defer a.Release(oa)
	if n := oa.Newest().N; n != 3 {
		t.Fatalf("a opens version %d, want 3", n)
	}
}

// A key unloaded and opened again on one daemon goes on from what it
// counted only if no other daemon reserved encryptions of the version
// since: the other's range is in the record's reservation, above this
// daemon's, and this one's encryptions must not run into it. Before, the
// count kept from before the unload was put back under the record's
// higher reservation, and the encryptions of both daemons together could
// exceed what the record reserved.
func TestClusterReloadAfterReservationElsewhere(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/reload-count/", true)
	b := clusterNode(t, c.Endpoints(), "/reload-count/", false)
	for _, unloadFirst := range []bool{false, true} {
		name := fmt.Sprintf("k%v", unloadFirst)
		o := obj(t, 1, name, false)
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		if _, err := a.Encrypting(o, 1); err != nil {
			t.Fatal(err)
		}
		var ob *Object
		within(t, 2*time.Second, "b opens the key", func() bool {
			var err error
			ob, err = b.Get(o.ID)
			return err == nil && ob.Newest().reserved.Load() > 0
		})
		if unloadFirst {
			a.Release(o) // unloaded on a before b reserves
		}
		if _, err := b.Encrypting(ob, 1); err != nil {
			t.Fatal(err)
		}
		reserved := ob.Newest().reserved.Load()
		b.Release(ob)
		if !unloadFirst {
			within(t, 2*time.Second, "a follows b's reservation", func() bool { return o.Newest().elsewhere.Load() >= reserved })
			a.Release(o)
		} else {
			within(t, 2*time.Second, "a follows b's reservation", func() bool {
				a.mu.Lock()
				defer a.mu.Unlock()
				tag, _ := a.seen.get(o.ID)
				var cur uint64
				a.db.View(func(tx store.Tx) error {
					cur = macTag(tx.Get(persist.BucketKeys, o.ID[:]))
					return nil
				})
				return tag == cur
			})
		}
		oa, err := a.Get(o.ID)
		if err != nil {
			t.Fatal(err)
		}
		if u := oa.Newest().Used(); u < reserved {
			t.Errorf("unloaded first %v: a goes on from %d encryptions under a reservation of %d, which b's range (up to it) is in", unloadFirst, u, reserved)
		}
		a.Release(oa)
	}
}

// Another daemon that reserves encryptions of a version just made by a
// rotation here, before this daemon has returned from the rotation, is
// followed here: this daemon's next reservation goes on after the other's
// range. The reservation is forced in between. Before, the follower found
// the new version not yet in the object and raised nothing, and every
// later reservation here was refused as made from a replaced state
// ("open it again and retry"), while opening it again gave the same
// object.
func TestClusterReservationDuringRotationForced(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rotate-reserve/", true)
	b := clusterNode(t, c.Endpoints(), "/rotate-reserve/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	defer a.Release(o)
	var forced atomic.Bool
	var reserved uint64
	hookRotated = func(k *Object) {
		if k != o || !forced.CompareAndSwap(false, true) {
			return
		}
		var ob *Object
		within(t, 2*time.Second, "b opens a's version 2", func() bool {
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
		defer b.Release(ob)
		if _, err := b.Encrypting(ob, 1); err != nil {
			t.Errorf("b's reservation: %v", err)
			return
		}
		reserved = ob.Newest().reserved.Load()
		within(t, 2*time.Second, "a's follower applies b's reservation", func() bool {
			a.mu.Lock()
			defer a.mu.Unlock()
			tag, _ := a.seen.get(o.ID)
			var cur uint64
			a.db.View(func(tx store.Tx) error {
				cur = macTag(tx.Get(persist.BucketKeys, o.ID[:]))
				return nil
			})
			return tag == cur
		})
	}
	t.Cleanup(func() { hookRotated = nil })
	if _, err := a.Rotate(o); err != nil {
		t.Fatal(err)
	}
	hookRotated = nil
	if !forced.Load() {
		t.Fatal("the hook did not run")
	}
	v, err := a.Encrypting(o, 1)
	if err != nil {
		t.Fatalf("a's reservation after b's: %v", err)
	}
	if v.N != 2 || v.Used() <= reserved {
		t.Fatalf("a encrypts with version %d from count %d, want version 2 after b's range (to %d)", v.N, v.Used(), reserved)
	}
}

// A reservation of encryptions that another daemon makes of the version a
// rotation here made is applied here in place, as any other reservation
// elsewhere: the key stays open here. Before, the rotation's record
// lacked the new version's fingerprint, which the other daemon's write
// added: the change looked like more than a reservation, and this
// daemon's handles were dropped ("open it again").
func TestClusterReservationAfterRotationInPlace(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rotate-inplace/", true)
	b := clusterNode(t, c.Endpoints(), "/rotate-inplace/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	defer a.Release(o)
	if _, err := a.Rotate(o); err != nil {
		t.Fatal(err)
	}
	var ob *Object
	within(t, 2*time.Second, "b opens a's version 2", func() bool {
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
	defer b.Release(ob)
	if _, err := b.Encrypting(ob, 1); err != nil {
		t.Fatal(err)
	}
	reserved := ob.Newest().reserved.Load()
	within(t, 2*time.Second, "a follows b's reservation", func() bool {
		return o.Newest().elsewhere.Load() >= reserved || useErr(o) != nil
	})
	if err := useErr(o); err != nil {
		t.Fatalf("a's handle after b's reservation: %v", err)
	}
}

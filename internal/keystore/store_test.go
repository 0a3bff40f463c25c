package keystore

import (
	"bytes"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/wire"
)

func obj(t *testing.T, owner uint32, name string, ephemeral bool) *Object {
	t.Helper()
	m, err := mech.Generate(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM))
	if err != nil {
		t.Fatal(err)
	}
	return NewObject(name, owner, m, &key.Attrs{Usage: key.Encrypt | key.Decrypt}, ephemeral, time.Now())
}

func status(err error) wire.Status { return wire.StatusOf(err) }

func TestQuotaAndNames(t *testing.T) {
	s := New(3)
	a, b := obj(t, 1, "a", false), obj(t, 1, "b", false)
	for _, o := range []*Object{a, b} {
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.Add(obj(t, 1, "a", false)); status(err) != wire.Status_STATUS_ALREADY_EXISTS {
		t.Fatalf("duplicate name: %v", err)
	}
	if err := s.Add(obj(t, 2, "a", false)); err != nil {
		t.Fatalf("same name, other owner: %v", err)
	}
	eph := obj(t, 1, "", true)
	if err := s.Add(eph); err != nil {
		t.Fatal(err)
	}
	if err := s.Add(obj(t, 1, "c", false)); status(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("over quota (ephemeral keys count): %v", err)
	}
	if _, found := s.Get(eph.ID); found {
		t.Fatal("an ephemeral key is findable by id")
	}
	s.Remove(eph)
	s.Remove(eph) // twice is harmless
	if got := s.Owned(1); got != 2 {
		t.Fatalf("owner 1 holds %d keys, want 2", got)
	}
	if err := s.Add(obj(t, 1, "c", false)); err != nil {
		t.Fatalf("after a removal: %v", err)
	}
	if o, found := s.Lookup(1, "a"); !found || o != a {
		t.Fatal("lookup by name")
	}
	s.Remove(a)
	if _, found := s.Lookup(1, "a"); found {
		t.Fatal("removed key still found by name")
	}
	if _, found := s.Get(a.ID); found {
		t.Fatal("removed key still found by id")
	}
	if err := a.Use(func(*mech.Key) error { return nil }); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("use of a removed key: %v", err)
	}
}

func TestList(t *testing.T) {
	s := New(100)
	var objs []*Object
	for i := range 10 {
		o := obj(t, uint32(i%2), "", false)
		s.Add(o)
		objs = append(objs, o)
	}
	mine := func(o *Object) bool { return o.Owner == 0 }
	var all []*Object
	var after key.ID
	for {
		page := s.List(after, 2, mine)
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		after = page[len(page)-1].ID
	}
	if len(all) != 5 {
		t.Fatalf("listed %d keys of owner 0, want 5", len(all))
	}
	for i := 1; i < len(all); i++ {
		if bytes.Compare(all[i-1].ID[:], all[i].ID[:]) >= 0 {
			t.Fatal("list is not in id order")
		}
	}
}

// Material is never wiped under a running operation.
func TestRemoveWaitsForUse(t *testing.T) {
	s := New(10)
	o := obj(t, 1, "k", false)
	s.Add(o)
	inUse := make(chan struct{})
	finish := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		o.Use(func(m *mech.Key) error {
			close(inUse)
			<-finish
			if _, err := m.Encrypt([]byte("x"), nil, 0, nil); err != nil {
				t.Errorf("material wiped during use: %v", err)
			}
			return nil
		})
	}()
	<-inUse
	removed := make(chan struct{})
	go func() { s.Remove(o); close(removed) }()
	select {
	case <-removed:
		t.Fatal("Remove did not wait for the operation")
	case <-time.After(50 * time.Millisecond):
	}
	close(finish)
	<-removed
	wg.Wait()
	if !o.Destroyed() {
		t.Fatal("not destroyed")
	}
}

func TestCloseWipesAndRefuses(t *testing.T) {
	s := New(10)
	o := obj(t, 1, "k", false)
	s.Add(o)
	s.Close()
	if !o.Destroyed() {
		t.Fatal("Close left material")
	}
	if err := s.Add(obj(t, 1, "x", false)); status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("Add after Close: %v", err)
	}
}

func TestReplaceAttrs(t *testing.T) {
	o := obj(t, 1, "k", false)
	old := o.Attrs()
	n := &key.Attrs{Usage: key.Encrypt}
	if !o.ReplaceAttrs(old, n) || o.Attrs() != n {
		t.Fatal("replace")
	}
	if o.ReplaceAttrs(old, &key.Attrs{}) {
		t.Fatal("replace from a stale value succeeded")
	}
}

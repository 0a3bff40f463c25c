package keystore

import (
	"errors"
	"fmt"
	"testing"

	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// A key the caller may not see is refused from its record: it is not
// loaded, and the answer is the NOT_FOUND of a key that does not exist.
func TestAccessBeforeLoading(t *testing.T) {
	s := dev(t, 100)
	a := obj(t, 1, "a", false)
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	s.Release(a) // unloaded: only its record is left
	if n := s.Loaded(); n != 0 {
		t.Fatalf("%d keys loaded, want 0", n)
	}
	as := func(uid uint32) Access {
		return func(k policy.Key) error {
			return policy.Authorize(policy.Caller{UID: uid, GID: uid}, k, policy.Open, 0).Err()
		}
	}
	_, missing := s.LookupFor(1, "missing", as(2))
	if status(missing) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("a name that does not exist: %v", missing)
	}
	// What the client is told: the status and the public message.
	public := func(err error) string {
		var we *wire.Error
		if !errors.As(err, &we) {
			return fmt.Sprint(err)
		}
		return we.Status.String() + ": " + we.Public
	}
	for name, get := range map[string]func() (*Object, error){
		"by name": func() (*Object, error) { return s.LookupFor(1, "a", as(2)) },
		"by id":   func() (*Object, error) { return s.GetFor(a.ID, as(2)) },
	} {
		before := s.loads.Load()
		o, err := get()
		if o != nil || public(err) != public(missing) {
			t.Errorf("%s, another uid: %v, want %v", name, err, missing)
		}
		if n := s.loads.Load() - before; n != 0 || s.Loaded() != 0 {
			t.Errorf("%s, another uid: the key was loaded (%d loads, %d keys in memory)", name, n, s.Loaded())
		}
	}
	// The owner's open loads it, once.
	before := s.loads.Load()
	o, err := s.LookupFor(1, "a", as(1))
	if err != nil {
		t.Fatal(err)
	}
	if n := s.loads.Load() - before; n != 1 {
		t.Fatalf("the owner's open made %d loads, want 1", n)
	}
	// Loaded, a key is still refused to another uid, and keeps one
	// reference (the owner's).
	if _, err := s.GetFor(a.ID, as(2)); public(err) != public(missing) {
		t.Fatalf("loaded key, another uid: %v", err)
	}
	s.Release(o)
	if n := s.Loaded(); n != 0 {
		t.Fatalf("a refused open kept a reference: %d keys loaded", n)
	}
	if _, err := s.GetFor(a.ID, nil); status(err) != wire.Status_STATUS_INTERNAL {
		t.Fatalf("GetFor without an access check: %v", err)
	}
}

// Another user's key whose record failed its check answers as a key that
// does not exist; its owner learns it is refused.
func TestQuarantinedKeyOfAnotherUser(t *testing.T) {
	s := dev(t, 100)
	a := obj(t, 1, "a", false)
	if err := s.Add(a); err != nil {
		t.Fatal(err)
	}
	s.Release(a)
	s.mu.Lock()
	s.bad[a.ID] = struct{}{}
	s.mu.Unlock()
	as := func(uid uint32) Access {
		return func(k policy.Key) error {
			return policy.Authorize(policy.Caller{UID: uid, GID: uid}, k, policy.Open, 0).Err()
		}
	}
	_, missing := s.LookupFor(1, "missing", as(2))
	_, byName := s.LookupFor(1, "a", as(2))
	_, byID := s.GetFor(a.ID, as(2))
	if status(byName) != status(missing) || status(byID) != status(missing) {
		t.Errorf("another user's quarantined key: %v, %v; a missing one: %v", byName, byID, missing)
	}
	if _, err := s.GetFor(a.ID, as(1)); err != errQuarantined {
		t.Errorf("the owner's quarantined key: %v", err)
	}
}

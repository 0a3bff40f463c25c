package keystore

import (
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

var agePrograms = []key.Program{{Path: "/usr/bin/age"}, {Path: "/usr/bin/ssh", SHA256: make([]byte, 32)}}

// A key's programs survive a restart, and so does what the copy rule
// knows of them: a copy of its material that any program may use is
// refused before and after.
func TestProgramsPersistAndBindCopies(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	o := must(NewObject("signer", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt | key.Decrypt, Wrappable: true}, false, time.Now(), persist.Origin_ORIGIN_GENERATED))
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	ps := slices.Clone(agePrograms)
	if err := s.SetLifecycle(o, Lifecycle{Programs: &ps}); err != nil {
		t.Fatal(err)
	}
	if !o.Policy().Restricted() || len(o.Info(policy.Caller{UID: 1000}).Lifecycle.AllowedPrograms) != 2 {
		t.Fatal("the programs are not the key's")
	}
	c := copyOf(t, o, aesSpec, key.Attrs{Usage: key.Encrypt}, false)
	if err := s.Add(c); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Fatalf("unrestricted copy of a restricted key: %v", err)
	}
	Discard(c)

	id := o.ID
	s = reopen(t, s, dir)
	got, err := s.Lookup(1000, "signer")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release(got)
	if got.ID != id || !slices.EqualFunc(got.Meta().Programs, agePrograms, key.Program.Equal) {
		t.Fatalf("programs after a restart: %v", got.Meta().Programs)
	}
	c = copyOf(t, got, aesSpec, key.Attrs{Usage: key.Encrypt}, false)
	if err := s.Add(c); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Fatalf("unrestricted copy of a restricted key after a restart: %v", err)
	}
	Discard(c)

	// Lifted, the restriction no longer binds copies.
	none := []key.Program{}
	if err := s.SetLifecycle(got, Lifecycle{Programs: &none}); err != nil {
		t.Fatal(err)
	}
	if got.Policy().Restricted() {
		t.Fatal("an empty list left the key restricted")
	}
	c = copyOf(t, got, aesSpec, key.Attrs{Usage: key.Encrypt}, true)
	c.Owner = 1000
	if err := s.Add(c); err != nil {
		t.Fatalf("copy of a key no longer restricted: %v", err)
	}
	// With a copy of its owner's that any program may use, the key cannot
	// be restricted again: the restriction would restrict nothing.
	if err := s.SetLifecycle(got, Lifecycle{Programs: &ps}); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Fatalf("restricting a key whose owner holds an unrestricted copy: %v", err)
	}
	if got.Policy().Restricted() {
		t.Fatal("a refused restriction was applied")
	}
	// Once the copy is gone, it can.
	if err := s.Remove(c); err != nil {
		t.Fatal(err)
	}
	if err := s.SetLifecycle(got, Lifecycle{Programs: &ps}); err != nil {
		t.Fatal(err)
	}
	bad := []key.Program{{Path: "relative"}}
	if err := s.SetLifecycle(got, Lifecycle{Programs: &bad}); status(err) != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("a relative path: %v", err)
	}
}

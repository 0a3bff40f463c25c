package keystore

import (
	"bytes"
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/wire"
)

// TestCopiesShareOneBudget: N copies of one AES-GCM key's material (here
// what N unwraps of one blob make: the same bytes, the blob's count) do
// not get N budgets. The first holder keeps the budget; a copy that may
// encrypt has its budget for that material spent, so its first
// encryption uses a new version of fresh material, or is refused under
// refuse-when-spent; a decrypt-only copy is left as it is. The rule holds
// across a restart.
func TestCopiesShareOneBudget(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	orig := must(NewObject("orig", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt | key.Decrypt, Wrappable: true}, false, time.Now(), persist.Origin_ORIGIN_GENERATED))
	if err := s.Add(orig); err != nil {
		t.Fatal(err)
	}
	if v, err := s.Encrypting(orig, 5); err != nil || v.N != 1 {
		t.Fatalf("the original's encryptions: version %v, %v", v, err)
	}
	// A copy, as a bound unwrap makes it: the version and count travel.
	copyAt := func(name string, a key.Attrs, refuse bool) *Object {
		c := copyOf(t, orig, aesSpec, a, false)
		c.Name = name
		if refuse {
			m := *c.Meta()
			m.Budget = persist.BudgetPolicy_BUDGET_POLICY_REFUSE
			SetMeta(c, &m)
		}
		SetFirstVersion(c, 1, time.Now(), 5, DefaultEncryptionLimit)
		if err := s.Add(c); err != nil {
			t.Fatal(err)
		}
		return c
	}
	c1 := copyAt("c1", key.Attrs{Usage: key.Encrypt | key.Decrypt}, false)
	c2 := copyAt("c2", key.Attrs{Usage: key.Encrypt | key.Decrypt}, false)
	ro := copyAt("ro", key.Attrs{Usage: key.Decrypt}, false)
	strict := copyAt("strict", key.Attrs{Usage: key.Encrypt | key.Decrypt}, true)
	for _, c := range []*Object{c1, c2, strict} {
		if v := c.Versions()[0]; v.Used() != 5 || v.Limit() != 5 {
			t.Fatalf("%s: a copy has %d of %d encryptions; want its budget spent (5 of 5)", c.Name, v.Used(), v.Limit())
		}
	}
	if v := ro.Versions()[0]; v.Limit() != DefaultEncryptionLimit {
		t.Fatalf("a decrypt-only copy's limit changed to %d", v.Limit())
	}
	if v := orig.Versions()[0]; v.Limit() != DefaultEncryptionLimit {
		t.Fatalf("the original's limit changed to %d", v.Limit())
	}
	// The original encrypts on with its version; each copy gets fresh
	// material at its first encryption, and still decrypts with the old.
	if v, err := s.Encrypting(orig, 1); err != nil || v.N != 1 {
		t.Fatalf("the original after the copies: version %v, %v", v, err)
	}
	old := secretOf(t, orig, orig.Versions()[0])
	for _, c := range []*Object{c1, c2} {
		v, err := s.Encrypting(c, 1)
		if err != nil || v.N != 2 {
			t.Fatalf("%s's first encryption: version %v, %v; want a new version 2", c.Name, v, err)
		}
		if bytes.Equal(secretOf(t, c, v), old) {
			t.Fatalf("%s's new version has the shared material", c.Name)
		}
		if _, ok := c.Version(1); !ok {
			t.Fatalf("%s lost the version that decrypts", c.Name)
		}
	}
	if _, err := s.Encrypting(strict, 1); status(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("a refuse-when-spent copy encrypted: %v", err)
	}

	// After a restart: the spent budget was written with the copy.
	s = reopen(t, s, dir)
	st, err := s.Lookup(2000, "strict")
	if err != nil {
		t.Fatal(err)
	}
	if v := st.Versions()[0]; v.Limit() != 5 {
		t.Fatalf("after a restart the copy may make %d encryptions", v.Limit())
	}
	if _, err := s.Encrypting(st, 1); status(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("after a restart, a refuse-when-spent copy encrypted: %v", err)
	}
	s.Release(st)
}

// TestFirstHolderKeepsBudget: a copy whose material no other key holds
// (the original destroyed, or in another daemon) keeps the count it
// carries, and only the second copy's budget is spent.
func TestFirstHolderKeepsBudget(t *testing.T) {
	s := dev(t, 100)
	src := must(NewObject("", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt | key.Decrypt}, true, time.Now(), persist.Origin_ORIGIN_GENERATED))
	first := copyOf(t, src, aesSpec, key.Attrs{Usage: key.Encrypt | key.Decrypt}, true)
	second := copyOf(t, src, aesSpec, key.Attrs{Usage: key.Encrypt | key.Decrypt}, true)
	Discard(src) // never added: as if in another daemon
	for _, c := range []*Object{first, second} {
		// As a bound unwrap makes it: version 3, 7 encryptions made.
		m := *c.Meta()
		m.MinVersion, m.NextVersion = 3, 4
		SetMeta(c, &m)
		SetFirstVersion(c, 3, time.Now(), 7, DefaultEncryptionLimit)
		if err := s.Add(c); err != nil {
			t.Fatal(err)
		}
	}
	if v, err := s.Encrypting(first, 1); err != nil || v.N != 3 {
		t.Fatalf("the first copy: version %v, %v; want its own version 3", v, err)
	}
	if v, err := s.Encrypting(second, 1); err != nil || v.N != 4 {
		t.Fatalf("the second copy: version %v, %v; want a new version 4", v, err)
	}
}

package keystore

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
)

// derived returns a new derived key whose base key was always sensitive
// and never extractable, as the daemon records it at the derivation.
func derived(t *testing.T, name string) *Object {
	t.Helper()
	o := obj(t, 1, name, false)
	m := *o.Meta()
	m.Origin, m.BaseAlwaysSensitive, m.BaseNeverExtractable = persist.Origin_ORIGIN_DERIVED, true, true
	SetMeta(o, &m)
	return o
}

func checkProvenance(t *testing.T, s *Store, name, when string) {
	t.Helper()
	o, err := s.Lookup(1, name)
	if err != nil {
		t.Fatalf("%s: %v", when, err)
	}
	defer s.Release(o)
	lc := o.Info(policy.Caller{UID: 1}).GetLifecycle()
	if !o.AlwaysSensitive() || !o.NeverExtractable() || !lc.GetBaseAlwaysSensitive() || !lc.GetBaseNeverExtractable() {
		t.Errorf("%s: always sensitive %v, never extractable %v, lifecycle %v", when, o.AlwaysSensitive(), o.NeverExtractable(), lc)
	}
}

// What a derived key records of its base key (always sensitive, never
// extractable) lasts across a restart and a backup restored into another
// daemon, and says nothing for a key not derived.
func TestDerivedProvenanceKept(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	if err := s.Add(derived(t, "child")); err != nil {
		t.Fatal(err)
	}
	s = reopen(t, s, dir)
	checkProvenance(t, s, "child", "after a restart")

	file := filepath.Join(t.TempDir(), "backup")
	f, _ := os.Create(file)
	if err := s.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	db2, err := store.OpenBolt(filepath.Join(t.TempDir(), "state2"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db2.Close()
	m2, _ := seal.Open(seal.Config{Store: db2, KDF: inProcessKDF{}, InsecureKDF: true})
	s2 := New(Config{MaxPerUser: 10, DB: db2, Master: m2})
	defer s2.Close()
	if _, err := s2.Restore(file, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	unseal(t, s2)
	checkProvenance(t, s2, "child", "in the daemon the backup was restored into")

	// The base key's flags count only for a derived key, and only with
	// the key's own.
	for _, tc := range []struct {
		name   string
		meta   func(m *Meta)
		attrs  *key.Attrs
		always bool
		never  bool
	}{
		{"imported", func(m *Meta) { m.Origin = persist.Origin_ORIGIN_IMPORTED }, nil, false, false},
		{"derived, exportable once", func(m *Meta) { m.NeverExportable = false }, nil, false, true},
		{"derived, wrapped out", func(m *Meta) { m.WrappedOut = true }, nil, true, false},
		{"derived, wrappable", func(*Meta) {}, &key.Attrs{Usage: key.Encrypt | key.Decrypt, Wrappable: true}, true, false},
	} {
		o := derived(t, tc.name)
		m := *o.Meta()
		tc.meta(&m)
		SetMeta(o, &m)
		if tc.attrs != nil {
			o.attrs.Store(tc.attrs)
		}
		if o.AlwaysSensitive() != tc.always || o.NeverExtractable() != tc.never {
			t.Errorf("%s: always sensitive %v, never extractable %v", tc.name, o.AlwaysSensitive(), o.NeverExtractable())
		}
		Discard(o)
	}
}

// A key that was wrappable, switched to not wrappable, was extractable
// once: it is never again said to have never been extractable, after a
// restart either, and whether its record was written before the flag
// was recorded or after.
func TestOnceWrappableNeverNeverExtractable(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	o := obj(t, 1, "k", false)
	o.attrs.Store(&key.Attrs{Usage: key.Encrypt | key.Decrypt, Wrappable: true})
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	err := s.SetAttrs(o, func(old *key.Attrs) (*key.Attrs, error) {
		next := *old
		next.Wrappable = false
		return &next, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if o.NeverExtractable() {
		t.Error("switched to not wrappable: never extractable")
	}
	s = reopen(t, s, dir)
	o, err = s.Lookup(1, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release(o)
	if o.NeverExtractable() || !o.Info(policy.Caller{UID: 1}).GetLifecycle().GetEverWrappable() {
		t.Error("after a restart: never extractable, or not ever wrappable")
	}
}

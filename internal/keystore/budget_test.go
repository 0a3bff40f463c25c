package keystore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// must returns v, panicking on err: for calls that cannot fail in a test.
func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

func encrypting(t *testing.T, s *Store, o *Object) *Version {
	t.Helper()
	v, err := s.Encrypting(o, 1)
	if err != nil {
		t.Fatalf("Encrypting: %v", err)
	}
	return v
}

// TestGenerationClosesEveryVersion: a generation change closes the
// versions of every key for encryption, whether the key is in memory,
// only in the store, or ephemeral, and across a restart; each key's next
// encryption makes a new version, and the old one still decrypts.
func TestGenerationClosesEveryVersion(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	resident, away, late, eph := obj(t, 1, "resident", false), obj(t, 1, "away", false), obj(t, 1, "late", false), obj(t, 1, "", true)
	for _, o := range []*Object{resident, away, late, eph} {
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		if v := encrypting(t, s, o); v.N != 1 {
			t.Fatalf("first encryption under version %d", v.N)
		}
	}
	awayID, lateID := away.ID, late.ID
	s.Release(away)
	s.Release(late)
	if s.Loaded() != 1 {
		t.Fatalf("%d keys in memory, want only the resident one", s.Loaded())
	}

	e, err := s.CloseBudgets()
	if err != nil || e != 1 {
		t.Fatalf("CloseBudgets: %d, %v", e, err)
	}
	away = must(s.Get(awayID))
	for name, o := range map[string]*Object{"resident": resident, "not in memory": away, "ephemeral": eph} {
		v := encrypting(t, s, o)
		if v.N != 2 || !v.auto {
			t.Errorf("%s key: encrypts under version %d (automatic %v) after the change, want a new version 2", name, v.N, v.auto)
		}
		if old, ok := o.Version(1); !ok || s.open(old) {
			t.Errorf("%s key: version 1 live %v, open %v", name, ok, ok && s.open(old))
		}
	}

	// The store remembers: after a restart, the key nothing touched since
	// the change still makes a new version.
	s.Release(away)
	s.Release(resident)
	s = reopen(t, s, dir)
	if s.BudgetEpoch() != 1 {
		t.Fatalf("budget epoch %d after a restart, want 1", s.BudgetEpoch())
	}
	late = must(s.Get(lateID))
	if v := encrypting(t, s, late); v.N != 2 || !v.auto {
		t.Fatalf("after a restart, a key untouched since the change encrypts under version %d", v.N)
	}
	away = must(s.Get(awayID))
	if v := encrypting(t, s, away); v.N != 2 {
		t.Fatalf("after a restart, the new version is not kept: version %d", v.N)
	}
	s.Release(late)
	s.Release(away)
}

// TestClonesNeverShareABudget restores one snapshot of a store many times
// (the file copied, as a VM snapshot copies the disk): after the change
// each copy sees, none of them encrypts under a version that existed in
// the snapshot, however many copies there are. Halving the remaining
// budget in each copy, as before, would let n copies spend n/2 of it.
func TestClonesNeverShareABudget(t *testing.T) {
	base := t.TempDir()
	dir := filepath.Join(base, "snapshot")
	s := persistent(t, dir)
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	encrypting(t, s, o)
	id := o.ID
	s.Release(o)
	s.Close()
	s.db.Close()
	snap, err := os.ReadFile(filepath.Join(dir, store.FileName))
	if err != nil {
		t.Fatal(err)
	}
	const clones = 5
	var mats [][]byte
	for i := range clones {
		d := filepath.Join(base, "clone", string(rune('a'+i)))
		if err := os.MkdirAll(d, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(d, store.FileName), snap, 0o600); err != nil {
			t.Fatal(err)
		}
		c := persistent(t, d)
		if _, err := c.CloseBudgets(); err != nil {
			t.Fatal(err)
		}
		k := must(c.Get(id))
		v1, _ := k.Version(1)
		before := v1.Used()
		for range 1000 {
			if v := encrypting(t, c, k); v.N == 1 {
				t.Fatalf("clone %d encrypted under the snapshot's version after the change", i)
			}
		}
		if v1.Used() != before {
			t.Fatalf("clone %d: version 1 counted %d encryptions after the change", i, v1.Used()-before)
		}
		mats = append(mats, secretOf(t, k, k.Newest()))
		c.Release(k)
	}
	for i := range mats {
		for j := range i {
			if bytes.Equal(mats[i], mats[j]) {
				t.Fatalf("clones %d and %d made the same new version", j, i)
			}
		}
	}
}

func TestRefusePolicyAfterChange(t *testing.T) {
	s := dev(t, 10)
	o := obj(t, 1, "", true)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	ref := true
	if err := s.SetLifecycle(o, Lifecycle{Refuse: &ref}); err != nil {
		t.Fatal(err)
	}
	encrypting(t, s, o)
	s.CloseBudgets()
	if _, err := s.Encrypting(o, 1); !errors.Is(err, errClosedByChange) {
		t.Fatalf("a refuse-when-spent key after a change: %v", err)
	}
	if _, err := s.Rotate(o); err != nil {
		t.Fatal(err)
	}
	if v := encrypting(t, s, o); v.N != 2 || v.auto {
		t.Fatalf("after a rotation: version %d (automatic %v)", v.N, v.auto)
	}
}

// TestManyChanges: a version per change that a key encrypts after is what
// the rule costs; those versions do not use up the 64 a key may have, so
// that thousands of changes (one encryption between each) leave the key
// encrypting, decrypting every version, and rotatable. Past
// MaxAutoVersions the key refuses, saying what to do.
func TestManyChanges(t *testing.T) {
	s := dev(t, 10)
	o := obj(t, 1, "", true)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	for i := range 2048 {
		s.CloseBudgets()
		if v := encrypting(t, s, o); v.N != uint32(i+2) {
			t.Fatalf("change %d: version %d", i+1, v.N)
		}
	}
	for range MaxVersions - 1 {
		if _, err := s.Rotate(o); err != nil {
			t.Fatalf("rotations after 2048 changes: %v", err)
		}
	}
	if _, err := s.Rotate(o); status(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("rotation past %d versions made by hand: %v", MaxVersions, err)
	}
	for n := uint32(1); n <= 2049+MaxVersions-1; n++ {
		if v, ok := o.Version(n); !ok || v.N != n {
			t.Fatalf("version %d not found", n)
		}
	}
	for i := 2048; ; i++ {
		s.CloseBudgets()
		_, err := s.Encrypting(o, 1)
		if err == nil {
			continue
		}
		if !errors.Is(err, errTooManyAuto) || i != MaxAutoVersions {
			t.Fatalf("after %d automatic versions: %v", i, err)
		}
		break
	}
}

// TestAutomaticVersionsPersist: a persistent key keeps its automatic
// versions, and which they are, across a restart.
func TestAutomaticVersionsPersist(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	const changes = MaxVersions + 6
	for range changes {
		s.CloseBudgets()
		encrypting(t, s, o)
	}
	id := o.ID
	s.Release(o)
	s = reopen(t, s, dir)
	o = must(s.Get(id))
	defer s.Release(o)
	if auto, others := countVersions(o.Versions()); auto != changes || others != 1 {
		t.Fatalf("after a restart: %d automatic versions, %d others; want %d and 1", auto, others, changes)
	}
	if v := encrypting(t, s, o); v.N != changes+1 {
		t.Fatalf("after a restart the newest version %d does not encrypt (got %d)", changes+1, v.N)
	}
	if _, err := s.Rotate(o); err != nil {
		t.Fatal(err)
	}
}

// TestRestoreClosesVersions: a backup restored into another daemon is a
// clone of its keys (the original may go on encrypting, and the backup be
// restored again), so a restore closes every version, as a generation
// change does; across a restart too.
func TestRestoreClosesVersions(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	encrypting(t, s, o)
	s.Release(o)
	file := filepath.Join(t.TempDir(), "backup")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	for i := range 2 {
		d := filepath.Join(t.TempDir(), "restored")
		db, err := store.OpenBolt(d, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		m, _ := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}})
		r := New(Config{MaxPerUser: 10, DB: db, Master: m})
		if _, err := r.Restore(file, RestoreOptions{}); err != nil {
			t.Fatal(err)
		}
		unseal(t, r)
		k := must(r.Lookup(1, "k"))
		if v := encrypting(t, r, k); v.N != 2 {
			t.Fatalf("restore %d: a restored key encrypts under version %d, want a new version 2", i, v.N)
		}
		r.Release(k)
		r.Close()
		db.Close()
		r = persistent(t, d)
		if k := must(r.Lookup(1, "k")); encrypting(t, r, k).N != 2 {
			t.Fatalf("restore %d: after a restart the new version is not the one that encrypts", i)
		}
	}
	// The original goes on with its version.
	o = must(s.Lookup(1, "k"))
	if v := encrypting(t, s, o); v.N != 1 {
		t.Fatalf("the original encrypts under version %d", v.N)
	}
	s.Release(o)
}

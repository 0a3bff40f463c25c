package keystore

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// copyOf makes a new object holding the same material as o's newest
// version, of type s, with attributes a: what an unwrap, a repeated
// derivation or an import of known bytes makes.
func copyOf(t *testing.T, o *Object, s *key.Spec, a key.Attrs, ephemeral bool) *Object {
	t.Helper()
	var b []byte
	o.Use(func(m *mech.Key) error {
		return m.Canonical(func(c []byte) error { b = append([]byte(nil), c...); return nil })
	})
	m, err := mech.FromCanonical(s, o.Class, b)
	if err != nil {
		t.Fatal(err)
	}
	return must(NewObject("", 2000, m, &a, ephemeral, time.Now(), persist.Origin_ORIGIN_UNWRAPPED))
}

var (
	aesSpec  = key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM)
	hmacSpec = key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256)
)

func TestCopyRule(t *testing.T) {
	for _, persistentHolder := range []bool{false, true} {
		name := "ephemeral holder"
		if persistentHolder {
			name = "persistent holder"
		}
		t.Run(name, func(t *testing.T) {
			var s *Store
			if persistentHolder {
				s = persistent(t, filepath.Join(t.TempDir(), "state"))
			} else {
				s = dev(t, 100)
			}
			orig := must(NewObject("orig", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt, Wrappable: true}, !persistentHolder, time.Now(), persist.Origin_ORIGIN_GENERATED))
			if err := s.Add(orig); err != nil {
				t.Fatal(err)
			}
			for _, tc := range []struct {
				name string
				spec *key.Spec
				a    key.Attrs
				want wire.Status
			}{
				{"wider usage", aesSpec, key.Attrs{Usage: key.Encrypt | key.Decrypt}, wire.Status_STATUS_POLICY_VIOLATION},
				{"other usage", aesSpec, key.Attrs{Usage: key.Decrypt}, wire.Status_STATUS_POLICY_VIOLATION},
				{"exportable", aesSpec, key.Attrs{Usage: key.Encrypt, Exportable: true}, wire.Status_STATUS_POLICY_VIOLATION},
				{"other type", hmacSpec, key.Attrs{Usage: key.Sign}, wire.Status_STATUS_POLICY_VIOLATION},
				{"same", aesSpec, key.Attrs{Usage: key.Encrypt, Wrappable: true}, wire.Status_STATUS_OK},
				{"narrower", aesSpec, key.Attrs{Usage: key.Encrypt}, wire.Status_STATUS_OK},
			} {
				c := copyOf(t, orig, tc.spec, tc.a, true)
				err := s.Add(c)
				if status(err) != tc.want {
					t.Errorf("%s: %v, want %v", tc.name, err, tc.want)
				}
				if err != nil {
					Discard(c)
					continue
				}
				s.Remove(c)
			}
			// The rule sees narrowed attributes.
			if err := s.SetAttrs(orig, func(old *key.Attrs) (*key.Attrs, error) {
				n := *old
				n.Wrappable = false
				return &n, nil
			}); err != nil {
				t.Fatal(err)
			}
			c := copyOf(t, orig, aesSpec, key.Attrs{Usage: key.Encrypt, Wrappable: true}, true)
			if err := s.Add(c); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
				t.Fatalf("wrappable copy after wrappable was switched off: %v", err)
			}
			// Once no key holds the material, a copy is a key of its own
			// (its attributes come from the blob or the request: the rules
			// of unwrap and derive).
			if err := s.Remove(orig); err != nil {
				t.Fatal(err)
			}
			if err := s.Add(c); err != nil {
				t.Fatalf("after the holder is gone: %v", err)
			}
		})
	}
}

func mustGen(t *testing.T, s *key.Spec) *mech.Key {
	t.Helper()
	m, err := mech.Generate(s)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// A persistent key that is not loaded, after a restart, and one whose
// record was written before records carried fingerprints, still hold
// their material.
func TestCopyRuleAcrossRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	a := must(NewObject("a", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt}, false, time.Now(), persist.Origin_ORIGIN_GENERATED))
	b := must(NewObject("b", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt}, false, time.Now(), persist.Origin_ORIGIN_GENERATED))
	for _, o := range []*Object{a, b} {
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := s.Rotate(a); err != nil {
		t.Fatal(err)
	}
	ca1 := copyOf(t, a, aesSpec, key.Attrs{Usage: key.Decrypt}, true) // newest: version 2
	var v1 []byte
	a.UseVersion(a.Versions()[0], func(m *mech.Key) error {
		return m.Canonical(func(c []byte) error { v1 = append([]byte(nil), c...); return nil })
	})
	cb := copyOf(t, b, aesSpec, key.Attrs{Usage: key.Decrypt}, true)
	narrowB := copyOf(t, b, aesSpec, key.Attrs{Usage: key.Encrypt}, true)
	// Strip b's fingerprints from its record, as an older daemon wrote it
	// (re-MACed under the store's keys: a legitimate older record).
	k, _ := s.master.Keys()
	err := s.db.Update(func(tx store.Tx) error {
		r, err := readRecord(tx, k, b.ID[:])
		if err != nil {
			return err
		}
		r = r.CloneVT()
		for _, v := range r.Versions {
			v.Fingerprint = nil
		}
		return s.putRecord(tx, k, r, true, func(i int, fn func([]byte) error) error {
			return b.UseVersion(b.Versions()[i], func(m *mech.Key) error { return m.Canonical(fn) })
		}, nil)
	})
	if err != nil {
		t.Fatal(err)
	}
	s.Release(a)
	s.Release(b)
	s = reopen(t, s, dir)
	if s.Loaded() != 0 {
		t.Fatal("keys loaded after unseal")
	}
	for name, c := range map[string]*Object{"rotated version": ca1, "older record": cb} {
		if err := s.Add(c); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
			t.Errorf("%s: a wider copy of a key that is not loaded: %v", name, err)
		}
	}
	m, _ := mech.FromCanonical(aesSpec, key.Secret, v1)
	old := must(NewObject("", 2000, m, &key.Attrs{Usage: key.Decrypt}, true, time.Now(), persist.Origin_ORIGIN_UNWRAPPED))
	if err := s.Add(old); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Errorf("a wider copy of an older version: %v", err)
	}
	// Sealing forgets the material with the keys; unsealing knows it again.
	s.SealAll()
	unseal(t, s)
	if n := s.mats.size(); n != 3 {
		t.Fatalf("%d material entries after unseal, want 3 (two versions of a, one of b)", n)
	}
	if err := s.Add(narrowB); err != nil {
		t.Fatalf("a narrowing copy: %v", err)
	}
}

// A key written by an older version with both a key-transport and a data
// usage, or a wrappable wrapping key, is narrowed when it is loaded (and
// listed): data usages win, and a wrapping key that could have been
// wrapped out counts as wrapped out and is no longer trusted.
func TestLegacyRolesNormalized(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	mixed := must(NewObject("mixed", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt | key.Decrypt}, false, time.Now(), persist.Origin_ORIGIN_GENERATED))
	kek := must(NewObject("kek", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Wrap | key.Unwrap}, false, time.Now(), persist.Origin_ORIGIN_GENERATED))
	for _, o := range []*Object{mixed, kek} {
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	if !policy.TrustedWrapping(kek.Policy()) {
		t.Fatal("a generated wrapping key is not trusted")
	}
	// Rewrite the records as the previous release allowed them.
	k, _ := s.master.Keys()
	legacy := map[*Object]func(r *persist.KeyRecord){
		mixed: func(r *persist.KeyRecord) {
			r.Usage = uint32(key.Unwrap | key.Decrypt)
			r.Acl = []*persist.AclEntry{{Id: 1001, Usage: uint32(key.Unwrap | key.Decrypt)}}
		},
		kek: func(r *persist.KeyRecord) { r.Wrappable = true },
	}
	for o, change := range legacy {
		err := s.db.Update(func(tx store.Tx) error {
			r, err := readRecord(tx, k, o.ID[:])
			if err != nil {
				return err
			}
			r = r.CloneVT()
			change(r)
			return s.putRecord(tx, k, r, true, func(i int, fn func([]byte) error) error {
				return o.UseVersion(o.Versions()[i], func(m *mech.Key) error { return m.Canonical(fn) })
			}, nil)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	s.Release(mixed)
	s.Release(kek)
	s = reopen(t, s, dir)
	m, err := s.Lookup(1000, "mixed")
	if err != nil {
		t.Fatal(err)
	}
	if a := m.Attrs(); a.Usage != key.Decrypt || a.ACL[0].Usage != key.Decrypt {
		t.Fatalf("a key that unwrapped and decrypted loads as %s (ACL %s)", a.Usage, a.ACL[0].Usage)
	}
	kk, err := s.Lookup(1000, "kek")
	if err != nil {
		t.Fatal(err)
	}
	if a := kk.Attrs(); a.Wrappable || a.Usage != key.Wrap|key.Unwrap || !kk.Meta().WrappedOut {
		t.Fatalf("a wrappable wrapping key loads as %+v, wrapped out %v", a, kk.Meta().WrappedOut)
	}
	if policy.TrustedWrapping(kk.Policy()) {
		t.Fatal("a wrapping key that may have been wrapped out is still trusted")
	}
	infos, err := s.List(key.ID{}, 0, func(*wire.KeyInfo) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	for _, i := range infos {
		if i.Name == "mixed" && key.Usage(i.Usage) != key.Decrypt || i.Name == "kek" && (i.Wrappable || !i.Lifecycle.WrappedOut) {
			t.Fatalf("list shows %s as %+v", i.Name, i)
		}
	}
}

// A wrap is recorded: the key is wrapped out, across a restart.
func TestWrappedOutPersists(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	o := must(NewObject("w", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt, Wrappable: true}, false, time.Now(), persist.Origin_ORIGIN_GENERATED))
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	if err := s.MarkWrappedOut(o); err != nil {
		t.Fatal(err)
	}
	s.Release(o)
	s = reopen(t, s, dir)
	got, err := s.Lookup(1000, "w")
	if err != nil {
		t.Fatal(err)
	}
	if !got.Meta().WrappedOut || !got.Policy().Prov.WrappedOut {
		t.Fatal("wrapped out lost across a restart")
	}
}

package keystore

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// openAs opens the store in dir and tries to unseal it with pass.
func openAs(t *testing.T, dir, pass string) (*Store, error) {
	t.Helper()
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}})
	if err != nil {
		db.Close()
		return nil, err
	}
	s := New(Config{MaxPerUser: 1000, DB: db, Master: m})
	t.Cleanup(func() { s.Close(); db.Close() })
	err = m.UnsealPassphrase(context.Background(), []byte(pass), func(k *seal.Keys) error { return s.Verify(k, false) })
	return s, err
}

func closeStore(s *Store) {
	s.Close()
	s.db.Close()
}

// rotateMaster rotates the master key of s to pass and re-wraps every
// record.
func rotateMaster(t *testing.T, s *Store, pass string) {
	t.Helper()
	p, err := s.Master().PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte(pass), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	commitRotation(t, s, p)
	if err := s.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
}

// Someone who held the master key before a rotation (its old passphrase
// and an old copy of the store, a backup say) must not be able to forge
// anything the store checks after the rotation: here, a record that makes
// an imported wrapping key look generated inside the daemon (so trusted
// to wrap), with a header to match.
func TestMasterRotationRetiresOldSecrets(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	m, err := mech.Generate(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM))
	if err != nil {
		t.Fatal(err)
	}
	kek := must(NewObject("kek", 1, m, &key.Attrs{Usage: key.Wrap | key.Unwrap}, false, time.Now(), persist.Origin_ORIGIN_IMPORTED))
	if policy.TrustedWrapping(kek.Policy()) {
		t.Fatal("an imported key is trusted to wrap")
	}
	if err := s.Add(kek); err != nil {
		t.Fatal(err)
	}
	s.Release(kek)
	backup := filepath.Join(t.TempDir(), "backup")
	f, _ := os.Create(backup)
	if err := s.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rotateMaster(t, s, "new passphrase")
	closeStore(s)

	// The attacker's old keys: the backup restored elsewhere, unsealed
	// with the old passphrase.
	odir := filepath.Join(t.TempDir(), "old")
	odb, err := store.OpenBolt(odir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	om, _ := seal.Open(seal.Config{Store: odb, KDF: inProcessKDF{}})
	ostore := New(Config{MaxPerUser: 10, DB: odb, Master: om})
	if _, err := ostore.Restore(backup, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	unseal(t, ostore)
	old, _ := om.Keys()

	// The forgery, in the live store.
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx store.Tx) error {
		mac, rb, _ := persist.SplitValue(tx.Get(persist.BucketKeys, kek.ID[:]))
		r := &persist.KeyRecord{}
		if err := r.UnmarshalVT(rb); err != nil {
			return err
		}
		r.Origin = persist.Origin_ORIGIN_GENERATED
		nb, _ := r.MarshalVT()
		nm := forgeRecordMAC(t, old, nb)
		h := &persist.StoreHeader{}
		if err := h.UnmarshalVT(tx.Get(persist.BucketMeta, persist.MetaHeader)); err != nil {
			return err
		}
		forgeHeader(t, old, h, kek.ID[:], mac, nm)
		hb, _ := h.MarshalVT()
		if err := tx.Put(persist.BucketMeta, persist.MetaHeader, hb); err != nil {
			return err
		}
		return tx.Put(persist.BucketKeys, kek.ID[:], persist.JoinValue(nm, nb))
	})
	db.Close()
	closeStore(ostore)
	if err != nil {
		t.Fatal(err)
	}
	s, err = openAs(t, dir, "new passphrase")
	if err == nil {
		o, err := s.Get(kek.ID)
		if err == nil {
			t.Fatalf("a record forged with the keys of before the rotation is accepted: origin %v, trusted to wrap: %v",
				o.Meta().Origin, policy.TrustedWrapping(o.Policy()))
		}
	}
}

// The master record's rotation cursor says which records are re-wrapped:
// moved past the end while the rotation is under way, it would make the
// daemon drop the previous master key before the records still sealed
// under it are re-wrapped, and lose them. The master record carries a MAC
// under a key derived from the master key, and the unseal refuses it
// changed.
func TestMasterRecordEditRefused(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	var ids []key.ID
	for range 300 {
		o := obj(t, 1, "", false)
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID)
		s.Release(o)
	}
	p, err := s.Master().PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	commitRotation(t, s, p)
	batches := 0
	s.RewrapAll(func(done, total uint64) {
		if batches++; batches == 1 {
			s.SealAll()
		}
	})
	closeStore(s)

	var saved []byte
	edit := func(fn func(r *persist.MasterRecord)) {
		db, err := store.OpenBolt(dir, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer db.Close()
		err = db.Update(func(tx store.Tx) error {
			v := tx.Get(persist.BucketMeta, persist.MetaMaster)
			if saved == nil {
				saved = bytes.Clone(v)
			}
			r := &persist.MasterRecord{}
			if err := r.UnmarshalVT(v); err != nil {
				return err
			}
			fn(r)
			b, _ := r.MarshalVT()
			return tx.Put(persist.BucketMeta, persist.MetaMaster, b)
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	edit(func(r *persist.MasterRecord) {
		r.Rotation.Cursor = bytes.Repeat([]byte{0xff}, persist.IDSize)
		r.Rotation.Done = r.Rotation.Total
	})
	s, err = openAs(t, dir, "passphrase")
	if err == nil {
		s.RewrapAll(nil)
		lost := 0
		for _, id := range ids {
			if o, err := s.Get(id); err != nil {
				lost++
			} else {
				s.Release(o)
			}
		}
		t.Fatalf("a master record with its rotation cursor moved is accepted; %d keys lost", lost)
	}
	if !strings.Contains(err.Error(), "master record") {
		t.Errorf("the refusal does not name the master record: %v", err)
	}
	if status(err) == wire.Status_STATUS_PERMISSION_DENIED {
		t.Errorf("a changed master record is reported as a wrong passphrase: %v", err)
	}
	closeStore(s)

	// Put back, the rotation resumes and every key survives it.
	edit(func(r *persist.MasterRecord) { r.Reset(); r.UnmarshalVT(saved) })
	s, err = openAs(t, dir, "passphrase")
	if err != nil {
		t.Fatal(err)
	}
	if err := s.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		o, err := s.Get(id)
		if err != nil {
			t.Fatalf("a key lost in the rotation: %v", err)
		}
		s.Release(o)
	}
}

// A write that took the keys just before a rotation's commit (which
// retires them, and writes the header under the new generation) is made with the
// new keys, not refused.
func TestWriteAcrossRotationCommit(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	l, err := s.lease()
	if err != nil {
		t.Fatal(err)
	}
	k := l.Keys()
	p, err := s.Master().PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	commitRotation(t, s, p)
	o := obj(t, 1, "after", false)
	if err := s.create(k, o, nil); err != nil {
		t.Fatalf("a write with the keys of before the commit: %v", err)
	}
	l.Release()
	if err := s.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
	s.SealAll()
	unseal(t, s)
	if _, err := s.Get(o.ID); err != nil {
		t.Fatal(err)
	}
}

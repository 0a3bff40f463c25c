package keystore

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// value returns key id's raw store value.
func value(t testing.TB, s *Store, id key.ID) []byte {
	var v []byte
	s.db.View(func(tx store.Tx) error {
		v = bytes.Clone(tx.Get(persist.BucketKeys, id[:]))
		return nil
	})
	if v == nil {
		panic("no record")
	}
	return v
}

func put(t *testing.T, s *Store, id key.ID, v []byte) {
	t.Helper()
	err := s.db.Update(func(tx store.Tx) error {
		if v == nil {
			return tx.Delete(persist.BucketKeys, id[:])
		}
		return tx.Put(persist.BucketKeys, id[:], v)
	})
	if err != nil {
		t.Fatal(err)
	}
}

// resealErr seals the store and tries to unseal it.
func resealErr(s *Store, accept bool) error {
	s.SealAll()
	return s.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, accept) })
}

func twoKeys(t *testing.T) (*Store, *Object, *Object) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	a, b := obj(t, 1, "a", false), obj(t, 1, "b", false)
	for _, o := range []*Object{a, b} {
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		s.Release(o) // unloaded: the next use reads the record
	}
	return s, a, b
}

func TestTamperedAttributeRefused(t *testing.T) {
	s, a, _ := twoKeys(t)
	v := value(t, s, a.ID)
	mac, rb, _ := persist.SplitValue(v)
	r := &persist.KeyRecord{}
	if err := r.UnmarshalVT(rb); err != nil {
		t.Fatal(err)
	}
	r.Exportable = true // the attack: make a protected key exportable
	nb, _ := r.MarshalVT()
	put(t, s, a.ID, persist.JoinValue(mac, nb))
	// At runtime: the key is refused when loaded.
	if _, err := s.Get(a.ID); status(err) != wire.Status_STATUS_INTERNAL {
		t.Fatalf("loading a tampered record: %v", err)
	}
	// At unseal: the store is refused.
	var ie *IntegrityError
	if err := resealErr(s, false); !errors.As(err, &ie) || ie.BadRecords != 1 {
		t.Fatalf("unseal of a store with a tampered record: %v", err)
	}
}

// Even with a forged record MAC (an attacker who had the index key but not
// the storage key), a blob moved to another key's record does not open:
// its associated data names its own key.
func TestMovedBlobRefused(t *testing.T) {
	s, a, b := twoKeys(t)
	k, _ := s.Master().Keys()
	ra, rb := &persist.KeyRecord{}, &persist.KeyRecord{}
	_, ba, _ := persist.SplitValue(value(t, s, a.ID))
	_, bb, _ := persist.SplitValue(value(t, s, b.ID))
	ra.UnmarshalVT(ba)
	rb.UnmarshalVT(bb)
	rb.Versions[0].Blob = ra.Versions[0].Blob
	forged, _ := rb.MarshalVT()
	put(t, s, b.ID, persist.JoinValue(forgeRecordMAC(t, k, forged), forged))
	if _, err := s.Get(b.ID); status(err) != wire.Status_STATUS_INTERNAL {
		t.Fatalf("a blob moved to another key opened: %v", err)
	}
	// Refused by its associated data, not only because the daemon knows
	// its record's MAC.
	if _, err := s.objectFrom(k, rb); err == nil {
		t.Fatal("a blob moved to another key's record opens")
	}
}

func TestRestoredOldRecordRefused(t *testing.T) {
	s, a, _ := twoKeys(t)
	old := value(t, s, a.ID)
	o, err := s.Get(a.ID)
	if err != nil {
		t.Fatal(err)
	}
	// The owner narrows the key's usage; an attacker puts the old,
	// authentic record back to undo it.
	if err := s.SetAttrs(o, func(old *key.Attrs) (*key.Attrs, error) {
		n := *old
		n.Usage = key.Decrypt
		return &n, nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Release(o)
	put(t, s, a.ID, old)
	var ie *IntegrityError
	if err := resealErr(s, false); !errors.As(err, &ie) || !ie.SetChanged {
		t.Fatalf("unseal with an old record restored: %v", err)
	}
}

func TestDeletedAndResurrectedRecordsRefused(t *testing.T) {
	s, a, b := twoKeys(t)
	va := value(t, s, a.ID)
	// A destroyed key brought back.
	o, _ := s.Get(a.ID)
	if err := s.Remove(o); err != nil {
		t.Fatal(err)
	}
	put(t, s, a.ID, va)
	var ie *IntegrityError
	if err := resealErr(s, false); !errors.As(err, &ie) || !ie.SetChanged {
		t.Fatalf("unseal with a destroyed key resurrected: %v", err)
	}
	// A live key deleted from the file.
	put(t, s, a.ID, nil)
	put(t, s, b.ID, nil)
	if err := resealErr(s, false); !errors.As(err, &ie) || !ie.SetChanged {
		t.Fatalf("unseal with a key deleted: %v", err)
	}
	// An administrator who knows why accepts the store as it is.
	if err := resealErr(s, true); err != nil {
		t.Fatalf("accept: %v", err)
	}
	if err := resealErr(s, false); err != nil {
		t.Fatalf("after accepting, the store verifies: %v", err)
	}
}

func TestWrongPassphraseAndRateLimit(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	s.SealAll()
	m := s.Master()
	now := time.Now()
	err := m.UnsealPassphrase(context.Background(), []byte("wrong"), nil)
	if status(err) != wire.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("wrong passphrase: %v", err)
	}
	err = m.UnsealPassphrase(context.Background(), []byte("passphrase"), nil)
	if status(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("at once after a failure: %v", err)
	}
	if st := m.State(); !st.Sealed || st.RetryAfter <= 0 {
		t.Fatalf("state after a failure: %+v", st)
	}
	_ = now
}

func TestMasterRotationResumes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	var ids []key.ID
	var secrets [][]byte
	for range 300 {
		o := obj(t, 1, "", false)
		secrets = append(secrets, secretOf(t, o, o.Newest()))
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID)
		s.Release(o)
	}
	m := s.Master()
	p, err := m.PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	commitRotation(t, s, p)
	// A crash after the first batch: the daemon is sealed, and the
	// rotation resumes after the next unseal (with the new passphrase's
	// master key, which holds the previous one sealed).
	batches := 0
	err = s.RewrapAll(func(done, total uint64) {
		if batches++; batches == 1 {
			s.SealAll()
		}
	})
	if err == nil {
		t.Fatal("re-wrapping went on while sealed")
	}
	if st := m.State(); !st.Rotating || st.RotationDone == 0 || st.RotationDone >= st.RotTot {
		t.Fatalf("progress after the interruption: %+v", st)
	}
	s = reopen(t, s, dir)
	if !s.Master().State().Rotating {
		t.Fatal("the rotation's state did not survive a restart")
	}
	if err := s.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
	if st := s.Master().State(); st.Rotating || st.Generation != 2 {
		t.Fatalf("after re-wrapping: %+v", st)
	}
	s.db.View(func(tx store.Tx) error {
		return tx.ForEach(persist.BucketKeys, nil, func(id, v []byte) error {
			_, rb, _ := persist.SplitValue(v)
			r := &persist.KeyRecord{}
			r.UnmarshalVT(rb)
			if r.Versions[0].MkGeneration != 2 {
				t.Errorf("a record still sealed under generation %d", r.Versions[0].MkGeneration)
			}
			return nil
		})
	})
	s = reopen(t, s, dir)
	for i, id := range ids {
		o, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(secretOf(t, o, o.Newest()), secrets[i]) {
			t.Fatal("a key changed in the rotation")
		}
		s.Release(o)
	}
}

func TestBackupRestore(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	a := obj(t, 1, "a", false)
	secret := secretOf(t, a, a.Newest())
	s.Add(a)
	s.Release(a)
	file := filepath.Join(t.TempDir(), "backup")
	f, _ := os.Create(file)
	if err := s.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	b := obj(t, 1, "b", false)
	s.Add(b)
	s.Release(b)

	// Into the same store, which holds a key made since: refused without
	// force, saying what would be lost, and nothing changes.
	rep, err := s.Restore(file, RestoreOptions{Caller: 1})
	if status(err) != wire.Status_STATUS_POLICY_VIOLATION || !strings.Contains(err.Error(), "1 key created since the backup (yours: b)") {
		t.Fatalf("restore over a key made since the backup: %v", err)
	}
	if rep == nil || rep.Created != 1 || rep.KeysNow != 2 || rep.KeysInBackup != 1 || rep.Replaced != "" {
		t.Fatalf("report of a refused restore: %+v", rep)
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("a refused restore sealed the daemon: %v", err)
	}
	if n, _ := s.Counts(); n != 2 {
		t.Fatalf("%d keys after a refused restore, want 2", n)
	}
	// With force: back to the backup's state, sealed, and the store
	// replaced kept beside it.
	rep, err = s.Restore(file, RestoreOptions{Force: true, Caller: 1})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Created != 1 || len(rep.YoursCreated) != 1 || rep.YoursCreated[0] != "b" || rep.Replaced == "" {
		t.Fatalf("report of a forced restore: %+v", rep)
	}
	if filepath.Dir(rep.Replaced) != dir || !strings.HasPrefix(filepath.Base(rep.Replaced), store.FileName+".replaced-") {
		t.Fatalf("the store replaced is kept in %s", rep.Replaced)
	}
	if _, err := os.Stat(rep.Replaced); err != nil {
		t.Fatal(err)
	}
	if !s.Master().State().Sealed {
		t.Fatal("not sealed after a restore")
	}
	unseal(t, s)
	if n, _ := s.Counts(); n != 1 {
		t.Fatalf("%d keys after the restore, want 1", n)
	}

	// Into a new daemon: it takes the backup's master key, unsealed by the
	// same passphrase.
	dir2 := filepath.Join(t.TempDir(), "state2")
	db2, err := store.OpenBolt(dir2, time.Second)
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
	o, err := s2.Lookup(1, "a")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(secretOf(t, o, o.Newest()), secret) {
		t.Fatal("restored key differs")
	}
	s2.Release(o)

	// A store with another master key refuses it.
	s3 := persistent(t, filepath.Join(t.TempDir(), "state3"))
	if _, err := s3.Restore(file, RestoreOptions{Force: true}); status(err) != wire.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("restore of another store's backup: %v", err)
	}
	// A damaged backup is refused, and the store left as it was.
	raw, _ := os.ReadFile(file)
	raw[len(raw)/2] ^= 1
	os.WriteFile(file, raw, 0o600)
	if _, err := s.Restore(file, RestoreOptions{Force: true}); status(err) != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("damaged backup: %v", err)
	}
	if err := s.Ready(); err != nil {
		t.Fatalf("a refused restore sealed the daemon: %v", err)
	}
}

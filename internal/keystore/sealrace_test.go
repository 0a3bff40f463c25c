package keystore

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// Deterministic tests of seal, unseal and master-key rotation racing with
// the operations that use the master key's keys: a fault point (a test
// hook) forces each interleaving.

// setHook sets a hook for the length of the test.
func setHook(t *testing.T, h *func(), fn func()) {
	t.Helper()
	*h = fn
	t.Cleanup(func() { *h = nil })
}

// sealBegun starts s.SealAll in another goroutine (it may wait for the
// operation that runs the hook) and returns once the seal has begun: the
// master key is withdrawn. The returned channel is closed when SealAll
// returns.
func sealBegun(t *testing.T, s *Store) <-chan struct{} {
	t.Helper()
	done := make(chan struct{})
	go func() {
		s.SealAll()
		close(done)
	}()
	deadline := time.Now().Add(10 * time.Second)
	for !s.Master().State().Sealed {
		if time.Now().After(deadline) {
			t.Error("the seal did not begin")
			break
		}
		time.Sleep(time.Millisecond)
	}
	return done
}

// addKeys adds n persistent keys of owner 1 and returns their ids.
func addOwnerKeys(t *testing.T, s *Store, n int) []key.ID {
	t.Helper()
	ids := make([]key.ID, 0, n)
	for range n {
		o := obj(t, 1, "", false)
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID)
		s.Release(o)
	}
	return ids
}

// beginRotation prepares and commits a master-key rotation.
func beginRotation(t *testing.T, s *Store) {
	t.Helper()
	p, err := s.Master().PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	commitRotation(t, s, p)
}

// finishRewrap runs RewrapAll until it ends without error.
func finishRewrap(t *testing.T, s *Store) {
	t.Helper()
	for range 5 {
		if err := s.RewrapAll(nil); err == nil {
			return
		} else {
			t.Logf("re-wrap stopped: %v", err)
		}
	}
	t.Fatal("the re-wrap does not finish")
}

// checkAll checks, after a seal and an unseal, that every key in ids
// opens, that nothing is quarantined and that the rotation is over.
func checkAll(t *testing.T, s *Store, ids []key.ID) {
	t.Helper()
	s.SealAll()
	unseal(t, s)
	for i, id := range ids {
		o, err := s.Get(id)
		if err != nil {
			t.Fatalf("key %d of %d lost: %v", i, len(ids), err)
		}
		s.Release(o)
	}
	if n := s.Quarantined(); n != 0 {
		t.Fatalf("%d records quarantined", n)
	}
	if st := s.Master().State(); st.Rotating {
		t.Fatalf("the rotation did not finish: %+v", st)
	}
}

// A seal, and an unseal, while a batch of the re-wrap that follows a
// master-key rotation runs: the batch must not pass over the records it
// could not read, and the previous generation must not be retired while
// records still need it. Before, the batch skipped the rest of its records
// (the keys were wiped under it), committed its progress with the keys of
// the new unseal, and the end of the rotation destroyed the previous
// generation: those records were lost for good.
func TestSealDuringRewrapLosesNoKey(t *testing.T) {
	// At the first batch, and at a later one (after progress was recorded).
	for _, at := range []int{1, 2} {
		t.Run(fmt.Sprintf("batch%d", at), func(t *testing.T) {
			s := persistent(t, filepath.Join(t.TempDir(), "state"))
			ids := addOwnerKeys(t, s, 300) // two batches: 256 and 44
			beginRotation(t, s)
			batches := 0
			unsealed := make(chan error, 1)
			setHook(t, &hookRewrapBatch, func() {
				if batches++; batches != at {
					return
				}
				sealBegun(t, s)
				// The unseal checks the store once this batch has ended.
				go func() {
					unsealed <- s.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, false) })
				}()
			})
			s.RewrapAll(nil)
			hookRewrapBatch = nil
			if err := <-unsealed; err != nil {
				t.Fatalf("unseal during the re-wrap: %v", err)
			}
			finishRewrap(t, s)
			checkAll(t, s, ids)
		})
	}
}

// A record the re-wrap passes over (here: one put back from an older copy,
// which is refused on use) keeps the previous generation: the rotation
// counts the records left under it before retiring it, and stays open.
// Before, the rotation ended regardless, and the record was lost with the
// previous generation's keys.
func TestRotationKeepsGenerationWhileRecordsNameIt(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	ids := addOwnerKeys(t, s, 3)
	var old []byte
	s.db.View(func(tx store.Tx) error {
		old = bytes.Clone(tx.Get(persist.BucketKeys, ids[1][:]))
		return nil
	})
	o, err := s.Get(ids[1])
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetAttrs(o, func(a *key.Attrs) (*key.Attrs, error) {
		n := *a
		n.Usage = key.Encrypt
		return &n, nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Release(o)
	// The older copy put back behind the daemon's back, then a rotation.
	beginRotation(t, s)
	if err := s.db.Update(func(tx store.Tx) error { return tx.Put(persist.BucketKeys, ids[1][:], old) }); err != nil {
		t.Fatal(err)
	}
	err = s.RewrapAll(nil)
	if st := s.Master().State(); !st.Rotating {
		t.Fatalf("the rotation ended with a record left under the previous generation (err %v)", err)
	}
	// The operator accepts the store as it is at the next unseal; the
	// record, checked under the previous generation, is re-wrapped.
	s.SealAll()
	if err := s.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, true) }); err != nil {
		t.Fatal(err)
	}
	finishRewrap(t, s)
	checkAll(t, s, ids)
}

// A store write that races a seal holds the master key's keys until it
// ends: the seal does not wipe them under it, and the request is told the
// daemon was sealed (UNAVAILABLE), never "key destroyed" (NOT_FOUND).
func TestSealDuringWriteSaysSealed(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	s.master.SealWait = 5 * time.Second
	setHook(t, &hookAddWriting, func() { sealBegun(t, s) })
	o := obj(t, 1, "racing", false)
	err := s.Add(o)
	if status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("a creation racing a seal: %v, want UNAVAILABLE (sealed)", err)
	}
	Discard(o)
}

// A creation that completes after a seal began publishes no live key: it
// is refused as sealed, and its object is the caller's to discard. Before,
// the key was published into the sealed store and stayed usable.
func TestCreationAfterSealPublishesNoKey(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	setHook(t, &hookAddWritten, func() { sealBegun(t, s) })
	o := obj(t, 1, "late", false)
	err := s.Add(o)
	hookAddWritten = nil
	if err == nil {
		if uerr := o.Use(func(*mech.Key) error { return nil }); uerr == nil {
			t.Fatal("a key created across a seal is usable while the daemon is sealed")
		}
		t.Fatal("a creation that completed after the seal was acknowledged")
	}
	if status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("creation across a seal: %v, want UNAVAILABLE", err)
	}
	Discard(o)
	if p, live := s.Counts(); p != 0 || live != 0 {
		t.Fatalf("counts while sealed: %d persistent, %d live", p, live)
	}
}

// A destroy through a handle from before a seal and an unseal is refused
// (the handle is dead, the key is not): it does not delete the key that
// another handle, opened after the unseal, uses, and the counts stay
// exact. Before, the record was deleted, the other handle kept working,
// and the key count underflowed.
func TestStaleDestroyAfterReseal(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	ids := addOwnerKeys(t, s, 1)
	stale, err := s.Get(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	s.SealAll()
	unseal(t, s)
	fresh, err := s.Get(ids[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(stale); status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("destroy through a handle from before the seal: %v, want UNAVAILABLE", err)
	}
	if err := fresh.Use(func(*mech.Key) error { return nil }); err != nil {
		t.Fatalf("the key opened after the unseal: %v", err)
	}
	if p, live := s.Counts(); p != 1 || live != 1 {
		t.Fatalf("counts: %d persistent, %d live; want 1, 1", p, live)
	}
	if err := s.Remove(fresh); err != nil {
		t.Fatal(err)
	}
	if p, live := s.Counts(); p != 0 || live != 0 {
		t.Fatalf("counts after the destroy: %d persistent, %d live; want 0, 0", p, live)
	}
	if _, err := s.Get(ids[0]); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("destroyed key: %v", err)
	}
}

// Ephemeral keys wiped by a seal are not counted after the unseal, and
// releasing them then (their connection closes) gives nothing back: the
// per-owner quota holds across a seal. Before, each release decremented
// the new epoch's count, and the owner could hold more keys than allowed.
func TestQuotaHoldsAcrossSeal(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	s.SetMaxPerUser(3)
	addOwnerKeys(t, s, 1)
	var eph []*Object
	for range 2 {
		o := obj(t, 1, "", true)
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		eph = append(eph, o)
	}
	s.SealAll()
	unseal(t, s)
	for _, o := range eph {
		s.Remove(o) // the connection that held it closes
	}
	if n := s.Owned(1); n != 1 {
		t.Fatalf("owner 1 holds %d keys, counted %d", 1, n)
	}
	for i := range 3 {
		err := s.Add(obj(t, 1, "", false))
		switch {
		case i < 2 && err != nil:
			t.Fatalf("key %d within the quota: %v", i+2, err)
		case i == 2 && err == nil:
			t.Fatal("a fourth key against a quota of 3")
		}
	}
}

// A seal that comes while an unseal is checking the store wins: the
// unseal fails (UNAVAILABLE), the daemon stays sealed, and the next
// unseal works rather than answering "already unsealed".
func TestSealDuringUnsealCheck(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	ids := addOwnerKeys(t, s, 2)
	s.SealAll()
	seal.SetHookUnsealVerify(t, func() { s.SealAll() })
	err := s.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, false) })
	seal.SetHookUnsealVerify(t, nil)
	if status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("an unseal overtaken by a seal: %v, want UNAVAILABLE", err)
	}
	if !s.Master().State().Sealed || s.Ready() == nil {
		t.Fatal("the daemon is unsealed after a seal that came last")
	}
	unseal(t, s)
	for _, id := range ids {
		o, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		s.Release(o)
	}
}

// Concurrent unseals finish in order: the second waits for the first and
// finds the daemon unsealed, without checking the store (whose state it
// would otherwise install over the first's).
func TestConcurrentUnsealsInOrder(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	addOwnerKeys(t, s, 2)
	s.SealAll()
	var checks atomic.Int32
	verify := func(k *seal.Keys) error {
		checks.Add(1)
		return s.Verify(k, false)
	}
	second := make(chan error, 1)
	seal.SetHookUnsealVerify(t, func() {
		seal.SetHookUnsealVerify(t, nil)
		go func() {
			second <- s.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), verify)
		}()
		time.Sleep(200 * time.Millisecond) // the second reaches the store check, if it can
	})
	if err := s.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), verify); err != nil {
		t.Fatal(err)
	}
	if err := <-second; status(err) != wire.Status_STATUS_ALREADY_EXISTS {
		t.Fatalf("the second unseal: %v, want ALREADY_EXISTS", err)
	}
	if n := checks.Load(); n != 1 {
		t.Fatalf("the store was checked %d times", n)
	}
	if err := s.Ready(); err != nil {
		t.Fatal(err)
	}
}

// An unseal that comes while a write begun before the seal is still under
// way checks the store only once that write has ended: its record is
// counted and opens after the unseal. Before, the unseal's check read the
// store before the write committed, the write's commit found no state to
// note it in (the seal had dropped it), and after the unseal the key was
// refused as "not the one this daemon last wrote" and missing from the
// counts.
func TestUnsealWaitsForWritesBeforeSeal(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	s.master.SealWait = 5 * time.Second
	ids := addOwnerKeys(t, s, 2)
	unsealed := make(chan error, 1)
	setHook(t, &hookAddWriting, func() {
		sealBegun(t, s)
		go func() {
			unsealed <- s.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, false) })
		}()
		select { // the unseal finishes first, if it can
		case err := <-unsealed:
			unsealed <- err
		case <-time.After(time.Second):
		}
	})
	o := obj(t, 1, "", false)
	err := s.Add(o)
	hookAddWriting = nil
	if status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("a creation racing a seal: %v, want UNAVAILABLE", err)
	}
	Discard(o)
	if err := <-unsealed; err != nil {
		t.Fatalf("the unseal: %v", err)
	}
	// The record was written: the key is found again after the unseal.
	ids = append(ids, o.ID)
	for _, id := range ids {
		k, err := s.Get(id)
		if err != nil {
			t.Fatalf("key %v after the unseal: %v", id, err)
		}
		s.Release(k)
	}
	if p, live := s.Counts(); p != 3 || live != 3 {
		t.Fatalf("counts: %d persistent, %d live; the store holds 3", p, live)
	}
}

// A read of a key's record that a seal overtakes (an open that loads the
// key, a listing) fails as sealed: the record is not judged against the
// records the daemon wrote, which the seal dropped with its epoch. Before,
// the record was found "not the one this daemon last wrote": the open
// failed as an integrity failure (INTERNAL), the key was quarantined and
// the error logged as a replaced record; the listing left the key out and
// reported success.
func TestSealDuringRecordReadSaysSealed(t *testing.T) {
	reads := map[string]func(s *Store, id key.ID) error{
		"open": func(s *Store, id key.ID) error {
			o, err := s.Get(id)
			if err == nil {
				s.Release(o)
			}
			return err
		},
		"list": func(s *Store, id key.ID) error {
			infos, err := s.List(key.ID{}, 0, func(*wire.KeyInfo) bool { return true })
			if err == nil && (len(infos) != 1 || !bytes.Equal(infos[0].Id, id[:])) {
				return fmt.Errorf("listed %d keys, without the one in the store", len(infos))
			}
			return err
		},
	}
	for name, read := range reads {
		t.Run(name, func(t *testing.T) {
			s := persistent(t, filepath.Join(t.TempDir(), "state"))
			s.master.SealWait = 5 * time.Second
			ids := addOwnerKeys(t, s, 1)
			var once atomic.Bool
			setHook(t, &hookRecordCurrent, func() {
				if once.CompareAndSwap(false, true) {
					sealBegun(t, s)
				}
			})
			err := read(s, ids[0])
			hookRecordCurrent = nil
			if status(err) != wire.Status_STATUS_UNAVAILABLE {
				t.Fatalf("%s overtaken by a seal: %v, want UNAVAILABLE (sealed)", name, err)
			}
			if n := s.Quarantined(); n != 0 {
				t.Fatalf("%d records quarantined by a %s overtaken by a seal", n, name)
			}
			unseal(t, s)
			if err := read(s, ids[0]); err != nil {
				t.Fatalf("after the unseal: %v", err)
			}
		})
	}
}

// A write begun before a restore's seal that is still under way when the
// seal's wait ends does not commit on top of the restored store: either
// the restore fails (UNAVAILABLE) and replaces nothing, or the store holds
// exactly the backup's keys. Before, the restore went on once the wait
// ended, and the creation committed its record into the restored store: a
// key that is in no backup, after a restore the operator asked for.
func TestRestoreWaitsForWritesBeforeSeal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	s.master.SealWait = 100 * time.Millisecond
	ids := addOwnerKeys(t, s, 2)
	file := backupTo(t, s)
	addOwnerKeys(t, s, 1) // a restore over it needs force
	restored := make(chan error, 1)
	setHook(t, &hookAddWriting, func() {
		hookAddWriting = nil
		go func() {
			_, err := s.Restore(file, RestoreOptions{Caller: 1, Force: true})
			restored <- err
		}()
		select { // the restore finishes first, if it can
		case err := <-restored:
			restored <- err
		case <-time.After(2 * time.Second):
		}
	})
	o := obj(t, 1, "", false)
	s.Add(o)
	Discard(o)
	err := <-restored
	if err != nil && status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("a restore racing a slow write: %v, want success or UNAVAILABLE", err)
	}
	unseal(t, s)
	p, _ := s.Counts()
	if err != nil {
		if p != 4 {
			t.Fatalf("a refused restore: the store holds %d keys, want 4", p)
		}
		return
	}
	if p != len(ids) {
		t.Fatalf("after the restore the store holds %d keys, the backup %d", p, len(ids))
	}
	if _, err := s.Get(o.ID); err == nil {
		t.Fatal("a key created before the restore committed on top of the restored store")
	}
}

// An unseal by another administrator that comes while a restore replaces
// the store does not leave the daemon unsealed over the restored records
// with the state it checked of the store replaced, nor make the restore
// report a failure once the store was replaced. Before, the unseal
// finished between the restore's seal and its write, the write replaced
// the records under it, and the restore failed "already unsealed" after
// replacing the store: the daemon served the backup's keys with the
// replaced store's counts.
func TestRestoreRacingUnseal(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	ids := addOwnerKeys(t, s, 2)
	file := backupTo(t, s)
	addOwnerKeys(t, s, 3)
	unsealed := make(chan error, 1)
	setHook(t, &hookRestoreWriting, func() {
		hookRestoreWriting = nil
		go func() {
			unsealed <- s.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, false) })
		}()
		select { // the unseal finishes first, if it can
		case err := <-unsealed:
			unsealed <- err
		case <-time.After(time.Second):
		}
	})
	if _, err := s.Restore(file, RestoreOptions{Caller: 1, Force: true}); err != nil {
		t.Fatalf("the restore: %v", err)
	}
	if err := <-unsealed; status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("an unseal of the store being replaced: %v, want UNAVAILABLE", err)
	}
	if !s.Master().State().Sealed {
		t.Fatal("unsealed after a restore")
	}
	unseal(t, s)
	if p, live := s.Counts(); p != len(ids) || live != len(ids) {
		t.Fatalf("counts after the restore: %d persistent, %d live; the backup holds %d", p, live, len(ids))
	}
	for _, id := range ids {
		o, err := s.Get(id)
		if err != nil {
			t.Fatalf("key %v after the restore: %v", id, err)
		}
		s.Release(o)
	}
}

// A key made between init --force's check that the store is empty and its
// seal is not left under a master key no longer kept: the init is refused
// once the daemon is sealed and idle, and the key unseals with the old
// passphrase. (Before, the commit went ahead over the new key.) A store
// that holds keys at the first check is refused and stays unsealed.
func TestReinitRacingCreate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	header := func(k *seal.Keys) ([]byte, error) { return NewHeader(k, time.Now()) }
	prepare := func() *seal.Pending {
		p, err := s.Master().PrepareInit(context.Background(), seal.Sealing{Passphrase: []byte("another passphrase"), Params: testParams}, true)
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	var late *Object
	setHook(t, &hookReinitChecked, func() {
		hookReinitChecked = nil
		late = obj(t, 1, "late", false)
		if err := s.Add(late); err != nil {
			t.Errorf("a create racing the init: %v", err)
		}
	})
	if err := s.Reinit(prepare(), header); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Fatalf("init --force with a key made meanwhile: %v, want POLICY_VIOLATION", err)
	}
	if !s.Master().State().Sealed {
		t.Fatal("the daemon is unsealed after a refused replacement")
	}
	unseal(t, s) // the old passphrase
	o, err := s.Get(late.ID)
	if err != nil {
		t.Fatalf("the key made meanwhile: %v", err)
	}
	s.Release(o)
	if err := s.Reinit(prepare(), header); status(err) != wire.Status_STATUS_POLICY_VIOLATION || s.Master().State().Sealed {
		t.Fatalf("init --force on a store with keys: %v, sealed %v; want POLICY_VIOLATION, unsealed", err, s.Master().State().Sealed)
	}
}

// A backup whose reader does not read (a client that asked for the first
// chunk only) holds no read transaction while it waits: writes that grow
// the store's mapping, which waits for every reader, go on. (Before, the
// backup read from the store as its reader took the bytes, and such a
// write, and everything waiting for it, stopped until the reader went on.)
func TestStalledBackupDoesNotStopWrites(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	for i := range 600 { // a backup larger than its writer's buffer
		if err := s.Add(obj(t, 1, fmt.Sprintf("b%d", i), false)); err != nil {
			t.Fatal(err)
		}
	}
	pr, pw := io.Pipe()
	backedUp := make(chan error, 1)
	go func() { backedUp <- s.Backup(pw) }()
	first := make([]byte, 100)
	if _, err := io.ReadFull(pr, first); err != nil { // the reader takes a little, then stalls
		t.Fatal(err)
	}
	added := make(chan error, 1)
	go func() {
		for i := range 3000 { // enough to grow the file, and its mapping, several times
			if err := s.Add(obj(t, uint32(2+i/900), fmt.Sprintf("k%d", i), false)); err != nil {
				added <- err
				return
			}
		}
		added <- nil
	}()
	select {
	case err := <-added:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(60 * time.Second):
		pr.Close()
		t.Fatal("writes stopped while a backup's reader stalled")
	}
	go io.Copy(io.Discard, pr)
	if err := <-backedUp; err != nil {
		t.Fatalf("the backup: %v", err)
	}
}

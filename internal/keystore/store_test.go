package keystore

import (
	"bytes"
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

func obj(t testing.TB, owner uint32, name string, ephemeral bool) *Object {
	m, err := mech.Generate(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM))
	if err != nil {
		panic(err)
	}
	return must(NewObject(name, owner, m, &key.Attrs{Usage: key.Encrypt | key.Decrypt}, ephemeral, time.Now(), persist.Origin_ORIGIN_GENERATED))
}

func status(err error) wire.Status { return wire.StatusOf(err) }

func dev(t *testing.T, maxPerUser int) *Store {
	t.Helper()
	s, err := NewDev(Config{MaxPerUser: maxPerUser})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// inProcessKDF runs Argon2id here: tests only (the daemon runs it in a
// worker process).
type inProcessKDF struct{}

func (inProcessKDF) Derive(_ context.Context, p kdf.Params, pass, salt []byte, n int) ([]byte, error) {
	return argon2.IDKey(pass, salt, p.Time, p.MemoryKiB, p.Threads, uint32(n)), nil
}

var testParams = kdf.Params{Time: 1, MemoryKiB: 64, Threads: 1}

// persistent makes a bbolt store in dir with a master key sealed under
// "passphrase", unsealed.
func persistent(t testing.TB, dir string) *Store {
	t.Helper()
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}, InsecureKDF: true})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{MaxPerUser: 1000, DB: db, Master: m})
	if !m.State().Initialized {
		p, err := m.PrepareInit(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams}, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.CommitInit(p, func(k *seal.Keys) ([]byte, error) { return NewHeader(k, time.Now()) }); err != nil {
			t.Fatal(err)
		}
		k, _ := m.Keys()
		if err := s.Verify(k, false); err != nil {
			t.Fatal(err)
		}
	} else {
		unseal(t, s)
	}
	t.Cleanup(func() { s.Close(); db.Close() })
	return s
}

func unseal(t testing.TB, s *Store) {
	t.Helper()
	err := s.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), func(k *seal.Keys) error { return s.Verify(k, false) })
	if err != nil {
		t.Fatal(err)
	}
}

// reopen closes s's database and opens the store in dir again, unsealed.
func reopen(t *testing.T, s *Store, dir string) *Store {
	t.Helper()
	s.Close()
	s.db.Close()
	return persistent(t, dir)
}

func TestQuotaAndNames(t *testing.T) {
	s := dev(t, 3)
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
	if _, err := s.Get(eph.ID); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("an ephemeral key is findable by id: %v", err)
	}
	s.Remove(eph)
	s.Remove(eph) // twice is harmless
	if got := s.Owned(1); got != 2 {
		t.Fatalf("owner 1 holds %d keys, want 2", got)
	}
	if err := s.Add(obj(t, 1, "c", false)); err != nil {
		t.Fatalf("after a removal: %v", err)
	}
	o, err := s.Lookup(1, "a")
	if err != nil || o != a {
		t.Fatalf("lookup by name: %v", err)
	}
	s.Release(o)
	if err := s.Remove(a); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Lookup(1, "a"); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("removed key still found by name: %v", err)
	}
	if _, err := s.Get(a.ID); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("removed key still found by id: %v", err)
	}
	if err := a.Use(func(*mech.Key) error { return nil }); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("use of a removed key: %v", err)
	}
}

func TestList(t *testing.T) {
	s := dev(t, 100)
	for i := range 10 {
		if err := s.Add(obj(t, uint32(i%2), "", false)); err != nil {
			t.Fatal(err)
		}
	}
	mine := func(info *wire.KeyInfo) bool { return info.OwnerUid == 0 }
	var all []*wire.KeyInfo
	var after key.ID
	for {
		page, err := s.List(after, 2, mine)
		if err != nil {
			t.Fatal(err)
		}
		if len(page) == 0 {
			break
		}
		all = append(all, page...)
		copy(after[:], page[len(page)-1].Id)
	}
	if len(all) != 5 {
		t.Fatalf("listed %d keys of owner 0, want 5", len(all))
	}
	for i := 1; i < len(all); i++ {
		if bytes.Compare(all[i-1].Id, all[i].Id) >= 0 {
			t.Fatal("list is not in id order")
		}
	}
}

// Material is never wiped under a running operation.
func TestRemoveWaitsForUse(t *testing.T) {
	s := dev(t, 10)
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
	s := dev(t, 10)
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

// secretOf returns a key's raw bytes (AES) for comparisons.
func secretOf(t *testing.T, o *Object, v *Version) []byte {
	t.Helper()
	var b []byte
	o.UseVersion(v, func(m *mech.Key) error {
		return m.Canonical(func(c []byte) error { b = bytes.Clone(c); return nil })
	})
	return b
}

func TestPersistsAcrossRestart(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	o := obj(t, 1000, "payroll", false)
	want := secretOf(t, o, o.Newest())
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	if err := s.SetAttrs(o, func(old *key.Attrs) (*key.Attrs, error) {
		n := *old
		n.ACL = []key.ACLEntry{{ID: 1001, Usage: key.Encrypt}}
		return &n, nil
	}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Rotate(o); err != nil {
		t.Fatal(err)
	}
	v2 := secretOf(t, o, o.Newest())
	id := o.ID

	s = reopen(t, s, dir)
	if n, _ := s.Counts(); n != 1 {
		t.Fatalf("%d persistent keys after a restart, want 1", n)
	}
	got, err := s.Lookup(1000, "payroll")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release(got)
	if got.ID != id || got.Attrs().Usage != key.Encrypt|key.Decrypt || len(got.Attrs().ACL) != 1 || got.Attrs().ACL[0].ID != 1001 {
		t.Fatalf("attributes changed across a restart: %+v", got.Attrs())
	}
	vs := got.Versions()
	if len(vs) != 2 || vs[0].N != 1 || vs[1].N != 2 {
		t.Fatalf("versions after a restart: %d", len(vs))
	}
	if !bytes.Equal(secretOf(t, got, vs[0]), want) || !bytes.Equal(secretOf(t, got, vs[1]), v2) {
		t.Fatal("key bytes changed across a restart")
	}
	if got.Meta().Origin != persist.Origin_ORIGIN_GENERATED || !got.Meta().NeverExportable {
		t.Fatal("lifecycle lost across a restart")
	}
}

func TestSealedRefuses(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	s.SealAll()
	if err := o.Use(func(*mech.Key) error { return nil }); status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("a handle's key after seal: %v", err)
	}
	if _, err := s.Get(o.ID); status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("Get while sealed: %v", err)
	}
	if err := s.Add(obj(t, 1, "x", true)); status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("Add while sealed: %v", err)
	}
	if _, err := s.List(key.ID{}, 10, func(*wire.KeyInfo) bool { return true }); status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("List while sealed: %v", err)
	}
	unseal(t, s)
	got, err := s.Get(o.ID)
	if err != nil {
		t.Fatal(err)
	}
	s.Release(got)
}

// The budget: reservations are durable before they are used, and a
// restart counts every reserved encryption as made.
func TestEncryptionBudget(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	v, err := s.Encrypting(o, 10)
	if err != nil || v.N != 1 {
		t.Fatal(v, err)
	}
	if v.Used() != 10 || v.reserved.Load() != 10+reserveBlock {
		t.Fatalf("used %d, reserved %d", v.Used(), v.reserved.Load())
	}
	s = reopen(t, s, dir)
	o2, err := s.Get(o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if u := o2.Newest().Used(); u != 10+reserveBlock {
		t.Fatalf("after a restart %d encryptions are counted, want every reserved one (%d)", u, 10+reserveBlock)
	}
	// Spend the rest: the next encryption makes version 2.
	nv := o2.Newest()
	nv.used.Store(nv.limit.Load())
	v, err = s.Encrypting(o2, 1)
	if err != nil || v.N != 2 {
		t.Fatalf("after the budget ran out: version %v, %v", v, err)
	}
	// With the refuse policy, a spent version refuses.
	ref := true
	if err := s.SetLifecycle(o2, Lifecycle{Refuse: &ref}); err != nil {
		t.Fatal(err)
	}
	v.used.Store(v.limit.Load())
	if _, err := s.Encrypting(o2, 1); status(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("spent version with refuse policy: %v", err)
	}
	s.Release(o2)
}

func TestRotationByAge(t *testing.T) {
	s := dev(t, 10)
	now := time.Now()
	s.now = func() time.Time { return now }
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	d := time.Hour
	if err := s.SetLifecycle(o, Lifecycle{RotateAfter: &d}); err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Current(o); v.N != 1 {
		t.Fatal("rotated too early")
	}
	now = now.Add(2 * time.Hour)
	if v, _ := s.Current(o); v.N != 2 {
		t.Fatalf("not rotated after its period: version %d", v.N)
	}
}

func TestMinVersionAndTrim(t *testing.T) {
	s := dev(t, 10)
	o := obj(t, 1, "k", false)
	s.Add(o)
	s.Rotate(o)
	s.Rotate(o)
	two := uint32(2)
	if err := s.SetLifecycle(o, Lifecycle{TrimBelow: &two}); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Fatalf("trimming a live version: %v", err)
	}
	if err := s.SetLifecycle(o, Lifecycle{MinVersion: &two}); err != nil {
		t.Fatal(err)
	}
	if _, ok := o.Version(1); ok {
		t.Fatal("a retired version is still usable")
	}
	one := uint32(1)
	if err := s.SetLifecycle(o, Lifecycle{MinVersion: &one}); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Fatalf("lowering the minimum version: %v", err)
	}
	old := o.Versions()[0]
	if err := s.SetLifecycle(o, Lifecycle{TrimBelow: &two}); err != nil {
		t.Fatal(err)
	}
	if len(o.Versions()) != 2 || o.Versions()[0].N != 2 {
		t.Fatal("trim kept version 1")
	}
	if err := old.Mat.Canonical(func([]byte) error { return nil }); err == nil {
		t.Fatal("a trimmed version's material was not wiped")
	}
}

// Unloading and reloading a key within the daemon's life does not count
// its whole reservation as spent.
func TestReloadKeepsUsage(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := s.Encrypting(o, 1); err != nil {
			t.Fatal(err)
		}
		s.Release(o)
		var err error
		if o, err = s.Get(o.ID); err != nil {
			t.Fatal(err)
		}
	}
	if u := o.Newest().Used(); u != 3 {
		t.Fatalf("after 3 encryptions and reloads, %d counted", u)
	}
	s.Release(o)
}

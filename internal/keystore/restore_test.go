package keystore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

func backupTo(t *testing.T, s *Store) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), "backup")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if err := s.Backup(f); err != nil {
		t.Fatal(err)
	}
	return file
}

// rewriteBackup writes a backup file like in, each entry's value changed
// by edit, with a correct checksum: what a backup made elsewhere may hold.
func rewriteBackup(t *testing.T, in string, edit func(bucket, key, val []byte) []byte) string {
	t.Helper()
	out := filepath.Join(t.TempDir(), "rewritten")
	f, err := os.Create(out)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	h := sha256.New()
	w := bufio.NewWriter(f)
	mw := bufio.NewWriter(bytesTee{w, h})
	mw.WriteString(backupMagic)
	var n uint64
	err = readBackup(in, func(e backupEntry) error {
		n++
		v := edit(e.bucket, e.key, e.val)
		b := append([]byte{1, byte(len(e.bucket))}, e.bucket...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(e.key)))
		b = append(b, e.key...)
		b = binary.BigEndian.AppendUint32(b, uint32(len(v)))
		b = append(b, v...)
		_, err := mw.Write(b)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	mw.Write(binary.BigEndian.AppendUint64([]byte{2}, n))
	mw.Flush()
	w.Write(h.Sum(nil))
	if err := w.Flush(); err != nil {
		t.Fatal(err)
	}
	return out
}

type bytesTee struct {
	w *bufio.Writer
	h interface{ Write([]byte) (int, error) }
}

func (b bytesTee) Write(p []byte) (int, error) {
	b.h.Write(p)
	return b.w.Write(p)
}

// A development-mode store's master key is sealed under nothing: a backup
// of it could never be unsealed, so none is made.
func TestBackupOfDevStoreRefused(t *testing.T) {
	s, err := NewDev(Config{MaxPerUser: 10})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.Add(obj(t, 1, "k", false))
	var out bytes.Buffer
	if err := s.Backup(&out); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Fatalf("backup of a development-mode store: %v", err)
	}
	if out.Len() != 0 {
		t.Fatalf("a refused backup wrote %d bytes", out.Len())
	}
}

// A backup whose master key is sealed under neither a passphrase nor
// shares (one of a development-mode daemon, made before backups of them
// were refused) is refused before anything changes: restored, it would
// leave a store nothing could unseal.
func TestRestoreOfUnsealableBackupRefused(t *testing.T) {
	src := persistent(t, filepath.Join(t.TempDir(), "src"))
	src.Add(obj(t, 1, "k", false))
	good := backupTo(t, src)
	bad := rewriteBackup(t, good, func(bucket, key, val []byte) []byte {
		if !bytes.Equal(bucket, persist.BucketMeta) || !bytes.Equal(key, persist.MetaMaster) {
			return val
		}
		var m persist.MasterRecord
		if err := m.UnmarshalVT(val); err != nil {
			t.Fatal(err)
		}
		m.Passphrase = nil
		b, _ := m.MarshalVT()
		return b
	})
	dir := filepath.Join(t.TempDir(), "dst")
	dst := persistentEmpty(t, dir)
	before := hashDir(t, dir)
	if _, err := dst.Restore(bad, RestoreOptions{Force: true}); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Fatalf("restore of a backup nothing unseals: %v", err)
	}
	if after := hashDir(t, dir); !maps.Equal(before, after) {
		t.Fatalf("a refused restore changed the state directory: %v -> %v", before, after)
	}
	if dst.Master().State().Initialized {
		t.Fatal("a refused restore gave the store a master key")
	}
	// The backup as made restores.
	if _, err := dst.Restore(good, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
}

// The report of a restore names what the store has that the backup has
// not, by kind; using a key (its reserved encryptions) is not a change.
func TestRestoreReport(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s := persistent(t, dir)
	add := func(owner uint32, name string) *Object {
		o := obj(t, owner, name, false)
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		return o
	}
	a, b, c, d := add(1, "a"), add(1, "b"), add(1, "c"), add(2, "d")
	file := backupTo(t, s)
	add(1, "e")
	add(2, "f")
	if _, err := s.Rotate(a); err != nil {
		t.Fatal(err)
	}
	yes := true
	if err := s.SetLifecycle(b, Lifecycle{DeletionAllowed: &yes}); err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(c); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		encrypting(t, s, d)
	}
	before := hashDir(t, dir)
	rep, err := s.Restore(file, RestoreOptions{Caller: 1})
	if status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Fatalf("restore over newer keys without force: %v", err)
	}
	if after := hashDir(t, dir); !maps.Equal(before, after) {
		t.Fatalf("a refused restore changed the state directory: %v -> %v", before, after)
	}
	want := RestoreReport{KeysNow: 5, KeysInBackup: 4, Created: 2, Rotated: 1, Changed: 1, Returning: 1,
		YoursCreated: []string{"e"}, YoursRotated: []string{"a"}, YoursChanged: []string{"b"}, YoursReturning: []string{"c"},
		GenerationNow: 1, GenerationInBackup: 1}
	if rep == nil || rep.KeysNow != want.KeysNow || rep.KeysInBackup != want.KeysInBackup || rep.Created != want.Created ||
		rep.Rotated != want.Rotated || rep.Changed != want.Changed || rep.Returning != want.Returning ||
		!slices.Equal(rep.YoursCreated, want.YoursCreated) || !slices.Equal(rep.YoursRotated, want.YoursRotated) ||
		!slices.Equal(rep.YoursChanged, want.YoursChanged) || !slices.Equal(rep.YoursReturning, want.YoursReturning) {
		t.Fatalf("report %+v, want %+v", rep, want)
	}
	// Another caller learns the counts, not the names.
	rep, _ = s.Restore(file, RestoreOptions{Caller: 3})
	if rep.Created != 2 || len(rep.YoursCreated)+len(rep.YoursRotated)+len(rep.YoursChanged)+len(rep.YoursReturning) != 0 {
		t.Fatalf("report to another uid: %+v", rep)
	}
	rep, err = s.Restore(file, RestoreOptions{Caller: 1, Force: true})
	if err != nil {
		t.Fatal(err)
	}
	// The store replaced is kept whole: it opens with every key.
	kept := filepath.Join(t.TempDir(), "kept")
	os.MkdirAll(kept, 0o700)
	raw, err := os.ReadFile(rep.Replaced)
	if err != nil {
		t.Fatal(err)
	}
	os.WriteFile(filepath.Join(kept, "keywarden.db"), raw, 0o600)
	old := persistent(t, kept)
	if n, _ := old.Counts(); n != 5 {
		t.Fatalf("the store kept aside holds %d keys, want 5", n)
	}
	if _, err := old.Lookup(1, "e"); err != nil {
		t.Fatalf("a key made since the backup is not in the store kept aside: %v", err)
	}
}

func hashDir(t *testing.T, dir string) map[string][sha256.Size]byte {
	t.Helper()
	out := map[string][sha256.Size]byte{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		out[e.Name()] = sha256.Sum256(b)
	}
	return out
}

// persistentEmpty opens a store in dir that has no master key yet.
func persistentEmpty(t *testing.T, dir string) *Store {
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
	t.Cleanup(func() { s.Close(); db.Close() })
	return s
}

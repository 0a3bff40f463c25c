package keystore

import (
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
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

// Stores written by format 1 (testdata/format1, README.md there): the
// daemon checks them under format 1's rules at unseal, upgrades them in
// one transaction, and re-writes their records in the background as a
// master-key rotation does.

// format1Facts are what testdata/format1/facts.json says of its stores.
func format1Facts(t *testing.T) map[string]string {
	t.Helper()
	b, err := os.ReadFile("testdata/format1/facts.json")
	if err != nil {
		t.Fatal(err)
	}
	var f map[string]string
	if err := json.Unmarshal(b, &f); err != nil {
		t.Fatal(err)
	}
	return f
}

// format1Store makes a state directory holding the store testdata/format1
// /name.db.gz.
func format1Store(t *testing.T, name string) string {
	t.Helper()
	f, err := os.Open(filepath.Join("testdata/format1", name+".db.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	b, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, store.FileName), b, 0o600); err != nil {
		t.Fatal(err)
	}
	return dir
}

func unhex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func idOf(t *testing.T, f map[string]string, name string) key.ID {
	var id key.ID
	copy(id[:], unhex(t, f[name+"_id"]))
	return id
}

// formats returns the formats of the master record, the header, and the
// set of the records' formats and generations ("2/1" …) in dir's store.
func formats(t *testing.T, s *Store) (master, header uint32, records map[string]int) {
	t.Helper()
	records = map[string]int{}
	s.db.View(func(tx store.Tx) error {
		m := &persist.MasterRecord{}
		m.UnmarshalVT(tx.Get(persist.BucketMeta, persist.MetaMaster))
		h := &persist.StoreHeader{}
		h.UnmarshalVT(tx.Get(persist.BucketMeta, persist.MetaHeader))
		master, header = m.Format, h.Format
		return tx.ForEach(persist.BucketKeys, nil, func(_, v []byte) error {
			_, rb, _ := persist.SplitValue(v)
			r := &persist.KeyRecord{}
			r.UnmarshalVT(rb)
			records[strings.Join([]string{string(rune('0' + r.Format)), string(rune('0' + r.Versions[0].MkGeneration))}, "/")]++
			return nil
		})
	})
	return master, header, records
}

// checkFormat1Keys checks that the keys of the "keys" store are as format
// 1 left them.
func checkFormat1Keys(t *testing.T, s *Store, f map[string]string) {
	t.Helper()
	msg := unhex(t, f["message"])
	alpha, err := s.Get(idOf(t, f, "alpha"))
	if err != nil {
		t.Fatalf("alpha: %v", err)
	}
	defer s.Release(alpha)
	if a := alpha.Attrs(); a.Usage != key.Encrypt|key.Decrypt || len(a.ACL) != 1 || a.ACL[0].ID != 1234 {
		t.Errorf("alpha's attributes: %+v", a)
	}
	for _, name := range []string{"alpha_ct1", "alpha_ct2"} {
		ct := unhex(t, f[name])
		v, ok := alpha.Version(binary.BigEndian.Uint32(ct[3:7]))
		if !ok {
			t.Fatalf("%s: no version %d", name, binary.BigEndian.Uint32(ct[3:7]))
		}
		var pt []byte
		err := alpha.UseVersion(v, func(m *mech.Key) error {
			var err error
			pt, err = m.Decrypt(ct[7:], nil, wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
			return err
		})
		if err != nil || !bytes.Equal(pt, msg) {
			t.Errorf("%s does not decrypt: %v", name, err)
		}
	}
	beta, err := s.Get(idOf(t, f, "beta"))
	if err != nil {
		t.Fatalf("beta: %v", err)
	}
	defer s.Release(beta)
	if got := secretOf(t, beta, beta.Newest()); !bytes.Equal(got, unhex(t, f["beta_raw"])) {
		t.Error("beta's bytes changed")
	}
	if beta.Meta().Origin != persist.Origin_ORIGIN_IMPORTED {
		t.Errorf("beta's origin: %v", beta.Meta().Origin)
	}
	for _, name := range []string{"gamma", "delta"} {
		o, err := s.Get(idOf(t, f, name))
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		if got := o.Newest().Mat.PublicDER(); !bytes.Equal(got, unhex(t, f[name+"_public"])) {
			t.Errorf("%s's public key changed", name)
		}
		s.Release(o)
	}
	gamma, _ := s.Get(idOf(t, f, "gamma"))
	if u := gamma.Attrs().Usage; u != key.Verify {
		t.Errorf("gamma's usage, narrowed to verify: %v", u)
	}
	s.Release(gamma)
	// A wrapping key of format 1 may have been wrappable, and wrapped out,
	// before: it counts as wrapped out, and no longer wraps.
	if kek, err := s.Get(idOf(t, f, "kek")); err != nil {
		t.Errorf("kek: %v", err)
	} else {
		if !kek.Meta().WrappedOut || policy.TrustedWrapping(kek.Policy()) {
			t.Errorf("a wrapping key of format 1 is still trusted to wrap (wrapped out %v)", kek.Meta().WrappedOut)
		}
		s.Release(kek)
	}
	if _, err := s.Get(idOf(t, f, "doomed")); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Errorf("a key destroyed under format 1: %v", err)
	}
	if n, _ := s.Counts(); n != 5 {
		t.Errorf("%d keys, want 5", n)
	}
	// The copy rule knows their material (format 1's fingerprints are
	// the inner values): a wider copy of beta is refused.
	m, _ := mech.FromCanonical(key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256), key.Secret, unhex(t, f["beta_raw"]))
	cp := must(NewObject("", 0, m, &key.Attrs{Usage: key.Sign | key.Verify, Exportable: true, Wrappable: true}, true, time.Now(), persist.Origin_ORIGIN_IMPORTED))
	if err := s.Add(cp); status(err) != wire.Status_STATUS_POLICY_VIOLATION {
		t.Errorf("a wider copy of beta: %v", err)
	}
	Discard(cp)
}

func TestUpgradeFromFormat1(t *testing.T) {
	f := format1Facts(t)
	dir := format1Store(t, "keys")
	orig, _ := os.ReadFile(filepath.Join(dir, store.FileName))
	s, err := openAs(t, dir, f["passphrase"])
	if err != nil {
		t.Fatalf("unseal of a store of format 1: %v", err)
	}
	master, header, records := formats(t, s)
	if master != persist.Format || header != persist.Format || records["0/1"] != 5 {
		t.Fatalf("after the unseal: master record %d, header %d, records %v", master, header, records)
	}
	if st := s.Master().State(); !st.Rotating || st.RotTot != 5 {
		t.Fatalf("the re-write is not under way: %+v", st)
	}
	// The keys work before their records are re-written...
	checkFormat1Keys(t, s, f)
	if err := s.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
	if _, _, records := formats(t, s); records["2/1"] != 5 || len(records) != 1 {
		t.Fatalf("records after the re-write: %v", records)
	}
	if st := s.Master().State(); st.Rotating {
		t.Fatalf("the re-write did not finish: %+v", st)
	}
	checkFormat1Keys(t, s, f)
	// ... and after, in a store that unseals as format 2.
	closeStore(s)
	s, err = openAs(t, dir, f["passphrase"])
	if err != nil {
		t.Fatal(err)
	}
	checkFormat1Keys(t, s, f)
	closeStore(s)

	// Once upgraded, what format 1 wrote is refused: its master record
	// (the header is not of its format), a record of format 1 (after the
	// re-write, no longer accepted).
	aid := idOf(t, f, "alpha")
	origMaster, origAlpha := format1Value(t, orig, persist.BucketMeta, persist.MetaMaster), format1Value(t, orig, persist.BucketKeys, aid[:])
	for name, put := range map[string]func(tx store.Tx) error{
		"master record": func(tx store.Tx) error { return tx.Put(persist.BucketMeta, persist.MetaMaster, origMaster) },
		"key record":    func(tx store.Tx) error { return tx.Put(persist.BucketKeys, aid[:], origAlpha) },
	} {
		cp := filepath.Join(t.TempDir(), "state")
		os.Mkdir(cp, 0o700)
		b, _ := os.ReadFile(filepath.Join(dir, store.FileName))
		os.WriteFile(filepath.Join(cp, store.FileName), b, 0o600)
		db, err := store.OpenBolt(cp, time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if err := db.Update(put); err != nil {
			t.Fatal(err)
		}
		db.Close()
		if _, err := openAs(t, cp, f["passphrase"]); err == nil {
			t.Errorf("the %s of format 1 put back after the upgrade is accepted", name)
		}
	}
}

// format1Value reads a value of the store file b (before the upgrade).
func format1Value(t *testing.T, b []byte, bucket, k []byte) []byte {
	t.Helper()
	dir := filepath.Join(t.TempDir(), "orig")
	os.Mkdir(dir, 0o700)
	os.WriteFile(filepath.Join(dir, store.FileName), b, 0o600)
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v []byte
	db.View(func(tx store.Tx) error { v = bytes.Clone(tx.Get(bucket, k)); return nil })
	return v
}

// A store of format 1 in the middle of a master-key rotation (one batch
// of 256 of its 300 records re-wrapped under generation 2): the upgrade
// re-writes all of them, the previous generation's too, and a crash in
// the middle of that resumes at the next unseal.
func TestUpgradeFormat1DuringRotation(t *testing.T) {
	f := format1Facts(t)
	dir := format1Store(t, "rotating")
	s, err := openAs(t, dir, f["rotating_passphrase"])
	if err != nil {
		t.Fatalf("unseal of a store of format 1 under rotation: %v", err)
	}
	if _, _, records := formats(t, s); records["0/2"] != 256 || records["0/1"] != 44 {
		t.Fatalf("records: %v", records)
	}
	batches := 0
	s.RewrapAll(func(done, total uint64) {
		if batches++; batches == 1 {
			s.SealAll() // a crash after the first batch
		}
	})
	closeStore(s)
	s, err = openAs(t, dir, f["rotating_passphrase"])
	if err != nil {
		t.Fatalf("unseal in the middle of the re-write: %v", err)
	}
	if _, _, records := formats(t, s); records["2/2"] != 256 || records["0/1"] != 44 {
		t.Fatalf("records after the first batch: %v", records)
	}
	if err := s.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
	closeStore(s)
	s, err = openAs(t, dir, f["rotating_passphrase"])
	if err != nil {
		t.Fatal(err)
	}
	if _, _, records := formats(t, s); records["2/2"] != 300 {
		t.Fatalf("records after the re-write: %v", records)
	}
	want := map[[32]byte]bool{}
	for i := range 300 {
		want[sha256.Sum256(binary.BigEndian.AppendUint32([]byte("rotating"), uint32(i)))] = true
	}
	infos, err := s.List(key.ID{}, 0, func(*wire.KeyInfo) bool { return true })
	if err != nil || len(infos) != 300 {
		t.Fatalf("list: %d keys, %v", len(infos), err)
	}
	for _, info := range infos {
		var id key.ID
		copy(id[:], info.Id)
		o, err := s.Get(id)
		if err != nil {
			t.Fatal(err)
		}
		var b [32]byte
		copy(b[:], secretOf(t, o, o.Newest()))
		if !want[b] {
			t.Fatal("a key's bytes changed")
		}
		delete(want, b)
		s.Release(o)
	}
	if st := s.Master().State(); st.Rotating || st.Generation != 2 {
		t.Fatalf("state: %+v", st)
	}
}

// A store of format 1 is checked under its own rules before it is
// upgraded: a record changed in it is refused, and the store stays as it
// was, of format 1, until an administrator accepts it.
func TestUpgradeChecksFirst(t *testing.T) {
	f := format1Facts(t)
	dir := format1Store(t, "keys")
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	id := idOf(t, f, "gamma")
	db.Update(func(tx store.Tx) error {
		v := bytes.Clone(tx.Get(persist.BucketKeys, id[:]))
		v[len(v)-1] ^= 1
		return tx.Put(persist.BucketKeys, id[:], v)
	})
	db.Close()
	s, err := openAs(t, dir, f["passphrase"])
	closeStore(s)
	var ie *IntegrityError
	if !errors.As(err, &ie) || ie.BadRecords != 1 {
		t.Fatalf("unseal of a changed store of format 1: %v", err)
	}
	s, _ = openAs(t, dir, "wrong passphrase") // read only
	if master, header, _ := formats(t, s); master != persist.FormatLegacy || header != persist.FormatLegacy {
		t.Fatalf("a refused store was upgraded: master record %d, header %d", master, header)
	}
	closeStore(s)
	s = openAccept(t, dir, f["passphrase"])
	if master, header, _ := formats(t, s); master != persist.Format || header != persist.Format {
		t.Fatalf("an accepted store was not upgraded: %d %d", master, header)
	}
	if _, err := s.Get(id); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("the changed record, set aside: %v", err)
	}
	if err := s.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
	closeStore(s)
	s, err = openAs(t, dir, f["passphrase"])
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Counts(); n != 4 || s.Quarantined() != 1 {
		t.Fatalf("%d keys, %d set aside", n, s.Quarantined())
	}
}

// openAccept opens the store in dir and unseals it with pass, accepting
// it as it is.
func openAccept(t *testing.T, dir, pass string) *Store {
	t.Helper()
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{MaxPerUser: 1000, DB: db, Master: m})
	t.Cleanup(func() { s.Close(); db.Close() })
	if err := m.UnsealPassphrase(context.Background(), []byte(pass), func(k *seal.Keys) error { return s.Verify(k, true) }); err != nil {
		t.Fatal(err)
	}
	return s
}

// A backup of a store of format 1 restores into today's daemon, and is
// upgraded at its first unseal.
func TestRestoreFormat1Backup(t *testing.T) {
	f := format1Facts(t)
	db, err := store.OpenBolt(format1Store(t, "keys"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}})
	if err != nil {
		t.Fatal(err)
	}
	old := New(Config{MaxPerUser: 10, DB: db, Master: m})
	file := filepath.Join(t.TempDir(), "backup")
	w, _ := os.Create(file)
	if err := old.Backup(w); err != nil { // needs no master key
		t.Fatal(err)
	}
	w.Close()
	closeStore(old)

	dir := filepath.Join(t.TempDir(), "state")
	db2, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m2, _ := seal.Open(seal.Config{Store: db2, KDF: inProcessKDF{}})
	s := New(Config{MaxPerUser: 10, DB: db2, Master: m2})
	if _, err := s.Restore(file, RestoreOptions{}); err != nil {
		t.Fatal(err)
	}
	closeStore(s)
	s, err = openAs(t, dir, f["passphrase"])
	if err != nil {
		t.Fatalf("unseal of a restored backup of format 1: %v", err)
	}
	if err := s.RewrapAll(nil); err != nil {
		t.Fatal(err)
	}
	checkFormat1Keys(t, s, f)
}

package keystore

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
)

// FuzzRecord feeds arbitrary store values to the record checks and
// loading: they come from a file others might have written.
func FuzzRecord(f *testing.F) {
	s, err := NewDev(Config{MaxPerUser: 10})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	o := obj(nil, 1, "seed", false)
	if err := s.Add(o); err != nil {
		f.Fatal(err)
	}
	k, _ := s.Master().Keys()
	f.Add(value(nil, s, o.ID))
	f.Add([]byte{})
	f.Add(make([]byte, 40))
	f.Fuzz(func(t *testing.T, v []byte) {
		r, err := checkRecord(k, o.ID[:], v)
		if err != nil {
			return
		}
		if obj, err := s.objectFrom(k, r); err == nil {
			obj.wipe(errDestroyed)
		}
	})
}

// FuzzHeader feeds arbitrary store headers to the header's check: the
// file is others' to write.
func FuzzHeader(f *testing.F) {
	s, err := NewDev(Config{MaxPerUser: 10})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	k, _ := s.Master().Keys()
	var h []byte
	s.db.View(func(tx store.Tx) error {
		h = bytes.Clone(tx.Get(persist.BucketMeta, persist.MetaHeader))
		return nil
	})
	f.Add(h)
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		db := store.NewMemory()
		db.Update(func(tx store.Tx) error { return tx.Put(persist.BucketMeta, persist.MetaHeader, v) })
		db.View(func(tx store.Tx) error {
			readHeader(tx, k)
			return nil
		})
	})
}

// FuzzBackup feeds arbitrary files to the backup reader.
func FuzzBackup(f *testing.F) {
	dir := f.TempDir()
	s := persistent(f, filepath.Join(dir, "state"))
	s.Add(obj(nil, 1, "seed", false))
	seed := filepath.Join(dir, "seed")
	w, _ := os.Create(seed)
	if err := s.Backup(w); err != nil {
		f.Fatal(err)
	}
	w.Close()
	b, _ := os.ReadFile(seed)
	f.Add(b)
	f.Add([]byte(backupMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		parseBackup(bytes.NewReader(b), int64(len(b)), func(e backupEntry) error { return nil })
	})
}

package keystore

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
)

// A store header read again with the same bytes under the same keys is
// not checked again (headers), but what is given back is a copy that the
// caller may change, and a header that differs by one byte, or the same
// header under another store's keys, is checked and refused.
func TestHeaderRememberedStillChecked(t *testing.T) {
	s, other := dev(t, 10), dev(t, 10)
	if err := s.Add(obj(t, 1, "k", false)); err != nil {
		t.Fatal(err)
	}
	k, _ := s.Master().Keys()
	k2, _ := other.Master().Keys()
	var raw []byte
	s.db.View(func(tx store.Tx) error {
		raw = bytes.Clone(tx.Get(persist.BucketMeta, persist.MetaHeader))
		return nil
	})
	h, acc, err := readHeader(headerTx{raw}, k)
	if err != nil || h.Count != 1 {
		t.Fatalf("the header: %v, %v", err, h)
	}
	h.Count, h.Epoch = 99, 99
	acc[0] ^= 1
	h2, acc2, err := readHeader(headerTx{raw}, k)
	if err != nil || h2.Count != 1 || h2.Epoch == 99 || acc2 == acc {
		t.Fatalf("read again after the caller changed what it got: %v, count %d, epoch %d", err, h2.Count, h2.Epoch)
	}
	for i := range raw {
		bad := bytes.Clone(raw)
		bad[i] ^= 0x40
		if _, _, err := readHeader(headerTx{bad}, k); err == nil {
			t.Fatalf("a header with byte %d changed is accepted", i)
		}
	}
	if _, _, err := readHeader(headerTx{raw}, k2); err == nil {
		t.Fatal("the header is accepted under another store's keys")
	}
}

// The header of format 1 that the unseal of a store of format 1 checked
// under its keys is refused under the same keys once the upgrade has
// made them keys of format 2, as the check refuses it: what the check of
// some bytes under some keys gave is not reused after the keys' format
// changed.
func TestHeaderOfFormat1RefusedAfterUpgradeUnderSameKeys(t *testing.T) {
	f := format1Facts(t)
	dir := format1Store(t, "keys")
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{MaxPerUser: 1000, DB: db, Master: m})
	defer closeStore(s)
	var old []byte
	var keys *seal.Keys
	err = m.UnsealPassphrase(context.Background(), []byte(f["passphrase"]), func(k *seal.Keys) error {
		keys = k
		db.View(func(tx store.Tx) error { old = bytes.Clone(tx.Get(persist.BucketMeta, persist.MetaHeader)); return nil })
		return s.Verify(k, false)
	})
	if err != nil {
		t.Fatal(err)
	}
	if keys.LegacyHeader() {
		t.Fatal("the keys are still of format 1 after the upgrade")
	}
	if _, _, err := checkHeader(keys, old); err == nil {
		t.Fatal("the check takes the header of format 1 under the upgraded keys")
	}
	if _, _, err := readHeader(headerTx{old}, keys); err == nil {
		t.Error("the header of format 1, checked at the unseal, is taken under the upgraded keys")
	}
}

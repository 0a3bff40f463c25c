package keystore

import (
	"bytes"
	"testing"

	"github.com/keywarden/keywarden/internal/persist"
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

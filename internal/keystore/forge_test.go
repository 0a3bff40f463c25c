package keystore

import (
	"crypto/rand"
	"testing"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
)

// What someone holding keys k can compute: the helpers of the attacks
// below, in the store's format.

// forgeRecordMAC returns the MAC the holder of k would give record bytes
// rb.
func forgeRecordMAC(t *testing.T, k *seal.Keys, rb []byte) []byte {
	mac, err := k.MAC(k.Generation, nil, persist.RecordMACInput(nil, rb))
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// forgeHeader rewrites h, as the holder of k would, for key id's record
// whose MAC changes from oldMAC to newMAC.
func forgeHeader(t *testing.T, k *seal.Keys, h *persist.StoreHeader, id, oldMAC, newMAC []byte) {
	acc, _ := persist.AccFrom(h.Acc)
	pad, _ := accPad(k, h.AccNonce)
	acc.Xor(pad)
	old, _ := summand(k, oldMAC)
	acc.Sub(old)
	add, _ := summand(k, newMAC)
	acc.Add(add)
	h.AccNonce = make([]byte, persist.NonceSize)
	rand.Read(h.AccNonce)
	pad, _ = accPad(k, h.AccNonce)
	acc.Xor(pad)
	h.Acc = acc[:]
	in, _ := persist.HeaderMACInput(h)
	h.Mac, _ = k.MAC(k.Generation, nil, in)
}

// rawIndexMAC is HMAC-SHA-256 of data under the index key, with nothing
// before it.
func rawIndexMAC(t *testing.T, k *seal.Keys, data []byte) []byte {
	mac, err := k.MAC(k.Generation, nil, data)
	if err != nil {
		t.Fatal(err)
	}
	return mac
}

// openUnderStorageKey tries to open version i's blob of r with the storage
// key of its generation.
func openUnderStorageKey(k *seal.Keys, r *persist.KeyRecord, i int) error {
	v := r.Versions[i]
	b, err := k.OpenLegacyBlob(v.MkGeneration, persist.LegacyBlobAAD(nil, k.StoreID, r, v.Version, v.MkGeneration), v.Blob)
	clear(b)
	return err
}

func commitRotation(t *testing.T, s *Store, p *seal.Pending) {
	t.Helper()
	if err := s.CommitRotation(p); err != nil {
		t.Fatal(err)
	}
}

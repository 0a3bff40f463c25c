package seal

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"testing"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
)

func devKeys(t *testing.T) *Keys {
	t.Helper()
	m, err := Open(Config{Store: store.NewMemory()})
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.PrepareInit(context.Background(), Sealing{Ephemeral: true}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CommitInit(p, func(*Keys) ([]byte, error) { return []byte("header"), nil }); err != nil {
		t.Fatal(err)
	}
	k, err := m.Keys()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Seal() })
	return k
}

// A record write's blob key is HKDF-Expand-SHA-256 of the generation's
// blob key (docs/formats.md), and each write's differs.
func TestBlobKeyIsHKDFExpand(t *testing.T) {
	k := devKeys(t)
	id := bytes.Repeat([]byte{7}, 16)
	pt, aad := []byte("canonical key bytes"), []byte("associated data")
	var blob []byte
	if err := k.SealBlobs(id, 42, func(seal BlobSealer) error {
		var err error
		blob, err = seal(nil, aad, pt)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	var sub []byte
	k.gens[k.Generation].blob.Canonical(func(prk []byte) error {
		var err error
		sub, err = hkdf.Expand(sha256.New, prk, string(persist.BlobKeyInfo(k.StoreID, id, 42)), 32)
		return err
	})
	b, _ := aes.NewCipher(sub)
	a, _ := cipher.NewGCM(b)
	if got, err := a.Open(nil, blob[:12], blob[12:], aad); err != nil || !bytes.Equal(got, pt) {
		t.Fatalf("the blob does not open under HKDF-Expand of the blob key: %v", err)
	}
	for _, rev := range []uint64{41, 43} {
		err := k.OpenBlobs(k.Generation, id, rev, func(open BlobOpener) error {
			_, err := open(aad, blob)
			return err
		})
		if err == nil {
			t.Errorf("a blob of revision 42 opens under the key of revision %d", rev)
		}
	}
}

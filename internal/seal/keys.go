package seal

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/sha256"
	"errors"
	"fmt"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
)

// Keys are the secrets of an unsealed master key. A Keys value never
// changes once published; a seal unpublishes it and a rotation replaces
// it, and it is wiped once the last Lease on it is released (lease.go):
// only a lease keeps a Keys value usable.
//
// Every secret the store uses is derived from the master key of its
// generation (genKeys), so that rotating the master key rotates them all:
// whoever held an older master key can forge nothing the store checks
// once the records are re-written under the new one. The one exception is
// the fingerprint key, which keys the inner value of material
// fingerprints; the fingerprints the store keeps are encrypted under the
// generation's material key, so that the inner values need not be
// recomputed (from every key's material) at a rotation.
type Keys struct {
	StoreID    []byte
	Generation uint64 // the current master-key generation
	// Audit is the audit log's secret (HMAC-SHA-256 key) of this
	// generation: it changes with the master key, and the audit log starts
	// a new key epoch.
	Audit *mech.Key
	// gens are the keys of the current generation and, during a rotation,
	// of the previous one.
	gens map[uint64]*genKeys
	// legacy is the index key of format 1 while records of format 1
	// remain (a store upgraded from it is being re-written); nil otherwise.
	legacy *mech.Key
	// legacyHeader: the store header is still of format 1, between the
	// unseal of a store of format 1 and its Upgrade (never published).
	legacyHeader bool
	// material keys the inner value of material fingerprints.
	material *mech.Key
	mk       *mech.Key

	// epoch is the unsealed epoch the keys belong to (Lease.Epoch).
	epoch uint64
	// users counts the leases held; retired is set when the keys are
	// unpublished or replaced; idle is closed once they are wiped. All
	// three are guarded by Master.mu.
	users   int
	retired bool
	idle    chan struct{}
}

// hookUnsealVerify, if set (tests only), runs when an unseal has made its
// keys and before it checks the store with them: a fault point where a
// test seals or unseals meanwhile.
var hookUnsealVerify func()

// without returns a copy of k, sharing no secret with it, without the
// keys of master-key generation prev (unless it is the current one) and
// without format 1's index key.
func (k *Keys) without(prev uint64) (c *Keys, err error) {
	c = &Keys{StoreID: k.StoreID, Generation: k.Generation, gens: map[uint64]*genKeys{}}
	defer func() {
		if err != nil {
			c.wipe()
			c = nil
		}
	}()
	for g, gk := range k.gens {
		if g == prev && g != k.Generation {
			continue
		}
		if c.gens[g], err = gk.clone(); err != nil {
			return nil, err
		}
	}
	for _, p := range []struct{ to, from **mech.Key }{{&c.Audit, &k.Audit}, {&c.material, &k.material}, {&c.mk, &k.mk}} {
		if *p.to, err = clone(*p.from); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// genKeys are the keys of one master-key generation, each HKDF-SHA-256 of
// its master key with the store id as salt and its label as info.
type genKeys struct {
	// storage (AES-256-GCM, "keywarden storage v1") sealed the blobs of
	// format 1, which it still opens.
	storage *mech.Key
	// blob (HMAC-SHA-256 key, "keywarden blob v2") is the pseudorandom key
	// from which each record write's blob key is expanded.
	blob *mech.Key
	// index (HMAC-SHA-256, "keywarden index v2") makes the MACs of key
	// records, of the store header and of the master record, and the
	// accumulator's summands and pads, each with its label
	// (persist.Label*).
	index *mech.Key
	// fp (AES-256, "keywarden material v2") encrypts fingerprints.
	fp *mech.Key
}

// Derivation labels (HKDF-SHA-256 info strings; the salt is the store id).
const (
	labelStorage  = "keywarden storage v1"
	labelBlob     = "keywarden blob v2"
	labelIndex    = "keywarden index v2"
	labelMaterial = "keywarden material v2"
	labelAudit    = "keywarden audit v2"
)

var errGeneration = errors.New("no keys of this master-key generation")

func deriveGen(mk *mech.Key, storeID []byte) (g *genKeys, err error) {
	g = &genKeys{}
	defer func() {
		if err != nil {
			g.destroy()
		}
	}()
	if g.storage, err = derive(mk, storeID, labelStorage, wire.KeyType_KEY_TYPE_AES256_GCM); err != nil {
		return nil, err
	}
	if g.blob, err = derive(mk, storeID, labelBlob, wire.KeyType_KEY_TYPE_HMAC_SHA256); err != nil {
		return nil, err
	}
	if g.index, err = derive(mk, storeID, labelIndex, wire.KeyType_KEY_TYPE_HMAC_SHA256); err != nil {
		return nil, err
	}
	if g.fp, err = derive(mk, storeID, labelMaterial, wire.KeyType_KEY_TYPE_AES256_GCM); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *genKeys) clone() (c *genKeys, err error) {
	c = &genKeys{}
	for _, p := range []struct {
		to   **mech.Key
		from *mech.Key
	}{
		{&c.storage, g.storage}, {&c.blob, g.blob}, {&c.index, g.index}, {&c.fp, g.fp},
	} {
		if *p.to, err = clone(p.from); err != nil {
			c.destroy()
			return nil, err
		}
	}
	return c, nil
}

func (g *genKeys) destroy() {
	if g == nil {
		return
	}
	for _, k := range []*mech.Key{g.storage, g.blob, g.index, g.fp} {
		if k != nil {
			k.Destroy()
		}
	}
}

func (k *Keys) gen(g uint64) (*genKeys, error) {
	if gk := k.gens[g]; gk != nil {
		return gk, nil
	}
	return nil, fmt.Errorf("master-key generation %d: %w", g, errGeneration)
}

// Epoch returns the unsealed epoch the keys belong to (see Lease.Epoch);
// for an unseal's keys not yet published, the epoch they will have.
func (k *Keys) Epoch() uint64 { return k.epoch }

// HasGeneration reports whether k holds the keys of master-key generation
// g: the current one, or the previous one during a rotation.
func (k *Keys) HasGeneration(g uint64) bool { return k.gens[g] != nil }

// Legacy reports whether records of format 1 are still accepted (a store
// upgraded from format 1 is being re-written).
func (k *Keys) Legacy() bool { return k.legacy != nil }

// LegacyHeader reports whether the store header is still of format 1 (a
// store of format 1 before Master.Upgrade).
func (k *Keys) LegacyHeader() bool { return k.legacyHeader }

// MAC returns HMAC-SHA-256 of data under generation g's index key,
// appended to dst. data must start with its persist.Label*.
func (k *Keys) MAC(g uint64, dst, data []byte) ([]byte, error) {
	gk, err := k.gen(g)
	if err != nil {
		return nil, err
	}
	return gk.index.MAC(data, dst)
}

// MACEach computes n MACs under generation g's index key with one entry
// into its secret state: in(i) gives the i-th data and the slice to append
// its MAC to, done(i, mac) receives it. A destination with room for the
// MAC (32 bytes) spares an allocation. The error concerns the key (wiped,
// or of no generation held); then done is not called.
func (k *Keys) MACEach(g uint64, n int, in func(i int) (data, dst []byte), done func(i int, mac []byte)) error {
	gk, err := k.gen(g)
	if err != nil {
		return err
	}
	return gk.index.MACEach(n, in, func(i int, out []byte, _ error) { done(i, out) })
}

var errNoLegacy = errors.New("records of format 1 are no longer accepted")

// LegacyMAC returns HMAC-SHA-256 of data under format 1's index key, while
// records of format 1 are accepted.
func (k *Keys) LegacyMAC(dst, data []byte) ([]byte, error) {
	if k.legacy == nil {
		return nil, errNoLegacy
	}
	return k.legacy.MAC(data, dst)
}

// LegacyMACEach is MACEach under format 1's index key.
func (k *Keys) LegacyMACEach(n int, in func(i int) (data, dst []byte), done func(i int, mac []byte)) error {
	if k.legacy == nil {
		return errNoLegacy
	}
	return k.legacy.MACEach(n, in, func(i int, out []byte, _ error) { done(i, out) })
}

// BlobSealer seals canonical key bytes pt with associated data aad under
// one record write's blob key: nonce (12, random) || ciphertext || tag,
// appended to dst[:0]. A dst with room for it (pt, plus 28 bytes) spares
// an allocation inside secmem.Do, where each one costs.
type BlobSealer func(dst, aad, pt []byte) ([]byte, error)

// BlobOpener opens what a BlobSealer sealed; the caller wipes the result.
type BlobOpener func(aad, blob []byte) ([]byte, error)

// SealBlobs calls fn with a sealer under the blob key of key id's record
// at revision rev, of the current generation: HKDF-Expand-SHA-256 of the
// generation's blob key with info persist.BlobKeyInfo. Every write of a
// record has a new revision, so each blob key seals the versions of one
// write only (at most a few dozen), far from the 2^32 invocations that
// AES-GCM with random nonces allows one key. fn runs inside secmem.Do;
// the sealer must not be kept.
func (k *Keys) SealBlobs(id []byte, rev uint64, fn func(seal BlobSealer) error) error {
	return k.withBlobKey(k.Generation, id, rev, func(a cipher.AEAD) error {
		return fn(func(dst, aad, pt []byte) ([]byte, error) {
			out := dst[:0]
			if cap(out) < 12+len(pt)+a.Overhead() {
				out = make([]byte, 0, 12+len(pt)+a.Overhead())
			}
			out = out[:12]
			// From package random, as every nonce: two clones write a
			// record at the same revision (the same blob key) with
			// versions of their own, fresh material.
			if err := random.Read(out); err != nil {
				return nil, err
			}
			return a.Seal(out, out, pt, aad), nil
		})
	})
}

// OpenBlobs calls fn with an opener under the blob key of key id's record
// at revision rev, of generation g (see SealBlobs).
func (k *Keys) OpenBlobs(g uint64, id []byte, rev uint64, fn func(open BlobOpener) error) error {
	return k.withBlobKey(g, id, rev, func(a cipher.AEAD) error {
		return fn(func(aad, blob []byte) ([]byte, error) {
			if len(blob) < 12+a.Overhead() {
				return nil, errBlob
			}
			pt, err := a.Open(nil, blob[:12], blob[12:], aad)
			if err != nil {
				return nil, errBlob
			}
			return pt, nil
		})
	})
}

var errBlob = errors.New("the blob does not open")

func (k *Keys) withBlobKey(g uint64, id []byte, rev uint64, fn func(a cipher.AEAD) error) (err error) {
	gk, err := k.gen(g)
	if err != nil {
		return err
	}
	// HKDF-Expand to one block (32 bytes) is HMAC(PRK, info || 0x01): the
	// blob key's HMAC state, keyed once and cached, makes it.
	in := append(persist.BlobKeyInfo(k.StoreID, id, rev), 1)
	secmem.Do(func() {
		var sub []byte
		if sub, err = gk.blob.MAC(in, make([]byte, 0, sha256.Size)); err != nil {
			return
		}
		defer clear(sub)
		var b cipher.Block
		if b, err = aes.NewCipher(sub); err != nil {
			return
		}
		var a cipher.AEAD
		if a, err = cipher.NewGCM(b); err != nil {
			return
		}
		err = fn(a)
	})
	return err
}

// OpenLegacyBlob opens a blob of format 1, sealed under generation g's
// storage key. The caller wipes the result.
func (k *Keys) OpenLegacyBlob(g uint64, aad, blob []byte) ([]byte, error) {
	gk, err := k.gen(g)
	if err != nil {
		return nil, err
	}
	return gk.storage.Decrypt(blob, aad, wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
}

// FingerprintSize is the length of a material fingerprint.
const FingerprintSize = persist.FingerprintLen

// fingerprintLabel starts the input of every material fingerprint.
const fingerprintLabel = "keywarden material v1\x00"

// Fingerprint returns the (inner) fingerprint of key material: the first
// 16 bytes of HMAC-SHA-256, under the fingerprint key, of
// fingerprintLabel, the byte class and data. Without that key it says
// nothing about data; with it, it tells the daemon that two key objects
// hold the same material. data may be secret: Fingerprint copies it only
// inside secmem.Do and wipes the copy. The store keeps fingerprints
// encrypted (SealFingerprints).
func (k *Keys) Fingerprint(class byte, data []byte) (fp [FingerprintSize]byte, err error) {
	secmem.Do(func() {
		in := make([]byte, 0, len(fingerprintLabel)+1+len(data))
		in = append(append(append(in, fingerprintLabel...), class), data...)
		var mac []byte
		mac, err = k.material.MAC(in, make([]byte, 0, 32))
		clear(in)
		if err == nil {
			copy(fp[:], mac)
		}
	})
	return fp, err
}

// SealFingerprints encrypts n fingerprints in place (fp(i) gives the
// i-th) under the current generation's material key, for a record: one
// AES-256 block each. Equal fingerprints stay equal, which the store
// needs; without the key they say nothing, and a rotation re-encrypts
// them without the material.
func (k *Keys) SealFingerprints(n int, fp func(i int) *[FingerprintSize]byte) error {
	return k.cryptFingerprints(k.Generation, false, n, fp)
}

// OpenFingerprints decrypts n fingerprints of a record of generation g in
// place.
func (k *Keys) OpenFingerprints(g uint64, n int, fp func(i int) *[FingerprintSize]byte) error {
	return k.cryptFingerprints(g, true, n, fp)
}

func (k *Keys) cryptFingerprints(g uint64, decrypt bool, n int, fp func(i int) *[FingerprintSize]byte) error {
	if n == 0 {
		return nil
	}
	gk, err := k.gen(g)
	if err != nil {
		return err
	}
	return gk.fp.Canonical(func(b []byte) error {
		c, err := aes.NewCipher(b)
		if err != nil {
			return err
		}
		for i := range n {
			p := fp(i)
			if decrypt {
				c.Decrypt(p[:], p[:])
			} else {
				c.Encrypt(p[:], p[:])
			}
		}
		return nil
	})
}

func (k *Keys) wipe() {
	if k == nil {
		return
	}
	for _, g := range k.gens {
		g.destroy()
	}
	for _, s := range []*mech.Key{k.Audit, k.legacy, k.material, k.mk} {
		if s != nil {
			s.Destroy()
		}
	}
}

// newKeys makes the Keys of generation gen of master key mk (which it
// takes), with the fingerprint key material (which it takes).
func newKeys(mk *mech.Key, storeID []byte, gen uint64, material *mech.Key) (k *Keys, err error) {
	k = &Keys{StoreID: storeID, Generation: gen, gens: map[uint64]*genKeys{}, mk: mk, material: material}
	defer func() {
		if err != nil {
			k.wipe()
			k = nil
		}
	}()
	if k.gens[gen], err = deriveGen(mk, storeID); err != nil {
		return nil, err
	}
	if k.Audit, err = derive(mk, storeID, labelAudit, wire.KeyType_KEY_TYPE_HMAC_SHA256); err != nil {
		return nil, err
	}
	return k, nil
}

// newSecret makes a random 32-byte HMAC-SHA-256 key.
func newSecret() (*mech.Key, error) {
	return mech.Generate(key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256))
}

// masterMAC returns the MAC of master record r under k's current index
// key.
func (k *Keys) masterMAC(r *persist.MasterRecord) ([]byte, error) {
	in, err := persist.MasterMACInput(r)
	if err != nil {
		return nil, err
	}
	return k.MAC(k.Generation, nil, in)
}

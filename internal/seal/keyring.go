package seal

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
)

// Derivation labels of the master record (HKDF-SHA-256 info strings; the
// salt is the store id). keys.go has those of the store's keys.
const (
	labelCheck    = "keywarden master check v1"
	labelKeyring  = "keywarden keyring v1"
	labelPrevious = "keywarden previous master v1"
	slotAAD       = "keywarden passphrase slot v1"
)

// marshalMaster sets r's MAC under k and encodes it.
func marshalMaster(k *Keys, r *persist.MasterRecord) ([]byte, error) {
	var err error
	r.Mac = nil
	if r.Mac, err = k.masterMAC(r); err != nil {
		return nil, err
	}
	return r.MarshalVT()
}

func (m *Master) sealPassphrase(ctx context.Context, mk *mech.Key, storeID []byte, gen uint64, pass []byte, params kdf.Params) (*persist.PassphraseSlot, error) {
	if m.kdf == nil {
		return nil, kdf.ErrUnavailable
	}
	params = slotDefaults(params)
	salt := make([]byte, 16)
	m.rand(salt)
	kek, err := m.passphraseKEK(ctx, params, pass, salt)
	if err != nil {
		return nil, err
	}
	defer kek.Destroy()
	var sealed []byte
	err = mk.Canonical(func(b []byte) error {
		var err error
		sealed, err = kek.Encrypt(b, slotAD(storeID, gen), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &persist.PassphraseSlot{Time: params.Time, MemoryKib: params.MemoryKiB, Threads: uint32(params.Threads), Salt: salt, Sealed: sealed}, nil
}

// slotParams returns the Argon2id parameters a passphrase slot records,
// and refuses values that no slot can have. The record keeps them as
// 32-bit integers and Argon2id takes at most 255 lanes (kdf.Params.Threads
// is a uint8): a count above 255 is refused, never truncated into another
// (260 lanes read as 4 would derive with parameters the slot does not
// name).
func slotParams(sl *persist.PassphraseSlot) (kdf.Params, error) {
	damaged := func(what string, args ...any) (kdf.Params, error) {
		return kdf.Params{}, wire.Errorf(wire.Status_STATUS_INTERNAL,
			"the master record's passphrase slot is damaged: "+what+"; restore the store from a backup", args...)
	}
	if sl.Threads < 1 || sl.Threads > kdf.MaxThreads {
		return damaged("it records %d Argon2id lanes (1 to %d are possible)", sl.Threads, kdf.MaxThreads)
	}
	p := kdf.Params{Time: sl.Time, MemoryKiB: sl.MemoryKib, Threads: uint8(sl.Threads)}
	if err := p.Check(^uint32(0)); err != nil {
		return damaged("its Argon2id parameters (%v) are invalid", p)
	}
	if kdf.CheckSalt(sl.Salt) != nil {
		return damaged("its salt is %d bytes", len(sl.Salt))
	}
	return p, nil
}

func (m *Master) passphraseKEK(ctx context.Context, p kdf.Params, pass, salt []byte) (*mech.Key, error) {
	out, err := m.kdf.Derive(ctx, p, pass, salt, KeyLen)
	if err != nil {
		return nil, err
	}
	return mech.FromSecret(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM), out)
}

func slotAD(storeID []byte, gen uint64) []byte {
	ad := append([]byte(slotAAD), storeID...)
	return binary.BigEndian.AppendUint64(ad, gen)
}

// derive derives a key of type t from the master key by HKDF-SHA-256.
func derive(mk *mech.Key, storeID []byte, label string, t wire.KeyType) (*mech.Key, error) {
	return mk.Derive(nil, wire.HashAlg_HASH_ALG_SHA256, storeID, []byte(label), key.Lookup(t))
}

// clone copies a key's material into a new key.
func clone(k *mech.Key) (*mech.Key, error) {
	var c *mech.Key
	err := k.Canonical(func(b []byte) error {
		var err error
		c, err = mech.FromCanonical(k.Spec(), k.Class(), bytes.Clone(b))
		return err
	})
	return c, err
}

// checkValue tells a right master key from a wrong one (shares combine to
// some value whatever they are).
func checkValue(mk *mech.Key, storeID []byte, gen uint64) ([]byte, error) {
	ck, err := derive(mk, storeID, labelCheck, wire.KeyType_KEY_TYPE_HMAC_SHA256)
	if err != nil {
		return nil, err
	}
	defer ck.Destroy()
	return ck.MAC(binary.BigEndian.AppendUint64(bytes.Clone(storeID), gen), nil)
}

// sealKeyring seals the keyring (material, the fingerprint key, and while
// records of format 1 remain, legacy, their index key) under mk.
func sealKeyring(mk *mech.Key, storeID []byte, material, legacy *mech.Key) ([]byte, error) {
	kk, err := derive(mk, storeID, labelKeyring, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return nil, err
	}
	defer kk.Destroy()
	var out []byte
	err = material.Canonical(func(fb []byte) error {
		kr := &persist.Keyring{FingerprintKey: fb}
		seal := func() error {
			var err error
			secmem.Do(func() {
				var pt []byte
				if pt, err = kr.MarshalVT(); err != nil {
					return
				}
				out, err = kk.Encrypt(pt, []byte(labelKeyring), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
				clear(pt)
			})
			return err
		}
		if legacy == nil {
			return seal()
		}
		return legacy.Canonical(func(lb []byte) error {
			kr.IndexKey = lb
			return seal()
		})
	})
	return out, err
}

// openKeyring opens the keyring of a master record of the given format:
// it returns the fingerprint key and format 1's index key (the same key,
// in a record of format 1; nil in one of format 2 that has none).
func openKeyring(mk *mech.Key, storeID, sealed []byte, format uint32) (material, legacy *mech.Key, err error) {
	kk, err := derive(mk, storeID, labelKeyring, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return nil, nil, err
	}
	defer kk.Destroy()
	hm := key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256)
	secmem.Do(func() {
		var pt []byte
		if pt, err = kk.Decrypt(sealed, []byte(labelKeyring), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil); err != nil {
			return
		}
		defer clear(pt)
		kr := &persist.Keyring{}
		if err = kr.UnmarshalVT(pt); err != nil {
			return
		}
		fk := kr.FingerprintKey
		if format == persist.FormatLegacy {
			fk = kr.IndexKey // format 1 made fingerprints under its index key
		}
		if material, err = mech.FromCanonical(hm, key.Secret, bytes.Clone(fk)); err != nil {
			return
		}
		if len(kr.IndexKey) > 0 {
			legacy, err = mech.FromCanonical(hm, key.Secret, bytes.Clone(kr.IndexKey))
		}
	})
	if err != nil {
		if material != nil {
			material.Destroy()
		}
		return nil, nil, fmt.Errorf("the keyring does not open under this master key: %w", err)
	}
	return material, legacy, nil
}

func sealPrevious(mk, prev *mech.Key, storeID []byte, prevGen uint64) ([]byte, error) {
	pk, err := derive(mk, storeID, labelPrevious, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return nil, err
	}
	defer pk.Destroy()
	var out []byte
	err = prev.Canonical(func(b []byte) error {
		var err error
		out, err = pk.Encrypt(b, binary.BigEndian.AppendUint64([]byte(labelPrevious), prevGen), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
		return err
	})
	return out, err
}

func openPrevious(mk *mech.Key, storeID []byte, rot *persist.Rotation) (*mech.Key, error) {
	pk, err := derive(mk, storeID, labelPrevious, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return nil, err
	}
	defer pk.Destroy()
	b, err := pk.Decrypt(rot.PreviousSealed, binary.BigEndian.AppendUint64([]byte(labelPrevious), rot.PreviousGeneration), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
	if err != nil {
		return nil, errors.New("the previous master key does not open")
	}
	return mech.FromCanonical(key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256), key.Secret, b)
}

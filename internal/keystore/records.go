package keystore

import (
	"bytes"
	"crypto/hmac"
	"errors"
	"fmt"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// The records of persistent keys (docs/formats.md). Every write of a key
// record happens in one transaction with the store header: the epoch
// goes up by one, the record gets it as its rev, every version's blob is
// sealed anew with associated data naming the record's attributes and
// rev, the record gets a MAC under the index key, and the header's
// accumulator trades the old MAC for the new one.

// record returns o's record without blobs (versions get their numbers,
// times and budgets; Seal fills the blobs).
func record(o *Object) *persist.KeyRecord {
	a, m := o.Attrs(), o.Meta()
	r := &persist.KeyRecord{
		Id:                 bytes.Clone(o.ID[:]),
		Name:               o.Name,
		Owner:              o.Owner,
		Type:               uint32(o.Spec.Type),
		Class:              uint32(o.Class),
		Usage:              uint32(a.Usage),
		Exportable:         a.Exportable,
		Wrappable:          a.Wrappable,
		CreatedUnixNano:    o.Created.UnixNano(),
		Origin:             m.Origin,
		NeverExportable:    m.NeverExportable,
		Trusted:            m.Trusted,
		MinVersion:         m.MinVersion,
		BudgetPolicy:       m.Budget,
		RotateAfterSeconds: int64(m.RotateAfter / time.Second),
		NextVersion:        m.NextVersion,
		WrappedOut:         m.WrappedOut,
	}
	for _, e := range a.ACL {
		r.Acl = append(r.Acl, &persist.AclEntry{Group: e.Group, Id: e.ID, Usage: uint32(e.Usage)})
	}
	if o.KDF != nil {
		r.Kdf, _ = o.KDF.MarshalVT()
	}
	for _, v := range o.Versions() {
		r.Versions = append(r.Versions, &persist.KeyVersion{
			Version:             v.N,
			CreatedUnixNano:     v.Created.UnixNano(),
			EncryptionsReserved: v.reserved.Load(),
			EncryptionsLimit:    v.limit.Load(),
			BudgetEpoch:         v.epoch,
			Automatic:           v.auto,
		})
		if v.hasFP {
			r.Versions[len(r.Versions)-1].Fingerprint = bytes.Clone(v.fp[:])
		}
	}
	return r
}

// recordAttrs returns the attributes and provenance r gives, brought
// within today's rules (policy.Normalize: a key made under older rules is
// narrowed, never widened), and whether they had to be.
func recordAttrs(r *persist.KeyRecord) (*key.Attrs, policy.Provenance, bool) {
	a := &key.Attrs{Usage: key.Usage(r.Usage), Exportable: r.Exportable, Wrappable: r.Wrappable}
	for _, e := range r.Acl {
		a.ACL = append(a.ACL, key.ACLEntry{Group: e.Group, ID: e.Id, Usage: key.Usage(e.Usage)})
	}
	p := policy.Provenance{Origin: key.Origin(r.Origin), NeverExportable: r.NeverExportable, Trusted: r.Trusted, WrappedOut: r.WrappedOut}
	return policy.Normalize(a, p)
}

// sealVersions seals every version's canonical bytes (given by plain, in
// the order of r.Versions) under the current storage key, for r as it
// will be written.
func sealVersions(k *seal.Keys, r *persist.KeyRecord, plain func(i int, fn func([]byte) error) error) error {
	for i, v := range r.Versions {
		aad := persist.BlobAAD(nil, k.StoreID, r, v.Version, k.Generation)
		err := plain(i, func(b []byte) error {
			var err error
			v.Blob, err = k.SealBlob(aad, b)
			return err
		})
		if err != nil {
			return err
		}
		v.MkGeneration = k.Generation
	}
	return nil
}

// objectPlain gives the canonical bytes of o's versions.
func objectPlain(o *Object) func(i int, fn func([]byte) error) error {
	vs := o.Versions()
	return func(i int, fn func([]byte) error) error {
		return o.UseVersion(vs[i], func(m *mech.Key) error { return m.Canonical(fn) })
	}
}

// header reads and checks the store header.
func readHeader(tx store.Tx, k *seal.Keys) (*persist.StoreHeader, persist.Acc, error) {
	var acc persist.Acc
	v := tx.Get(persist.BucketMeta, persist.MetaHeader)
	if v == nil {
		return nil, acc, errors.New("the store has no header")
	}
	h := &persist.StoreHeader{}
	if err := h.UnmarshalVT(v); err != nil {
		return nil, acc, fmt.Errorf("store header: %w", persist.ErrCorrupt)
	}
	in, err := persist.HeaderMACInput(h)
	if err != nil {
		return nil, acc, err
	}
	mac, err := k.MAC(nil, in)
	if err != nil {
		return nil, acc, err
	}
	if !hmac.Equal(mac, h.Mac) || !bytes.Equal(h.StoreId, k.StoreID) {
		return nil, acc, errors.New("the store header fails its integrity check")
	}
	acc, err = persist.AccFrom(h.Acc)
	return h, acc, err
}

func writeHeader(tx store.Tx, k *seal.Keys, h *persist.StoreHeader, acc persist.Acc) error {
	h.Acc = bytes.Clone(acc[:])
	h.Mac = nil
	in, err := persist.HeaderMACInput(h)
	if err != nil {
		return err
	}
	if h.Mac, err = k.MAC(nil, in); err != nil {
		return err
	}
	b, err := h.MarshalVT()
	if err != nil {
		return err
	}
	return tx.Put(persist.BucketMeta, persist.MetaHeader, b)
}

// NewHeader returns the encoded header of an empty store for keys k.
func NewHeader(k *seal.Keys, now time.Time) ([]byte, error) {
	h := &persist.StoreHeader{Format: persist.Format, StoreId: k.StoreID, CreatedUnixNano: now.UnixNano()}
	in, err := persist.HeaderMACInput(h)
	if err != nil {
		return nil, err
	}
	if h.Mac, err = k.MAC(nil, in); err != nil {
		return nil, err
	}
	return h.MarshalVT()
}

// putRecord writes r (whose blobs seal gives) in tx, updating the header.
// old is whether a record with its id must exist (an update) or must not
// (a create).
func putRecord(tx store.Tx, k *seal.Keys, r *persist.KeyRecord, update bool, plain func(int, func([]byte) error) error) error {
	h, acc, err := readHeader(tx, k)
	if err != nil {
		return err
	}
	cur := tx.Get(persist.BucketKeys, r.Id)
	switch {
	case update && cur == nil:
		return errNoKey
	case !update && cur != nil:
		return wire.Errorf(wire.Status_STATUS_INTERNAL, "key id collision")
	}
	if cur != nil {
		oldMAC, _, err := persist.SplitValue(cur)
		if err != nil {
			return err
		}
		acc.Sub(oldMAC)
	} else {
		h.Count++
	}
	h.Epoch++
	r.Rev = h.Epoch
	if err := sealVersions(k, r, plain); err != nil {
		return err
	}
	rb, err := r.MarshalVT()
	if err != nil {
		return err
	}
	mac, err := k.MAC(nil, rb)
	if err != nil {
		return err
	}
	acc.Add(mac)
	if err := tx.Put(persist.BucketKeys, r.Id, persist.JoinValue(mac, rb)); err != nil {
		return err
	}
	if !update && r.Name != "" {
		nk := persist.NameKey(r.Owner, r.Name)
		if tx.Get(persist.BucketNames, nk) != nil {
			return wire.Errorf(wire.Status_STATUS_ALREADY_EXISTS, "a key named %q already exists", r.Name)
		}
		if err := tx.Put(persist.BucketNames, nk, r.Id); err != nil {
			return err
		}
	}
	return writeHeader(tx, k, h, acc)
}

// create writes o's first record.
func (s *Store) create(k *seal.Keys, o *Object) error {
	err := s.db.Update(func(tx store.Tx) error {
		return putRecord(tx, k, record(o), false, objectPlain(o))
	})
	return storeErr(err)
}

// update writes o's record as change makes it from o's current state;
// after it is durable, apply installs the change in memory. o.wmu must be
// held.
func (s *Store) update(o *Object, change func(r *persist.KeyRecord) error, plain func(int, func([]byte) error) error) error {
	k, err := s.keys()
	if err != nil {
		return err
	}
	if o.removed.Load() {
		return errDestroyed
	}
	r := record(o)
	if err := change(r); err != nil {
		return err
	}
	if plain == nil {
		plain = objectPlain(o)
	}
	err = s.db.Update(func(tx store.Tx) error {
		c := r.CloneVT() // Update may run fn more than once
		return putRecord(tx, k, c, true, plain)
	})
	return storeErr(err)
}

// delete removes o's record. o.wmu must be held.
func (s *Store) delete(k *seal.Keys, o *Object) error {
	err := s.db.Update(func(tx store.Tx) error {
		h, acc, err := readHeader(tx, k)
		if err != nil {
			return err
		}
		cur := tx.Get(persist.BucketKeys, o.ID[:])
		if cur == nil {
			return nil // already gone
		}
		mac, _, err := persist.SplitValue(cur)
		if err != nil {
			return err
		}
		acc.Sub(mac)
		h.Count--
		h.Epoch++
		if err := tx.Delete(persist.BucketKeys, o.ID[:]); err != nil {
			return err
		}
		if o.Name != "" {
			nk := persist.NameKey(o.Owner, o.Name)
			if bytes.Equal(tx.Get(persist.BucketNames, nk), o.ID[:]) {
				if err := tx.Delete(persist.BucketNames, nk); err != nil {
					return err
				}
			}
		}
		return writeHeader(tx, k, h, acc)
	})
	return storeErr(err)
}

// readRecord reads and checks key id's record.
func readRecord(tx store.Tx, k *seal.Keys, id []byte) (*persist.KeyRecord, error) {
	v := tx.Get(persist.BucketKeys, id)
	if v == nil {
		return nil, errNoKey
	}
	return checkRecord(k, id, v)
}

func checkRecord(k *seal.Keys, id, v []byte) (*persist.KeyRecord, error) {
	mac, rb, err := persist.SplitValue(v)
	if err != nil {
		return nil, errRecord
	}
	want, err := k.MAC(nil, rb)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(mac, want) {
		return nil, errRecord
	}
	r := &persist.KeyRecord{}
	if err := r.UnmarshalVT(rb); err != nil || !bytes.Equal(r.Id, id) || len(r.Versions) == 0 {
		return nil, errRecord
	}
	return r, nil
}

var errRecord = errors.New("key record fails its integrity check")

// load reads key id's record and opens its blobs into a new object.
// check, if not nil, decides from the checked record, before any blob is
// opened: its error is load's.
func (s *Store) load(k *seal.Keys, id key.ID, check recordCheck) (*Object, error) {
	var r *persist.KeyRecord
	err := s.db.View(func(tx store.Tx) error {
		var err error
		r, err = readRecord(tx, k, id[:])
		if r != nil {
			r = r.CloneVT() // the transaction's bytes go away
		}
		return err
	})
	if err == nil && check != nil {
		pk, perr := recordPolicy(r)
		if perr == nil {
			if err := check(r.Owner, r.Name, pk); err != nil {
				return nil, err
			}
		}
		err = perr
	}
	if err == nil {
		var o *Object
		s.loads.Add(1)
		if o, err = s.objectFrom(k, r); err == nil {
			return o, nil
		}
	}
	if errors.Is(err, errNoKey) {
		return nil, errNoKey
	}
	var we *wire.Error
	if errors.As(err, &we) && we.Status != wire.Status_STATUS_INTERNAL {
		return nil, err // e.g. key memory exhausted
	}
	s.log.Error("key record refused: it fails its integrity check (the store file was changed)", "key", id.String(), "err", err)
	s.mu.Lock()
	s.bad[id] = struct{}{}
	s.mu.Unlock()
	return nil, errQuarantined
}

// recordPolicy returns what policy decisions need of a checked record's
// key, as its object would give it (Object.Policy), without opening its
// blobs.
func recordPolicy(r *persist.KeyRecord) (policy.Key, error) {
	spec := key.Lookup(key.Type(r.Type))
	class := key.Class(r.Class)
	if spec == nil || !spec.ClassOK(class) {
		return policy.Key{}, errRecord
	}
	a, p, _ := recordAttrs(r)
	return policy.Key{Owner: r.Owner, Spec: spec, Class: class, Attrs: a, Prov: p}, nil
}

// objectFrom makes an object from a checked record, opening every blob.
func (s *Store) objectFrom(k *seal.Keys, r *persist.KeyRecord) (o *Object, err error) {
	spec := key.Lookup(key.Type(r.Type))
	class := key.Class(r.Class)
	if spec == nil || !spec.ClassOK(class) {
		return nil, errRecord
	}
	var id key.ID
	copy(id[:], r.Id)
	o = &Object{ID: id, Name: r.Name, Owner: r.Owner, Spec: spec, Class: class, Created: time.Unix(0, r.CreatedUnixNano)}
	attrs, prov, narrowed := recordAttrs(r)
	if narrowed {
		s.log.Warn("key made under older rules: narrowed to today's (a key never both wraps keys and protects data; a wrapping key is never wrappable)",
			"key", id.String(), "usage", attrs.Usage.String(), "wrappable", attrs.Wrappable)
	}
	o.attrs.Store(attrs)
	o.meta.Store(&Meta{
		Origin: r.Origin, NeverExportable: r.NeverExportable, Trusted: r.Trusted, WrappedOut: prov.WrappedOut,
		MinVersion: r.MinVersion, NextVersion: r.NextVersion, Budget: r.BudgetPolicy,
		RotateAfter: time.Duration(r.RotateAfterSeconds) * time.Second,
	})
	if len(r.Kdf) > 0 {
		o.KDF = &wire.PassphraseKdf{}
		if err := o.KDF.UnmarshalVT(r.Kdf); err != nil {
			return nil, errRecord
		}
	}
	vs := make([]*Version, 0, len(r.Versions))
	defer func() {
		if err != nil {
			for _, v := range vs {
				v.Mat.Destroy()
			}
		}
	}()
	for _, rv := range r.Versions {
		aad := persist.BlobAAD(nil, k.StoreID, r, rv.Version, rv.MkGeneration)
		var m *mech.Key
		var err error
		secmem.Do(func() {
			var b []byte
			if b, err = k.OpenBlob(rv.MkGeneration, aad, rv.Blob); err != nil {
				return
			}
			m, err = mech.FromCanonical(spec, class, b)
		})
		if err != nil {
			var we *wire.Error
			if errors.As(err, &we) && we.Status == wire.Status_STATUS_RESOURCE_EXHAUSTED {
				return nil, err
			}
			return nil, fmt.Errorf("version %d: %w", rv.Version, errRecord)
		}
		v := &Version{N: rv.Version, Created: time.Unix(0, rv.CreatedUnixNano), Mat: m, epoch: rv.BudgetEpoch, auto: rv.Automatic}
		s.raiseBudgetEpoch(rv.BudgetEpoch)
		if len(rv.Fingerprint) == seal.FingerprintSize {
			copy(v.fp[:], rv.Fingerprint)
			v.hasFP = true
		} else if v.fp, v.hasFP, err = fingerprintOf(k, m); err != nil {
			m.Destroy()
			return nil, err
		}
		// What an earlier process may have used of its reservation is
		// unknown: count all of it as used.
		v.used.Store(rv.EncryptionsReserved)
		v.reserved.Store(rv.EncryptionsReserved)
		v.limit.Store(rv.EncryptionsLimit)
		vs = append(vs, v)
	}
	o.vers.Store(&vs)
	return o, nil
}

// Verify checks the whole store against keys k (at unseal): the header's
// MAC, every record's MAC, and that the records add up to the header's
// count and accumulator. It also counts each owner's keys. With accept,
// a set that does not add up is accepted and the header rewritten.
func (s *Store) Verify(k *seal.Keys, accept bool) error {
	if p, ok := s.db.(prefetcher); ok {
		p.Prefetch()
	}
	var scan verifyScan
	var hdr *persist.StoreHeader
	var hacc persist.Acc
	err := s.db.View(func(tx store.Tx) error {
		var err error
		if hdr, hacc, err = readHeader(tx, k); err != nil {
			return err
		}
		scan, err = scanRecords(tx, k)
		return err
	})
	if err != nil {
		return &IntegrityError{Detail: err.Error()}
	}
	owned, bad, count, acc := scan.owned, scan.bad, scan.count, scan.acc
	setChanged := count != hdr.Count || acc != hacc
	if len(bad) > 0 || (setChanged && !accept) {
		ie := &IntegrityError{BadRecords: len(bad), SetChanged: setChanged}
		switch {
		case len(bad) > 0 && setChanged:
			ie.Detail = fmt.Sprintf("%s changed, and the set of records differs from what this daemon last wrote", recordsWere(len(bad)))
		case len(bad) > 0:
			ie.Detail = fmt.Sprintf("%s changed outside the daemon", recordsWere(len(bad)))
		default:
			ie.Detail = fmt.Sprintf("the set of key records differs from what this daemon last wrote (%d records, %d expected): a record was deleted, added, or restored from an older copy", count, hdr.Count)
		}
		s.log.Error("unseal refused", "reason", ie.Detail)
		if len(bad) > 0 && !accept {
			return ie
		}
		if setChanged && !accept {
			return ie
		}
	}
	if len(bad) > 0 && accept {
		// Records that fail their check are set aside, as evidence, out of
		// the key set: the store is consistent again, and the next unseal
		// (an unattended one too) needs no acceptance.
		n, err := s.setAside(k, bad)
		if err != nil {
			return storeErr(err)
		}
		s.log.Warn("key records that failed their check were set aside, as asked; their keys are gone", "records", len(bad))
		count, bad, setChanged = n, map[key.ID]struct{}{}, false
	}
	if setChanged && accept {
		s.log.Warn("the store's records do not add up to its header; accepting them as they are, as asked", "records", count, "expected", hdr.Count)
		err := s.db.Update(func(tx store.Tx) error {
			h, _, err := readHeader(tx, k)
			if err != nil {
				return err
			}
			h.Count = count
			h.Epoch++
			return writeHeader(tx, k, h, acc)
		})
		if err != nil {
			return storeErr(err)
		}
	}
	mats := newMaterials(len(scan.mats))
	for _, e := range scan.mats {
		if _, isBad := bad[e.h.id]; !isBad {
			mats.add(e.fp, e.h)
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for o := range s.eph {
		owned[o.Owner]++
		mats.addObject(o)
	}
	s.mats = mats
	s.owned = owned
	s.count = int(count) - len(bad)
	s.bad = bad
	s.verified = true
	return nil
}

// Empty reports whether the store holds no key records.
func (s *Store) Empty() (bool, error) {
	empty := true
	err := s.db.View(func(tx store.Tx) error {
		return tx.ForEach(persist.BucketKeys, nil, func(k, v []byte) error {
			empty = false
			return store.ErrStop
		})
	})
	return empty, err
}

// List returns, in id order, up to limit descriptions of persistent keys
// with ids greater than after for which visible returns true. Keys need
// not be loaded: the descriptions come from their (checked) records.
func (s *Store) List(after key.ID, limit int, visible func(info *wire.KeyInfo) bool) ([]*wire.KeyInfo, error) {
	k, err := s.keys()
	if err != nil {
		return nil, err
	}
	var out []*wire.KeyInfo
	err = s.db.View(func(tx store.Tx) error {
		return tx.ForEach(persist.BucketKeys, after[:], func(id, v []byte) error {
			r, err := checkRecord(k, id, v)
			if err != nil {
				return nil // quarantined; reported at unseal and on use
			}
			info := infoFromRecord(r)
			if visible(info) {
				out = append(out, info)
				if limit > 0 && len(out) >= limit {
					return store.ErrStop
				}
			}
			return nil
		})
	})
	return out, storeErr(err)
}

// infoFromRecord describes a key from its record (the caller fills
// CallerUsage and, for asymmetric keys, PublicKey if it needs them).
func infoFromRecord(r *persist.KeyRecord) *wire.KeyInfo {
	a, p, _ := recordAttrs(r)
	info := &wire.KeyInfo{
		Id: bytes.Clone(r.Id), Name: r.Name, OwnerUid: r.Owner,
		Type: wire.KeyType(r.Type), Class: wire.KeyClass(r.Class), Usage: uint32(a.Usage),
		Exportable: a.Exportable, Wrappable: a.Wrappable, CreatedUnixNano: r.CreatedUnixNano,
		Version: r.Versions[len(r.Versions)-1].Version,
		Lifecycle: &wire.KeyLifecycle{
			Origin: wire.KeyOrigin(r.Origin), NeverExportable: r.NeverExportable, Trusted: r.Trusted,
			WrappedOut: p.WrappedOut, MinVersion: r.MinVersion, RotateAfterSeconds: r.RotateAfterSeconds,
			RefuseWhenSpent: r.BudgetPolicy == persist.BudgetPolicy_BUDGET_POLICY_REFUSE,
		},
	}
	for _, e := range a.ACL {
		info.Acl = append(info.Acl, ACLToWire(e))
	}
	for _, v := range r.Versions {
		info.Lifecycle.Versions = append(info.Lifecycle.Versions, &wire.KeyVersionInfo{
			Version: v.Version, CreatedUnixNano: v.CreatedUnixNano,
			Encryptions: v.EncryptionsReserved, EncryptionLimit: v.EncryptionsLimit,
		})
	}
	if len(r.Kdf) > 0 {
		info.Kdf = &wire.PassphraseKdf{}
		info.Kdf.UnmarshalVT(r.Kdf)
	}
	return info
}

// recordsWere is "1 key record was" or "N key records were".
func recordsWere(n int) string {
	if n == 1 {
		return "1 key record was"
	}
	return fmt.Sprintf("%d key records were", n)
}

// setAside moves the records of bad out of the keys bucket into the
// quarantine bucket, drops the names that point to them, and rewrites the
// header to match what is left. It returns the number of records left.
func (s *Store) setAside(k *seal.Keys, bad map[key.ID]struct{}) (uint64, error) {
	var count uint64
	err := s.db.Update(func(tx store.Tx) error {
		for id := range bad {
			v := tx.Get(persist.BucketKeys, id[:])
			if v == nil {
				continue
			}
			if err := tx.Put(persist.BucketQuarantine, id[:], bytes.Clone(v)); err != nil {
				return err
			}
			if err := tx.Delete(persist.BucketKeys, id[:]); err != nil {
				return err
			}
		}
		var names [][]byte
		err := tx.ForEach(persist.BucketNames, nil, func(nk, v []byte) error {
			var id key.ID
			if len(v) == len(id) {
				copy(id[:], v)
				if _, found := bad[id]; found {
					names = append(names, bytes.Clone(nk))
				}
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, nk := range names {
			if err := tx.Delete(persist.BucketNames, nk); err != nil {
				return err
			}
		}
		var acc persist.Acc
		count = 0
		err = tx.ForEach(persist.BucketKeys, nil, func(_, v []byte) error {
			count++
			if mac, _, err := persist.SplitValue(v); err == nil {
				acc.Add(mac)
			}
			return nil
		})
		if err != nil {
			return err
		}
		h, _, err := readHeader(tx, k)
		if err != nil {
			return err
		}
		h.Count = count
		h.Epoch++
		return writeHeader(tx, k, h, acc)
	})
	return count, err
}

// countSetAside counts the records in the quarantine bucket.
func countSetAside(tx store.Tx) int {
	n := 0
	tx.ForEach(persist.BucketQuarantine, nil, func(_, _ []byte) error { n++; return nil })
	return n
}

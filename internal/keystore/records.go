package keystore

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"math"
	"slices"
	"sync"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/seal"
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
		DeletionAllowed:    m.DeletionAllowed,
		AllowedPrograms:    programsToRecord(m.Programs),
		Ssh:                m.SSH,

		BaseAlwaysSensitive:  m.BaseAlwaysSensitive,
		BaseNeverExtractable: m.BaseNeverExtractable,
		EverWrappable:        m.EverWrappable,
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
			EncryptionsReserved: max(v.reserved.Load(), v.elsewhere.Load()),
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
//
// A record of format 1 was written before keys that wrap were kept from
// being wrapped and before wraps were recorded: a key-transport key in
// one may have been wrappable, and wrapped out, at any time before, so it
// counts as wrapped out (and is no longer trusted to wrap).
func recordAttrs(r *persist.KeyRecord) (*key.Attrs, policy.Provenance, bool) {
	a := &key.Attrs{Usage: key.Usage(r.Usage), Exportable: r.Exportable, Wrappable: r.Wrappable}
	for _, e := range r.Acl {
		a.ACL = append(a.ACL, key.ACLEntry{Group: e.Group, ID: e.Id, Usage: key.Usage(e.Usage)})
	}
	p := policy.Provenance{Origin: key.Origin(r.Origin), NeverExportable: r.NeverExportable, Trusted: r.Trusted, WrappedOut: r.WrappedOut}
	legacyKEK := r.Format < persist.Format && a.Usage&key.Transport != 0 && !p.WrappedOut
	if legacyKEK {
		p.WrappedOut = true
	}
	a, p, narrowed := policy.Normalize(a, p)
	return a, p, narrowed || legacyKEK
}

// toTodaysRules writes into r what recordAttrs makes of it, for a record
// of an older format re-written in today's.
func toTodaysRules(r *persist.KeyRecord) {
	a, p, changed := recordAttrs(r)
	if !changed {
		return
	}
	r.Usage, r.Exportable, r.Wrappable, r.WrappedOut = uint32(a.Usage), a.Exportable, a.Wrappable, p.WrappedOut
	r.Acl = r.Acl[:0]
	for _, e := range a.ACL {
		r.Acl = append(r.Acl, &persist.AclEntry{Group: e.Group, Id: e.ID, Usage: uint32(e.Usage)})
	}
}

// objectPlain gives the canonical bytes of o's versions.
func objectPlain(o *Object) func(i int, fn func([]byte) error) error {
	vs := o.Versions()
	return func(i int, fn func([]byte) error) error {
		return o.UseVersion(vs[i], func(m *mech.Key) error { return m.Canonical(fn) })
	}
}

// putRecord writes r (whose blobs plain gives, and whose fingerprints are
// inner values) in tx, in format 2 under the current generation, updating
// the header. update is whether a record with its id must exist (an
// update) or must not (a create). then, if not nil, runs under s.mu once
// tx commits, as the record is noted (noteRecord).
func (s *Store) putRecord(tx store.Tx, k *seal.Keys, r *persist.KeyRecord, update bool, plain func(int, func([]byte) error) error, then func()) error {
	st := newShardSet(s.shardCount())
	if err := s.putRecordIn(tx, k, st, r, update, plain, then); err != nil {
		return err
	}
	return s.writeShards(tx, k, st)
}

// putRecordIn is putRecord with the headers (st) read and written by the
// caller: a batch of writes reads and writes each shard's once. Only the
// header of r's shard is read and changed.
func (s *Store) putRecordIn(tx store.Tx, k *seal.Keys, st *shardSet, r *persist.KeyRecord, update bool, plain func(int, func([]byte) error) error, then func()) error {
	h, acc, err := st.of(tx, k, r.Id)
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
		// The summand of the record there, whatever it is: a record
		// changed behind the daemon's back leaves the sum wrong, and the
		// next unseal says so.
		oldMAC, _, err := persist.SplitValue(cur)
		if err != nil {
			return err
		}
		old, err := summand(k, oldMAC)
		if err != nil {
			return err
		}
		acc.Sub(old)
	} else {
		h.Count++
	}
	h.Epoch++
	r.Rev = h.Epoch
	rb, mac, err := sealRecord(k, r, plain)
	if err != nil {
		return err
	}
	add, err := summand(k, mac)
	if err != nil {
		return err
	}
	acc.Add(add)
	if err := tx.Put(persist.BucketKeys, r.Id, persist.JoinValue(mac, rb)); err != nil {
		return err
	}
	if hookCommitting != nil {
		tx.OnCommit(func() { hookCommitting(s) })
	}
	s.noteRecord(tx, r.Id, mac, then)
	if !update && r.Name != "" {
		nk := persist.NameKey(r.Owner, r.Name)
		if tx.Get(persist.BucketNames, nk) != nil {
			return wire.Errorf(wire.Status_STATUS_ALREADY_EXISTS, "a key named %q already exists", r.Name)
		}
		if err := tx.Put(persist.BucketNames, nk, r.Id); err != nil {
			return err
		}
	}
	return nil
}

// create writes o's first record; install runs under s.mu as the record
// is noted (noteRecord), if it commits.
func (s *Store) create(k *seal.Keys, o *Object, install func()) error {
	err := s.write(k, func(k *seal.Keys, tx store.Tx) error {
		return s.putRecord(tx, k, record(o), false, objectPlain(o), install)
	})
	return storeErr(err)
}

// write runs fn in a transaction with keys k and, if it fails and the
// keys changed meanwhile (a rotation committed: the header is the new
// generation's, and k is wiped), once more with the current keys.
func (s *Store) write(k *seal.Keys, fn func(k *seal.Keys, tx store.Tx) error) error {
	err := s.db.Update(func(tx store.Tx) error { return fn(k, tx) })
	if err != nil {
		if l, lerr := s.lease(); lerr == nil {
			if cur := l.Keys(); cur != k {
				err = s.db.Update(func(tx store.Tx) error { return fn(cur, tx) })
			}
			l.Release()
		}
	}
	return err
}

// update writes o's record as change makes it from o's current state;
// after it is durable, the caller installs the change in memory, or then
// does, if not nil: under s.mu, as the record is noted (noteRecord), so
// that in a shared store the follower applies another daemon's later
// change (a reservation of the version a rotation made) to o as changed.
// o.wmu must be held.
func (s *Store) update(o *Object, change func(r *persist.KeyRecord) error, plain func(int, func([]byte) error) error, then func()) error {
	l, err := s.lease()
	if err != nil {
		return err
	}
	defer l.Release()
	k := l.Keys()
	if o.removed.Load() {
		if err := o.Gone(); err != nil {
			return err
		}
		return errDestroyed
	}
	if o.epoch != l.Epoch() {
		return ErrSealedAway
	}
	r := record(o)
	known := reservations(r) // what this daemon knows of the record's
	if err := change(r); err != nil {
		return err
	}
	if plain == nil {
		plain = objectPlain(o)
	}
	err = s.write(k, func(k *seal.Keys, tx store.Tx) error {
		if err := s.checkFresh(tx, o, known); err != nil {
			return err
		}
		c := r.CloneVT() // Update may run fn more than once
		return s.putRecord(tx, k, c, true, plain, then)
	})
	return storeErr(err)
}

// delete removes o's record. o.wmu must be held. The key counts are
// decremented when, and only if, the transaction that deleted the record
// commits (in the epoch o was loaded in).
func (s *Store) delete(k *seal.Keys, o *Object) error {
	epoch, owner := o.epoch, o.Owner
	err := s.write(k, func(k *seal.Keys, tx store.Tx) error {
		if err := s.checkFresh(tx, o, nil); err != nil {
			return err
		}
		st := newShardSet(s.shardCount())
		h, acc, err := st.of(tx, k, o.ID[:])
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
		old, err := summand(k, mac)
		if err != nil {
			return err
		}
		acc.Sub(old)
		h.Count--
		h.Epoch++
		if err := tx.Delete(persist.BucketKeys, o.ID[:]); err != nil {
			return err
		}
		s.noteRecord(tx, o.ID[:], nil, nil)
		tx.OnCommit(func() {
			s.mu.Lock()
			if s.serving == epoch {
				s.count--
				s.unown(owner)
			}
			s.mu.Unlock()
		})
		if o.Name != "" {
			nk := persist.NameKey(o.Owner, o.Name)
			if bytes.Equal(tx.Get(persist.BucketNames, nk), o.ID[:]) {
				if err := tx.Delete(persist.BucketNames, nk); err != nil {
					return err
				}
			}
		}
		return s.writeShards(tx, k, st)
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

// checkRecord decodes and checks a keys-bucket value for key id: its MAC
// under the rules it was made by (kindOf), that it names id and has
// versions. The record is returned as stored (fingerprints encrypted).
func checkRecord(k *seal.Keys, id, v []byte) (*persist.KeyRecord, error) {
	mac, rb, err := persist.SplitValue(v)
	if err != nil {
		return nil, errRecord
	}
	r := &persist.KeyRecord{}
	if err := r.UnmarshalVT(rb); err != nil || !bytes.Equal(r.Id, id) || len(r.Versions) == 0 {
		return nil, errRecord
	}
	c, err := kindOf(k, r)
	if err != nil {
		return nil, err
	}
	want, err := recordMAC(k, c, nil, rb)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(mac, want) {
		return nil, errRecord
	}
	return r, nil
}

var errRecord = errors.New("key record fails its integrity check")

// errRestoreInterrupted: the store is half restored (restoreInChunks).
var errRestoreInterrupted = errors.New("a restore from a backup into this store was interrupted: restore the backup again")

// decoyID names no key (ids are random; this one is reserved).
var decoyID = make([]byte, persist.IDSize)

// decoy does what refusing a key from its record costs, for a key that
// does not exist: a lookup in the keys bucket, and the decoding, MAC and
// policy check of a record of an ordinary size (which fails). So opening
// another user's key, which is refused from its record, takes as long as
// opening a name or id that does not exist: which keys exist is not told
// by the time the answer takes.
func (s *Store) decoy(k *seal.Keys) {
	v := decoyValue()
	s.db.View(func(tx store.Tx) error {
		tx.Get(persist.BucketKeys, decoyID)
		return nil
	})
	if r, err := checkRecord(k, decoyID, v); err == nil {
		recordPolicy(r)
	} else if _, rb, err := persist.SplitValue(v); err == nil {
		r := &persist.KeyRecord{}
		if r.UnmarshalVT(rb) == nil {
			recordPolicy(r)
		}
	}
}

// decoyValue is a keys-bucket value of an ordinary record whose MAC is
// wrong.
var decoyValue = sync.OnceValue(func() []byte {
	r := &persist.KeyRecord{
		Id: decoyID, Name: "decoy", Owner: 1 << 31, Type: uint32(wire.KeyType_KEY_TYPE_AES256_GCM),
		Class: uint32(key.Secret), Usage: uint32(key.Encrypt | key.Decrypt), Format: persist.Format,
		Versions: []*persist.KeyVersion{{Version: 1, MkGeneration: 1, Blob: make([]byte, 12+32+16), Fingerprint: make([]byte, 16)}},
		Acl:      []*persist.AclEntry{{Id: 1 << 31, Usage: uint32(key.Encrypt)}},
	}
	rb, _ := r.MarshalVT()
	return persist.JoinValue(make([]byte, persist.MACSize), rb)
})

// load reads key id's record and opens its blobs into a new object,
// returned with the MAC tag of the record it was made from. check, if not
// nil, decides from the checked record, before any blob is opened: its
// error is load's.
func (s *Store) load(k *seal.Keys, id key.ID, check recordCheck) (*Object, uint64, error) {
	r, tag, err := s.readCurrent(k, id)
	if err == nil && check != nil {
		pk, perr := recordPolicy(r)
		if perr == nil {
			if err := check(r.Owner, r.Name, pk); err != nil {
				return nil, 0, err
			}
		}
		err = perr
	}
	if err == nil {
		var o *Object
		s.loads.Add(1)
		if o, err = s.objectFrom(k, r); err == nil {
			return o, tag, nil
		}
	}
	if errors.Is(err, errNoKey) {
		if check != nil {
			s.decoy(k) // as long as a refusal from a record takes
		}
		return nil, 0, errNoKey
	}
	var we *wire.Error
	if errors.As(err, &we) && we.Status != wire.Status_STATUS_INTERNAL {
		return nil, 0, err // e.g. key memory exhausted
	}
	s.log.Error("key record refused: it fails its integrity check (the store file was changed)", "key", id.String(), "err", err)
	s.mu.Lock()
	s.bad[id] = struct{}{}
	s.mu.Unlock()
	return nil, 0, errQuarantined
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
		RotateAfter: time.Duration(r.RotateAfterSeconds) * time.Second, DeletionAllowed: r.DeletionAllowed,
		Programs: programsFromRecord(r.AllowedPrograms), SSH: r.Ssh,
		BaseAlwaysSensitive: r.BaseAlwaysSensitive, BaseNeverExtractable: r.BaseNeverExtractable,
		EverWrappable: r.EverWrappable || r.Wrappable,
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
	// The blobs first: their associated data covers the record as stored.
	err = openBlobs(k, r, func(i int, b []byte) error {
		rv := r.Versions[i]
		m, err := mech.FromCanonical(spec, class, b)
		if err != nil {
			return err
		}
		v := &Version{N: rv.Version, Created: time.Unix(0, rv.CreatedUnixNano), Mat: m, epoch: rv.BudgetEpoch, auto: rv.Automatic}
		s.raiseBudgetEpoch(rv.BudgetEpoch)
		// What an earlier process may have used of its reservation is
		// unknown: count all of it as used.
		v.used.Store(rv.EncryptionsReserved)
		v.reserved.Store(rv.EncryptionsReserved)
		v.limit.Store(rv.EncryptionsLimit)
		vs = append(vs, v)
		return nil
	})
	if err != nil {
		var we *wire.Error
		if errors.As(err, &we) && we.Status == wire.Status_STATUS_RESOURCE_EXHAUSTED {
			return nil, err
		}
		return nil, fmt.Errorf("%v: %w", err, errRecord)
	}
	if err := openFingerprints(k, r); err != nil {
		return nil, err
	}
	for i, rv := range r.Versions {
		v := vs[i]
		if len(rv.Fingerprint) == seal.FingerprintSize {
			copy(v.fp[:], rv.Fingerprint)
			v.hasFP = true
		} else if v.fp, v.hasFP, err = fingerprintOf(k, v.Mat); err != nil {
			return nil, err
		}
	}
	o.vers.Store(&vs)
	return o, nil
}

// Verify checks the whole store against keys k (at unseal): every shard
// header's MAC, every record's MAC, and that the records of each shard
// add up to its header's count and accumulator. It also counts each
// owner's keys. With accept, a set that does not add up is accepted and
// the headers rewritten. A shared store of one header is split into
// storeShards shards (splitShards), and checked again.
func (s *Store) Verify(k *seal.Keys, accept bool) error {
	return s.verify(k, accept, true)
}

func (s *Store) verify(k *seal.Keys, accept, split bool) error {
	if p, ok := s.db.(prefetcher); ok {
		p.Prefetch()
	}
	var scan verifyScan
	var st *shardSet
	var rev int64 // the revision of a shared store checked
	var raw [][]byte
	var floor uint64 // persist.MetaRestoreFloor: a restore's, not yet raised above
	err := s.db.View(func(tx store.Tx) error {
		if tx.Get(persist.BucketMeta, persist.MetaRestoring) != nil {
			return errRestoreInterrupted
		}
		var err error
		if st, err = readShards(tx, k); err != nil {
			return err
		}
		raw = make([][]byte, st.n)
		for i := range raw {
			raw[i] = bytes.Clone(tx.Get(persist.BucketMeta, persist.ShardHeaderKey(uint32(i))))
		}
		if st.n == 1 {
			// A header of another shard left in a store of one: not
			// the store's (a shard count lowered).
			var stray bool
			tx.ForEach(persist.BucketMeta, persist.MetaHeader, func(k, _ []byte) error {
				if persist.IsHeaderKey(k) && !bytes.Equal(k, persist.MetaHeader) {
					stray = true
					return store.ErrStop
				}
				return nil
			})
			if stray {
				return fmt.Errorf("%w: headers of shards in a store of one header", errHeader)
			}
		}
		floor = readRestoreFloor(tx)
		if r, ok := tx.(store.Revisioned); ok {
			rev = r.Revision()
		}
		scan, err = scanRecords(tx, k, st.h[0].Count)
		return err
	})
	if err != nil {
		return &IntegrityError{Detail: err.Error()}
	}
	hdr := st.h[0]
	epochs := st.epochs()
	if hw, err := s.readHighWater(hdr.StoreId); err != nil {
		return &IntegrityError{Detail: fmt.Sprintf("cannot read the high-water mark: %v", err)}
	} else if hw.restored != nil && slices.Max(epochs) <= hw.epoch {
		// This daemon restored a backup: the headers it wrote are
		// accepted (and raised above the floor below), no other.
		if sum := sha256.Sum256(joinHeaders(raw)); !bytes.Equal(sum[:], hw.restored) {
			ie := &IntegrityError{SetChanged: true, Detail: fmt.Sprintf(
				"the store is not the one this daemon restored from a backup, nor newer (header epoch %d, at most %d before the restore): rolled back to a state of before the restore",
				slices.Max(epochs), hw.epoch)}
			s.log.Error("unseal refused", "reason", ie.Detail)
			return ie
		}
		floor = max(floor, hw.epoch)
	} else if hw.restored != nil && slices.Min(epochs) <= hw.epoch {
		// Raised above the floor, all shards at once: a shard at or
		// below it is one of before the restore, put back.
		ie := &IntegrityError{SetChanged: true, Detail: fmt.Sprintf(
			"a shard of the store is older than the restore this daemon made (header epoch %d, at most %d before the restore): rolled back to a state of before the restore",
			slices.Min(epochs), hw.epoch)}
		s.log.Error("unseal refused", "reason", ie.Detail)
		return ie
	} else if why := hw.olderThan(epochs); hw.restored == nil && why != "" {
		ie := &IntegrityError{SetChanged: true, Detail: fmt.Sprintf(
			"the store is older than one this daemon verified before (%s): rolled back; if a backup was restored on purpose on another daemon, remove %s and unseal again",
			why, s.hwFile)}
		s.log.Error("unseal refused", "reason", ie.Detail)
		return ie
	}
	owned, bad := scan.owned, scan.bad
	counts, accs := scan.fold(st.n)
	if k.LegacyHeader() {
		accs[0] = scan.legacyAcc
	}
	count := sumOf(counts)
	setChanged := false
	for i, h := range st.h {
		setChanged = setChanged || counts[i] != h.Count || accs[i] != st.acc[i]
	}
	if len(bad) > 0 || (setChanged && !accept) {
		ie := &IntegrityError{BadRecords: len(bad), SetChanged: setChanged}
		var expect uint64
		for _, h := range st.h {
			expect += h.Count
		}
		switch {
		case len(bad) > 0 && setChanged:
			ie.Detail = fmt.Sprintf("%s changed, and the set of records differs from what this daemon last wrote", recordsWere(len(bad)))
		case len(bad) > 0:
			ie.Detail = fmt.Sprintf("%s changed outside the daemon", recordsWere(len(bad)))
		default:
			ie.Detail = fmt.Sprintf("the set of key records differs from what this daemon last wrote (%d records, %d expected): a record was deleted, added, moved, or restored from an older copy", count, expect)
		}
		s.log.Error("unseal refused", "reason", ie.Detail)
		if len(bad) > 0 && !accept {
			return ie
		}
		if setChanged && !accept {
			return ie
		}
	}
	// The budget epoch the headers carry, under their MAC, is a floor
	// for the plain one the meta bucket holds (writeHeader).
	for _, h := range st.h {
		s.raiseBudgetEpoch(h.BudgetEpoch)
	}
	verified := epochs // for the high-water mark
	raised := false
	if floor != 0 && !k.LegacyHeader() {
		// The follower begins at the revision checked, before this
		// write, and follows it.
		e, err := s.raiseAfterRestore(k, floor, raw)
		if err != nil {
			return storeErr(err)
		}
		if e != nil {
			verified, raised = e, true
		}
	}
	_, shared := s.db.(store.Shared)
	switch {
	case k.LegacyHeader():
		// A store of format 1, checked under its rules: upgraded now, in
		// one transaction (the records that failed set aside if asked, a
		// header of format 2, the master record); its records are
		// re-written in the background (RewrapAll).
		n, err := s.upgrade(k, hdr, bad)
		if err != nil {
			return storeErr(err)
		}
		if len(bad) > 0 {
			s.log.Warn("key records that failed their check were set aside, as asked; their keys are gone", "records", len(bad))
		}
		count, bad = n, map[key.ID]struct{}{}
	case len(bad) > 0 && accept:
		// Records that fail their check are set aside, as evidence, out of
		// the key set: the store is consistent again, and the next unseal
		// (an unattended one too) needs no acceptance.
		n, err := s.setAside(k, bad)
		if err != nil {
			return storeErr(err)
		}
		s.log.Warn("key records that failed their check were set aside, as asked; their keys are gone", "records", len(bad))
		count, bad = n, map[key.ID]struct{}{}
	case setChanged && accept:
		s.log.Warn("the store's records do not add up to its headers; accepting them as they are, as asked", "records", count)
		err := s.db.Update(func(tx store.Tx) error {
			st, err := readShards(tx, k)
			if err != nil {
				return err
			}
			setShards(st, counts, accs, 0)
			return s.writeShards(tx, k, st)
		})
		if err != nil {
			return storeErr(err)
		}
	case shared && split && st.n == 1 && storeShards > 1:
		// A shared store of one header: split into shards, from the
		// records just checked, and checked again. (A header just
		// raised above a restore's floor is checked again first.)
		if !raised {
			if err := s.splitShards(k, raw[0], scan); err != nil {
				return storeErr(err)
			}
		}
		s.writeHighWater(hdr.StoreId, verified)
		return s.verify(k, accept, raised)
	case !shared && st.n > 1:
		// A store of shards in a file of its own (migrated from etcd):
		// joined into one header, and checked again. Shards that no
		// header binds together could each be put back from an older
		// copy of the file, apart.
		if err := s.joinShards(k, raw, scan); err != nil {
			return storeErr(err)
		}
		return s.verify(k, accept, false)
	}
	mats := newMaterials(len(scan.mats))
	for _, e := range scan.mats {
		if _, isBad := bad[e.h.id]; !isBad {
			mats.add(e.fp, e.h)
		}
	}
	seen := newRecordTags(scan.seen)
	// The state of k's epoch is installed with the publication of k (or
	// at once, if k is published): never after a seal of it.
	return s.master.Install(k, func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		for o := range s.eph {
			owned[o.Owner]++
			mats.addObject(o)
		}
		s.mats = mats
		s.seen = seen
		s.owned = owned
		s.count = int(count) - len(bad)
		s.bad = bad
		s.serving = k.Epoch()
		s.stopFollow()
		s.setShards(st.n)
		s.writeHighWater(hdr.StoreId, verified)
		if sh, ok := s.db.(store.Shared); ok && rev != 0 {
			// From the revision checked: the writes Verify made since
			// are followed too, and must add up.
			s.startFollow(sh, k.Epoch(), rev, st)
		}
	})
}

// storeShards is the number of shards a shared store is split into at
// its first unseal (splitShards). A variable for tests.
var storeShards uint32 = 16

// splitShards splits a shared store of one header, whose records scan
// checked with the header raw, into storeShards shards, in one
// transaction: the header becomes shard 0's, and every shard's header has
// the count and sum of the records of its shard (by their ids), and an
// epoch above the one header's. The records are not re-written. Had the
// header changed since it was checked (another daemon wrote), nothing is
// split, and the next unseal splits.
func (s *Store) splitShards(k *seal.Keys, raw []byte, scan verifyScan) error {
	n := storeShards
	counts, accs := scan.fold(n)
	split := false
	err := s.db.Update(func(tx store.Tx) error {
		split = false
		if !bytes.Equal(tx.Get(persist.BucketMeta, persist.MetaHeader), raw) {
			return nil
		}
		h0, _, err := readHeader(tx, k)
		if err != nil {
			return err
		}
		for i := range n {
			h := h0.CloneVT()
			h.Shard, h.Shards = i, n
			h.Count, h.Epoch = counts[i], h0.Epoch+1
			if err := s.writeHeader(tx, k, h, accs[i]); err != nil {
				return err
			}
		}
		split = true
		return nil
	})
	if err == nil && split {
		s.log.Info("shared store split into shards, a header each: several daemons create keys at once", "shards", n)
	}
	return err
}

// joinShards joins the shards of a store that is not shared, whose
// records scan checked with the headers raw, into one header, in one
// transaction: shard 0's becomes the store's, with the count and sum of
// every record and an epoch above every shard's, and the other shards'
// headers go. Had a header changed since it was checked, nothing is
// joined and the store is refused.
func (s *Store) joinShards(k *seal.Keys, raw [][]byte, scan verifyScan) error {
	counts, accs := scan.fold(1)
	err := s.db.Update(func(tx store.Tx) error {
		st, err := readShards(tx, k)
		if err != nil {
			return err
		}
		if int(st.n) != len(raw) {
			return errors.New("the store header changed while the store was checked: unseal again")
		}
		for i := range st.n {
			if !bytes.Equal(tx.Get(persist.BucketMeta, persist.ShardHeaderKey(i)), raw[i]) {
				return errors.New("the store header changed while the store was checked: unseal again")
			}
		}
		h := st.h[0].CloneVT()
		h.Shard, h.Shards = 0, 0
		h.Count, h.Epoch = counts[0], st.maxEpoch()+1
		for i := uint32(1); i < st.n; i++ {
			if err := tx.Delete(persist.BucketMeta, persist.ShardHeaderKey(i)); err != nil {
				return err
			}
		}
		return s.writeHeader(tx, k, h, accs[0])
	})
	if err == nil {
		s.log.Info("store of shards joined into one header: its file is its own", "shards", len(raw))
	}
	return err
}

// raiseAfterRestore writes the headers of a store restored from a backup
// anew with epochs above floor, the highest the store had before the
// restore (persist.MetaRestoreFloor), and removes the floor: from then on
// a header of before the restore, which etcd's history keeps under the
// same master key, is older than the store's, and refused by epoch (by a
// follower, and by the high-water mark at unseal). Only checked, the
// headers that Verify checked (by shard) are raised: had another one been
// put in place of one since, the unseal fails. It returns the epochs
// written, by shard (nil: the headers were already above the floor).
func (s *Store) raiseAfterRestore(k *seal.Keys, floor uint64, checked [][]byte) ([]uint64, error) {
	if floor == math.MaxUint64 {
		return nil, errors.New("the store's restore floor is at the largest epoch: no header can be above it")
	}
	var epochs []uint64
	err := s.db.Update(func(tx store.Tx) error {
		epochs = nil
		st, err := readShards(tx, k)
		if err != nil {
			return err
		}
		if tx.Get(persist.BucketMeta, persist.MetaRestoreFloor) != nil {
			if err := tx.Delete(persist.BucketMeta, persist.MetaRestoreFloor); err != nil {
				return err
			}
		}
		if st.maxEpoch() > floor {
			return nil
		}
		for i := range st.n {
			if int(i) >= len(checked) || !bytes.Equal(tx.Get(persist.BucketMeta, persist.ShardHeaderKey(i)), checked[i]) {
				return errors.New("the store header changed while the store was checked: unseal again")
			}
			st.h[i].Epoch = floor + 1
		}
		epochs = st.epochs()
		return s.writeShards(tx, k, st)
	})
	if err == nil && epochs != nil {
		s.log.Info("store restored from a backup: its headers' epochs raised above every one it had before the restore", "epoch", floor+1)
	}
	return epochs, err
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
// not be loaded: the descriptions come from their (checked) records, each
// the one the daemon last wrote (see readCurrent: a record that is not is
// looked at again after the commits under way, then left out).
func (s *Store) List(after key.ID, limit int, visible func(info *wire.KeyInfo) bool) ([]*wire.KeyInfo, error) {
	l, err := s.lease()
	if err != nil {
		return nil, err
	}
	defer l.Release()
	k := l.Keys()
	for try := 0; ; try++ {
		var out []*wire.KeyInfo
		replaced := 0
		err = s.db.View(func(tx store.Tx) error {
			return tx.ForEach(persist.BucketKeys, after[:], func(id, v []byte) error {
				r, err := checkRecord(k, id, v)
				if err != nil {
					return nil // quarantined; reported at unseal and on use
				}
				var kid key.ID
				copy(kid[:], id)
				if err := s.current(k, kid, v); errors.Is(err, errReplaced) {
					replaced++
					return nil // refused on use
				} else if err != nil {
					return err
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
		if err != nil || replaced == 0 || try == 2 {
			return out, storeErr(err)
		}
		if err := s.db.Update(func(store.Tx) error { return nil }); err != nil {
			return nil, storeErr(err)
		}
	}
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
			DeletionAllowed: r.DeletionAllowed,
			AllowedPrograms: ProgramsToWire(programsFromRecord(r.AllowedPrograms)),
			Ssh:             r.Ssh,

			BaseAlwaysSensitive:  r.BaseAlwaysSensitive,
			BaseNeverExtractable: r.BaseNeverExtractable,
			EverWrappable:        r.EverWrappable || r.Wrappable,
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
		if err := s.moveAside(tx, bad); err != nil {
			return err
		}
		st, err := readShards(tx, k)
		if err != nil {
			return err
		}
		counts, acc, err := sumRecords(tx, k, st.n, nil)
		if err != nil {
			return err
		}
		count = sumOf(counts)
		setShards(st, counts, acc, 0)
		return s.writeShards(tx, k, st)
	})
	return count, err
}

// upgrade upgrades a store of format 1, which Verify checked under its
// rules (k.LegacyHeader): in one transaction, the records of bad set
// aside (when the store was accepted), a header of format 2 for the
// records left, and the master record (seal.Master.Upgrade). It returns
// the number of records left.
func (s *Store) upgrade(k *seal.Keys, old *persist.StoreHeader, bad map[key.ID]struct{}) (uint64, error) {
	var total uint64
	s.db.View(func(tx store.Tx) error {
		return tx.ForEach(persist.BucketKeys, nil, func(_, _ []byte) error { total++; return nil })
	})
	var count uint64
	err := s.master.Upgrade(k, total-uint64(len(bad)), func(tx store.Tx) error {
		if err := s.moveAside(tx, bad); err != nil {
			return err
		}
		counts, acc, err := sumRecords(tx, k, 1, nil)
		if err != nil {
			return err
		}
		count = counts[0]
		h := &persist.StoreHeader{StoreId: k.StoreID, Epoch: old.Epoch + 1, Count: count, CreatedUnixNano: old.CreatedUnixNano}
		return s.writeHeader(tx, k, h, acc[0])
	})
	return count, err
}

// moveAside moves the records of bad out of the keys bucket into the
// quarantine bucket, and drops the names that point to them.
func (s *Store) moveAside(tx store.Tx, bad map[key.ID]struct{}) error {
	if len(bad) == 0 {
		return nil
	}
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
		s.noteRecord(tx, id[:], nil, nil)
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
	return nil
}

// sumRecords counts the records of the keys bucket and sums their
// summands under k's current generation, by shard of a store of n
// shards. check, if not nil, is called with each record first; its error
// is sumRecords'.
func sumRecords(tx store.Tx, k *seal.Keys, n uint32, check func(id, v []byte) error) (count []uint64, acc []persist.Acc, err error) {
	n = max(n, 1)
	count, acc = make([]uint64, n), make([]persist.Acc, n)
	var sum summer
	err = tx.ForEach(persist.BucketKeys, nil, func(id, v []byte) error {
		i := persist.ShardOf(id, n)
		count[i]++
		if check != nil {
			if err := check(id, v); err != nil {
				return err
			}
		}
		mac, _, err := persist.SplitValue(v)
		if err != nil {
			return nil // in the count, not in the sum: as Verify counts it
		}
		return sum.add(k, acc, i, mac)
	})
	if err == nil {
		err = sum.flush(k, acc)
	}
	return count, acc, err
}

// summer sums summands a batch at a time, with one entry into the index
// key's secret state per batch.
type summer struct {
	in  [][]byte
	to  []uint32 // the shard of each
	buf []byte
}

func (s *summer) add(k *seal.Keys, acc []persist.Acc, shard uint32, mac []byte) error {
	s.in = append(s.in, persist.SumInput(nil, mac))
	s.to = append(s.to, shard)
	if len(s.in) == verifyBatch {
		return s.flush(k, acc)
	}
	return nil
}

func (s *summer) flush(k *seal.Keys, acc []persist.Acc) error {
	if len(s.in) == 0 {
		return nil
	}
	if s.buf == nil {
		s.buf = make([]byte, persist.MACSize)
	}
	err := k.MACEach(k.Generation, len(s.in), func(i int) (data, dst []byte) {
		return s.in[i], s.buf[:0]
	}, func(i int, sum []byte) { acc[s.to[i]].Add(sum) })
	s.in, s.to = s.in[:0], s.to[:0]
	return err
}

// setShards sets st's headers to count and acc, by shard, each epoch one
// higher (to at least epoch, if given).
func setShards(st *shardSet, count []uint64, acc []persist.Acc, epoch uint64) {
	for i, h := range st.h {
		h.Count = count[i]
		h.Epoch = max(h.Epoch+1, epoch)
		st.acc[i] = acc[i]
	}
}

func sumOf(c []uint64) uint64 {
	var t uint64
	for _, n := range c {
		t += n
	}
	return t
}

// countSetAside counts the records in the quarantine bucket.
func countSetAside(tx store.Tx) int {
	n := 0
	tx.ForEach(persist.BucketQuarantine, nil, func(_, _ []byte) error { n++; return nil })
	return n
}

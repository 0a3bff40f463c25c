package keystore

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
	"google.golang.org/protobuf/proto"
)

// Following a store that the daemons of several machines share
// (store.Shared, an etcd cluster; docs/cluster.md).
//
// Each daemon checks the whole store at unseal, as on one machine, at one
// revision of the cluster, and then follows every transaction committed
// after it, its own and the other daemons', in commit order:
//
//   - Integrity. A transaction that changes key records must change the
//     store header too, whose MAC (under the master key) holds the count
//     of records and their accumulator. The follower keeps the last
//     header it verified: the next one must pass its MAC, carry a higher
//     epoch (an older header put back is refused), and add up: the
//     accumulator it had, less the records the transaction replaced or
//     deleted, plus those it wrote, must be the new one's; each record
//     written must pass its own MAC. Someone who can write to etcd but
//     does not hold the master key cannot forge, swap, delete, or put
//     back an older record or header without the follower seeing it:
//     it then refuses every key of the store until the next unseal,
//     whose full check says what is wrong.
//   - Freshness. A record another daemon wrote replaces the one this
//     daemon knew (seen.go): a key in memory is dropped (a destroyed key
//     is wiped, a changed one must be opened again, from its new record).
//   - Staleness bound. The cluster confirms regularly that nothing was
//     missed up to a revision (store.FollowConfirmEvery). A daemon that
//     has had no confirmation for longer than the bound cannot know that
//     a key was not destroyed or narrowed elsewhere: it refuses to use or
//     open keys of the store, with UNAVAILABLE, until it catches up.

// DefaultStaleBound is how long a daemon uses keys of a shared store
// without confirming that it has seen every change to it.
const DefaultStaleBound = time.Second

// errStale refuses keys while the follower is behind.
var errStale = wire.Errorf(wire.Status_STATUS_UNAVAILABLE,
	"this daemon has lost touch with the shared key store (etcd) for longer than its bound: keys are refused until it catches up")

// errChangedElsewhere is the error of a handle to a key that another
// daemon of the cluster changed.
var errChangedElsewhere = wire.Errorf(wire.Status_STATUS_NOT_FOUND,
	"the key was changed by another daemon of the cluster: open it again")

// errDestroyedElsewhere is the error of a handle to a key that another
// daemon of the cluster destroyed.
var errDestroyedElsewhere = wire.Errorf(wire.Status_STATUS_NOT_FOUND, "key destroyed (by another daemon of the cluster)")

// errRaced refuses a change made from a state that another daemon's
// change has replaced.
var errRaced = wire.Errorf(wire.Status_STATUS_UNAVAILABLE,
	"the key was changed by another daemon of the cluster meanwhile: nothing changed here; open it again and retry")

// follower follows a shared store for one unsealed epoch.
type follower struct {
	s      *Store
	db     store.Shared
	epoch  uint64 // the unsealed epoch it follows for
	bound  time.Duration
	cancel context.CancelFunc
	done   chan struct{}

	// Used by the follow goroutine only: the last revision applied and
	// the last header verified of each of the store's n shards.
	rev      int64
	n        uint32
	hdrEpoch []uint64
	acc      []persist.Acc
	count    []uint64

	storeID   []byte
	hw        []atomic.Uint64 // the highest header epoch verified, by shard
	confirmed atomic.Int64    // unix nanoseconds of the last confirmation
	rev0      atomic.Int64    // the last revision confirmed (status)
	stale     atomic.Bool
	failed    atomic.Pointer[error]
}

// check returns nil while keys of the store may be used.
func (f *follower) check() error {
	if f == nil {
		return nil
	}
	if p := f.failed.Load(); p != nil {
		return *p
	}
	if f.stale.Load() {
		return errStale
	}
	return nil
}

func (f *follower) fail(err error) {
	f.failed.CompareAndSwap(nil, &err)
}

// FollowStatus is what status shows of following a shared store.
type FollowStatus struct {
	Following bool
	Revision  int64         // the last revision confirmed
	Lag       time.Duration // since the last confirmation
	Bound     time.Duration
	Err       string // why keys are refused, if they are
}

// FollowStatus reports the state of following a shared store.
func (s *Store) FollowStatus() FollowStatus {
	s.mu.Lock()
	f := s.fol
	s.mu.Unlock()
	if f == nil {
		return FollowStatus{}
	}
	st := FollowStatus{Following: true, Revision: f.rev0.Load(), Bound: f.bound,
		Lag: time.Since(time.Unix(0, f.confirmed.Load()))}
	if err := f.check(); err != nil {
		st.Err = err.Error()
	}
	return st
}

// SetStaleBound sets the staleness bound of a shared store (0: the
// default).
func (s *Store) SetStaleBound(d time.Duration) {
	s.mu.Lock()
	s.staleBound = d
	s.mu.Unlock()
}

// startFollow starts following db from revision rev, whose headers st
// the unseal verified, for epoch. s.mu is held.
func (s *Store) startFollow(db store.Shared, epoch uint64, rev int64, st *shardSet) {
	bound := s.staleBound
	if bound <= 0 {
		bound = DefaultStaleBound
	}
	ctx, cancel := context.WithCancel(context.Background())
	f := &follower{s: s, db: db, epoch: epoch, bound: bound, cancel: cancel, done: make(chan struct{}),
		rev: rev, n: st.n, hdrEpoch: st.epochs(), acc: slices.Clone(st.acc), count: make([]uint64, st.n),
		hw: make([]atomic.Uint64, st.n), storeID: st.h[0].StoreId}
	for i, h := range st.h {
		f.count[i] = h.Count
		f.hw[i].Store(h.Epoch)
	}
	f.confirmed.Store(time.Now().UnixNano())
	f.rev0.Store(rev)
	s.fol = f
	go f.watchBound(ctx)
	go f.run(ctx)
}

// stopFollow stops the follower, if any, and keeps its high-water mark
// (a seal is rare: the file's write under s.mu is). s.mu is held.
func (s *Store) stopFollow() {
	if f := s.fol; f != nil {
		f.cancel()
		s.fol = nil
		if err := s.writeHighWater(f.storeID, f.hwEpochs()); err != nil {
			s.log.Warn("cannot keep the shared store's high-water mark", "err", err)
		}
	}
}

// watchBound marks the follower stale once it has gone longer than its
// bound without a confirmation.
func (f *follower) watchBound(ctx context.Context) {
	t := time.NewTicker(max(f.bound/10, 10*time.Millisecond))
	defer t.Stop()
	saved, lastSave := f.hwEpochs(), time.Now()
	save := func() {
		if hw := f.hwEpochs(); !slices.Equal(hw, saved) {
			if err := f.s.writeHighWater(f.storeID, hw); err != nil {
				f.s.log.Warn("cannot keep the shared store's high-water mark", "err", err)
			}
			saved, lastSave = hw, time.Now()
		}
	}
	defer save()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if time.Since(lastSave) >= highWaterEvery {
				save()
			}
			lag := time.Since(time.Unix(0, f.confirmed.Load()))
			if stale := lag > f.bound; stale != f.stale.Load() {
				f.stale.Store(stale)
				if stale {
					f.s.log.Error("lost touch with the shared key store: keys are refused until this daemon catches up", "lag", lag.Round(time.Millisecond), "bound", f.bound)
				} else {
					f.s.log.Info("caught up with the shared key store: keys are served again", "revision", f.rev0.Load())
				}
			}
		}
	}
}

// hookFollowApply, nil outside tests, runs as a follower of s begins to
// apply a commit (a test holds it back there: a daemon that lags).
// Atomic: followers run while a test sets it.
var hookFollowApply atomic.Pointer[func(s *Store)]

// highWaterEvery is how often the high-water mark is written while it
// rises (and once more when the follow stops).
const highWaterEvery = 250 * time.Millisecond

// errStopFollow ends the follow: the epoch it follows for was sealed.
var errStopFollow = errors.New("sealed")

func (f *follower) run(ctx context.Context) {
	defer close(f.done)
	for ctx.Err() == nil {
		err := f.db.Follow(ctx, f.rev, f.apply, f.confirm)
		switch {
		case ctx.Err() != nil, errors.Is(err, errStopFollow):
			return
		case errors.Is(err, store.ErrFollowLost):
			f.fail(wire.Errorf(wire.Status_STATUS_UNAVAILABLE,
				"this daemon fell behind the shared key store's history (compacted): seal and unseal it, which checks the store anew"))
			f.s.log.Error("cannot follow the shared key store: its history was compacted past this daemon's revision; seal and unseal", "revision", f.rev)
			return
		case f.failed.Load() != nil:
			return
		}
		f.s.log.Warn("following the shared key store failed; trying again", "revision", f.rev, "err", err)
		select {
		case <-ctx.Done():
			return
		case <-time.After(store.FollowConfirmEvery):
		}
	}
}

// confirm records that every commit up to rev has been applied, and, if
// asOf is not zero, every commit made before asOf: the staleness bound
// counts from asOf, not from when the confirmation arrived.
func (f *follower) confirm(rev int64, asOf time.Time) {
	if rev >= f.rev {
		f.rev = rev
		f.rev0.Store(rev)
		if !asOf.IsZero() && asOf.UnixNano() > f.confirmed.Load() {
			f.confirmed.Store(asOf.UnixNano())
		}
	}
}

// hwEpochs returns the highest header epochs verified, by shard.
func (f *follower) hwEpochs() []uint64 {
	e := make([]uint64, len(f.hw))
	for i := range f.hw {
		e[i] = f.hw[i].Load()
	}
	return e
}

// headerTx is a Tx that holds one store header (for readHeader and
// readShard).
type headerTx struct{ v []byte }

func (t headerTx) Get(bucket, k []byte) []byte {
	if bytes.Equal(bucket, persist.BucketMeta) && persist.IsHeaderKey(k) {
		return t.v
	}
	return nil
}
func (headerTx) Put(_, _, _ []byte) error                             { return store.ErrReadOnly }
func (headerTx) Delete(_, _ []byte) error                             { return store.ErrReadOnly }
func (headerTx) ForEach(_, _ []byte, _ func(k, v []byte) error) error { return nil }
func (headerTx) OnCommit(func())                                      {}

// tamper records that the store was changed outside the daemons.
func (f *follower) tamper(rev int64, what string) error {
	err := wire.Errorf(wire.Status_STATUS_INTERNAL,
		"the shared key store was changed outside keywarden (%s): every key is refused until the next unseal checks the store", what)
	f.fail(err)
	f.s.log.Error("shared key store tampered with: keys refused until the next unseal", "revision", rev, "what", what)
	return err
}

// apply checks one transaction's changes and applies those of other
// daemons to what this one holds in memory.
func (f *follower) apply(c store.Commit) error {
	s := f.s
	if h := hookFollowApply.Load(); h != nil {
		(*h)(s)
	}
	l, err := s.lease()
	if err != nil {
		return errStopFollow
	}
	defer l.Release()
	if l.Epoch() != f.epoch {
		return errStopFollow
	}
	k := l.Keys()
	if c.Own {
		// This daemon's own transaction: its effects are in memory
		// already, and its header (if it wrote one, under the keys it
		// holds now) is the next one to add up to.
		for _, ch := range c.Changes {
			if !bytes.Equal(ch.Bucket, persist.BucketMeta) || ch.Deleted {
				continue
			}
			if i, ok := persist.HeaderKeyShard(ch.Key); ok && i < f.n {
				if h, hacc, err := readShard(headerTx{ch.Value}, k, i, f.n); err == nil {
					f.hdrEpoch[i], f.acc[i], f.count[i] = h.Epoch, hacc, h.Count
					f.hw[i].Store(h.Epoch)
				}
			}
		}
		return nil
	}
	var hdrs []store.Change
	var recs []store.Change
	for _, ch := range c.Changes {
		switch {
		case bytes.Equal(ch.Bucket, persist.BucketMeta) && bytes.Equal(ch.Key, persist.MetaMaster):
			// The master key was rotated (or the store restored) by
			// another daemon: this one's keys are no longer the store's.
			err := wire.Errorf(wire.Status_STATUS_UNAVAILABLE,
				"the master key was replaced by another daemon of the cluster: seal and unseal this one")
			f.fail(err)
			s.log.Warn("the shared store's master record changed (a master key rotation or a restore elsewhere): keys refused until this daemon is sealed and unsealed", "revision", c.Rev)
			return err
		case bytes.Equal(ch.Bucket, persist.BucketMeta) && persist.IsHeaderKey(ch.Key):
			hdrs = append(hdrs, ch)
		case bytes.Equal(ch.Bucket, persist.BucketKeys):
			recs = append(recs, ch)
		}
	}
	if len(hdrs) == 0 {
		if len(recs) > 0 {
			return f.tamper(c.Rev, "key records changed without the store header")
		}
		return nil
	}
	// The headers written, each checked as its shard's, later than the
	// last one of that shard.
	type shardHdr struct {
		h     *persist.StoreHeader
		hacc  persist.Acc
		acc   persist.Acc
		count uint64
	}
	written := make(map[uint32]*shardHdr, len(hdrs))
	for _, ch := range hdrs {
		i, ok := persist.HeaderKeyShard(ch.Key)
		if !ok {
			return f.tamper(c.Rev, "a store header under a malformed key")
		}
		if ch.Deleted {
			return f.tamper(c.Rev, fmt.Sprintf("the store header of shard %d deleted", i))
		}
		if h, _, err := readHeader(headerTx{ch.Value}, k); err == nil && shardsOf(h) > f.n {
			// Written under the master key, for more shards: another
			// daemon split the store (at its unseal).
			err := wire.Errorf(wire.Status_STATUS_UNAVAILABLE,
				"the shared store was split into shards by another daemon of the cluster: seal and unseal this one")
			f.fail(err)
			s.log.Warn("the shared store was split into shards elsewhere: keys refused until this daemon is sealed and unsealed", "revision", c.Rev)
			return err
		}
		if i >= f.n {
			return f.tamper(c.Rev, fmt.Sprintf("a header of shard %d in a store of %d shards", i, f.n))
		}
		h, hacc, err := readShard(headerTx{ch.Value}, k, i, f.n)
		if err != nil {
			return f.tamper(c.Rev, fmt.Sprintf("a store header that fails its check (shard %d)", i))
		}
		if h.Epoch <= f.hdrEpoch[i] {
			return f.tamper(c.Rev, fmt.Sprintf("an older store header put back (shard %d, epoch %d after %d)", i, h.Epoch, f.hdrEpoch[i]))
		}
		written[i] = &shardHdr{h: h, hacc: hacc, acc: f.acc[i], count: f.count[i]}
	}
	type checked struct {
		id  key.ID
		r   *persist.KeyRecord // nil for a deletion
		tag uint64
		// owner of the record replaced or deleted, if there was one,
		// and the record itself (checked), with its MAC's tag.
		prevOwner uint32
		hadPrev   bool
		prev      *persist.KeyRecord
		prevTag   uint64
	}
	var done []checked
	for _, ch := range recs {
		var cr checked
		if len(ch.Key) != len(cr.id) {
			return f.tamper(c.Rev, "a key record under a malformed id")
		}
		copy(cr.id[:], ch.Key)
		sh := written[persist.ShardOf(ch.Key, f.n)]
		if sh == nil {
			return f.tamper(c.Rev, fmt.Sprintf("key records of shard %d changed without its header", persist.ShardOf(ch.Key, f.n)))
		}
		if ch.Prev != nil {
			mac, _, err := persist.SplitValue(ch.Prev)
			if err == nil {
				if old, err := summand(k, mac); err == nil {
					sh.acc.Sub(old)
				}
			}
			if r, err := checkRecord(k, ch.Key, ch.Prev); err == nil {
				cr.prevOwner, cr.hadPrev, cr.prev = r.Owner, true, r
				if mac, _, err := persist.SplitValue(ch.Prev); err == nil {
					cr.prevTag = macTag(mac)
				}
			}
			sh.count--
		}
		if !ch.Deleted {
			r, err := checkRecord(k, ch.Key, ch.Value)
			if err != nil {
				return f.tamper(c.Rev, fmt.Sprintf("key record %x fails its check", ch.Key))
			}
			mac, _, _ := persist.SplitValue(ch.Value)
			add, err := summand(k, mac)
			if err != nil {
				return err
			}
			sh.acc.Add(add)
			sh.count++
			cr.r, cr.tag = r, macTag(mac)
		}
		done = append(done, cr)
	}
	for i, sh := range written {
		if !k.LegacyHeader() && (sh.acc != sh.hacc || sh.count != sh.h.Count) {
			return f.tamper(c.Rev, fmt.Sprintf("the key records changed do not add up to the store header (shard %d)", i))
		}
	}
	for i, sh := range written {
		f.hdrEpoch[i], f.acc[i], f.count[i] = sh.h.Epoch, sh.hacc, sh.h.Count
		f.hw[i].Store(sh.h.Epoch)
		s.wroteElsewhere(i)
	}
	if len(done) == 0 {
		return nil
	}
	var wipe []*Object
	var why []error
	s.mu.Lock()
	if s.serving != f.epoch || s.seen == nil {
		s.mu.Unlock()
		return errStopFollow
	}
	for _, cr := range done {
		prevTag, existed := s.seen.get(cr.id)
		if cr.r == nil {
			s.seen.set(cr.id, 0, true)
			if existed {
				s.count--
				if cr.hadPrev {
					s.unown(cr.prevOwner)
				}
			}
		} else {
			s.seen.set(cr.id, cr.tag, false)
			if !existed {
				s.count++
				s.owned[cr.r.Owner]++
			}
		}
		delete(s.bad, cr.id)
		if o := s.loaded[cr.id]; o != nil && existed && cr.r != nil && cr.prev != nil && prevTag == cr.prevTag && reservedOnly(cr.prev, cr.r) {
			// Another daemon reserved AES-GCM encryptions, and changed
			// nothing else: this one goes on with the key, and reserves
			// after the other's range when it needs more (Encrypting).
			for _, rv := range cr.r.Versions {
				for _, v := range o.Versions() {
					if v.N == rv.Version {
						raise(&v.elsewhere, rv.EncryptionsReserved)
					}
				}
			}
			continue
		}
		if o := s.loaded[cr.id]; o != nil {
			o.superseded.Store(true)
			delete(s.loaded, cr.id)
			wipe = append(wipe, o)
			if cr.r == nil {
				why = append(why, errDestroyedElsewhere)
			} else {
				why = append(why, errChangedElsewhere)
			}
		}
	}
	s.mu.Unlock()
	for i, o := range wipe {
		// The reason first, then removed: a Remove that sees removed must
		// find why (a key changed elsewhere lives on: it is not destroyed).
		if err := o.wipe(why[i]); err != nil {
			s.log.Error("key memory corrupted: something wrote past the end of a key", "key", o.ID.String(), "err", err)
		}
		o.removed.Store(true)
	}
	return nil
}

// checkFresh refuses, in a transaction that changes o's record in a
// shared store, a change made from a state another daemon's change
// replaced: the record there must be the one this daemon last saw, and o
// must not have been dropped for a newer one. So two daemons that rotate
// one key at once make versions N+1 and N+2, or one of them is refused;
// never two N+1. The etcd transaction is guarded by the record it read:
// a change committed after this check makes the transaction run again.
//
// known are the reservations of encryptions of o's versions that the
// change was made from: another daemon's reservation applied to o since
// (follow.go, reservedOnly) must not be lowered, nor overlapped by one
// made from the state before it.
func (s *Store) checkFresh(tx store.Tx, o *Object, known map[uint32]uint64) error {
	if _, shared := s.db.(store.Shared); !shared {
		return nil
	}
	cur := tx.Get(persist.BucketKeys, o.ID[:])
	if cur != nil {
		if _, rb, err := persist.SplitValue(cur); err == nil {
			var r persist.KeyRecord
			if r.UnmarshalVT(rb) == nil {
				for _, v := range r.Versions {
					if k, ok := known[v.Version]; ok && v.EncryptionsReserved > k {
						return errRaced
					}
				}
			}
		}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.superseded.Load() {
		return errRaced
	}
	if cur == nil || s.seen == nil {
		return nil // gone: the write says so
	}
	mac, _, err := persist.SplitValue(cur)
	if err != nil {
		return err
	}
	if tag, ok := s.seen.get(o.ID); !ok || tag != macTag(mac) {
		return errRaced
	}
	return nil
}

// reservedOnly reports whether record b differs from a (both checked, as
// stored) only in its revision, its blobs (sealed anew at each write) and
// its versions' reservations of encryptions.
func reservedOnly(a, b *persist.KeyRecord) bool {
	strip := func(r *persist.KeyRecord) *persist.KeyRecord {
		r = r.CloneVT()
		r.Rev = 0
		for _, v := range r.Versions {
			v.Blob, v.EncryptionsReserved = nil, 0
		}
		return r
	}
	return proto.Equal(strip(a), strip(b))
}

// raise makes a at least n.
func raise(a *atomic.Uint64, n uint64) {
	for {
		cur := a.Load()
		if cur >= n || a.CompareAndSwap(cur, n) {
			return
		}
	}
}

// reservations maps each version of r to its reservation of encryptions.
func reservations(r *persist.KeyRecord) map[uint32]uint64 {
	m := make(map[uint32]uint64, len(r.Versions))
	for _, v := range r.Versions {
		m[v.Version] = v.EncryptionsReserved
	}
	return m
}

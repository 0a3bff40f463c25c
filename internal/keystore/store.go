package keystore

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// Store holds the key objects. Persistent keys live in a store.Store as
// records whose key bytes are sealed under the master key; an object is
// loaded (its blobs opened into locked memory) when a handle or session
// first needs it, and unloaded (wiped) when the last one lets go.
// Ephemeral keys live only in memory.
type Store struct {
	maxPerUser int
	db         store.Store
	master     *seal.Master
	log        *slog.Logger
	now        func() time.Time

	// mu guards the fields below. It is held only to read or change them,
	// never across crypto or I/O.
	mu     sync.Mutex
	loaded map[key.ID]*Object // persistent objects in memory
	eph    map[*Object]struct{}
	owned  map[uint32]int // live keys (persistent and ephemeral) per owner
	count  int            // persistent keys
	// bad are records that failed their integrity check: refused.
	bad    map[key.ID]struct{}
	closed bool
	// serving is the unsealed epoch (seal.Lease.Epoch) whose state the
	// fields above hold: set by the check at unseal together with the
	// publication of its keys, cleared by the seal together with their
	// withdrawal (seal.Master.Install, SealWith). 0: none.
	serving uint64
	// used remembers, for unloaded keys, how many encryptions each
	// version made in this process, below what this process reserved: a
	// key reloaded within the process's life goes on from there rather
	// than counting its whole reservation as spent, if its record still
	// reserves what this process did (no other daemon reserved since).
	used map[key.ID]map[uint32]usedCount
	// mats knows which live key objects hold which material (the copy
	// rule: materials.go).
	mats materials
	// seen holds, for every key record, the first 8 bytes of the MAC of
	// the record this daemon last read at unseal or wrote since (its
	// commit functions keep it up to date): a record read from the file
	// later must be that one, or it was replaced while the daemon runs
	// (seen.go). nil while sealed.
	seen *recordTags
	// epoch is the budget epoch (budget.go).
	epoch budgetEpoch
	// fol follows a shared store (follow.go) for the unsealed epoch; nil
	// for a store of one daemon, or while sealed. staleBound is its
	// bound (0: DefaultStaleBound).
	fol        *follower
	staleBound time.Duration
	// hwFile keeps the high-water mark of a shared store (highwater.go);
	// hwMu serializes its writes.
	hwFile string
	hwMu   sync.Mutex

	// shards is the number of shards of the store the last unseal
	// checked (0 before: one); mine is the shard this daemon creates
	// keys in, and foreignAt the last time (UnixNano) the follower saw
	// another daemon write each shard (shard.go).
	shards    atomic.Uint32
	mine      atomic.Uint32
	foreignAt [persist.MaxShards]atomic.Int64

	// loads counts records opened into memory (tests).
	loads atomic.Uint64
}

// Config configures a Store.
type Config struct {
	MaxPerUser int
	DB         store.Store
	Master     *seal.Master
	Logger     *slog.Logger
	Now        func() time.Time
	// HighWaterFile, for a store that several daemons share, is a file
	// of this machine where the highest store header epoch verified is
	// kept (highwater.go); "" keeps none.
	HighWaterFile string
}

// New returns a store over cfg.DB. Until the master key is unsealed (and
// Unsealed called) it refuses everything that needs keys.
func New(cfg Config) *Store {
	s := &Store{
		maxPerUser: cfg.MaxPerUser,
		db:         cfg.DB,
		master:     cfg.Master,
		log:        cfg.Logger,
		now:        cfg.Now,
		loaded:     make(map[key.ID]*Object),
		eph:        make(map[*Object]struct{}),
		owned:      make(map[uint32]int),
		bad:        make(map[key.ID]struct{}),
		used:       make(map[key.ID]map[uint32]usedCount),
		mats:       newMaterials(0),
		hwFile:     cfg.HighWaterFile,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	s.loadBudgetEpoch()
	return s
}

var errClosed = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the daemon is shutting down")

// SetMaxPerUser sets the per-owner quota.
func (s *Store) SetMaxPerUser(n int) {
	s.mu.Lock()
	s.maxPerUser = n
	s.mu.Unlock()
}

// Master returns the store's master key keeper.
func (s *Store) Master() *seal.Master { return s.master }

// lease returns a lease on the master key's keys, if the store serves
// their epoch (it was checked at their unseal). Every use of the keys
// holds one (see the package doc); the caller releases it.
func (s *Store) lease() (*seal.Lease, error) {
	s.mu.Lock()
	closed := s.closed
	s.mu.Unlock()
	if closed {
		return nil, errClosed
	}
	l, err := s.master.Acquire()
	if err != nil {
		return nil, err
	}
	s.mu.Lock()
	serving := s.serving
	s.mu.Unlock()
	if l.Epoch() != serving {
		l.Release()
		return nil, seal.ErrSealed
	}
	return l, nil
}

// Lease returns a lease on the master key's keys while the store serves
// their epoch (see the package doc); the caller releases it, soon.
func (s *Store) Lease() (*seal.Lease, error) { return s.lease() }

// Ready returns nil when keys may be used: the master key is unsealed and
// the store verified.
func (s *Store) Ready() error {
	l, err := s.lease()
	l.Release()
	return err
}

// Add registers a new object. A persistent one is written durably first
// (it exists once Add returns nil); every one counts toward its owner's
// quota. Whatever made o, its material is looked up among the material of
// every live key: a copy must pass the copy rule (policy.CheckCopy). On
// error the caller still owns o and must Discard it. The new object holds
// one reference, the caller's (see Release).
func (s *Store) Add(o *Object) error {
	l, err := s.lease()
	if err != nil {
		return err
	}
	defer l.Release()
	k, epoch0 := l.Keys(), l.Epoch()
	if !o.Ephemeral {
		s.placeInShard(o)
	}
	fps, err := setFingerprints(k, o)
	if err != nil {
		return err
	}
	// Its versions encrypt in the current budget epoch, durable first.
	epoch, err := s.openEpoch(!o.Ephemeral)
	if err != nil {
		return err
	}
	for _, v := range o.Versions() {
		v.epoch = addEpoch(o, epoch)
	}
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errClosed
	}
	if s.serving != epoch0 {
		s.mu.Unlock()
		return seal.ErrSealed
	}
	if d := policy.CheckQuota(s.owned[o.Owner], s.maxPerUser); !d.Allowed() {
		s.mu.Unlock()
		return d.Err()
	}
	if d := s.mats.checkCopy(o, fps); !d.Allowed() {
		s.mu.Unlock()
		s.log.Warn("key refused: a copy of another key's material with wider attributes", "reason", d.Reason, "owner", o.Owner)
		return d.Err()
	}
	if n := s.mats.spendCopyBudgets(o); n > 0 {
		s.log.Info("key is a copy of another key's AES-GCM material, which keeps the encryption budget: this one gets a new version at its first encryption",
			"key", o.ID.String(), "owner", o.Owner, "versions", n)
	}
	// Reserved, and the material claimed, before the slow write: a racing
	// copy is checked against this one. Given back on failure.
	s.owned[o.Owner]++
	s.mats.addObject(o)
	s.mu.Unlock()
	if hookAddWriting != nil {
		hookAddWriting()
	}
	// A persistent key is published as its record is noted, under s.mu,
	// as the write commits: a caller that finds the record current
	// (opening the key by its name) finds this object too, rather than
	// loading a second one of the same key that this would replace; and
	// in a shared store the follower applies a later change of another
	// daemon (a destroy, a rotation) only after, to this object.
	published := false
	publish := func() {
		if s.closed || s.serving != epoch0 {
			// Sealed (or closed) since the lease was taken: the seal
			// dropped this epoch's state, and no live key is published
			// after it. The record, if written, is kept; the key is
			// found again after the next unseal.
			return
		}
		published = true
		o.epoch = epoch0
		if o.Ephemeral {
			s.eph[o] = struct{}{}
			return
		}
		s.count++
		o.refs = 1
		o.gate = s.fol
		s.loaded[o.ID] = o
	}
	if !o.Ephemeral {
		if err := s.create(k, o, publish); err != nil {
			s.mu.Lock()
			if s.serving == epoch0 { // else the seal dropped the reservation
				s.unown(o.Owner)
				s.mats.removeObject(o, o.Versions())
			}
			s.mu.Unlock()
			return err
		}
	}
	if hookAddWritten != nil {
		hookAddWritten()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.Ephemeral && !s.closed && s.serving == epoch0 {
		publish()
	}
	if !published || s.closed || s.serving != epoch0 {
		if s.closed {
			return errClosed
		}
		return seal.ErrSealed
	}
	return nil
}

// Test hooks (fault points), nil outside tests: in Add, hookAddWriting
// runs before a key's record is written and hookAddWritten after it (a
// persistent key is published then, an ephemeral one after the hook);
// hookCommitting(s) runs as a commit function of every write of a key
// record, before the record is noted (noteRecord); hookRewrapBatch runs in RewrapAll inside each
// batch's transaction, before its records are read; hookRecordCurrent
// runs before a record read from the store is compared with the one the
// daemon last wrote (seen.go); hookRestoreWriting runs in Restore once
// the daemon is sealed and before the backup's records are written;
// hookReinitChecked runs in Reinit after its first check that the store
// holds no keys, before it seals; hookReserving runs in Encrypting once a
// version's count of encryptions is settled (raised to other daemons'
// reservations), before the reservation computed from it is written;
// hookCounting runs in Encrypting's slow path once the version has room
// for the encryptions, before they are counted; hookClosing runs in Add
// once the count of a version whose budget a copy spends has been read,
// before the version is closed at it;
// hookRestoreChunk runs before each chunk of a backup's records that
// restoreInChunks writes, and its error stops the restore there;
// hookRotated runs in a persistent key's rotation once its record is
// written; hookLoaded runs in get once a key's record has been read and its object
// made, before the object is installed among the loaded ones.
var (
	hookLoaded         func()
	hookAddWriting     func()
	hookAddWritten     func()
	hookCommitting     func(s *Store)
	hookRotated        func(o *Object)
	hookCounting       func(o *Object)
	hookClosing        func(v *Version)
	hookRewrapBatch    func()
	hookRecordCurrent  func()
	hookRestoreWriting func()
	hookReinitChecked  func()
	hookReserving      func(o *Object)
	hookRestoreChunk   func() error
)

// errHoldsKeys refuses a new master key for a store that holds keys.
var errHoldsKeys = wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION, "the store holds keys: its master key cannot be replaced")

// Reinit replaces the master key of a store that holds no keys with p's
// (init with force). A store that holds keys is refused, and stays
// unsealed. Otherwise the check is made again where nothing can change
// it: the daemon is sealed, operations begun before the seal have ended,
// and no unseal or restore can run (seal.Master.ReplaceInit); a key made
// in between is not lost under a master key no longer kept: the init is
// refused, and the daemon stays sealed.
func (s *Store) Reinit(p *seal.Pending, header func(k *seal.Keys) ([]byte, error)) error {
	if empty, err := s.Empty(); err != nil || !empty {
		p.Discard()
		if err != nil {
			return err
		}
		return errHoldsKeys
	}
	if hookReinitChecked != nil {
		hookReinitChecked()
	}
	return s.master.ReplaceInit(p, func() error { s.SealAll(); return nil }, func() error {
		empty, err := s.Empty()
		if err == nil && !empty {
			err = errHoldsKeys
		}
		return err
	}, header)
}

func (s *Store) unown(owner uint32) {
	if s.owned[owner]--; s.owned[owner] <= 0 {
		delete(s.owned, owner)
	}
}

// Discard wipes an object that was never added.
func Discard(o *Object) error { return o.wipe(errDestroyed) }

// Get returns the persistent object with this id, loading it if needed,
// with one more reference that the caller must Release.
func (s *Store) Get(id key.ID) (*Object, error) { return s.get(id, nil) }

// Access decides, from what a key's record says (its owner and name, and
// its policy: type, usage, ACL), whether a caller may reach the key: nil
// lets the store load it, an error is the answer. GetFor and LookupFor
// call it before a key's bytes are loaded, so that a key the caller may
// not see is refused without being opened into memory, exactly as a key
// that does not exist is.
type Access func(k policy.Key) error

// GetFor is Get for a caller that access decides about: a key it refuses
// is neither loaded nor counted, and the answer is access's error.
func (s *Store) GetFor(id key.ID, access Access) (*Object, error) {
	if access == nil {
		return nil, errNoAccess
	}
	return s.get(id, func(_ uint32, _ string, k policy.Key) error { return access(k) })
}

// errNoAccess: GetFor or LookupFor without an Access, a bug.
var errNoAccess = wire.Errorf(wire.Status_STATUS_INTERNAL, "internal error: no access check")

// recordCheck checks a key's owner, name and policy, from its record or
// its object in memory, before the store hands it out.
type recordCheck func(owner uint32, name string, k policy.Key) error

// get is Get with check, if not nil, passed before anything is loaded.
func (s *Store) get(id key.ID, check recordCheck) (*Object, error) {
	l, err := s.lease()
	if err != nil {
		return nil, err
	}
	defer l.Release()
	k := l.Keys()
	for try := 0; ; try++ {
		s.mu.Lock()
		if err := s.fol.check(); err != nil {
			s.mu.Unlock()
			return nil, err
		}
		if o := s.loaded[id]; o != nil {
			o.refs++
			s.mu.Unlock()
			if check != nil {
				if err := check(o.Owner, o.Name, o.Policy()); err != nil {
					s.Release(o)
					return nil, err
				}
			}
			return o, nil
		}
		_, bad := s.bad[id]
		s.mu.Unlock()
		if bad {
			return nil, s.quarantined(id, check)
		}
		o, tag, err := s.load(k, id, check)
		if err != nil {
			return nil, err
		}
		o.epoch = l.Epoch()
		if hookLoaded != nil {
			hookLoaded()
		}
		s.mu.Lock()
		if s.closed || s.serving != o.epoch {
			s.mu.Unlock()
			o.wipe(ErrSealedAway)
			return nil, seal.ErrSealed
		}
		if cur := s.loaded[id]; cur != nil {
			// Loaded meanwhile by someone else: use theirs.
			cur.refs++
			s.mu.Unlock()
			go o.wipe(errUnloaded)
			return cur, nil
		}
		if s.seen != nil {
			if t, ok := s.seen.get(id); !ok || t != tag {
				// The record changed (or went) while it was read, here or
				// by another daemon, and the object that held the change
				// may have been loaded, changed and unloaded meanwhile:
				// an object of the record read would make its changes
				// from a state already replaced (two rotations making one
				// version), which nothing after this would see, since the
				// record is now the one this daemon knows. Read it again.
				s.mu.Unlock()
				go o.wipe(errUnloaded)
				if try < maxLoadTries {
					continue
				}
				return nil, errRaced
			}
		}
		o.refs = 1
		o.gate = s.fol
		s.loaded[id] = o
		if used := s.used[id]; used != nil {
			for _, v := range o.Versions() {
				// v.used is the record's reservation (objectFrom).
				if u, ok := used[v.N]; ok && u.used < v.Used() && u.reserved == v.reserved.Load() {
					v.used.Store(u.used)
				}
			}
			delete(s.used, id)
		}
		s.mu.Unlock()
		return o, nil
	}
}

// maxLoadTries bounds how often get reads a record again that changed
// while it was read.
const maxLoadTries = 16

// Lookup returns owner's persistent object of this name (see Get).
func (s *Store) Lookup(owner uint32, name string) (*Object, error) {
	return s.lookup(owner, name, nil)
}

// LookupFor is Lookup for a caller that access decides about (see
// GetFor): a key it refuses is neither loaded nor counted.
func (s *Store) LookupFor(owner uint32, name string, access Access) (*Object, error) {
	if access == nil {
		return nil, errNoAccess
	}
	return s.lookup(owner, name, access)
}

func (s *Store) lookup(owner uint32, name string, access Access) (*Object, error) {
	l, err := s.lease()
	if err != nil {
		return nil, err
	}
	k := l.Keys()
	defer l.Release()
	var id key.ID
	var found bool
	err = s.db.View(func(tx store.Tx) error {
		v := tx.Get(persist.BucketNames, persist.NameKey(owner, name))
		if len(v) == persist.IDSize {
			copy(id[:], v)
			found = true
		}
		return nil
	})
	if err != nil {
		return nil, storeErr(err)
	}
	if !found {
		s.decoy(k)
		return nil, errNoKey
	}
	// The record, not the index, says whose key it is and what it is
	// called (the index carries no MAC); both are checked before the key
	// is loaded, and so is access.
	return s.get(id, func(o uint32, n string, k policy.Key) error {
		if o != owner || n != name {
			s.log.Error("store index is inconsistent: a name points to another key", "owner", owner, "key", id.String())
			return errNoKey
		}
		if access != nil {
			return access(k)
		}
		return nil
	})
}

// quarantined is the error of opening a key whose record failed its
// check: for whoever the record (unauthenticated now) says may not see
// the key, the same "no such key" as for any key they may not see.
func (s *Store) quarantined(id key.ID, check recordCheck) error {
	if check == nil {
		return errQuarantined
	}
	var r *persist.KeyRecord
	s.db.View(func(tx store.Tx) error {
		if v := tx.Get(persist.BucketKeys, id[:]); v != nil {
			if _, rb, err := persist.SplitValue(v); err == nil {
				r = &persist.KeyRecord{}
				if r.UnmarshalVT(rb) != nil {
					r = nil
				}
			}
		}
		return nil
	})
	if r == nil {
		return errNoKey
	}
	pk, err := recordPolicy(r)
	if err != nil {
		return errNoKey
	}
	if err := check(r.Owner, r.Name, pk); err != nil {
		return err
	}
	return errQuarantined
}

var (
	errNoKey       = wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no such key")
	errQuarantined = wire.Errorf(wire.Status_STATUS_INTERNAL, "the key's record failed its integrity check and is refused")
)

// Hold adds a reference to o (a handle or session that keeps it).
func (s *Store) Hold(o *Object) {
	if o.Ephemeral {
		return
	}
	s.mu.Lock()
	o.refs++
	s.mu.Unlock()
}

// Release drops a reference; the last one unloads a persistent object and
// wipes its material (it stays in the store).
func (s *Store) Release(o *Object) {
	if o.Ephemeral {
		return
	}
	s.mu.Lock()
	o.refs--
	unload := o.refs <= 0 && s.loaded[o.ID] == o
	if unload {
		delete(s.loaded, o.ID)
		s.rememberUsed(o)
	}
	s.mu.Unlock()
	if unload {
		if err := o.wipe(errUnloaded); err != nil {
			s.log.Error("key memory corrupted: something wrote past the end of a key", "key", o.ID.String(), "err", err)
		}
	}
}

// usedCount is what a version of an unloaded key had made of this
// process's reservation.
type usedCount struct {
	used, reserved uint64
}

// rememberUsed keeps what o's versions used of their reservations, for
// when o is loaded again. s.mu is held. A version that another daemon
// reserved encryptions of after this one's reservation (elsewhere) is not
// kept: its count goes on from the record's reservation, above the
// other's range.
func (s *Store) rememberUsed(o *Object) {
	var used map[uint32]usedCount
	for _, v := range o.Versions() {
		r := v.reserved.Load()
		if u := v.Used(); u < r && v.elsewhere.Load() <= r {
			if used == nil {
				used = make(map[uint32]usedCount)
			}
			used[v.N] = usedCount{used: u, reserved: r}
		}
	}
	if used != nil {
		s.used[o.ID] = used
	}
}

// Remove destroys o: a persistent key's record is deleted durably first.
// Handles other connections hold to o fail from then on. Removing an
// object twice is harmless. An object of an earlier unsealed epoch (its
// handle predates a seal) is refused with ErrSealedAway: its key is not
// destroyed through it. The counts change only by what Remove actually
// removed: a record its transaction deleted, an ephemeral key the store
// still held. A memory-corruption error from the wipe (a bug or an
// attack) is logged loudly here; the error returned is the store's.
func (s *Store) Remove(o *Object) error {
	if o.removed.Load() {
		if err := o.Gone(); errors.Is(err, errChangedElsewhere) {
			return err // not destroyed: the key lives on in its new record
		}
		return nil
	}
	if !o.Ephemeral {
		l, err := s.lease()
		if err != nil {
			return err
		}
		defer l.Release()
		if o.epoch != l.Epoch() {
			return ErrSealedAway
		}
		o.wmu.Lock()
		err = s.delete(l.Keys(), o)
		o.wmu.Unlock()
		if err != nil {
			return err
		}
	}
	if o.removed.Swap(true) {
		return nil
	}
	s.mu.Lock()
	if o.Ephemeral {
		if _, held := s.eph[o]; held {
			delete(s.eph, o)
			s.unown(o.Owner)
			s.mats.removeObject(o, o.Versions())
		}
	} else if s.serving == o.epoch {
		if s.loaded[o.ID] == o {
			delete(s.loaded, o.ID)
		}
		delete(s.used, o.ID)
		s.mats.removeObject(o, o.Versions())
	}
	s.mu.Unlock()
	if err := o.wipe(errDestroyed); err != nil {
		s.log.Error("key memory corrupted: something wrote past the end of a key", "key", o.ID.String(), "err", err)
	}
	return nil
}

// Counts returns the number of persistent keys and of all live ones.
func (s *Store) Counts() (persistent, live int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, n := range s.owned {
		live += n
	}
	return s.count, live
}

// Loaded returns how many persistent keys are in memory.
func (s *Store) Loaded() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.loaded)
}

// Quarantined returns how many records failed their integrity check:
// refused ones, and those set aside by an unseal that accepted the store.
func (s *Store) Quarantined() int {
	s.mu.Lock()
	n := len(s.bad)
	s.mu.Unlock()
	s.db.View(func(tx store.Tx) error {
		n += countSetAside(tx)
		return nil
	})
	return n
}

// Owned returns how many live keys owner holds.
func (s *Store) Owned(owner uint32) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.owned[owner]
}

// NameTaken reports whether owner has a persistent key called name.
func (s *Store) NameTaken(owner uint32, name string) bool {
	var taken bool
	s.db.View(func(tx store.Tx) error {
		taken = tx.Get(persist.BucketNames, persist.NameKey(owner, name)) != nil
		return nil
	})
	return taken
}

// SealAll seals (seal.Master.SealWith): the keys are withdrawn and this
// epoch's state dropped at once, every key in memory (persistent and
// ephemeral) is wiped, handles to them fail with ErrSealedAway from then
// on, and the master key is wiped once the operations that hold a lease on
// it end.
func (s *Store) SealAll() bool {
	return s.seal(false, ErrSealedAway) == nil
}

// seal withdraws the keys and drops the state of their epoch, wipes the
// objects in memory with why, and (close) refuses further use. It returns
// errNotUnsealed if the daemon was sealed already, else the first memory
// corruption found.
func (s *Store) seal(close bool, why error) error {
	var objs []*Object
	var first error
	was := s.master.SealWith(func() {
		s.mu.Lock()
		defer s.mu.Unlock()
		if close {
			s.closed = true
		}
		objs = make([]*Object, 0, len(s.loaded)+len(s.eph))
		for _, o := range s.loaded {
			objs = append(objs, o)
			s.rememberUsed(o)
		}
		for o := range s.eph {
			objs = append(objs, o)
		}
		s.loaded = make(map[key.ID]*Object)
		s.eph = make(map[*Object]struct{})
		s.owned = make(map[uint32]int)
		s.mats = newMaterials(0)
		s.seen = nil
		s.count = 0
		s.serving = 0
		s.stopFollow()
	}, func() {
		// Before the wait for the master key's users: no key is usable
		// once the seal has begun.
		for _, o := range objs {
			if err := o.wipe(why); err != nil {
				s.log.Error("key memory corrupted: something wrote past the end of a key", "key", o.ID.String(), "err", err)
				if first == nil {
					first = err
				}
			}
		}
	})
	if !was && first == nil {
		return errNotUnsealed
	}
	return first
}

var errNotUnsealed = errors.New("not unsealed")

// Close refuses further use and wipes every key in memory and the master
// key. It reports the first memory corruption found.
func (s *Store) Close() error {
	if err := s.seal(true, errClosed); err != errNotUnsealed {
		return err
	}
	return nil
}

// storeErr maps a storage failure to the wire: the operation did not
// happen, and may work later.
func storeErr(err error) error {
	if err == nil {
		return nil
	}
	var we *wire.Error
	if errors.As(err, &we) {
		return err
	}
	if errors.Is(err, store.ErrTooLarge) {
		// Not a passing failure: the same write fails again.
		return wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "key store: the write is too large for the store: %v", err)
	}
	return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "key store: %v", err)
}

// IntegrityError reports what the check at unseal found.
type IntegrityError struct {
	BadRecords int  // records whose MAC does not match
	SetChanged bool // the records do not add up to the header
	Detail     string
}

func (e *IntegrityError) Error() string {
	return fmt.Sprintf("store integrity check failed: %s", e.Detail)
}

// NewDev returns a store in memory with an ephemeral master key, unsealed
// and verified: development mode, where nothing reaches a disk, and
// tests. It runs the same code as a persistent store.
func NewDev(cfg Config) (*Store, error) {
	db := store.NewMemory()
	m, err := seal.Open(seal.Config{Store: db, Logger: cfg.Logger, Now: cfg.Now})
	if err != nil {
		return nil, err
	}
	p, err := m.PrepareInit(context.Background(), seal.Sealing{Ephemeral: true}, false)
	if err != nil {
		return nil, err
	}
	cfg.DB, cfg.Master = db, m
	s := New(cfg)
	if err := m.CommitInit(p, func(k *seal.Keys) ([]byte, error) { return NewHeader(k, s.now()) }); err != nil {
		return nil, err
	}
	k, err := m.Keys()
	if err != nil {
		return nil, err
	}
	if err := s.Verify(k, false); err != nil {
		return nil, err
	}
	return s, nil
}

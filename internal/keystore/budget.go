package keystore

import (
	"encoding/binary"
	"sync"
	"sync/atomic"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// Nonce budgets across machine generation changes (docs/genid.md, "Nonce
// budgets").
//
// An AES-GCM version with random nonces may make at most 2^32 encryptions
// (DefaultEncryptionLimit), wherever they are made. A snapshot of the
// machine may be restored any number of times, and each copy would spend
// what is left of every version on its own: no share of the remainder is
// safe for an unknown number of copies. So a generation change closes
// every version that exists, in memory or only in the store: it no longer
// encrypts (it still decrypts). A key's next encryption makes a new
// version, from randomness confirmed fresh since the change (package
// random), which therefore differs in every copy; the closed version's
// encryptions are those made before the change, counted as before, and
// each new version has the whole bound to itself. With any number of
// copies, no material ever makes more than 2^32 encryptions.
//
// The store keeps a budget epoch, the number of changes it has seen
// (persist.MetaBudgetEpoch), and each version the epoch it was made in
// (KeyVersion.budget_epoch): a version encrypts only in its own epoch. A
// change writes one value, whatever the number of keys, and a key that
// was not in memory learns of it when it is loaded and compares.

// MaxAutoVersions bounds the live versions a generation change made
// (automatic versions), apart from MaxVersions, which bounds the others.
const MaxAutoVersions = 4096

var errTooManyAuto = wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
	"the key has %d versions that machine generation changes made, the most it may have: "+
		"rewrap what they encrypted under a newer version, then retire and trim them (key lifecycle --min-version, --trim-below)",
	MaxAutoVersions)

var errClosedByChange = wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
	"the machine's generation changed (a VM restore or clone) since the key's newest version was made, "+
		"and the key refuses to make a new version by itself (refuse when spent): rotate the key")

// budgetEpoch is the store's epoch: the current one, and the highest known
// durable.
type budgetEpoch struct {
	cur   atomic.Uint64
	saved atomic.Uint64
	// saveMu serializes writes of the epoch.
	saveMu sync.Mutex
}

func readBudgetEpoch(tx store.Tx) uint64 {
	if v := tx.Get(persist.BucketMeta, persist.MetaBudgetEpoch); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

func putBudgetEpoch(tx store.Tx, e uint64) error {
	return tx.Put(persist.BucketMeta, persist.MetaBudgetEpoch, binary.BigEndian.AppendUint64(nil, e))
}

// restoredEpoch is the epoch after a restore of a backup in epoch
// restored into a store in epoch cur: past both, so that every version
// of the backup is closed.
func restoredEpoch(restored, cur uint64) uint64 { return max(restored, cur) + 1 }

// loadBudgetEpoch reads the store's epoch (at start).
func (s *Store) loadBudgetEpoch() {
	if s.db == nil {
		return
	}
	var e uint64
	err := s.db.View(func(tx store.Tx) error {
		e = readBudgetEpoch(tx)
		return nil
	})
	if err != nil {
		// The store is unreadable: nothing will load from it either.
		s.log.Error("cannot read the key store's budget epoch", "err", err)
	}
	s.epoch.cur.Store(e)
	s.epoch.saved.Store(e)
}

// raiseBudgetEpoch makes the store's epoch at least e: a version loaded
// from a record names an epoch the store must have reached.
func (s *Store) raiseBudgetEpoch(e uint64) {
	for {
		cur := s.epoch.cur.Load()
		if cur >= e || s.epoch.cur.CompareAndSwap(cur, e) {
			return
		}
	}
}

// BudgetEpoch returns the store's budget epoch.
func (s *Store) BudgetEpoch() uint64 { return s.epoch.cur.Load() }

// CloseBudgets is what a machine generation change does to nonce budgets:
// it raises the budget epoch, which closes every version that exists for
// encryption, and makes the new epoch durable. It returns the new epoch.
// On a write error the epoch is raised in memory all the same, and the
// next version made writes it first (or is refused).
func (s *Store) CloseBudgets() (uint64, error) {
	e := s.epoch.cur.Add(1)
	return e, s.saveBudgetEpoch(e)
}

// saveBudgetEpoch makes epoch e durable, if it is not already.
func (s *Store) saveBudgetEpoch(e uint64) error {
	if s.db == nil || s.epoch.saved.Load() >= e {
		return nil
	}
	s.epoch.saveMu.Lock()
	defer s.epoch.saveMu.Unlock()
	if s.epoch.saved.Load() >= e {
		return nil
	}
	err := s.db.Update(func(tx store.Tx) error {
		if readBudgetEpoch(tx) >= e {
			return nil
		}
		return putBudgetEpoch(tx, e)
	})
	if err != nil {
		return storeErr(err)
	}
	s.epoch.saved.Store(e)
	return nil
}

// openEpoch returns the epoch a version made now gets, durable first when
// the version will be written to the store.
func (s *Store) openEpoch(persistent bool) (uint64, error) {
	e := s.epoch.cur.Load()
	if persistent {
		if err := s.saveBudgetEpoch(e); err != nil {
			return 0, err
		}
	}
	return e, nil
}

// DrawnIn records, on an object not yet added, that its material was
// drawn from random bytes in budget epoch e (BudgetEpoch, read before the
// bytes were drawn). Add gives its versions that epoch if a generation
// change has raised the store's since: material drawn before a change
// is the same in every clone, and must not encrypt after it in each
// (the versions still decrypt; the first encryption makes a new one).
func DrawnIn(o *Object, e uint64) { o.drawnIn, o.drawn = e, true }

// DerivedFrom records, on an object not yet added, that its material
// follows from that of base, a version of another key (a derivation): it
// is as old as base's, the same in every clone that holds base, and gets
// base's budget epoch (DrawnIn). Derived after a generation change from
// a version made before it, it decrypts, and its first encryption makes
// a new version.
func DerivedFrom(o *Object, base *Version) { DrawnIn(o, base.epoch) }

// addEpoch is the budget epoch Add gives o's versions, cur being the
// store's.
func addEpoch(o *Object, cur uint64) uint64 {
	if o.drawn {
		return min(o.drawnIn, cur)
	}
	return cur
}

// open reports whether v may still encrypt: it was made in the current
// epoch.
func (s *Store) open(v *Version) bool { return v.epoch == s.epoch.cur.Load() }

// countVersions counts the automatic versions of vs and the others.
func countVersions(vs []*Version) (auto, others int) {
	for _, v := range vs {
		if v.auto {
			auto++
		} else {
			others++
		}
	}
	return auto, others
}

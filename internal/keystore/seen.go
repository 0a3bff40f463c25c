package keystore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// What the daemon knows of each record while it runs. A record's own MAC
// says that the daemon wrote it once, not that it is the record the
// daemon wrote last: someone who can write the file could put back an
// older record of a key (a grant since revoked, a usage since narrowed, a
// destroyed key) while the daemon runs, and take the current one back
// before the next unseal's check. So the store keeps, in memory, the first
// 8 bytes of each record's MAC, from the unseal's scan and from every
// write since (as each commits: store.Tx.OnCommit), and a record read
// later for its content (a load, a list, a re-wrap) must carry that MAC.
// The MAC covers the whole record, its revision (rev) included, so no two
// records the daemon wrote share it but by chance (2^-64); and a key whose
// record fails is refused until the next unseal, so each key gives an
// attacker one try per unseal. The unseal's scan leaves a sorted array of
// (id, tag), 24 bytes a key (24 MiB for a million, made in milliseconds);
// writes since are kept in a map beside it.

// errReplaced: a record that is not the one the daemon last wrote.
var errReplaced = errors.New("the key's record is not the one this daemon last wrote (an older copy put back?)")

// macTag is what the store remembers of a record's MAC (of a keys-bucket
// value: MAC || record), which is at least 8 bytes long.
func macTag(mac []byte) uint64 { return binary.BigEndian.Uint64(mac) }

// noteRecord makes tx record, once it commits, that key id's record has
// MAC mac (nil: the record is deleted). then, if not nil, runs in the same
// hold of s.mu: what it puts in memory (an object made with the record) is
// there as soon as the record is known to be current, so that no one
// loads a second object of the record in between. In a shared store, the
// follower applies another daemon's later commit only after (store.Tx
// OnCommit), so it finds what then put there.
func (s *Store) noteRecord(tx store.Tx, id []byte, mac []byte, then func()) {
	var kid key.ID
	copy(kid[:], id)
	tag, deleted := uint64(0), mac == nil
	if !deleted {
		tag = macTag(mac)
	}
	tx.OnCommit(func() {
		s.mu.Lock()
		if s.seen != nil {
			s.seen.set(kid, tag, deleted)
		}
		if then != nil {
			then()
		}
		s.mu.Unlock()
	})
}

// seenEntry is a record's id and MAC tag.
type seenEntry struct {
	id  key.ID
	tag uint64
}

// recordTags maps the id of every key record to its MAC tag: the entries
// of the unseal's scan, sorted by id, and the changes since.
type recordTags struct {
	base    []seenEntry
	changed map[key.ID]tagChange
}

type tagChange struct {
	tag     uint64
	deleted bool
}

// newRecordTags takes entries (in id order, as the scan makes them).
func newRecordTags(entries []seenEntry) *recordTags {
	cmp := func(a, b seenEntry) int { return bytes.Compare(a.id[:], b.id[:]) }
	if !slices.IsSortedFunc(entries, cmp) {
		slices.SortFunc(entries, cmp)
	}
	return &recordTags{base: entries, changed: make(map[key.ID]tagChange)}
}

func (t *recordTags) inBase(id key.ID) (uint64, bool) {
	i, found := slices.BinarySearchFunc(t.base, id, func(e seenEntry, id key.ID) int { return bytes.Compare(e.id[:], id[:]) })
	if !found {
		return 0, false
	}
	return t.base[i].tag, true
}

func (t *recordTags) get(id key.ID) (uint64, bool) {
	if c, ok := t.changed[id]; ok {
		return c.tag, !c.deleted
	}
	return t.inBase(id)
}

func (t *recordTags) set(id key.ID, tag uint64, deleted bool) {
	t.changed[id] = tagChange{tag, deleted}
}

// len returns the number of records.
func (t *recordTags) len() int {
	n := len(t.base)
	for id, c := range t.changed {
		_, was := t.inBase(id)
		switch {
		case c.deleted && was:
			n--
		case !c.deleted && !was:
			n++
		}
	}
	return n
}

// current checks mac against the note of key id's record, of k's unsealed
// epoch (k is the caller's, leased): nil if it is the MAC of the record
// the daemon last read or wrote for id, errReplaced if it is not. The
// notes belong to their epoch: once a seal has dropped them (the store no
// longer serves k's epoch), a record read under the lease is judged by
// nothing, and the answer is seal.ErrSealed, as for any operation a seal
// overtakes; never that the record was replaced.
func (s *Store) current(k *seal.Keys, id key.ID, mac []byte) error {
	if hookRecordCurrent != nil {
		hookRecordCurrent()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.seen == nil || s.serving != k.Epoch() {
		return seal.ErrSealed
	}
	if len(mac) < persist.MACSize {
		return errReplaced
	}
	if tag, ok := s.seen.get(id); !ok || tag != macTag(mac) {
		return errReplaced
	}
	return nil
}

// readCurrent reads and checks key id's record, and that it is the one the
// daemon last wrote. A write that committed after the read began (or
// whose commit functions have not run yet) can make a current record look
// replaced: the first mismatches wait for the commits under way (an empty
// transaction) and read again. A read that a seal overtakes fails as
// sealed (see current).
//
// In a shared store, a record another daemon wrote is noted when this
// daemon's follower reaches its commit (follow.go), normally within
// milliseconds: a mismatch waits for it, up to the staleness bound.
//
// It returns the record's MAC tag with it: the record an object is made
// from must still be the current one when the object is installed (get).
func (s *Store) readCurrent(k *seal.Keys, id key.ID) (*persist.KeyRecord, uint64, error) {
	tries := 3
	_, shared := s.db.(store.Shared)
	if shared {
		tries = 20
	}
	for try := 0; ; try++ {
		var r *persist.KeyRecord
		var tag uint64
		var cur error
		err := s.db.View(func(tx store.Tx) error {
			v := tx.Get(persist.BucketKeys, id[:])
			if v == nil {
				return errNoKey
			}
			var err error
			if r, err = checkRecord(k, id[:], v); err != nil {
				return err
			}
			r = r.CloneVT() // the transaction's bytes go away
			if cur = s.current(k, id, v); cur == nil {
				tag = macTag(v)
			}
			return nil
		})
		switch {
		case err != nil:
			return nil, 0, err
		case cur == nil:
			return r, tag, nil
		case !errors.Is(cur, errReplaced) || try == tries-1:
			return nil, 0, cur
		}
		if shared && try >= 2 {
			time.Sleep(DefaultStaleBound / 20)
		}
		if err := s.db.Update(func(store.Tx) error { return nil }); err != nil {
			return nil, 0, storeErr(err)
		}
	}
}

var errChangedLive = wire.Errorf(wire.Status_STATUS_INTERNAL,
	"a key record was changed while the daemon runs: seal and unseal (which checks the store) before rotating the master key")

// CommitRotation commits a master-key rotation that p holds
// (seal.Master.PrepareRotation): in one transaction, the new master
// record and the store header under the new generation, its accumulator
// summed anew under the new index key (whatever made a record, its
// summand is the current generation's). The sum is made from the file,
// so every record must be the one the daemon last wrote. The records are
// re-wrapped afterwards (RewrapAll).
func (s *Store) CommitRotation(p *seal.Pending) error {
	l, err := s.lease()
	if err != nil {
		p.Discard()
		return err
	}
	defer l.Release()
	total, _ := s.Counts()
	return s.master.CommitRotation(p, uint64(total), func(tx store.Tx, old, next *seal.Keys) error {
		st, err := readShards(tx, old)
		if err != nil {
			return err
		}
		counts, acc, err := sumRecords(tx, next, st.n, func(id, v []byte) error {
			var kid key.ID
			copy(kid[:], id)
			err := s.current(old, kid, v)
			if errors.Is(err, errReplaced) {
				return errChangedLive
			}
			return err
		})
		if err != nil {
			return err
		}
		s.mu.Lock()
		known := 0
		if s.seen != nil {
			known = s.seen.len()
		}
		s.mu.Unlock()
		if sumOf(counts) != uint64(known) {
			return errChangedLive
		}
		setShards(st, counts, acc, 0)
		return s.writeShards(tx, next, st)
	})
}

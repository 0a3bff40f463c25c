package keystore

import (
	"encoding/binary"
	"errors"

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
// attacker one try per unseal. About 40 bytes a key: 40 MiB for a million.

// errReplaced: a record that is not the one the daemon last wrote.
var errReplaced = errors.New("the key's record is not the one this daemon last wrote (an older copy put back?)")

// macTag is what the store remembers of a record's MAC (of a keys-bucket
// value: MAC || record), which is at least 8 bytes long.
func macTag(mac []byte) uint64 { return binary.BigEndian.Uint64(mac) }

// noteRecord makes tx record, once it commits, that key id's record has
// MAC mac (nil: the record is deleted).
func (s *Store) noteRecord(tx store.Tx, id []byte, mac []byte) {
	var kid key.ID
	copy(kid[:], id)
	tag, deleted := uint64(0), mac == nil
	if !deleted {
		tag = macTag(mac)
	}
	tx.OnCommit(func() {
		s.mu.Lock()
		if s.seen != nil {
			if deleted {
				delete(s.seen, kid)
			} else {
				s.seen[kid] = tag
			}
		}
		s.mu.Unlock()
	})
}

// isCurrent reports whether mac is the MAC of the record the daemon last
// read or wrote for id.
func (s *Store) isCurrent(id key.ID, mac []byte) bool {
	if len(mac) < persist.MACSize {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	tag, ok := s.seen[id]
	return ok && tag == macTag(mac)
}

// readCurrent reads and checks key id's record, and that it is the one the
// daemon last wrote. A write that committed after the read began (or
// whose commit functions have not run yet) can make a current record look
// replaced: the first mismatches wait for the commits under way (an empty
// transaction) and read again.
func (s *Store) readCurrent(k *seal.Keys, id key.ID) (*persist.KeyRecord, error) {
	for try := 0; ; try++ {
		var r *persist.KeyRecord
		var current bool
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
			current = s.isCurrent(id, v)
			return nil
		})
		switch {
		case err != nil:
			return nil, err
		case current:
			return r, nil
		case try == 2:
			return nil, errReplaced
		}
		if err := s.db.Update(func(store.Tx) error { return nil }); err != nil {
			return nil, storeErr(err)
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
	if _, err := s.keys(); err != nil {
		p.Discard()
		return err
	}
	total, _ := s.Counts()
	return s.master.CommitRotation(p, uint64(total), func(tx store.Tx, old, next *seal.Keys) error {
		h, _, err := readHeader(tx, old)
		if err != nil {
			return err
		}
		count, acc, err := sumRecords(tx, next, func(id, v []byte) error {
			var kid key.ID
			copy(kid[:], id)
			if !s.isCurrent(kid, v) {
				return errChangedLive
			}
			return nil
		})
		if err != nil {
			return err
		}
		s.mu.Lock()
		known := len(s.seen)
		s.mu.Unlock()
		if count != uint64(known) {
			return errChangedLive
		}
		h.Count = count
		h.Epoch++
		return writeHeader(tx, next, h, acc)
	})
}

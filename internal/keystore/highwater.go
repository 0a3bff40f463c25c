package keystore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/keywarden/keywarden/internal/persist"
)

// The high-water mark of a shared store: the highest header epoch this
// daemon has verified, kept in a file of its own machine (HighWaterFile),
// so that a rollback of the whole store (every record and the header put
// back as they were, a state that adds up) is refused at the next unseal,
// not only while the daemon follows the store.
//
// The file names the store it is about: "<store id hex> <epoch>". A
// restore from a backup, which rolls the store back on purpose, makes it
// "<store id hex> <floor> <sha256 hex of the header restored>": the
// restored header (epoch below the floor) is accepted once, exactly as
// the restore wrote it, and the unseal that accepts it writes a header
// whose epoch is above the floor (raiseAfterRestore); any other header at
// or below the floor (one of before the restore, put back) is refused.
// The other daemons refuse to unseal until the restored store's epoch is
// raised above their mark by the first unseal, or an administrator
// removes their file, which their refusal names.

// A store of several shards has an epoch per shard, and the file holds
// them all, in shard order, separated by commas: "<store id hex>
// <e0>,<e1>,...". The floor of a restore is one epoch, above every
// shard's before it.

// highWater is what the file holds for one store.
type highWater struct {
	// epochs are the shards' epochs (one: the store had one header, and
	// every shard's epoch since is above it); epoch is the highest.
	epochs []uint64
	epoch  uint64
	// restored, if set, is the SHA-256 of the headers a restore wrote
	// (joinHeaders): epoch is then the floor their epochs are raised
	// above.
	restored []byte
}

// olderThan returns why headers of these epochs, by shard, are older
// than the mark ("" if they are not).
func (hw highWater) olderThan(epochs []uint64) string {
	switch {
	case len(hw.epochs) == 0:
		return ""
	case len(hw.epochs) == 1:
		// Every shard's epoch begins above the one header's.
		for i, e := range epochs {
			if e < hw.epochs[0] {
				return fmt.Sprintf("header epoch %d of shard %d, %d seen", e, i, hw.epochs[0])
			}
		}
	case len(hw.epochs) != len(epochs):
		return fmt.Sprintf("%d shards, where this daemon verified a store of %d", len(epochs), len(hw.epochs))
	default:
		for i, e := range epochs {
			if e < hw.epochs[i] {
				return fmt.Sprintf("header epoch %d of shard %d, %d seen", e, i, hw.epochs[i])
			}
		}
	}
	return ""
}

// readHighWater returns the mark the file holds for store id (zero:
// none).
func (s *Store) readHighWater(id []byte) (highWater, error) {
	if s.hwFile == "" {
		return highWater{}, nil
	}
	b, err := os.ReadFile(s.hwFile)
	if os.IsNotExist(err) {
		return highWater{}, nil
	}
	if err != nil {
		return highWater{}, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 && len(f) != 3 {
		return highWater{}, fmt.Errorf("%s: malformed", s.hwFile)
	}
	sid, err := hex.DecodeString(f[0])
	if err != nil || !bytes.Equal(sid, id) {
		return highWater{}, nil // another store's
	}
	var hw highWater
	es := strings.Split(f[1], ",")
	if len(es) > persist.MaxShards || (len(f) == 3 && len(es) != 1) {
		return highWater{}, fmt.Errorf("%s: malformed", s.hwFile)
	}
	for _, e := range es {
		n, err := strconv.ParseUint(e, 10, 64)
		if err != nil {
			return highWater{}, fmt.Errorf("%s: malformed", s.hwFile)
		}
		hw.epochs = append(hw.epochs, n)
		hw.epoch = max(hw.epoch, n)
	}
	if len(f) == 3 {
		if hw.restored, err = hex.DecodeString(f[2]); err != nil || len(hw.restored) != sha256.Size {
			return highWater{}, fmt.Errorf("%s: malformed", s.hwFile)
		}
	}
	return hw, nil
}

// writeHighWater records epochs (by shard) for store id, where higher
// than what the file holds.
func (s *Store) writeHighWater(id []byte, epochs []uint64) error {
	if s.hwFile == "" || len(epochs) == 0 {
		return nil
	}
	s.hwMu.Lock()
	defer s.hwMu.Unlock()
	if cur, err := s.readHighWater(id); err == nil {
		switch {
		case cur.restored != nil:
			if slices.Max(epochs) <= cur.epoch {
				return nil // not yet raised above the restore's floor
			}
		case len(cur.epochs) == len(epochs):
			higher := false
			epochs = slices.Clone(epochs)
			for i, e := range cur.epochs {
				higher = higher || epochs[i] > e
				epochs[i] = max(epochs[i], e)
			}
			if !higher {
				return nil
			}
		}
	}
	b := fmt.Appendf(nil, "%x ", id)
	for i, e := range epochs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendUint(b, e, 10)
	}
	return s.putHighWater(append(b, '\n'))
}

func (s *Store) putHighWater(b []byte) error {
	tmp := s.hwFile + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, s.hwFile); err != nil {
		return err
	}
	if d, err := os.Open(filepath.Dir(s.hwFile)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
}

// restoredHighWater records that a restore put header (whose epoch is
// below floor) into store id: see above.
func (s *Store) restoredHighWater(id []byte, floor uint64, header []byte) error {
	if s.hwFile == "" {
		return nil
	}
	s.hwMu.Lock()
	defer s.hwMu.Unlock()
	sum := sha256.Sum256(header)
	return s.putHighWater(fmt.Appendf(nil, "%x %d %x\n", id, floor, sum))
}

// resetHighWater forgets the mark (a restore rolled the store back).
func (s *Store) resetHighWater() {
	if s.hwFile != "" {
		os.Remove(s.hwFile)
	}
}

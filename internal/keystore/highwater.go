package keystore

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
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

// highWater is what the file holds for one store.
type highWater struct {
	epoch uint64
	// restored, if set, is the SHA-256 of the header a restore wrote:
	// epoch is then the floor that header's epoch is raised above.
	restored []byte
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
	if hw.epoch, err = strconv.ParseUint(f[1], 10, 64); err != nil {
		return highWater{}, fmt.Errorf("%s: malformed", s.hwFile)
	}
	if len(f) == 3 {
		if hw.restored, err = hex.DecodeString(f[2]); err != nil || len(hw.restored) != sha256.Size {
			return highWater{}, fmt.Errorf("%s: malformed", s.hwFile)
		}
	}
	return hw, nil
}

// writeHighWater records epoch for store id, if higher than what the file
// holds.
func (s *Store) writeHighWater(id []byte, epoch uint64) error {
	if s.hwFile == "" {
		return nil
	}
	s.hwMu.Lock()
	defer s.hwMu.Unlock()
	if cur, err := s.readHighWater(id); err == nil && cur.epoch >= epoch {
		return nil
	}
	return s.putHighWater(fmt.Appendf(nil, "%x %d\n", id, epoch))
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

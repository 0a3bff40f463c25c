package keystore

import (
	"bytes"
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
// not only while the daemon follows the store. The file names the store
// it is about; a restore from a backup, which rolls the store back on
// purpose, resets it (on the daemon that restored: the others refuse to
// unseal until an administrator removes theirs, which their refusal
// names).

// readHighWater returns the epoch the file holds for store id (0: none).
func (s *Store) readHighWater(id []byte) (uint64, error) {
	if s.hwFile == "" {
		return 0, nil
	}
	b, err := os.ReadFile(s.hwFile)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, fmt.Errorf("%s: malformed", s.hwFile)
	}
	sid, err := hex.DecodeString(f[0])
	if err != nil || !bytes.Equal(sid, id) {
		return 0, nil // another store's
	}
	return strconv.ParseUint(f[1], 10, 64)
}

// writeHighWater records epoch for store id, if higher than what the file
// holds.
func (s *Store) writeHighWater(id []byte, epoch uint64) error {
	if s.hwFile == "" {
		return nil
	}
	s.hwMu.Lock()
	defer s.hwMu.Unlock()
	if cur, err := s.readHighWater(id); err == nil && cur >= epoch {
		return nil
	}
	tmp := s.hwFile + ".tmp"
	if err := os.WriteFile(tmp, fmt.Appendf(nil, "%x %d\n", id, epoch), 0o600); err != nil {
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

// resetHighWater forgets the mark (a restore rolled the store back).
func (s *Store) resetHighWater() {
	if s.hwFile != "" {
		os.Remove(s.hwFile)
	}
}

package keystore

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"slices"
	"strings"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
)

// RestoreOptions say how Restore treats the store it replaces.
type RestoreOptions struct {
	// Force replaces a store that holds keys; without it, such a restore
	// is refused and nothing changes.
	Force bool
	// Caller is the uid whose keys the report names (others' are counted).
	Caller uint32
}

// RestoreReport compares the store a restore replaces (or would replace)
// with the backup. It is read from the records as they are, unchecked:
// what it says of the backup is only as true as the backup, whose records
// are checked at the next unseal.
type RestoreReport struct {
	// Key records (quarantined ones included) in the store and the backup.
	KeysNow, KeysInBackup uint64
	// Keys the restore loses: made since the backup (Created), given a
	// newer version since (Rotated), or changed since in another way
	// (attributes, ACL, lifecycle, versions retired or trimmed: Changed).
	// Returning keys were destroyed since the backup and come back.
	Created, Rotated, Changed, Returning uint64
	// The caller's keys of each kind, by name (by id if unnamed).
	YoursCreated, YoursRotated, YoursChanged, YoursReturning []string
	// The master key's generation in the store and in the backup (0 if
	// none).
	GenerationNow, GenerationInBackup uint64
	// Replaced is the file the replaced store is kept in ("" if none).
	Replaced string
}

// Loses reports whether the restore loses a key or a change to one.
func (r *RestoreReport) Loses() bool { return r.Created+r.Rotated+r.Changed > 0 }

// maxNamed bounds the caller's keys named per kind in String.
const maxNamed = 16

// String describes the report in a sentence or two.
func (r *RestoreReport) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "the store holds %d %s, the backup %d", r.KeysNow, plural(r.KeysNow, "key", "keys"), r.KeysInBackup)
	kind := func(n uint64, what string, yours []string) string {
		s := fmt.Sprintf("%d %s", n, what)
		if len(yours) > 0 {
			named := yours[:min(len(yours), maxNamed)]
			s += " (yours: " + strings.Join(named, ", ")
			if len(yours) > len(named) {
				s += fmt.Sprintf(" and %d more", len(yours)-len(named))
			}
			s += ")"
		}
		return s
	}
	var lost []string
	if r.Created > 0 {
		lost = append(lost, kind(r.Created, plural(r.Created, "key", "keys")+" created since the backup", r.YoursCreated))
	}
	if r.Rotated > 0 {
		lost = append(lost, kind(r.Rotated, plural(r.Rotated, "key", "keys")+" rotated since (their newer versions)", r.YoursRotated))
	}
	if r.Changed > 0 {
		lost = append(lost, kind(r.Changed, plural(r.Changed, "key", "keys")+" changed since (attributes, access or versions)", r.YoursChanged))
	}
	if len(lost) == 0 {
		b.WriteString("; no key made, rotated or changed since the backup is lost")
	} else {
		b.WriteString("; the restore loses " + strings.Join(lost, ", "))
	}
	if r.Returning > 0 {
		b.WriteString("; " + kind(r.Returning, plural(r.Returning, "key", "keys")+" destroyed since the backup come back", r.YoursReturning))
	}
	if r.GenerationInBackup != r.GenerationNow && r.GenerationNow != 0 {
		fmt.Fprintf(&b, "; the backup's master key is generation %d (the store's is %d): it unseals with the passphrase or shares of then",
			r.GenerationInBackup, r.GenerationNow)
	}
	return b.String()
}

func plural(n uint64, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// recordSummary is what the comparison keeps of a key record.
type recordSummary struct {
	sum    [sha256.Size]byte // of the record's lasting content (lasting)
	ok     bool              // the record decoded: owner, name and newest are its
	owner  uint32
	name   string
	newest uint32
}

// summarize reads a keys- or quarantine-bucket value. A value that does
// not decode is summarized by its bytes.
func summarize(v []byte) recordSummary {
	_, rb, err := persist.SplitValue(v)
	r := &persist.KeyRecord{}
	if err != nil || r.UnmarshalVT(rb) != nil {
		return recordSummary{sum: sha256.Sum256(v)}
	}
	s := recordSummary{ok: true, owner: r.Owner, name: r.Name}
	for _, kv := range r.Versions {
		s.newest = max(s.newest, kv.Version)
	}
	s.sum = lasting(r)
	return s
}

// lasting hashes what a restore would give up of a record: it leaves out
// what changes without anyone changing the key (its revision, format,
// and the wrapping of its versions, which a master-key rotation redoes;
// the encryptions reserved, which use raises).
func lasting(r *persist.KeyRecord) [sha256.Size]byte {
	c := r.CloneVT()
	c.Rev, c.Format = 0, 0
	for _, v := range c.Versions {
		v.Blob, v.Fingerprint, v.MkGeneration, v.EncryptionsReserved, v.BudgetEpoch = nil, nil, 0, 0, 0
	}
	b, err := c.MarshalVT()
	if err != nil {
		return sha256.Sum256(nil)
	}
	return sha256.Sum256(b)
}

func (s recordSummary) label(id []byte) string {
	if s.name != "" {
		return s.name
	}
	return hex.EncodeToString(id)
}

var recordBuckets = [][]byte{persist.BucketKeys, persist.BucketQuarantine}

// compare fills r from the store's records and the backup's (summaries by
// id, as read from the backup file).
func (s *Store) compare(backup map[string]recordSummary, caller uint32, r *RestoreReport) error {
	seen := make(map[string]bool, len(backup))
	err := s.db.View(func(tx store.Tx) error {
		for _, b := range recordBuckets {
			err := tx.ForEach(b, nil, func(id, v []byte) error {
				r.KeysNow++
				cur := summarize(v)
				old, found := backup[string(id)]
				seen[string(id)] = true
				var list *[]string
				switch {
				case !found:
					r.Created++
					list = &r.YoursCreated
				case cur.newest > old.newest:
					r.Rotated++
					list = &r.YoursRotated
				case cur.sum != old.sum:
					r.Changed++
					list = &r.YoursChanged
				default:
					return nil
				}
				if cur.ok && cur.owner == caller {
					*list = append(*list, cur.label(id))
				}
				return nil
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return storeErr(err)
	}
	r.KeysInBackup = uint64(len(backup))
	for id, old := range backup {
		if !seen[id] {
			r.Returning++
			if old.ok && old.owner == caller {
				r.YoursReturning = append(r.YoursReturning, old.label([]byte(id)))
			}
		}
	}
	for _, l := range [][]string{r.YoursCreated, r.YoursRotated, r.YoursChanged, r.YoursReturning} {
		slices.Sort(l)
	}
	return nil
}

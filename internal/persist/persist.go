package persist

import (
	"encoding/binary"
	"errors"
	"math/bits"
)

// Format is the version of the records and blobs this package writes.
const Format = 1

// Store buckets and the keys of the meta bucket.
var (
	BucketMeta  = []byte("meta")
	BucketKeys  = []byte("keys")
	BucketNames = []byte("names")
	// BucketQuarantine holds, by id, key records that failed their check
	// and that an administrator set aside (unseal --accept-store): kept as
	// evidence, out of the key set.
	BucketQuarantine = []byte("quarantine")

	MetaHeader = []byte("header")
	MetaMaster = []byte("master")
	// MetaBudgetEpoch holds the budget epoch, 8 bytes big-endian: the
	// number of machine generation changes the store has seen (0 if
	// absent). Key versions made in an earlier epoch no longer encrypt.
	MetaBudgetEpoch = []byte("budget-epoch")
)

// MACSize is the size of a record MAC (HMAC-SHA-256).
const MACSize = 32

// IDSize is the size of a key id.
const IDSize = 16

// ErrCorrupt is returned for a stored value that cannot be what this
// package wrote.
var ErrCorrupt = errors.New("store record is malformed")

// SplitValue splits a keys-bucket value into its MAC and record bytes.
// Both alias v.
func SplitValue(v []byte) (mac, rec []byte, err error) {
	if len(v) < MACSize+1 {
		return nil, nil, ErrCorrupt
	}
	return v[:MACSize], v[MACSize:], nil
}

// JoinValue makes a keys-bucket value: mac || rec.
func JoinValue(mac, rec []byte) []byte {
	v := make([]byte, 0, len(mac)+len(rec))
	return append(append(v, mac...), rec...)
}

// NameKey is the names-bucket key for owner's key called name:
// owner (4 bytes, big-endian) || name.
func NameKey(owner uint32, name string) []byte {
	k := make([]byte, 4, 4+len(name))
	binary.BigEndian.PutUint32(k, owner)
	return append(k, name...)
}

// BlobAAD returns the associated data that binds version v's sealed blob
// to its key and store: every attribute that decides what the key may do,
// the store epoch of the record's last write, and the master-key
// generation. docs/formats.md lists it byte by byte:
//
//	"KWS1" || store id (16) || key id (16) || version (4) || type (4) ||
//	class (4) || usage (4) || flags (1) || owner (4) || acl count (4) ||
//	acl entries (each: kind (1), id (4), usage (4)) || rev (8) ||
//	master-key generation (8)
//
// Integers are big-endian; flags: 1 exportable, 2 wrappable, 4 never
// exportable, 8 trusted.
func BlobAAD(dst, storeID []byte, r *KeyRecord, version uint32, mkGeneration uint64) []byte {
	be := binary.BigEndian
	dst = append(dst, "KWS1"...)
	dst = append(dst, pad16(storeID)...)
	dst = append(dst, pad16(r.Id)...)
	dst = be.AppendUint32(dst, version)
	dst = be.AppendUint32(dst, r.Type)
	dst = be.AppendUint32(dst, r.Class)
	dst = be.AppendUint32(dst, r.Usage)
	var flags byte
	if r.Exportable {
		flags |= 1
	}
	if r.Wrappable {
		flags |= 2
	}
	if r.NeverExportable {
		flags |= 4
	}
	if r.Trusted {
		flags |= 8
	}
	dst = append(dst, flags)
	dst = be.AppendUint32(dst, r.Owner)
	dst = be.AppendUint32(dst, uint32(len(r.Acl)))
	for _, e := range r.Acl {
		kind := byte(0)
		if e.Group {
			kind = 1
		}
		dst = append(dst, kind)
		dst = be.AppendUint32(dst, e.Id)
		dst = be.AppendUint32(dst, e.Usage)
	}
	dst = be.AppendUint64(dst, r.Rev)
	dst = be.AppendUint64(dst, mkGeneration)
	return dst
}

// pad16 returns b if it is 16 bytes, else 16 bytes that cannot collide
// with a valid one's encoding in practice (ids are always 16 bytes; this
// only keeps the layout fixed for malformed input).
func pad16(b []byte) []byte {
	if len(b) == 16 {
		return b
	}
	var p [16]byte
	copy(p[:], b)
	return p[:]
}

// HeaderMACInput returns the bytes the header's MAC covers: its encoding
// with the mac field empty. (It sets h.Mac aside while it encodes: h must
// not be in use elsewhere.)
func HeaderMACInput(h *StoreHeader) ([]byte, error) {
	mac := h.Mac
	h.Mac = nil
	b, err := h.MarshalVT()
	h.Mac = mac
	return b, err
}

// Acc is the header's accumulator: the sum of every record's MAC as a
// 256-bit big-endian number, modulo 2^256. Adding a record adds its MAC;
// removing subtracts it. Without the index key no one can compute a MAC,
// so no one can change the set of records and keep the sum.
type Acc [32]byte

// AccFrom reads an accumulator; a nil or empty slice is zero.
func AccFrom(b []byte) (Acc, error) {
	var a Acc
	if len(b) == 0 {
		return a, nil
	}
	if len(b) != len(a) {
		return a, ErrCorrupt
	}
	copy(a[:], b)
	return a, nil
}

// Add adds mac (32 bytes) to a.
func (a *Acc) Add(mac []byte) {
	var carry uint64
	for i := 24; i >= 0; i -= 8 {
		x := binary.BigEndian.Uint64(a[i:])
		y := binary.BigEndian.Uint64(mac[i:])
		s, c := bits.Add64(x, y, carry)
		binary.BigEndian.PutUint64(a[i:], s)
		carry = c
	}
}

// Sub subtracts mac (32 bytes) from a.
func (a *Acc) Sub(mac []byte) {
	var borrow uint64
	for i := 24; i >= 0; i -= 8 {
		x := binary.BigEndian.Uint64(a[i:])
		y := binary.BigEndian.Uint64(mac[i:])
		d, b := bits.Sub64(x, y, borrow)
		binary.BigEndian.PutUint64(a[i:], d)
		borrow = b
	}
}

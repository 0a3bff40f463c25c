package persist

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"math/bits"
)

// Format is the version of the records, header and master record this
// package writes. FormatLegacy is the one before, which the daemon still
// reads and upgrades (docs/formats.md, "Stores of format 1").
const (
	Format       = 2
	FormatLegacy = 1
	// FormatShardHeader is the format of the headers of a store of
	// several shards (StoreHeader.shards): otherwise those of Format,
	// with a number that a daemon without shards refuses, rather than
	// take one shard's header for the whole store's.
	FormatShardHeader = 3
)

// The labels that start the input of every HMAC under a generation's
// index key, each ending in a zero byte: no label is a prefix of another,
// so no MAC of one kind is the MAC of another kind of data.
const (
	LabelRecord    = "keywarden key record v2\x00"
	LabelHeader    = "keywarden store header v2\x00"
	LabelSum       = "keywarden store sum v2\x00"
	LabelSumPad    = "keywarden store sum pad v2\x00"
	LabelMaster    = "keywarden master record v2\x00"
	LabelBlobKey   = "keywarden blob v2\x00"
	NonceSize      = 16 // StoreHeader.acc_nonce
	FingerprintLen = 16
)

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
	// MetaRestoring marks a shared store being restored from a backup in
	// several transactions: present, the store has no header, and the
	// restore must be run again.
	MetaRestoring = []byte("restoring")
	// MetaRestoreFloor, in a shared store restored from a backup, holds
	// 8 bytes big-endian: the highest header epoch the store had before
	// the restore. The first unseal after the restore writes a header
	// whose epoch is above it, under the master key, and removes it: no
	// header of before the restore is then accepted again.
	MetaRestoreFloor = []byte("restore-floor")
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

// LegacyBlobAAD returns the associated data of format 1 that binds version
// v's sealed blob to its key and store: every attribute that decides what
// the key may do, the store epoch of the record's last write, and the
// master-key generation:
//
//	"KWS1" || store id (16) || key id (16) || version (4) || type (4) ||
//	class (4) || usage (4) || flags (1) || owner (4) || acl count (4) ||
//	acl entries (each: kind (1), id (4), usage (4)) || rev (8) ||
//	master-key generation (8)
//
// Integers are big-endian; flags: 1 exportable, 2 wrappable, 4 never
// exportable, 8 trusted.
func LegacyBlobAAD(dst, storeID []byte, r *KeyRecord, version uint32, mkGeneration uint64) []byte {
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

// BlobAAD returns the associated data of version v's blob in a record of
// format 2 (docs/formats.md):
//
//	"KWS2" || store id (16) || key id (16) || version (4) || record hash (32)
//
// where the record hash (RecordHash) covers every field of the record
// but the blobs themselves: whoever could forge a record's MAC could not
// change any of it (origin, minimum version, budgets, rotation settings,
// fingerprints …) without its blobs failing to open.
func BlobAAD(dst, storeID, keyID []byte, version uint32, recordHash *[sha256.Size]byte) []byte {
	dst = append(dst, "KWS2"...)
	dst = append(dst, pad16(storeID)...)
	dst = append(dst, pad16(keyID)...)
	dst = binary.BigEndian.AppendUint32(dst, version)
	return append(dst, recordHash[:]...)
}

// RecordHash returns SHA-256 of r's encoding with every version's blob
// empty: r as it is (or will be) stored, blobs aside. (It sets the blobs
// aside while it encodes: r must not be in use elsewhere.)
func RecordHash(r *KeyRecord) (h [sha256.Size]byte, err error) {
	blobs := make([][]byte, len(r.Versions))
	for i, v := range r.Versions {
		blobs[i], v.Blob = v.Blob, nil
	}
	b, err := r.MarshalVT()
	for i, v := range r.Versions {
		v.Blob = blobs[i]
	}
	if err != nil {
		return h, err
	}
	return sha256.Sum256(b), nil
}

// Generation returns the master-key generation of r's versions, which a
// record of format 2 must share, and whether they do.
func Generation(r *KeyRecord) (uint64, bool) {
	if len(r.Versions) == 0 {
		return 0, false
	}
	g := r.Versions[0].MkGeneration
	for _, v := range r.Versions[1:] {
		if v.MkGeneration != g {
			return 0, false
		}
	}
	return g, true
}

// BlobKeyInfo returns the HKDF info of the key that seals the blobs of key
// id's record at revision rev: LabelBlobKey || store id || id || rev.
func BlobKeyInfo(storeID, id []byte, rev uint64) []byte {
	b := make([]byte, 0, len(LabelBlobKey)+32+8)
	b = append(append(append(b, LabelBlobKey...), pad16(storeID)...), pad16(id)...)
	return binary.BigEndian.AppendUint64(b, rev)
}

// MasterMACInput returns the bytes the master record's MAC covers:
// LabelMaster || its encoding with the mac field empty. (It sets r.Mac
// aside while it encodes.)
func MasterMACInput(r *MasterRecord) ([]byte, error) {
	mac := r.Mac
	r.Mac = nil
	b, err := r.MarshalVT()
	r.Mac = mac
	return append([]byte(LabelMaster), b...), err
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
// with the mac field empty, after LabelHeader in format 2 (format 1: the
// encoding alone). (It sets h.Mac aside while it encodes: h must not be
// in use elsewhere.)
func HeaderMACInput(h *StoreHeader) ([]byte, error) {
	mac := h.Mac
	h.Mac = nil
	b, err := h.MarshalVT()
	h.Mac = mac
	if h.Format == FormatLegacy {
		return b, err
	}
	return append([]byte(LabelHeader), b...), err
}

// RecordMACInput returns the bytes a record's MAC covers in format 2:
// LabelRecord || rb, appended to dst.
func RecordMACInput(dst, rb []byte) []byte {
	return append(append(dst, LabelRecord...), rb...)
}

// SumInput returns the input of a record's summand: LabelSum || the
// record's mac (55 bytes: one block of SHA-256), appended to dst. The mac
// covers every byte of the record, its id and revision among them.
func SumInput(dst, mac []byte) []byte {
	return append(append(dst, LabelSum...), mac...)
}

// Acc is the header's accumulator: a sum of 256-bit big-endian numbers,
// one per record, modulo 2^256. Adding a record adds its summand;
// removing subtracts it. The summands of format 2 are MACs of the
// records' MACs under a key no one but the daemon has, and the stored sum
// is encrypted, so that what the file shows says nothing of the summands
// (format 1 summed the MACs themselves, which the file shows).
type Acc [32]byte

// Xor xors a with pad (32 bytes): the accumulator's encryption.
func (a *Acc) Xor(pad []byte) {
	for i := range a {
		a[i] ^= pad[i]
	}
}

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

// MaxShards bounds the shards of a store (StoreHeader.shards): a power of
// two, so that every shard holds as many of the random ids.
const MaxShards = 64

// ShardsOK reports whether n is a shard count a store may have: a power
// of two from 1 to MaxShards (0, in a header, is 1).
func ShardsOK(n uint32) bool { return n >= 1 && n <= MaxShards && n&(n-1) == 0 }

// ShardOf returns the shard of the record of key id in a store of n
// shards: its first byte modulo n. A record's shard follows from its id,
// which its MAC, its blobs' associated data and its key in the bucket
// all cover: a record is in no other shard.
func ShardOf(id []byte, n uint32) uint32 {
	if n <= 1 || len(id) == 0 {
		return 0
	}
	return uint32(id[0]) & (n - 1)
}

// ShardHeaderKey returns the meta bucket's key of shard i's header:
// MetaHeader for shard 0 (the one header of a store of one shard),
// "header/i" for the others.
func ShardHeaderKey(i uint32) []byte {
	if i == 0 {
		return MetaHeader
	}
	return fmt.Appendf(nil, "%s/%d", MetaHeader, i)
}

// IsHeaderKey reports whether k, a key of the meta bucket, is a shard's
// header (MetaHeader or "header/i").
func IsHeaderKey(k []byte) bool {
	return bytes.Equal(k, MetaHeader) || bytes.HasPrefix(k, append(bytes.Clone(MetaHeader), '/'))
}

// HeaderKeyShard returns the shard whose header key k is (ShardHeaderKey),
// and whether it is one.
func HeaderKeyShard(k []byte) (uint32, bool) {
	if bytes.Equal(k, MetaHeader) {
		return 0, true
	}
	if !IsHeaderKey(k) {
		return 0, false
	}
	var i uint32
	digits := k[len(MetaHeader)+1:]
	if len(digits) == 0 || len(digits) > 3 || digits[0] == '0' {
		return 0, false
	}
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		i = 10*i + uint32(c-'0')
	}
	return i, i < MaxShards
}

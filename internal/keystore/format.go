package keystore

import (
	"bytes"
	"crypto/hmac"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/store"
)

// The cryptography of the store's format (docs/formats.md), in one place:
// which key checks a record, what the accumulator sums, how blobs and
// fingerprints are sealed. Records of format 2 are made by the keys of a
// master-key generation (seal.Keys), each with its label; records of
// format 1 remain only while a store upgraded from it is re-written, and
// are checked under format 1's index key.

// recordKind says under which rules a record was made.
type recordKind struct {
	legacy bool   // format 1
	gen    uint64 // format 2: the master-key generation
}

// kindOf returns the rules of record r, or errRecord if k accepts none:
// a record of format 2 whose versions share a generation k holds, or one
// of format 1 while k accepts them.
func kindOf(k *seal.Keys, r *persist.KeyRecord) (recordKind, error) {
	switch r.Format {
	case persist.Format:
		if g, ok := persist.Generation(r); ok && k.HasGeneration(g) {
			return recordKind{gen: g}, nil
		}
	case 0:
		if k.Legacy() {
			return recordKind{legacy: true}, nil
		}
	}
	return recordKind{}, errRecord
}

// recordMAC returns the MAC of record bytes rb made under rules c,
// appended to dst.
func recordMAC(k *seal.Keys, c recordKind, dst, rb []byte) ([]byte, error) {
	if c.legacy {
		return k.LegacyMAC(dst, rb)
	}
	in := persist.RecordMACInput(make([]byte, 0, len(persist.LabelRecord)+len(rb)), rb)
	if dst == nil {
		// The MAC is not secret: made here, outside the secret state,
		// where an allocation costs more.
		dst = make([]byte, 0, persist.MACSize)
	}
	return k.MAC(c.gen, dst, in)
}

// summand returns a record's summand in the accumulator: the MAC, under
// the current generation's index key, of the record's MAC (which covers
// its id, its revision and every other byte of it). Whatever made the
// record, its summand is the current generation's: no one who held an
// older master key can compute it.
func summand(k *seal.Keys, mac []byte) ([]byte, error) {
	var buf [len(persist.LabelSum) + persist.MACSize]byte
	return k.MAC(k.Generation, nil, persist.SumInput(buf[:0], mac))
}

// accPad returns the pad that encrypts the accumulator in a header with
// this nonce.
func accPad(k *seal.Keys, nonce []byte) ([]byte, error) {
	return k.MAC(k.Generation, nil, append([]byte(persist.LabelSumPad), nonce...))
}

var errHeader = errors.New("the store header fails its integrity check")

// readHeader reads and checks the header of shard 0 (the one header of a
// store of one shard), and returns it with its accumulator (decrypted).
// Its Shards says how many shards the store has.
func readHeader(tx store.Tx, k *seal.Keys) (*persist.StoreHeader, persist.Acc, error) {
	v := tx.Get(persist.BucketMeta, persist.MetaHeader)
	if v == nil {
		return nil, persist.Acc{}, errors.New("the store has no header")
	}
	return cachedHeader(k, v)
}

// readShard reads and checks the header of shard i of a store of n
// shards: it must name that shard, and that count.
func readShard(tx store.Tx, k *seal.Keys, i, n uint32) (*persist.StoreHeader, persist.Acc, error) {
	v := tx.Get(persist.BucketMeta, persist.ShardHeaderKey(i))
	if v == nil {
		if i == 0 {
			return nil, persist.Acc{}, errors.New("the store has no header")
		}
		return nil, persist.Acc{}, fmt.Errorf("%w: shard %d of %d has no header (deleted)", errHeader, i, n)
	}
	h, acc, err := cachedHeader(k, v)
	if err == nil && (h.Shard != i || shardsOf(h) != n) {
		return nil, acc, fmt.Errorf("%w: the header of shard %d of %d where shard %d of %d's belongs", errHeader, h.Shard, shardsOf(h), i, n)
	}
	return h, acc, err
}

// shardsOf returns the number of shards a checked header names.
func shardsOf(h *persist.StoreHeader) uint32 { return max(h.Shards, 1) }

func cachedHeader(k *seal.Keys, v []byte) (*persist.StoreHeader, persist.Acc, error) {
	if h, acc, ok := headers.get(k, v); ok {
		return h, acc, nil
	}
	h, acc, err := checkHeader(k, v)
	if err == nil {
		headers.put(k, v, h, acc)
	}
	return h, acc, err
}

// shardSet holds the shard headers a transaction has read, each with its
// accumulator, to be written back at its end (writeShards): a write of
// records reads and writes the headers of their shards only.
type shardSet struct {
	n   uint32
	h   []*persist.StoreHeader // nil: not read
	acc []persist.Acc
}

func newShardSet(n uint32) *shardSet {
	n = max(n, 1)
	return &shardSet{n: n, h: make([]*persist.StoreHeader, n), acc: make([]persist.Acc, n)}
}

// of returns the header and accumulator of the shard of key id, read and
// checked at the first call.
func (st *shardSet) of(tx store.Tx, k *seal.Keys, id []byte) (*persist.StoreHeader, *persist.Acc, error) {
	i := persist.ShardOf(id, st.n)
	if st.h[i] == nil {
		h, acc, err := readShard(tx, k, i, st.n)
		if err != nil {
			return nil, nil, err
		}
		st.h[i], st.acc[i] = h, acc
	}
	return st.h[i], &st.acc[i], nil
}

// readShards reads and checks every shard's header (shard 0's gives how
// many there are).
func readShards(tx store.Tx, k *seal.Keys) (*shardSet, error) {
	h0, acc0, err := readHeader(tx, k)
	if err != nil {
		return nil, err
	}
	st := newShardSet(shardsOf(h0))
	st.h[0], st.acc[0] = h0, acc0
	for i := uint32(1); i < st.n; i++ {
		if st.h[i], st.acc[i], err = readShard(tx, k, i, st.n); err != nil {
			return nil, err
		}
	}
	return st, nil
}

// writeShards writes every header of st that was read.
func (s *Store) writeShards(tx store.Tx, k *seal.Keys, st *shardSet) error {
	for i, h := range st.h {
		if h != nil {
			if err := s.writeHeader(tx, k, h, st.acc[i]); err != nil {
				return err
			}
		}
	}
	return nil
}

// maxEpoch returns the highest epoch of the headers of st that were read.
func (st *shardSet) maxEpoch() uint64 {
	var e uint64
	for _, h := range st.h {
		if h != nil {
			e = max(e, h.Epoch)
		}
	}
	return e
}

// epochs returns the epochs of st's headers, by shard.
func (st *shardSet) epochs() []uint64 {
	e := make([]uint64, st.n)
	for i, h := range st.h {
		if h != nil {
			e[i] = h.Epoch
		}
	}
	return e
}

// checkHeader decodes and checks encoded store header v under keys k.
func checkHeader(k *seal.Keys, v []byte) (*persist.StoreHeader, persist.Acc, error) {
	var acc persist.Acc
	h := &persist.StoreHeader{}
	if err := h.UnmarshalVT(v); err != nil {
		return nil, acc, fmt.Errorf("store header: %w", persist.ErrCorrupt)
	}
	want := uint32(persist.Format)
	if k.LegacyHeader() {
		want = persist.FormatLegacy
	} else if h.Shards > 1 {
		want = persist.FormatShardHeader
	}
	if h.Format != want {
		return nil, acc, fmt.Errorf("%w: a header of format %d in a store of format %d", errHeader, h.Format, want)
	}
	in, err := persist.HeaderMACInput(h)
	if err != nil {
		return nil, acc, err
	}
	var mac []byte
	if k.LegacyHeader() {
		mac, err = k.LegacyMAC(nil, in)
	} else {
		mac, err = k.MAC(k.Generation, make([]byte, 0, persist.MACSize), in)
	}
	if err != nil {
		return nil, acc, err
	}
	if !hmac.Equal(mac, h.Mac) || !bytes.Equal(h.StoreId, k.StoreID) {
		return nil, acc, errHeader
	}
	if n := shardsOf(h); !persist.ShardsOK(n) || h.Shard >= n || (n > 1 && k.LegacyHeader()) {
		return nil, acc, fmt.Errorf("%w: shard %d of %d", errHeader, h.Shard, h.Shards)
	}
	if acc, err = persist.AccFrom(h.Acc); err != nil {
		return nil, acc, err
	}
	if !k.LegacyHeader() {
		if len(h.Acc) != len(acc) || len(h.AccNonce) != persist.NonceSize {
			return nil, acc, errHeader
		}
		pad, err := accPad(k, h.AccNonce)
		if err != nil {
			return nil, acc, err
		}
		acc.Xor(pad)
	}
	return h, acc, nil
}

// writeHeader writes h, with accumulator acc, in format 2 under k's
// current generation, as the header of the shard it names. Every write of the header goes through it, and
// carries the store's budget epoch (h.BudgetEpoch never goes down): the
// plain copy in the meta bucket, which a generation change writes even
// while the daemon is sealed, has no MAC, and someone who puts an older
// value there must not reopen the versions a change closed (budget.go).
func (s *Store) writeHeader(tx store.Tx, k *seal.Keys, h *persist.StoreHeader, acc persist.Acc) error {
	h.BudgetEpoch = max(h.BudgetEpoch, s.epoch.cur.Load())
	b, err := encodeHeader(k, h, acc)
	if err != nil {
		return err
	}
	return tx.Put(persist.BucketMeta, persist.ShardHeaderKey(h.Shard), b)
}

func encodeHeader(k *seal.Keys, h *persist.StoreHeader, acc persist.Acc) ([]byte, error) {
	h.Format = persist.Format
	if h.Shards > 1 {
		h.Format = persist.FormatShardHeader
	}
	h.AccNonce = make([]byte, persist.NonceSize)
	if err := random.Read(h.AccNonce); err != nil {
		return nil, err
	}
	pad, err := accPad(k, h.AccNonce)
	if err != nil {
		return nil, err
	}
	plain := acc
	acc.Xor(pad)
	h.Acc = bytes.Clone(acc[:])
	h.Mac = nil
	in, err := persist.HeaderMACInput(h)
	if err != nil {
		return nil, err
	}
	if h.Mac, err = k.MAC(k.Generation, make([]byte, 0, persist.MACSize), in); err != nil {
		return nil, err
	}
	b, err := h.MarshalVT()
	if err == nil && !k.LegacyHeader() && bytes.Equal(h.StoreId, k.StoreID) {
		// What readHeader would make of it, under these keys: the
		// daemon reads it back at its next write and as its follower
		// sees its commit, without checking it again.
		headers.put(k, b, h, plain)
	}
	return b, err
}

// headers remembers the last few store headers that were checked (or
// made) under some keys: the encoded header, and what readHeader gives of
// it. A header read again with the same bytes under the same keys (the
// one this daemon wrote last, read by its next write and by its follower;
// one another daemon wrote, checked by the follower and then read by this
// daemon's next write) is not checked again: the check of the same bytes
// under the same keys, of the same format (the upgrade from format 1
// changes it), gives the same answer.
var headers headerCache

type headerCache struct {
	mu   sync.Mutex
	next int
	e    [8]headerEntry
}

type headerEntry struct {
	k *seal.Keys
	// legacy is k.LegacyHeader() at the check: the upgrade from format 1
	// changes it under the same keys, and with it the check's answer.
	legacy bool
	raw    []byte
	h      *persist.StoreHeader
	acc    persist.Acc
}

// get returns a copy of what readHeader gives of raw under k, if it is
// remembered.
func (c *headerCache) get(k *seal.Keys, raw []byte) (*persist.StoreHeader, persist.Acc, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	for i := range c.e {
		if e := &c.e[i]; e.k == k && e.legacy == k.LegacyHeader() && bytes.Equal(e.raw, raw) {
			return e.h.CloneVT(), e.acc, true
		}
	}
	return nil, persist.Acc{}, false
}

// put remembers h and acc, checked, as what readHeader gives of raw under
// k (copies of them).
func (c *headerCache) put(k *seal.Keys, raw []byte, h *persist.StoreHeader, acc persist.Acc) {
	e := headerEntry{k: k, legacy: k.LegacyHeader(), raw: bytes.Clone(raw), h: h.CloneVT(), acc: acc}
	c.mu.Lock()
	defer c.mu.Unlock()
	c.e[c.next] = e
	c.next = (c.next + 1) % len(c.e)
}

// NewHeader returns the encoded header of an empty store for keys k.
func NewHeader(k *seal.Keys, now time.Time) ([]byte, error) {
	h := &persist.StoreHeader{StoreId: k.StoreID, CreatedUnixNano: now.UnixNano()}
	return encodeHeader(k, h, persist.Acc{})
}

// sealRecord makes r a record of format 2 of k's current generation, as
// it will be written: its fingerprints (inner values, as the store keeps
// them in memory) encrypted, and every version's canonical bytes (given
// by plain, in the order of r.Versions) sealed under the blob key of its
// id and revision, with associated data that covers every field of r. It
// returns r's encoding and MAC.
func sealRecord(k *seal.Keys, r *persist.KeyRecord, plain func(i int, fn func([]byte) error) error) (rb, mac []byte, err error) {
	r.Format = persist.Format
	var fps []*[seal.FingerprintSize]byte
	sizes := make([]int, len(r.Versions))
	for i, v := range r.Versions {
		v.MkGeneration = k.Generation
		sizes[i] = len(v.Blob)
		v.Blob = nil
		if len(v.Fingerprint) == seal.FingerprintSize {
			v.Fingerprint = bytes.Clone(v.Fingerprint)
			fps = append(fps, (*[seal.FingerprintSize]byte)(v.Fingerprint))
		}
	}
	if err := k.SealFingerprints(len(fps), func(i int) *[seal.FingerprintSize]byte { return fps[i] }); err != nil {
		return nil, nil, err
	}
	hash, err := persist.RecordHash(r)
	if err != nil {
		return nil, nil, err
	}
	// What is not secret is made before secmem.Do, where each allocation
	// costs: the associated data and room for the blobs (as large as the
	// ones they replace, or as an elliptic-curve key's).
	blobs := make([][]byte, len(r.Versions))
	aads := make([][]byte, len(r.Versions))
	for i, v := range r.Versions {
		aads[i] = persist.BlobAAD(nil, k.StoreID, r.Id, v.Version, &hash)
		blobs[i] = make([]byte, 0, max(sizes[i], 12+16+64))
	}
	err = k.SealBlobs(r.Id, r.Rev, func(seal seal.BlobSealer) error {
		for i := range r.Versions {
			err := plain(i, func(b []byte) error {
				var err error
				blobs[i], err = seal(blobs[i], aads[i], b)
				return err
			})
			if err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	for i, v := range r.Versions {
		v.Blob = blobs[i]
	}
	if rb, err = r.MarshalVT(); err != nil {
		return nil, nil, err
	}
	mac, err = recordMAC(k, recordKind{gen: k.Generation}, nil, rb)
	return rb, mac, err
}

// openBlobs opens every version's blob of r, a checked record, and calls
// fn with each one's canonical bytes (inside secmem.Do; fn must not keep
// them, and they are wiped after).
func openBlobs(k *seal.Keys, r *persist.KeyRecord, fn func(i int, b []byte) error) error {
	return openVersions(k, r, -1, fn)
}

// openVersions is openBlobs for version index only (all if it is -1).
func openVersions(k *seal.Keys, r *persist.KeyRecord, only int, fn func(i int, b []byte) error) error {
	c, err := kindOf(k, r)
	if err != nil {
		return err
	}
	if c.legacy {
		for i, v := range r.Versions {
			if only >= 0 && i != only {
				continue
			}
			aad := persist.LegacyBlobAAD(nil, k.StoreID, r, v.Version, v.MkGeneration)
			var err error
			secmem.Do(func() {
				var b []byte
				if b, err = k.OpenLegacyBlob(v.MkGeneration, aad, v.Blob); err != nil {
					return
				}
				err = fn(i, b)
				clear(b)
			})
			if err != nil {
				return err
			}
		}
		return nil
	}
	hash, err := persist.RecordHash(r)
	if err != nil {
		return err
	}
	aads := make([][]byte, len(r.Versions))
	for i, v := range r.Versions {
		aads[i] = persist.BlobAAD(nil, k.StoreID, r.Id, v.Version, &hash)
	}
	return k.OpenBlobs(c.gen, r.Id, r.Rev, func(open seal.BlobOpener) error {
		for i, v := range r.Versions {
			if only >= 0 && i != only {
				continue
			}
			b, err := open(aads[i], v.Blob)
			if err != nil {
				return err
			}
			err = fn(i, b)
			clear(b)
			if err != nil {
				return err
			}
		}
		return nil
	})
}

// openFingerprints turns the fingerprints of r, a checked record, into
// the inner values the store keeps in memory, in place (r's own slices
// are replaced, not written to).
func openFingerprints(k *seal.Keys, r *persist.KeyRecord) error {
	c, err := kindOf(k, r)
	if err != nil || c.legacy { // format 1 kept the inner values
		return err
	}
	var fps []*[seal.FingerprintSize]byte
	for _, v := range r.Versions {
		if len(v.Fingerprint) == seal.FingerprintSize {
			v.Fingerprint = bytes.Clone(v.Fingerprint)
			fps = append(fps, (*[seal.FingerprintSize]byte)(v.Fingerprint))
		}
	}
	return k.OpenFingerprints(c.gen, len(fps), func(i int) *[seal.FingerprintSize]byte { return fps[i] })
}

package keystore

import (
	"bytes"
	"crypto/hmac"
	"fmt"
	"runtime"
	"slices"
	"sync"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
)

// The scan of every key record at unseal (Verify). It checks that each
// record decodes and names its own id and its MAC (under the rules it
// was made by: format.go), counts the records and each owner's keys, and
// sums the records' summands for the accumulator (and, for a header of
// format 1, their MACs). A million records take about a second on one
// core, so the work is spread over the CPUs: one goroutine walks the
// bucket in the transaction and hands batches of records (slices of the
// transaction's memory, which stays valid until the scan returns) to
// workers, each with its own partial sums; every batch's MACs and
// summands are computed with one entry into the index key's secret state
// each, into buffers of the worker's, so that checking a record allocates
// nothing in there.

// prefetcher is a store that can read itself into memory ahead of a scan
// (store.Bolt).
type prefetcher interface{ Prefetch() }

// verifyBatch is the number of records handed to a worker at once.
const verifyBatch = 256

// verifyScan is what scanRecords found, or one worker's share of it.
type verifyScan struct {
	owned map[uint32]int
	bad   map[key.ID]struct{}
	// count counts the records, and acc sums their summands, by the
	// shard of their id in a store of persist.MaxShards shards (a store of
	// fewer adds them up: fold); legacyAcc sums their MACs (the
	// accumulator of a header of format 1).
	count     [persist.MaxShards]uint64
	acc       [persist.MaxShards]persist.Acc
	legacyAcc persist.Acc
	// mats are the (fingerprint, holder) entries of the good records.
	mats []matEntry
	// seen are the ids and MAC tags of the records (Store.seen), in id
	// order: the walk of the bucket notes them; the bad ones are taken
	// out after.
	seen []seenEntry
}

type matEntry struct {
	fp fingerprint
	h  holder
}

type verifyJob struct {
	ids, vals [][]byte
}

// scanRecords checks every record of the keys bucket in tx, of which
// there should be expect.
func scanRecords(tx store.Tx, k *seal.Keys, expect uint64) (verifyScan, error) {
	workers := max(1, runtime.GOMAXPROCS(0))
	jobs := make(chan *verifyJob, 2*workers)
	free := make(chan *verifyJob, 3*workers)
	parts := make([]verifyScan, workers)
	var wg sync.WaitGroup
	for w := range parts {
		wg.Go(func() {
			p := &parts[w]
			p.owned = make(map[uint32]int)
			p.bad = make(map[key.ID]struct{})
			var c checker
			for j := range jobs {
				c.check(k, j, p)
				j.ids, j.vals = j.ids[:0], j.vals[:0]
				select {
				case free <- j:
				default:
				}
			}
		})
	}
	newJob := func() *verifyJob {
		select {
		case j := <-free:
			return j
		default:
			return &verifyJob{ids: make([][]byte, 0, verifyBatch), vals: make([][]byte, 0, verifyBatch)}
		}
	}
	seen := make([]seenEntry, 0, min(expect, 1<<27))
	send := func(j *verifyJob) { jobs <- j }
	j := newJob()
	err := tx.ForEach(persist.BucketKeys, nil, func(id, v []byte) error {
		if len(id) == persist.IDSize && len(v) >= persist.MACSize {
			seen = append(seen, seenEntry{key.ID(id), macTag(v)})
		}
		j.ids = append(j.ids, id)
		j.vals = append(j.vals, v)
		if len(j.ids) == verifyBatch {
			send(j)
			j = newJob()
		}
		return nil
	})
	if len(j.ids) > 0 {
		send(j)
	}
	close(jobs)
	wg.Wait() // before the transaction, and the records' memory, goes away
	out := parts[0]
	for _, p := range parts[1:] {
		out.mats = append(out.mats, p.mats...)
		for i := range out.count {
			out.count[i] += p.count[i]
			out.acc[i].Add(p.acc[i][:])
		}
		out.legacyAcc.Add(p.legacyAcc[:])
		for o, n := range p.owned {
			out.owned[o] += n
		}
		for id := range p.bad {
			out.bad[id] = struct{}{}
		}
	}
	if len(out.bad) > 0 {
		seen = slices.DeleteFunc(seen, func(e seenEntry) bool { _, bad := out.bad[e.id]; return bad })
	}
	out.seen = seen
	return out, err
}

// fold returns the count and sum of the records of each shard of a store
// of n shards.
func (v *verifyScan) fold(n uint32) ([]uint64, []persist.Acc) {
	n = max(n, 1)
	count, acc := make([]uint64, n), make([]persist.Acc, n)
	for i := range v.count {
		j := persist.ShardOf([]byte{byte(i)}, n)
		count[j] += v.count[i]
		acc[j].Add(v.acc[i][:])
	}
	return count, acc
}

// total returns the number of records.
func (v *verifyScan) total() uint64 {
	var t uint64
	for _, c := range v.count {
		t += c
	}
	return t
}

// checker is a worker's reusable state.
type checker struct {
	macs []byte // verifyBatch MACs
	buf  []byte // the MAC input being made
	idx  []int
	// recs point into rec, whose records are decoded into in turn
	// (allocating only what their fields need).
	recs []*persist.KeyRecord
	rec  []persist.KeyRecord
	kind []recordKind
	ok   []bool
	// fps are the material entries of this batch to decrypt, by
	// generation: indexes into the worker's mats.
	fps map[uint64][]int
}

// check checks the records of j, adding what it finds to p.
func (c *checker) check(k *seal.Keys, j *verifyJob, p *verifyScan) {
	if c.macs == nil {
		c.macs = make([]byte, verifyBatch*persist.MACSize)
		c.fps = make(map[uint64][]int)
		c.buf = make([]byte, 0, 4096) // not grown inside secmem.Do, mostly
	}
	n := len(j.ids)
	c.ok = slices.Grow(c.ok[:0], n)[:n]
	c.recs = slices.Grow(c.recs[:0], n)[:n]
	c.kind = slices.Grow(c.kind[:0], n)[:n]
	if len(c.rec) < n {
		c.rec = make([]persist.KeyRecord, n)
	}
	clear(c.ok)
	clear(c.recs)
	// The summands of every record there is (a record that fails its
	// check counts in the sum as in the count: it is in the store).
	c.idx = c.idx[:0]
	for i, v := range j.vals {
		p.count[persist.ShardOf(j.ids[i], persist.MaxShards)]++
		if mac, _, err := persist.SplitValue(v); err == nil {
			c.idx = append(c.idx, i)
			if k.LegacyHeader() {
				p.legacyAcc.Add(mac)
			}
		}
	}
	// An error here, and below, means the keys are gone (sealed
	// meanwhile): no MAC is computed and every record counts as bad.
	k.MACEach(k.Generation, len(c.idx), func(m int) (data, dst []byte) {
		i := c.idx[m]
		c.buf = persist.SumInput(c.buf[:0], j.vals[i][:persist.MACSize])
		return c.buf, c.macs[m*persist.MACSize : m*persist.MACSize : (m+1)*persist.MACSize]
	}, func(m int, sum []byte) { p.acc[persist.ShardOf(j.ids[c.idx[m]], persist.MaxShards)].Add(sum) })
	// Decode each record, and find the rules it was made by.
	for i, v := range j.vals {
		_, rb, err := persist.SplitValue(v)
		if err != nil {
			continue
		}
		r := &c.rec[i]
		r.Reset()
		if err := r.UnmarshalVT(rb); err != nil || !bytes.Equal(r.Id, j.ids[i]) || len(r.Versions) == 0 {
			continue
		}
		kind, err := kindOf(k, r)
		if err != nil {
			continue
		}
		c.recs[i], c.kind[i] = r, kind
	}
	// Check the MACs, a pass per kind of record in the batch (almost
	// always one).
	for {
		var kind recordKind
		c.idx = c.idx[:0]
		for i, r := range c.recs {
			if r == nil || c.ok[i] {
				continue
			}
			if len(c.idx) == 0 {
				kind = c.kind[i]
			}
			if c.kind[i] == kind {
				c.idx = append(c.idx, i)
			}
		}
		if len(c.idx) == 0 {
			break
		}
		in := func(m int) (data, dst []byte) {
			rb := j.vals[c.idx[m]][persist.MACSize:]
			if !kind.legacy {
				c.buf = persist.RecordMACInput(c.buf[:0], rb)
				rb = c.buf
			}
			return rb, c.macs[m*persist.MACSize : m*persist.MACSize : (m+1)*persist.MACSize]
		}
		done := func(m int, want []byte) {
			i := c.idx[m]
			c.ok[i] = hmac.Equal(j.vals[i][:persist.MACSize], want)
		}
		var err error
		if kind.legacy {
			err = k.LegacyMACEach(len(c.idx), in, done)
		} else {
			err = k.MACEach(kind.gen, len(c.idx), in, done)
		}
		for _, i := range c.idx {
			if !c.ok[i] || err != nil {
				c.ok[i], c.recs[i] = false, nil // done with it: bad
			}
		}
	}
	for g := range c.fps {
		c.fps[g] = c.fps[g][:0]
	}
	for i, id := range j.ids {
		var kid key.ID
		copy(kid[:], id)
		if r := c.recs[i]; c.ok[i] && r != nil {
			if err := c.addMaterials(k, p, r, c.kind[i]); err == nil {
				p.owned[r.Owner]++
				continue
			}
		}
		p.bad[kid] = struct{}{}
	}
	for g, idx := range c.fps {
		err := k.OpenFingerprints(g, len(idx), func(m int) *[seal.FingerprintSize]byte { return &p.mats[idx[m]].fp })
		if err != nil { // the keys are gone: so are the entries
			for _, m := range idx {
				p.mats[m] = matEntry{}
			}
		}
	}
}

// addMaterials adds the material entries of r, a checked record of kind
// kind, to p: their fingerprints as stored, decrypted when the batch is
// done (c.fps). A version whose record carries no fingerprint (written
// before fingerprints were) is opened to compute it; one that does not
// open makes the record bad.
func (c *checker) addMaterials(k *seal.Keys, p *verifyScan, r *persist.KeyRecord, kind recordKind) error {
	spec := key.Lookup(key.Type(r.Type))
	class := key.Class(r.Class)
	if spec == nil || !spec.ClassOK(class) {
		return errRecord
	}
	var id key.ID
	copy(id[:], r.Id)
	a, p2, _ := recordAttrs(r)
	h := holderOf(id, r.Owner, spec, class, a, p2.Origin, len(r.AllowedPrograms) > 0)
	var computed map[int]fingerprint
	for i, v := range r.Versions {
		if len(v.Fingerprint) != seal.FingerprintSize {
			if computed == nil {
				var err error
				if computed, err = computeFingerprints(k, r, spec, class); err != nil {
					return err
				}
			}
			p.mats = append(p.mats, matEntry{fp: computed[i], h: h})
			continue
		}
		e := matEntry{h: h}
		copy(e.fp[:], v.Fingerprint)
		if !kind.legacy { // format 1 kept the inner values
			c.fps[kind.gen] = append(c.fps[kind.gen], len(p.mats))
		}
		p.mats = append(p.mats, e)
	}
	return nil
}

// computeFingerprints opens the blobs of r, a checked record, to compute
// the fingerprints of its versions, by index.
func computeFingerprints(k *seal.Keys, r *persist.KeyRecord, spec *key.Spec, class key.Class) (map[int]fingerprint, error) {
	fps := map[int]fingerprint{}
	err := openBlobs(k, r, func(i int, b []byte) error {
		m, err := mech.FromCanonical(spec, class, b)
		if err != nil {
			return err
		}
		fps[i], _, err = fingerprintOf(k, m)
		m.Destroy()
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("%v: %w", err, errRecord)
	}
	return fps, nil
}

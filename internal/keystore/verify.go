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
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/store"
)

// The scan of every key record at unseal (Verify). It checks each
// record's MAC and that the record decodes and names its own id, counts
// the records and each owner's keys, and sums the MACs for the
// accumulator. A million records take about a second on one core, so
// the work is spread over the CPUs: one goroutine walks the bucket in the
// transaction and hands batches of records (slices of the transaction's
// memory, which stays valid until the scan returns) to workers, each
// with its own partial sums; every batch's MACs are computed with one
// entry into the index key's secret state and written to a buffer of the
// worker's, so that checking a record allocates nothing in there.

// prefetcher is a store that can read itself into memory ahead of a scan
// (store.Bolt).
type prefetcher interface{ Prefetch() }

// verifyBatch is the number of records handed to a worker at once.
const verifyBatch = 256

// verifyScan is what scanRecords found, or one worker's share of it.
type verifyScan struct {
	owned map[uint32]int
	bad   map[key.ID]struct{}
	count uint64
	acc   persist.Acc
	// mats are the (fingerprint, holder) entries of the good records.
	mats []matEntry
	// seen are the ids and MAC tags of the good records (Store.seen).
	seen []seenEntry
}

type seenEntry struct {
	id  key.ID
	tag uint64
}

type matEntry struct {
	fp fingerprint
	h  holder
}

type verifyJob struct {
	ids, vals [][]byte
}

// scanRecords checks every record of the keys bucket in tx.
func scanRecords(tx store.Tx, k *seal.Keys) (verifyScan, error) {
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
	j := newJob()
	err := tx.ForEach(persist.BucketKeys, nil, func(id, v []byte) error {
		j.ids = append(j.ids, id)
		j.vals = append(j.vals, v)
		if len(j.ids) == verifyBatch {
			jobs <- j
			j = newJob()
		}
		return nil
	})
	if len(j.ids) > 0 {
		jobs <- j
	}
	close(jobs)
	wg.Wait() // before the transaction, and the records' memory, goes away
	out := parts[0]
	for _, p := range parts[1:] {
		out.mats = append(out.mats, p.mats...)
		out.seen = append(out.seen, p.seen...)
		out.count += p.count
		out.acc.Add(p.acc[:])
		for o, n := range p.owned {
			out.owned[o] += n
		}
		for id := range p.bad {
			out.bad[id] = struct{}{}
		}
	}
	return out, err
}

// checker is a worker's reusable state.
type checker struct {
	macs []byte // verifyBatch MACs
	recs [][]byte
	idx  []int
	ok   []bool
}

// check checks the records of j, adding what it finds to p.
func (c *checker) check(k *seal.Keys, j *verifyJob, p *verifyScan) {
	if c.macs == nil {
		c.macs = make([]byte, verifyBatch*persist.MACSize)
	}
	c.recs, c.idx = c.recs[:0], c.idx[:0]
	c.ok = slices.Grow(c.ok[:0], len(j.ids))[:len(j.ids)]
	clear(c.ok)
	for i, v := range j.vals {
		p.count++
		mac, rb, err := persist.SplitValue(v)
		if err != nil {
			continue
		}
		p.acc.Add(mac)
		c.recs = append(c.recs, rb)
		c.idx = append(c.idx, i)
	}
	// An error here means the index key is gone (sealed meanwhile): no
	// MAC is computed and every record counts as bad.
	k.MACEach(len(c.recs), func(n int) (data, dst []byte) {
		return c.recs[n], c.macs[n*persist.MACSize : n*persist.MACSize : (n+1)*persist.MACSize]
	}, func(n int, want []byte) {
		i := c.idx[n]
		c.ok[i] = hmac.Equal(j.vals[i][:persist.MACSize], want)
	})
	for i, id := range j.ids {
		var kid key.ID
		copy(kid[:], id)
		if c.ok[i] {
			r := &persist.KeyRecord{}
			if err := r.UnmarshalVT(j.vals[i][persist.MACSize:]); err == nil && bytes.Equal(r.Id, id) {
				if err := p.addMaterials(k, r); err == nil {
					p.owned[r.Owner]++
					p.seen = append(p.seen, seenEntry{kid, macTag(j.vals[i])})
					continue
				}
			}
		}
		p.bad[kid] = struct{}{}
	}
}

// addMaterials adds the material entries of r, a checked record, to p.
// A version whose record carries no fingerprint (written before
// fingerprints were) is opened to compute it; one that does not open
// makes the record bad.
func (p *verifyScan) addMaterials(k *seal.Keys, r *persist.KeyRecord) error {
	spec := key.Lookup(key.Type(r.Type))
	class := key.Class(r.Class)
	if spec == nil || !spec.ClassOK(class) {
		return errRecord
	}
	if class == key.Public {
		return nil
	}
	var id key.ID
	copy(id[:], r.Id)
	a, _, _ := recordAttrs(r)
	h := holderOf(id, spec, class, a)
	for _, v := range r.Versions {
		var e matEntry
		e.h = h
		if len(v.Fingerprint) == seal.FingerprintSize {
			copy(e.fp[:], v.Fingerprint)
		} else {
			var err error
			if e.fp, err = legacyFingerprint(k, r, v, spec, class); err != nil {
				return err
			}
		}
		p.mats = append(p.mats, e)
	}
	return nil
}

// legacyFingerprint opens version v of r to compute its fingerprint.
func legacyFingerprint(k *seal.Keys, r *persist.KeyRecord, v *persist.KeyVersion, spec *key.Spec, class key.Class) (fp fingerprint, err error) {
	aad := persist.BlobAAD(nil, k.StoreID, r, v.Version, v.MkGeneration)
	secmem.Do(func() {
		var b []byte
		if b, err = k.OpenBlob(v.MkGeneration, aad, v.Blob); err != nil {
			return
		}
		var m *mech.Key
		if m, err = mech.FromCanonical(spec, class, b); err != nil {
			return
		}
		fp, _, err = fingerprintOf(k, m)
		m.Destroy()
	})
	if err != nil {
		return fp, fmt.Errorf("version %d: %w", v.Version, errRecord)
	}
	return fp, nil
}

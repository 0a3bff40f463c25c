package keystore

import (
	"errors"
	"runtime"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
)

// The scan at unseal spreads the records over workers in batches: it
// finds every tampered record wherever it is, and its counts and sums
// are those of all the records.
func TestVerifyManyRecords(t *testing.T) {
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(4)) // several workers even on one CPU
	const n = 5*verifyBatch + 17
	s := dev(t, 2*n)
	for i := range n {
		o := obj(t, uint32(i%3), "", false)
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		s.Release(o)
	}
	eph := obj(t, 7, "", true)
	if err := s.Add(eph); err != nil {
		t.Fatal(err)
	}
	k, err := s.Master().Keys()
	if err != nil {
		t.Fatal(err)
	}
	verify := func() error { return s.Verify(k, false) }
	if err := verify(); err != nil {
		t.Fatal(err)
	}
	if p, _ := s.Counts(); p != n {
		t.Fatalf("%d persistent keys, want %d", p, n)
	}
	for owner, want := range map[uint32]int{0: (n + 2) / 3, 1: (n + 1) / 3, 2: n / 3, 7: 1} {
		if got := s.Owned(owner); got != want {
			t.Errorf("owner %d: %d keys, want %d", owner, got, want)
		}
	}

	// Records in the first, a middle and the last batch (in id order,
	// which is not the order made) changed: each is found.
	sorted := sortedIDs(t, s)
	tampered := []key.ID{sorted[0], sorted[n/2], sorted[n-1]}
	orig := map[key.ID][]byte{}
	for _, id := range tampered {
		v := value(t, s, id)
		orig[id] = v
		b := append([]byte(nil), v...)
		b[len(b)-1] ^= 1 // a byte of the record, not of its MAC
		put(t, s, id, b)
	}
	var ie *IntegrityError
	if err := verify(); !errors.As(err, &ie) || ie.BadRecords != len(tampered) || ie.SetChanged {
		t.Fatalf("three records changed: %v (%+v)", err, ie)
	}
	for _, id := range tampered {
		put(t, s, id, orig[id])
	}
	if err := verify(); err != nil {
		t.Fatalf("restored: %v", err)
	}

	// A MAC changed: the record is bad and the sum no longer adds up.
	v := append([]byte(nil), orig[tampered[1]]...)
	v[0] ^= 1
	put(t, s, tampered[1], v)
	if err := verify(); !errors.As(err, &ie) || ie.BadRecords != 1 || !ie.SetChanged {
		t.Fatalf("a MAC changed: %v (%+v)", err, ie)
	}
	// A record deleted: the count no longer adds up.
	put(t, s, tampered[1], nil)
	if err := verify(); !errors.As(err, &ie) || ie.BadRecords != 0 || !ie.SetChanged {
		t.Fatalf("a record deleted: %v (%+v)", err, ie)
	}
}

func sortedIDs(t *testing.T, s *Store) []key.ID {
	var out []key.ID
	s.db.View(func(tx store.Tx) error {
		return tx.ForEach(persist.BucketKeys, nil, func(k, v []byte) error {
			var id key.ID
			copy(id[:], k)
			out = append(out, id)
			return nil
		})
	})
	return out
}

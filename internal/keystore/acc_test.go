package keystore

import (
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
)

// storedHeader returns the store header as the file holds it.
func storedHeader(t *testing.T, s *Store) *persist.StoreHeader {
	t.Helper()
	h := &persist.StoreHeader{}
	s.db.View(func(tx store.Tx) error { return h.UnmarshalVT(tx.Get(persist.BucketMeta, persist.MetaHeader)) })
	return h
}

// The accumulator of record MACs must not be computable from what the file
// shows: an attacker who could compute the summands could look, among old
// copies of many records, for a mix whose sum is the header's (a
// generalised birthday problem, feasible with tens of thousands of
// records that a local user can make). Neither the sum of the stored MACs
// nor how the stored accumulator changes when one record is written may
// match it.
func TestAccumulatorSummandsHidden(t *testing.T) {
	s, a, b := twoKeys(t)
	var sum persist.Acc
	for _, id := range []key.ID{a.ID, b.ID} {
		mac, _, _ := persist.SplitValue(value(t, s, id))
		sum.Add(mac)
	}
	h1 := storedHeader(t, s)
	if acc, _ := persist.AccFrom(h1.Acc); acc == sum {
		t.Error("the header's accumulator is the sum of the MACs the file shows")
	}
	old, _, _ := persist.SplitValue(value(t, s, a.ID))
	o, err := s.Get(a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetAttrs(o, func(old *key.Attrs) (*key.Attrs, error) {
		n := *old
		n.Usage = key.Decrypt
		return &n, nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Release(o)
	cur, _, _ := persist.SplitValue(value(t, s, a.ID))
	h2 := storedHeader(t, s)
	a1, _ := persist.AccFrom(h1.Acc)
	a2, _ := persist.AccFrom(h2.Acc)
	// a2 - a1 against cur - old.
	a2.Sub(a1[:])
	var d persist.Acc
	d.Add(cur)
	d.Sub(old)
	if a2 == d {
		t.Error("the stored accumulator changed by the difference of the two MACs the file shows")
	}
}

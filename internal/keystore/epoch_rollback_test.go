package keystore

import (
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
)

// TestBudgetEpochRollbackRefused: someone who can write the store while
// the daemon is stopped puts the budget epoch back to what it was before
// a machine generation change (or deletes it), leaving the records
// written since. The versions that change
// closed must stay closed: a clone that kept encrypting under them would
// otherwise share their nonce budget with this machine.
func TestBudgetEpochRollbackRefused(t *testing.T) {
	for name, tamper := range map[string]func(tx store.Tx) error{
		"put back": func(tx store.Tx) error { return putBudgetEpoch(tx, 0) },
		"deleted":  func(tx store.Tx) error { return tx.Delete(persist.BucketMeta, persist.MetaBudgetEpoch) },
	} {
		t.Run(name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			s := persistent(t, dir)
			o := obj(t, 1, "k", false)
			if err := s.Add(o); err != nil {
				t.Fatal(err)
			}
			if v := encrypting(t, s, o); v.N != 1 {
				t.Fatalf("first encryption under version %d", v.N)
			}
			id := o.ID
			s.Release(o)
			if e, err := s.CloseBudgets(); err != nil || e != 1 {
				t.Fatalf("CloseBudgets: %d, %v", e, err)
			}
			// The store moves on after the change: another key is made.
			// (Putting the whole store back as it was before the change
			// is a restore of an older copy, which no check can tell.)
			if err := s.Add(obj(t, 1, "later", false)); err != nil {
				t.Fatal(err)
			}
			s.Close()
			s.db.Close()

			db, err := store.OpenBolt(dir, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			if err := db.Update(tamper); err != nil {
				t.Fatal(err)
			}
			db.Close()

			s = persistent(t, dir)
			o = must(s.Get(id))
			if v := encrypting(t, s, o); v.N == 1 {
				t.Fatalf("version 1, closed by the generation change, encrypts again after the budget epoch was %s", name)
			}
			if s.BudgetEpoch() < 1 {
				t.Errorf("budget epoch %d after the rollback, want at least 1", s.BudgetEpoch())
			}
		})
	}
}

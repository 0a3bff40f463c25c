package keystore

import (
	"errors"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
)

// countRaced arranges for the next Encrypting of o that takes the slow
// path to be overtaken, once the slow path has found room and before it
// counts, by an encryption of all that room through the fast path (which
// does not wait for the key's lock). It returns how many encryptions the
// overtaking call made (0 until it ran).
func countRaced(t *testing.T, s *Store, o *Object) *atomic.Uint64 {
	t.Helper()
	var took atomic.Uint64
	var once sync.Once
	hookCounting = func(k *Object) {
		if k != o {
			return
		}
		once.Do(func() {
			v := o.Newest()
			room := min(v.reserved.Load(), v.limit.Load()) - v.used.Load()
			got, err := s.Encrypting(o, room)
			if err != nil || got != v {
				t.Errorf("the overtaking encryptions of all %d left: version %v, %v; want the fast path's", room, got, err)
				return
			}
			took.Store(room)
		})
	}
	t.Cleanup(func() { hookCounting = nil })
	return &took
}

// TestEncryptingOvertakenInReservedRange: a goroutine that reserves a new
// range of encryptions and is overtaken, before it counts its own, by
// another that spends the whole new range through the fast path does not
// count past the range: it reserves again. The encryptions counted never
// exceed those durably reserved.
func TestEncryptingOvertakenInReservedRange(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	o := obj(t, 1, "k", false)
	const before = 100
	SetFirstVersion(o, 0, time.Time{}, before, 0)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	v := o.Newest()
	took := countRaced(t, s, o)
	got, err := s.Encrypting(o, 1)
	if err != nil {
		t.Fatal(err)
	}
	if took.Load() == 0 {
		t.Fatal("the fast path did not overtake the reservation")
	}
	if got != v {
		t.Fatalf("version %d encrypts, want %d", got.N, v.N)
	}
	if u, r := v.Used(), v.reserved.Load(); u != before+took.Load()+1 || u > r {
		t.Fatalf("%d encryptions counted (want %d), %d reserved: the count overshot the reserved range", u, before+took.Load()+1, r)
	}
	if r := reservedInRecord(t, s, o, v); v.Used() > r {
		t.Fatalf("%d encryptions counted, %d reserved in the key's record", v.Used(), r)
	}
}

// TestEncryptingOvertakenAtLimit: the same at the version's limit (the
// 2^32 budget, here a small one): the overtaken goroutine does not count
// past it, but makes a new version (or is refused, by the key's policy).
func TestEncryptingOvertakenAtLimit(t *testing.T) {
	for _, refuse := range []bool{false, true} {
		s := dev(t, 10)
		o := obj(t, 1, "", true)
		const limit = 10
		SetFirstVersion(o, 0, time.Time{}, 0, limit)
		if refuse {
			m := *o.Meta()
			m.Budget = persist.BudgetPolicy_BUDGET_POLICY_REFUSE
			SetMeta(o, &m)
		}
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		v := o.Newest()
		took := countRaced(t, s, o)
		got, err := s.Encrypting(o, 1)
		if took.Load() != limit {
			t.Fatalf("refuse %v: the fast path made %d encryptions, want all %d", refuse, took.Load(), limit)
		}
		if u := v.Used(); u > limit {
			t.Fatalf("refuse %v: %d encryptions counted on a version that may make %d", refuse, u, limit)
		}
		switch {
		case refuse && !errors.Is(err, ErrSpent):
			t.Fatalf("refuse when spent: %v, %v; want the budget spent", got, err)
		case !refuse && (err != nil || got == v):
			t.Fatalf("rotate when spent: version %v, %v; want a new version", got, err)
		}
		hookCounting = nil
	}
}

// TestEncryptingConcurrentExact: goroutines racing on a version's last
// encryptions, reserving and counting, make exactly as many as it may.
func TestEncryptingConcurrentExact(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	o := obj(t, 1, "k", false)
	const limit = 3*reserveBlock + 1000
	SetFirstVersion(o, 0, time.Time{}, 0, limit)
	m := *o.Meta()
	m.Budget = persist.BudgetPolicy_BUDGET_POLICY_REFUSE
	SetMeta(o, &m)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	v := o.Newest()
	var made atomic.Uint64
	var wg sync.WaitGroup
	for g := range 8 {
		n := uint64(1 + g%3)
		wg.Go(func() {
			for {
				if _, err := s.Encrypting(o, n); err != nil {
					if !errors.Is(err, ErrSpent) {
						t.Error(err)
					}
					return
				}
				made.Add(n)
			}
		})
	}
	wg.Wait()
	if made.Load() > limit || v.Used() != made.Load() {
		t.Fatalf("%d encryptions made, %d counted, on a version that may make %d", made.Load(), v.Used(), limit)
	}
	if made.Load() < limit-2 {
		t.Fatalf("only %d of %d encryptions made before the budget was refused", made.Load(), limit)
	}
	if r := reservedInRecord(t, s, o, v); v.Used() > r {
		t.Fatalf("%d encryptions counted, %d reserved in the key's record", v.Used(), r)
	}
}

// reservedInRecord reads the encryptions reserved for v in o's record.
func reservedInRecord(t *testing.T, s *Store, o *Object, v *Version) uint64 {
	t.Helper()
	var r uint64
	found := false
	err := s.db.View(func(tx store.Tx) error {
		_, rb, err := persist.SplitValue(tx.Get(persist.BucketKeys, o.ID[:]))
		if err != nil {
			return err
		}
		var rec persist.KeyRecord
		if err := rec.UnmarshalVT(rb); err != nil {
			return err
		}
		for _, rv := range rec.Versions {
			if rv.Version == v.N {
				r, found = rv.EncryptionsReserved, true
			}
		}
		return nil
	})
	if err != nil || !found {
		t.Fatalf("reading the record: %v (version found: %v)", err, found)
	}
	return r
}

// TestCopyBudgetClosedWhileCounting: an encryption of a copy counted
// while Add closes the copy's version (after the count is read, before
// the version is closed) does not land past the closing limit: the
// version closes at the count with it, and counts nothing after. The
// copies' budgets together stay within the version's.
func TestCopyBudgetClosedWhileCounting(t *testing.T) {
	s := dev(t, 10)
	orig := must(NewObject("orig", 1000, mustGen(t, aesSpec), &key.Attrs{Usage: key.Encrypt | key.Decrypt, Wrappable: true}, true, time.Now(), persist.Origin_ORIGIN_GENERATED))
	if err := s.Add(orig); err != nil {
		t.Fatal(err)
	}
	c := copyOf(t, orig, aesSpec, key.Attrs{Usage: key.Encrypt | key.Decrypt}, true)
	m := *c.Meta()
	m.Budget = persist.BudgetPolicy_BUDGET_POLICY_REFUSE
	SetMeta(c, &m)
	const before = 5
	SetFirstVersion(c, 1, time.Now(), before, DefaultEncryptionLimit)
	v := c.Versions()[0]
	var counted atomic.Bool
	var once sync.Once
	hookClosing = func(cv *Version) {
		if cv != v {
			return
		}
		once.Do(func() {
			got, err := s.Encrypting(c, 1)
			if err != nil || got != v {
				t.Errorf("the encryption counted while the version closes: version %v, %v; want the copy's", got, err)
				return
			}
			counted.Store(true)
		})
	}
	t.Cleanup(func() { hookClosing = nil })
	if err := s.Add(c); err != nil {
		t.Fatal(err)
	}
	if !counted.Load() {
		t.Fatal("no encryption was counted while the version closed")
	}
	if u, l := v.Used(), v.Limit(); u != before+1 || u > l {
		t.Fatalf("%d encryptions counted (want %d) on a version closed at %d: the count passed the closing limit", u, before+1, l)
	}
	if v.count(1) {
		t.Fatalf("a closed version counted another encryption (%d of %d)", v.Used(), v.Limit())
	}
	if got, err := s.Encrypting(c, 1); !errors.Is(err, ErrSpent) {
		t.Fatalf("encrypting with the closed copy: version %v, %v; want the budget spent", got, err)
	}
	if u := v.Used(); u != before+1 {
		t.Fatalf("%d encryptions counted after the refusals, want %d", u, before+1)
	}
}

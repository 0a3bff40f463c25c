package store_test

import (
	"bytes"
	"errors"
	"fmt"
	"sync"
	"testing"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/store"
)

// conformance checks what every Store implementation must do. A cluster
// backend added later must pass it too.
func conformance(t *testing.T, open func(t *testing.T) store.Store) {
	b := []byte("bucket")
	put := func(t *testing.T, s store.Store, kv ...string) {
		t.Helper()
		if err := s.Update(func(tx store.Tx) error {
			for i := 0; i < len(kv); i += 2 {
				if err := tx.Put(b, []byte(kv[i]), []byte(kv[i+1])); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	get := func(t *testing.T, s store.Store, k string) (v []byte) {
		t.Helper()
		if err := s.View(func(tx store.Tx) error {
			v = bytes.Clone(tx.Get(b, []byte(k)))
			return nil
		}); err != nil {
			t.Fatal(err)
		}
		return v
	}
	keys := func(t *testing.T, s store.Store, after string) (ks []string) {
		t.Helper()
		var a []byte
		if after != "" {
			a = []byte(after)
		}
		if err := s.View(func(tx store.Tx) error {
			return tx.ForEach(b, a, func(k, v []byte) error {
				ks = append(ks, string(k))
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
		return ks
	}

	t.Run("PutGetDelete", func(t *testing.T) {
		s := open(t)
		if v := get(t, s, "a"); v != nil {
			t.Fatalf("empty store: Get = %q", v)
		}
		put(t, s, "a", "1", "b", "2")
		if v := get(t, s, "a"); string(v) != "1" {
			t.Fatalf("Get(a) = %q", v)
		}
		put(t, s, "a", "3")
		if v := get(t, s, "a"); string(v) != "3" {
			t.Fatalf("overwritten Get(a) = %q", v)
		}
		if err := s.Update(func(tx store.Tx) error { return tx.Delete(b, []byte("a")) }); err != nil {
			t.Fatal(err)
		}
		if v := get(t, s, "a"); v != nil {
			t.Fatalf("deleted key: Get = %q", v)
		}
		if err := s.Update(func(tx store.Tx) error {
			if err := tx.Delete(b, []byte("missing")); err != nil {
				return err
			}
			return tx.Delete([]byte("no-bucket"), []byte("x"))
		}); err != nil {
			t.Fatalf("deleting what is not there: %v", err)
		}
	})

	t.Run("BucketsAreSeparate", func(t *testing.T) {
		s := open(t)
		if err := s.Update(func(tx store.Tx) error {
			if err := tx.Put([]byte("x"), []byte("k"), []byte("in x")); err != nil {
				return err
			}
			return tx.Put([]byte("y"), []byte("k"), []byte("in y"))
		}); err != nil {
			t.Fatal(err)
		}
		s.View(func(tx store.Tx) error {
			if v := tx.Get([]byte("x"), []byte("k")); string(v) != "in x" {
				t.Errorf("x/k = %q", v)
			}
			if v := tx.Get([]byte("y"), []byte("k")); string(v) != "in y" {
				t.Errorf("y/k = %q", v)
			}
			return nil
		})
	})

	t.Run("ForEachOrderAndAfter", func(t *testing.T) {
		s := open(t)
		put(t, s, "c", "", "a", "", "e", "", "b", "", "d", "")
		if got := fmt.Sprint(keys(t, s, "")); got != "[a b c d e]" {
			t.Fatalf("all keys: %s", got)
		}
		if got := fmt.Sprint(keys(t, s, "b")); got != "[c d e]" {
			t.Fatalf("after b: %s", got)
		}
		if got := fmt.Sprint(keys(t, s, "bb")); got != "[c d e]" {
			t.Fatalf("after bb (absent): %s", got)
		}
		if got := fmt.Sprint(keys(t, s, "e")); got != "[]" {
			t.Fatalf("after the last: %s", got)
		}
		var n int
		s.View(func(tx store.Tx) error {
			return tx.ForEach(b, nil, func(k, v []byte) error {
				if n++; n == 2 {
					return store.ErrStop
				}
				return nil
			})
		})
		if n != 2 {
			t.Fatalf("ErrStop: visited %d keys", n)
		}
		boom := errors.New("boom")
		err := s.View(func(tx store.Tx) error {
			return tx.ForEach(b, nil, func(k, v []byte) error { return boom })
		})
		if !errors.Is(err, boom) {
			t.Fatalf("ForEach error: %v", err)
		}
	})

	t.Run("FailedUpdateChangesNothing", func(t *testing.T) {
		s := open(t)
		put(t, s, "keep", "v1", "gone", "v")
		boom := errors.New("boom")
		err := s.Update(func(tx store.Tx) error {
			tx.Put(b, []byte("keep"), []byte("v2"))
			tx.Put(b, []byte("new"), []byte("v"))
			tx.Delete(b, []byte("gone"))
			tx.Put([]byte("new-bucket"), []byte("k"), []byte("v"))
			return boom
		})
		if !errors.Is(err, boom) {
			t.Fatalf("Update = %v, want its fn's error", err)
		}
		if got := fmt.Sprint(keys(t, s, "")); got != "[gone keep]" {
			t.Fatalf("keys after a failed update: %s", got)
		}
		if v := get(t, s, "keep"); string(v) != "v1" {
			t.Fatalf("keep = %q after a failed update", v)
		}
		s.View(func(tx store.Tx) error {
			if v := tx.Get([]byte("new-bucket"), []byte("k")); v != nil {
				t.Errorf("a failed update left a bucket behind")
			}
			return nil
		})
	})

	t.Run("ViewIsReadOnly", func(t *testing.T) {
		s := open(t)
		err := s.View(func(tx store.Tx) error { return tx.Put(b, []byte("k"), []byte("v")) })
		if !errors.Is(err, store.ErrReadOnly) {
			t.Fatalf("Put in View = %v, want ErrReadOnly", err)
		}
		err = s.View(func(tx store.Tx) error { return tx.Delete(b, []byte("k")) })
		if !errors.Is(err, store.ErrReadOnly) {
			t.Fatalf("Delete in View = %v, want ErrReadOnly", err)
		}
	})

	t.Run("ValuesAreCopied", func(t *testing.T) {
		s := open(t)
		v := []byte("value")
		if err := s.Update(func(tx store.Tx) error { return tx.Put(b, []byte("k"), v) }); err != nil {
			t.Fatal(err)
		}
		copy(v, "XXXXX")
		if got := get(t, s, "k"); string(got) != "value" {
			t.Fatalf("the store kept the caller's slice: %q", got)
		}
	})

	t.Run("ConcurrentUpdates", func(t *testing.T) {
		// Writers run concurrently and may be grouped into one
		// transaction; each one's effect is there exactly once, and a
		// failing writer neither fails nor undoes the others.
		s := open(t)
		put(t, s, "counter", "0")
		const writers = 32
		var wg sync.WaitGroup
		errs := make([]error, writers)
		for i := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				errs[i] = s.Update(func(tx store.Tx) error {
					if i%8 == 7 {
						tx.Put(b, []byte(fmt.Sprintf("failed-%02d", i)), nil)
						return fmt.Errorf("writer %d fails", i)
					}
					return tx.Put(b, []byte(fmt.Sprintf("w-%02d", i)), []byte{byte(i)})
				})
			}()
		}
		wg.Wait()
		for i, err := range errs {
			if (i%8 == 7) != (err != nil) {
				t.Errorf("writer %d: %v", i, err)
			}
		}
		var n int
		s.View(func(tx store.Tx) error {
			return tx.ForEach(b, nil, func(k, v []byte) error {
				if bytes.HasPrefix(k, []byte("failed-")) {
					t.Errorf("a failed writer's key is there: %s", k)
				}
				if bytes.HasPrefix(k, []byte("w-")) {
					n++
				}
				return nil
			})
		})
		if want := writers - writers/8; n != want {
			t.Fatalf("%d writers' keys present, want %d", n, want)
		}
	})

	t.Run("OnCommit", func(t *testing.T) {
		// Functions registered in a transaction run once it is durable,
		// before Update returns, in commit order; never for a failed
		// transaction or a View.
		s := open(t)
		var mu sync.Mutex
		var ran []string
		note := func(what string) func() {
			return func() { mu.Lock(); ran = append(ran, what); mu.Unlock() }
		}
		err := s.Update(func(tx store.Tx) error {
			tx.OnCommit(note("first"))
			tx.OnCommit(note("second"))
			return tx.Put(b, []byte("k"), []byte("v"))
		})
		if err != nil {
			t.Fatal(err)
		}
		if got := fmt.Sprint(ran); got != "[first second]" {
			t.Fatalf("after Update returned: %s", got)
		}
		s.Update(func(tx store.Tx) error {
			tx.OnCommit(note("failed"))
			return errors.New("boom")
		})
		s.View(func(tx store.Tx) error {
			tx.OnCommit(note("view"))
			return nil
		})
		if got := fmt.Sprint(ran); got != "[first second]" {
			t.Fatalf("after a failed Update and a View: %s", got)
		}
		// Concurrent writers, grouped or not: each one's functions run
		// exactly once (a writer grouped with a failing one runs again),
		// and in the order in which their writes are visible: each
		// writer's function sees the counter as its own write left it.
		const writers = 32
		var wg sync.WaitGroup
		seen := make([]int, 0, writers)
		for i := range writers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				s.Update(func(tx store.Tx) error {
					if i%8 == 7 {
						tx.OnCommit(note("failed writer"))
						return fmt.Errorf("writer %d fails", i)
					}
					n := len(tx.Get(b, []byte("count")))
					if err := tx.Put(b, []byte("count"), make([]byte, n+1)); err != nil {
						return err
					}
					tx.OnCommit(func() { mu.Lock(); seen = append(seen, n+1); mu.Unlock() })
					return nil
				})
			}()
		}
		wg.Wait()
		want := writers - writers/8
		if len(seen) != want {
			t.Fatalf("%d commit functions ran, want %d", len(seen), want)
		}
		for i, n := range seen {
			if n != i+1 {
				t.Fatalf("commit functions out of commit order: %v", seen)
			}
		}
		if len(ran) != 2 {
			t.Fatalf("a failed writer's function ran: %v", ran)
		}
	})

	t.Run("Closed", func(t *testing.T) {
		s := open(t)
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		if err := s.Update(func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
			t.Errorf("Update after Close = %v", err)
		}
		if err := s.View(func(store.Tx) error { return nil }); !errors.Is(err, store.ErrClosed) {
			t.Errorf("View after Close = %v", err)
		}
	})
}

func TestMemoryConformance(t *testing.T) {
	conformance(t, func(t *testing.T) store.Store {
		s := store.NewMemory()
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestBoltConformance(t *testing.T) {
	conformance(t, func(t *testing.T) store.Store {
		s, err := store.OpenBolt(t.TempDir()+"/state", 0)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func etcdConformance(t *testing.T, members int) {
	c := etcdtest.Start(t, members)
	var n int
	conformance(t, func(t *testing.T) store.Store {
		n++
		s, err := store.OpenEtcd(store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: fmt.Sprintf("/conformance/%d/", n)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
}

func TestEtcdConformance(t *testing.T) { etcdConformance(t, 1) }

func TestEtcdConformanceThreeMembers(t *testing.T) { etcdConformance(t, 3) }

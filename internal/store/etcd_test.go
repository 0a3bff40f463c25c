package store_test

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/store"
)

func openEtcd(t *testing.T, endpoints []string, prefix string) *store.Etcd {
	t.Helper()
	s, err := store.OpenEtcd(store.EtcdConfig{Endpoints: endpoints, Prefix: prefix, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// Several daemons write one store, each through its own client: their
// transactions are serializable. A read-modify-write of one counter by
// many writers of two stores loses no increment; a transaction whose
// read (a Get, or a ForEach of a bucket, where a key may be added or
// deleted) was changed by another store before it committed runs again
// on what the other wrote.
func TestEtcdWritersShareOneStore(t *testing.T) {
	c := etcdtest.Start(t, 3)
	eps := c.Endpoints()
	a := openEtcd(t, eps[:1], "/shared/")
	b := openEtcd(t, eps[1:], "/shared/")
	bk := []byte("b")

	t.Run("Counter", func(t *testing.T) {
		const per = 16
		var wg sync.WaitGroup
		errs := make(chan error, 2*per)
		for _, s := range []*store.Etcd{a, b} {
			for range per {
				wg.Add(1)
				go func() {
					defer wg.Done()
					errs <- s.Update(func(tx store.Tx) error {
						n, _ := strconv.Atoi(string(tx.Get(bk, []byte("counter"))))
						return tx.Put(bk, []byte("counter"), []byte(strconv.Itoa(n+1)))
					})
				}()
			}
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		a.View(func(tx store.Tx) error {
			if got := string(tx.Get(bk, []byte("counter"))); got != strconv.Itoa(2*per) {
				t.Errorf("counter = %s after %d increments", got, 2*per)
			}
			return nil
		})
	})

	// interfere runs fn in a transaction of a; the first time, after fn
	// read, other changes the store through b. It returns how many times
	// fn ran and what it saw the last time.
	interfere := func(t *testing.T, read func(tx store.Tx) string, other func(tx store.Tx) error) (int, string) {
		t.Helper()
		runs, last := 0, ""
		err := a.Update(func(tx store.Tx) error {
			runs++
			last = read(tx)
			if runs == 1 {
				if err := b.Update(other); err != nil {
					return err
				}
			}
			return tx.Put(bk, []byte("result"), []byte(last))
		})
		if err != nil {
			t.Fatal(err)
		}
		return runs, last
	}
	list := func(tx store.Tx) string {
		var ks []string
		tx.ForEach([]byte("set"), nil, func(k, v []byte) error { ks = append(ks, string(k)); return nil })
		return strings.Join(ks, ",")
	}
	setup := func(t *testing.T, kv ...string) {
		t.Helper()
		if err := a.Update(func(tx store.Tx) error {
			for i := 0; i < len(kv); i++ {
				if err := tx.Put([]byte("set"), []byte(kv[i]), []byte("v")); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}

	t.Run("GetChanged", func(t *testing.T) {
		setup(t, "k")
		runs, last := interfere(t,
			func(tx store.Tx) string { return string(tx.Get([]byte("set"), []byte("k"))) },
			func(tx store.Tx) error { return tx.Put([]byte("set"), []byte("k"), []byte("changed")) })
		if runs < 2 || last != "changed" {
			t.Fatalf("ran %d times, last read %q; want again, on the other store's value", runs, last)
		}
	})
	t.Run("GetAbsentCreated", func(t *testing.T) {
		runs, last := interfere(t,
			func(tx store.Tx) string { return string(tx.Get([]byte("set"), []byte("new"))) },
			func(tx store.Tx) error { return tx.Put([]byte("set"), []byte("new"), []byte("created")) })
		if runs < 2 || last != "created" {
			t.Fatalf("ran %d times, last read %q", runs, last)
		}
	})
	t.Run("ForEachKeyAdded", func(t *testing.T) {
		runs, last := interfere(t, list,
			func(tx store.Tx) error { return tx.Put([]byte("set"), []byte("added"), []byte("v")) })
		if runs < 2 || !strings.Contains(last, "added") {
			t.Fatalf("ran %d times, last list %q", runs, last)
		}
	})
	t.Run("ForEachKeyDeleted", func(t *testing.T) {
		setup(t, "doomed")
		runs, last := interfere(t, list,
			func(tx store.Tx) error { return tx.Delete([]byte("set"), []byte("doomed")) })
		if runs < 2 || strings.Contains(last, "doomed") {
			t.Fatalf("ran %d times, last list %q", runs, last)
		}
	})
	t.Run("UnrelatedWriteNoRetry", func(t *testing.T) {
		// The store runs fn more than once by itself (to find out what
		// it reads): the same transaction with an interference that
		// writes nothing, from the same state, tells how often.
		get := func(tx store.Tx) string { return string(tx.Get([]byte("set"), []byte("k"))) }
		nothing := func(tx store.Tx) error { return nil }
		interfere(t, get, nothing)
		alone, _ := interfere(t, get, nothing)
		runs, _ := interfere(t, get, func(tx store.Tx) error { return tx.Put([]byte("elsewhere"), []byte("k"), []byte("v")) })
		if runs != alone {
			t.Fatalf("a write to keys the transaction did not read made it run %d times, %d without it", runs, alone)
		}
	})
	t.Run("FailedOnOwnLastWrite", func(t *testing.T) {
		// a wrote k last; b changed it since. A transaction of a that
		// fails on a's own value of k must be given b's.
		setup(t, "k")
		if err := b.Update(func(tx store.Tx) error { return tx.Put([]byte("set"), []byte("k"), []byte("b's")) }); err != nil {
			t.Fatal(err)
		}
		err := a.Update(func(tx store.Tx) error {
			if v := string(tx.Get([]byte("set"), []byte("k"))); v != "b's" {
				return fmt.Errorf("read %q, not the other store's value", v)
			}
			return tx.Put([]byte("set"), []byte("seen"), []byte("yes"))
		})
		if err != nil {
			t.Fatal(err)
		}
	})
}

// A transaction larger than the cluster's limit of operations fails with
// a message that names the limit; grouped with others, it fails alone.
func TestEtcdTransactionTooBig(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s, err := store.OpenEtcd(store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/big/", MaxTxnOps: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	err = s.Update(func(tx store.Tx) error {
		for i := range 9 {
			tx.Put([]byte("b"), fmt.Appendf(nil, "%d", i), nil)
		}
		return nil
	})
	if err == nil || !strings.Contains(err.Error(), "--max-txn-ops") {
		t.Fatalf("9 writes with a limit of 8: %v", err)
	}
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Update(func(tx store.Tx) error { return tx.Put([]byte("b"), fmt.Appendf(nil, "w%d", i), nil) }); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	// Many calls that together exceed the limit are committed in groups
	// that fit, each call once.
	const calls = 24
	for i := range calls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Update(func(tx store.Tx) error {
				n, _ := strconv.Atoi(string(tx.Get([]byte("c"), []byte("counter"))))
				tx.Put([]byte("c"), fmt.Appendf(nil, "x%d", i), nil)
				return tx.Put([]byte("c"), []byte("counter"), []byte(strconv.Itoa(n+1)))
			}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	s.View(func(tx store.Tx) error {
		if got := string(tx.Get([]byte("c"), []byte("counter"))); got != strconv.Itoa(calls) {
			t.Errorf("counter = %s after %d calls", got, calls)
		}
		return nil
	})
}

// A cluster that does not answer fails transactions with ErrUnavailable
// within the timeout, and a closed store with ErrClosed.
func TestEtcdUnavailable(t *testing.T) {
	c := etcdtest.Start(t, 1)
	s := openEtcd(t, c.Endpoints(), "/gone/")
	if err := s.Update(func(tx store.Tx) error { return tx.Put([]byte("b"), []byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	c.Kill(0)
	t0 := time.Now()
	err := s.Update(func(tx store.Tx) error { return tx.Put([]byte("b"), []byte("k"), []byte("w")) })
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("Update with the cluster down = %v, want ErrUnavailable", err)
	}
	err = s.View(func(tx store.Tx) error { tx.Get([]byte("b"), []byte("k")); return nil })
	if !errors.Is(err, store.ErrUnavailable) {
		t.Fatalf("View with the cluster down = %v, want ErrUnavailable", err)
	}
	if d := time.Since(t0); d > 6*time.Second {
		t.Fatalf("took %s to fail twice with a 2 s timeout", d)
	}
	c.Restart(0)
	c.WaitHealthy(20 * time.Second)
	s.View(func(tx store.Tx) error {
		if v := tx.Get([]byte("b"), []byte("k")); string(v) != "v" {
			t.Errorf("after the restart: %q", v)
		}
		return nil
	})
}

// The store speaks TLS to a cluster that requires client certificates:
// with the client's certificate, key and the members' CA it passes the
// conformance suite; without a client certificate, the cluster does not
// serve it; an https endpoint without a CA, or half a client
// certificate, is refused before anything is sent.
func TestEtcdTLS(t *testing.T) {
	c := etcdtest.StartWith(t, 1, etcdtest.Options{TLS: true})
	var n int
	conformance(t, func(t *testing.T) store.Store {
		n++
		s, err := store.OpenEtcd(store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: fmt.Sprintf("/tls/%d/", n),
			CertFile: c.CertFile, KeyFile: c.KeyFile, CAFile: c.CAFile})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { s.Close() })
		return s
	})
	s, err := store.OpenEtcd(store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/tls/", CAFile: c.CAFile, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Update(func(tx store.Tx) error { return tx.Put([]byte("b"), []byte("k"), nil) }); err == nil {
		t.Fatal("a client without a certificate wrote to the cluster")
	}
	for _, cfg := range []store.EtcdConfig{
		{Endpoints: c.Endpoints(), Prefix: "/tls/"},
		{Endpoints: c.Endpoints(), Prefix: "/tls/", CAFile: c.CAFile, CertFile: c.CertFile},
	} {
		if _, err := store.OpenEtcd(cfg); err == nil {
			t.Errorf("OpenEtcd(%+v) accepted", cfg)
		}
	}
}

// An Update that writes nothing, begun at the snapshot of this store's
// last commit, sees what another store committed since: its reads are
// checked against now, not returned from the old snapshot.
func TestEtcdReadOnlyUpdateNotStale(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := openEtcd(t, c.Endpoints(), "/stale/")
	b := openEtcd(t, c.Endpoints(), "/stale/")
	put := func(s *store.Etcd, v string) {
		t.Helper()
		if err := s.Update(func(tx store.Tx) error { return tx.Put([]byte("set"), []byte("k"), []byte(v)) }); err != nil {
			t.Fatal(err)
		}
	}
	read := func(s *store.Etcd) string {
		t.Helper()
		var v string
		if err := s.Update(func(tx store.Tx) error { v = string(tx.Get([]byte("set"), []byte("k"))); return nil }); err != nil {
			t.Fatal(err)
		}
		return v
	}
	put(a, "a's")
	put(b, "b's")
	if v := read(a); v != "b's" {
		t.Errorf("a write-less Update of a read %q after b committed %q", v, "b's")
	}
	// Gone since: a write-less Update sees it gone.
	if err := b.Update(func(tx store.Tx) error { return tx.Delete([]byte("set"), []byte("k")) }); err != nil {
		t.Fatal(err)
	}
	put(a, "a's again")
	if err := b.Update(func(tx store.Tx) error { return tx.Put([]byte("set"), []byte("k"), []byte("b's again")) }); err != nil {
		t.Fatal(err)
	}
	if v := read(a); v != "b's again" {
		t.Errorf("a write-less Update of a read %q after b committed %q", v, "b's again")
	}
	// A walk too.
	put(a, "x")
	if err := b.Update(func(tx store.Tx) error { return tx.Put([]byte("set"), []byte("k2"), []byte("y")) }); err != nil {
		t.Fatal(err)
	}
	n := 0
	if err := a.Update(func(tx store.Tx) error {
		n = 0
		return tx.ForEach([]byte("set"), nil, func(_, _ []byte) error { n++; return nil })
	}); err != nil {
		t.Fatal(err)
	}
	if n != 2 {
		t.Errorf("a write-less walk of a found %d keys, 2 there", n)
	}
}

// A write-less Update that reads more keys than one transaction may
// guard, begun at the last commit's snapshot, runs again on a snapshot
// read for it rather than failing.
func TestEtcdReadOnlyUpdateOfManyKeys(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a, err := store.OpenEtcd(store.EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/many/", MaxTxnOps: 8})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	for i := range 20 {
		if err := a.Update(func(tx store.Tx) error { return tx.Put([]byte("set"), fmt.Appendf(nil, "k%02d", i), []byte("v")) }); err != nil {
			t.Fatal(err)
		}
	}
	n := 0
	if err := a.Update(func(tx store.Tx) error {
		n = 0
		for i := range 20 {
			if tx.Get([]byte("set"), fmt.Appendf(nil, "k%02d", i)) != nil {
				n++
			}
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	if n != 20 {
		t.Fatalf("read %d keys of 20", n)
	}
}

// The CA file decides which members the daemon believes: one that another
// user could write is refused before any connection.
func TestEtcdCAWritableByOthersRefused(t *testing.T) {
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, []byte("-----BEGIN CERTIFICATE-----\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(ca, 0o666); err != nil {
		t.Fatal(err)
	}
	_, err := store.OpenEtcd(store.EtcdConfig{Endpoints: []string{"https://127.0.0.1:1"}, Prefix: "/x/", CAFile: ca, Timeout: time.Second})
	if err == nil || !strings.Contains(err.Error(), "writable by group or others") {
		t.Fatalf("a CA file of mode 0666: %v", err)
	}
}

package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

var testBucket = []byte("b")

// A group that begins at this store's last commit reads the keys that
// commit did not write as absent, with no request: creations of new keys
// after a commit of this store make one request each, the commit. A key
// read so that is in fact there (another writer put it) fails the guard,
// and the group runs again on what is: the functions see the key's value,
// and one that failed on its absence succeeds.
func TestEtcdGroupReadsUnknownKeysAsAbsent(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/absent/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	put := func(k, v string) error {
		return e.Update(func(tx Tx) error { return tx.Put(testBucket, []byte(k), []byte(v)) })
	}
	if err := put("first", "1"); err != nil {
		t.Fatal(err)
	}
	before := e.reads.Load()
	for _, k := range []string{"a", "b", "c"} {
		err := e.Update(func(tx Tx) error {
			if tx.Get(testBucket, []byte(k)) != nil {
				return errors.New("there already")
			}
			return tx.Put(testBucket, []byte(k), []byte("new"))
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	if n := e.reads.Load() - before; n != 0 {
		t.Errorf("three creations of new keys after a commit made %d read requests, want none", n)
	}
	// Put behind this store's back: read as absent, then found.
	if _, err := raw.Put(context.Background(), e.BucketPrefix(testBucket)+"there", "x"); err != nil {
		t.Fatal(err)
	}
	var got string
	err = e.Update(func(tx Tx) error {
		v := tx.Get(testBucket, []byte("there"))
		got = string(v)
		if v == nil {
			return errors.New("absent")
		}
		return tx.Put(testBucket, []byte("copy"), v)
	})
	if err != nil || got != "x" {
		t.Fatalf("a function reading a key another writer put: %v, read %q", err, got)
	}
	if _, err := raw.Put(context.Background(), e.BucketPrefix(testBucket)+"there2", "y"); err != nil {
		t.Fatal(err)
	}
	err = e.Update(func(tx Tx) error {
		if tx.Get(testBucket, []byte("there2")) != nil {
			got = "there"
			return nil
		}
		got = "absent"
		return tx.Put(testBucket, []byte("there2"), []byte("mine"))
	})
	if err != nil || got != "there" {
		t.Fatalf("a function that writes a key it read as absent, which another writer put: %v, read it %s", err, got)
	}
	resp, err := raw.Get(context.Background(), e.BucketPrefix(testBucket)+"there2")
	if err != nil || len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "y" {
		t.Fatalf("the other writer's value was overwritten: %v %v", resp, err)
	}
}

// Calls that arrive while a group's transaction conflicts with another
// writer's go with it into its next transaction: one commit carries them
// all. The conflict is forced: another writer changes the key the group
// read while its function runs, once the second call waits.
func TestEtcdConflictedGroupTakesWaitingCalls(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/join/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	lingers := make(chan time.Duration, 16)
	h := func(d time.Duration) { lingers <- d }
	hookLinger.Store(&h)
	t.Cleanup(func() { hookLinger.Store(nil) })
	hot := e.BucketPrefix(testBucket) + "hot"
	if err := e.Update(func(tx Tx) error { return tx.Put(testBucket, []byte("hot"), []byte("0")) }); err != nil {
		t.Fatal(err)
	}
	c0 := e.Counts()
	second := make(chan error, 1)
	forced := false
	err = e.Update(func(tx Tx) error {
		tx.Get(testBucket, []byte("hot"))
		if err := tx.Put(testBucket, []byte("one"), []byte("1")); err != nil {
			return err
		}
		if forced {
			return nil
		}
		forced = true
		go func() {
			second <- e.Update(func(tx Tx) error {
				tx.Get(testBucket, []byte("hot"))
				return tx.Put(testBucket, []byte("two"), []byte("2"))
			})
		}()
		for {
			e.mu.Lock()
			n := len(e.pending)
			e.mu.Unlock()
			if n > 0 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		_, err := raw.Put(context.Background(), hot, "changed")
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	rev := func(k string) int64 {
		resp, err := raw.Get(context.Background(), e.BucketPrefix(testBucket)+k)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: %v", k, err)
		}
		return resp.Kvs[0].ModRevision
	}
	if r1, r2 := rev("one"), rev("two"); r1 != r2 {
		t.Fatalf("the waiting call committed at revision %d, the conflicted group at %d: want one commit", r2, r1)
	}
	// Counts tells it: one transaction lost, one committed, carrying two
	// calls.
	if c := e.Counts(); c.Commits-c0.Commits != 1 || c.Conflicts-c0.Conflicts != 1 || c.Calls-c0.Calls != 2 {
		t.Fatalf("counted %+v since %+v: want one more commit, one conflict, two calls", c, c0)
	}
	// The group that lost and then won lingers, once, for as long as its
	// commit took (within the bound); the first, which lost nothing, did
	// not.
	select {
	case d := <-lingers:
		if d <= 0 || d > maxLinger {
			t.Fatalf("lingered %v after the group that lost, want within (0, %v]", d, maxLinger)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the group that lost to another writer and then committed did not linger")
	}
	if len(lingers) != 0 {
		t.Fatalf("%d more lingers: a group that lost nothing lingered", len(lingers))
	}
}

// A group begins at the newest revision that Follow has passed on, not at
// this store's own last commit when another writer has committed since:
// the key the other writer changed is read as it now is, and the group
// commits at its first try, with no request but the commit. Keys another
// writer made or deleted meanwhile are read as they are too.
func TestEtcdGroupBeginsAtFollowedCommits(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/followed/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	other, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/followed/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	put := func(s *Etcd, kvs ...string) {
		t.Helper()
		err := s.Update(func(tx Tx) error {
			for i := 0; i < len(kvs); i += 2 {
				if kvs[i+1] == "" {
					if err := tx.Delete(testBucket, []byte(kvs[i])); err != nil {
						return err
					}
					continue
				}
				if err := tx.Put(testBucket, []byte(kvs[i]), []byte(kvs[i+1])); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	put(e, "hdr", "0", "gone", "x")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var followed atomic.Int64
	go e.Follow(ctx, 0, func(c Commit) error { followed.Store(c.Rev); return nil }, func(int64, time.Time) {})
	put(other, "hdr", "1", "made", "y", "gone", "")
	resp, err := other.Client().Get(ctx, other.BucketPrefix(testBucket)+"hdr")
	if err != nil {
		t.Fatal(err)
	}
	for followed.Load() < resp.Header.Revision {
		time.Sleep(time.Millisecond)
	}
	c0 := e.Counts()
	var hdr, made, gone []byte
	err = e.Update(func(tx Tx) error {
		hdr, made, gone = tx.Get(testBucket, []byte("hdr")), tx.Get(testBucket, []byte("made")), tx.Get(testBucket, []byte("gone"))
		return tx.Put(testBucket, []byte("hdr"), append(bytes.Clone(hdr), '+'))
	})
	if err != nil {
		t.Fatal(err)
	}
	if string(hdr) != "1" || string(made) != "y" || gone != nil {
		t.Fatalf("the group read hdr %q, made %q, gone %q: want what the other writer left (1, y, absent)", hdr, made, gone)
	}
	if c := e.Counts(); c.Conflicts != c0.Conflicts || c.Reads != c0.Reads || c.Commits != c0.Commits+1 {
		t.Fatalf("counted %+v since %+v: want one commit, no conflict, no read", c, c0)
	}
}

// After a commit that another writer's commit preceded, the committer
// waits for the other writer's next commit (its turn) before its own next
// transaction, rather than race it: a call that arrives meanwhile
// commits after the other writer's, on what it wrote.
func TestEtcdWaitsForOtherWritersTurn(t *testing.T) {
	c := etcdtest.Start(t, 1)
	open := func() *Etcd {
		e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/turn/", Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	}
	e, other := open(), open()
	put := func(s *Etcd, k string) error {
		return s.Update(func(tx Tx) error {
			tx.Get(testBucket, []byte("hdr"))
			if err := tx.Put(testBucket, []byte("hdr"), []byte(k)); err != nil {
				return err
			}
			return tx.Put(testBucket, []byte(k), []byte("x"))
		})
	}
	rev := func(k string) int64 {
		resp, err := e.Client().Get(context.Background(), e.BucketPrefix(testBucket)+k)
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("%s: %v", k, err)
		}
		return resp.Kvs[0].ModRevision
	}
	turns := make(chan int, 8)
	h := func(n int, _ time.Duration) { turns <- n }
	hookTurn.Store(&h)
	turnWaitFloor.Store(int64(time.Minute)) // the other writer's commit, not the bound, ends the wait
	t.Cleanup(func() { hookTurn.Store(nil); turnWaitFloor.Store(0) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var followed atomic.Int64
	go e.Follow(ctx, 0, func(c Commit) error { followed.Store(c.Rev); return nil }, func(int64, time.Time) {})
	if err := put(other, "warm"); err != nil {
		t.Fatal(err)
	}
	for followed.Load() < rev("warm") {
		time.Sleep(time.Millisecond)
	}
	if err := put(e, "a"); err != nil {
		t.Fatal(err)
	}
	if err := put(other, "b"); err != nil {
		t.Fatal(err)
	}
	for followed.Load() < rev("b") {
		time.Sleep(time.Millisecond)
	}
	for len(turns) > 0 {
		<-turns
	}
	if err := put(e, "c"); err != nil {
		t.Fatal(err)
	}
	select {
	case n := <-turns:
		if n != 1 {
			t.Fatalf("waited for %d commits of the other writer, want 1", n)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a commit that the other writer's preceded was not followed by a wait for its turn")
	}
	done := make(chan error, 1)
	go func() { done <- put(e, "d") }()
	for waiting := false; !waiting; {
		select {
		case err := <-done:
			t.Fatalf("a call committed without waiting for the other writer's turn (%v)", err)
		case <-time.After(time.Millisecond):
		}
		e.mu.Lock()
		waiting = len(e.pending) > 0
		e.mu.Unlock()
	}
	c0 := e.Counts()
	if err := put(other, "e"); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if rd, re := rev("d"), rev("e"); rd < re {
		t.Fatalf("the call that waited committed at revision %d, before the other writer's turn at %d", rd, re)
	}
	if c := e.Counts(); c.Conflicts != c0.Conflicts {
		t.Fatalf("the call that waited for the other writer's turn lost to it: %+v since %+v", c, c0)
	}
}

// A writer whose commits write none of the keys this store's last commit
// read (another shard's header of a key store) is no rival: this store's
// commits after its commits wait for no turn.
func TestEtcdNoTurnForDisjointWriters(t *testing.T) {
	c := etcdtest.Start(t, 1)
	open := func() *Etcd {
		e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/noturn/", Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { e.Close() })
		return e
	}
	e, other := open(), open()
	put := func(s *Etcd, hdr, k string) error {
		return s.Update(func(tx Tx) error {
			tx.Get(testBucket, []byte(hdr))
			if err := tx.Put(testBucket, []byte(hdr), []byte(k)); err != nil {
				return err
			}
			return tx.Put(testBucket, []byte(k), []byte("x"))
		})
	}
	var turns atomic.Int64
	h := func(int, time.Duration) { turns.Add(1) }
	hookTurn.Store(&h)
	t.Cleanup(func() { hookTurn.Store(nil) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var followed atomic.Int64
	go e.Follow(ctx, 0, func(c Commit) error { followed.Store(c.Rev); return nil }, func(int64, time.Time) {})
	for i := range 10 {
		if err := put(e, "hdr-e", fmt.Sprintf("e%d", i)); err != nil {
			t.Fatal(err)
		}
		if err := put(other, "hdr-other", fmt.Sprintf("o%d", i)); err != nil {
			t.Fatal(err)
		}
		resp, err := e.Client().Get(ctx, e.BucketPrefix(testBucket)+fmt.Sprintf("o%d", i))
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatal(err)
		}
		for followed.Load() < resp.Kvs[0].ModRevision {
			time.Sleep(time.Millisecond)
		}
	}
	if n := turns.Load(); n != 0 {
		t.Fatalf("waited %d times for the turn of a writer of other keys", n)
	}
	if c := e.Counts(); c.Conflicts != 0 {
		t.Fatalf("conflicts with a writer of other keys: %+v", c)
	}
}

// Writers that each make their next call once their last has committed
// (a daemon's clients) go in one group, not in two that take turns: after
// a transaction of one call, committed while four more waited, the next
// waits for that call's writer to come back, and carries all five. A
// writer that does not come back holds the others back by the bound
// alone.
func TestEtcdGroupWaitsForItsWriters(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/gather/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	t.Cleanup(func() { gatherFloor.Store(0) })
	put := func(k string) error {
		return e.Update(func(tx Tx) error { return tx.Put(testBucket, []byte(k), []byte("x")) })
	}
	// round commits a call alone while four others wait, then, if back,
	// the call's writer makes another after a pause; it returns the
	// transactions that committed the six calls.
	round := func(name string, back bool) int64 {
		t.Helper()
		c0 := e.Counts()
		release, started := make(chan struct{}), make(chan struct{}, 1)
		first := make(chan error, 1)
		go func() {
			first <- e.Update(func(tx Tx) error {
				select {
				case started <- struct{}{}:
				default:
				}
				<-release
				return tx.Put(testBucket, []byte(name+"-first"), []byte("x"))
			})
		}()
		<-started
		others := make(chan error, 4)
		for i := range 4 {
			go func() { others <- put(fmt.Sprintf("%s-%d", name, i)) }()
		}
		for {
			e.mu.Lock()
			n := len(e.pending)
			e.mu.Unlock()
			if n == 4 {
				break
			}
			time.Sleep(time.Millisecond)
		}
		close(release)
		if err := <-first; err != nil {
			t.Fatal(err)
		}
		if back {
			// Longer than the committer would wait if it did not wait
			// for this writer (the floor makes it wait that long).
			time.Sleep(50 * time.Millisecond)
			if err := put(name + "-again"); err != nil {
				t.Fatal(err)
			}
		}
		for range 4 {
			select {
			case err := <-others:
				if err != nil {
					t.Fatal(err)
				}
			case <-time.After(10 * time.Second):
				t.Fatal("the waiting calls did not commit")
			}
		}
		return e.Counts().Commits - c0.Commits
	}
	gatherFloor.Store(int64(time.Minute)) // the writer's call, not the bound, ends the wait
	if n := round("back", true); n != 2 {
		t.Fatalf("%d transactions committed the first call, the four waiting and the first's writer's next: want 2 (the first alone, then the five)", n)
	}
	gatherFloor.Store(int64(100 * time.Millisecond))
	if n := round("gone", false); n != 2 {
		t.Fatalf("%d transactions committed the first call and the four waiting: want 2", n)
	}
}

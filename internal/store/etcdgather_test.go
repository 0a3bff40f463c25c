package store

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

// primeWant makes the committer's last group one call committed while
// four waited, so that the next gather waits for five.
func primeWant(t *testing.T, e *Etcd, name string) []chan error {
	t.Helper()
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
	var outs []chan error
	for i := range 4 {
		ch := make(chan error, 1)
		outs = append(outs, ch)
		go func() {
			ch <- e.Update(func(tx Tx) error { return tx.Put(testBucket, []byte(fmt.Sprintf("%s-%d", name, i)), []byte("x")) })
		}()
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
	return outs
}

func gathering(e *Etcd) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.want > 0
}

// Close while the committer waits for writers: the waiting calls fail
// with ErrClosed at once, and none of them is committed.
func TestEtcdCloseDuringGather(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/rc/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { gatherFloor.Store(0) })
	gatherFloor.Store(int64(time.Minute))
	outs := primeWant(t, e, "c")
	for !gathering(e) {
		time.Sleep(time.Millisecond)
	}
	t0 := time.Now()
	e.Close()
	for _, ch := range outs {
		select {
		case err := <-ch:
			if !errors.Is(err, ErrClosed) {
				t.Errorf("call waiting in gather at Close: %v, want ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("call waiting in gather hangs after Close")
		}
	}
	t.Logf("calls failed %s after Close", time.Since(t0))
	for i := 0; ; i++ {
		e.mu.Lock()
		r := e.running
		e.mu.Unlock()
		if !r {
			break
		}
		if i > 1000 {
			t.Fatal("committer still running")
		}
		time.Sleep(time.Millisecond)
	}
	// Nothing committed after Close.
	e2, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/rc/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e2.Close()
	e2.View(func(tx Tx) error {
		for i := range 4 {
			if v := tx.Get(testBucket, []byte(fmt.Sprintf("c-%d", i))); v != nil {
				t.Errorf("c-%d committed after Close", i)
			}
		}
		return nil
	})
	if err := e.Update(func(Tx) error { return nil }); !errors.Is(err, ErrClosed) {
		t.Errorf("Update after Close: %v", err)
	}
}

// A lone writer waits once at most after a group of five, however long
// the wait would be.
func TestEtcdLoneWriterWaitsOnce(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/lone/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	t.Cleanup(func() { gatherFloor.Store(0) })
	// A group of five first, then the lone writer: one wait at most.
	outs := primeWant(t, e, "p")
	gatherFloor.Store(int64(3 * time.Second))
	for _, ch := range outs {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Now()
	for i := range 20 {
		if err := e.Update(func(tx Tx) error { return tx.Put(testBucket, []byte(fmt.Sprint("l", i)), []byte("x")) }); err != nil {
			t.Fatal(err)
		}
	}
	d := time.Since(t0)
	t.Logf("20 lone updates after a group of five: %s", d)
	if d > 5*time.Second {
		t.Errorf("lone writer waited in gather more than once: %s", d)
	}
}

// An UpdateAlone call (a master-key rotation) does not wait for calls
// that cannot join its transaction.
func TestEtcdCallAloneDoesNotWait(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/al/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	t.Cleanup(func() { gatherFloor.Store(0) })
	outs := primeWant(t, e, "a")
	for _, ch := range outs {
		if err := <-ch; err != nil {
			t.Fatal(err)
		}
	}
	// last: 4 calls, 0 waiting -> want 4; an alone call right after.
	gatherFloor.Store(int64(10 * time.Second))
	t0 := time.Now()
	if err := e.UpdateAlone(func(tx Tx) error { return tx.Put(testBucket, []byte("rot"), []byte("x")) }); err != nil {
		t.Fatal(err)
	}
	d := time.Since(t0)
	t.Logf("UpdateAlone after a group of four took %s", d)
	if d > 5*time.Second {
		t.Errorf("UpdateAlone waited %s in gather for calls that cannot join it", d)
	}
}

package store

import (
	"path/filepath"
	"testing"
	"time"
)

// UpdateAlone cuts the groups of concurrent writers at its call: it runs
// in a transaction of its own, after the commit functions of the writers
// queued before it, and before the fn of any writer queued after it.
func TestBoltUpdateAlone(t *testing.T) {
	b, err := OpenBolt(filepath.Join(t.TempDir(), "state"), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	release := make(chan struct{})
	blocked := make(chan struct{})
	go b.Update(func(Tx) error { // holds the committer
		close(blocked)
		<-release
		return nil
	})
	<-blocked
	queued := func(n int) {
		for {
			b.mu.Lock()
			l := len(b.pending)
			b.mu.Unlock()
			if l == n {
				return
			}
			time.Sleep(time.Millisecond)
		}
	}
	var beforeCommitted, afterRan bool
	errs := make(chan error, 3)
	go func() {
		errs <- b.Update(func(tx Tx) error {
			tx.OnCommit(func() { beforeCommitted = true })
			return tx.Put([]byte("b"), []byte("before"), []byte("1"))
		})
	}()
	queued(1)
	var sawBefore, sawAfter bool
	go func() {
		errs <- b.UpdateAlone(func(tx Tx) error {
			sawBefore, sawAfter = beforeCommitted, afterRan
			return nil
		})
	}()
	queued(2)
	go func() {
		errs <- b.Update(func(tx Tx) error {
			afterRan = true
			return nil
		})
	}()
	queued(3)
	close(release)
	for range 3 {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	if !sawBefore || sawAfter {
		t.Fatalf("UpdateAlone ran with the commit of the writer before it done: %v, the writer after it run: %v", sawBefore, sawAfter)
	}
}

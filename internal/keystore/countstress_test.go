package keystore

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// TestEncryptingUncountCloseStress: goroutines counting encryptions of
// several sizes, taking some back (Uncount, as a failed encryption does),
// while the version is closed in the middle: the encryptions kept never
// pass the closing limit, none is counted on the version after it closed,
// and the key is not wedged: its next encryption makes a new version.
func TestEncryptingUncountCloseStress(t *testing.T) {
	for round := range 20 {
		s := dev(t, 10)
		o := obj(t, 1, "", true)
		const limit = 3*reserveBlock + 1000
		SetFirstVersion(o, 0, time.Time{}, 0, limit)
		if err := s.Add(o); err != nil {
			t.Fatal(err)
		}
		v := o.Newest()
		var kept, afterClose atomic.Uint64
		var closed atomic.Bool
		var wg sync.WaitGroup
		stop := make(chan struct{})
		for g := range 6 {
			n := uint64(1 + g%3)
			wg.Go(func() {
				for i := 0; ; i++ {
					select {
					case <-stop:
						return
					default:
					}
					wasClosed := closed.Load()
					got, err := s.Encrypting(o, n)
					if err != nil {
						if !errors.Is(err, ErrSpent) {
							t.Error(err)
						}
						return
					}
					if got != v {
						continue
					}
					if wasClosed {
						afterClose.Add(n)
					}
					if i%3 == 0 {
						s.Uncount(got, n)
					} else {
						kept.Add(n)
					}
				}
			})
		}
		time.Sleep(time.Duration(round%5) * 200 * time.Microsecond)
		v.close()
		closed.Store(true)
		time.Sleep(time.Millisecond)
		close(stop)
		wg.Wait()
		if k, l := kept.Load(), v.Limit(); k > l || v.Used() != k {
			t.Fatalf("round %d: %d encryptions kept, %d counted, on a version closed at %d", round, k, v.Used(), l)
		}
		if a := afterClose.Load(); a > 0 {
			t.Fatalf("round %d: %d encryptions counted on the version after it closed", round, a)
		}
		got, err := s.Encrypting(o, 1)
		if err != nil || got == v {
			t.Fatalf("round %d: after the close: version %v, %v; want a new one", round, got, err)
		}
	}
}

package server

import (
	"bytes"
	"fmt"
	"sync"
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// TestLargeResultsNotShared: results of a request larger than an arena
// keeps, carved from the pool all sessions share, carry nothing of
// another session's earlier results, whether the requests follow one
// another or run at once, and a reply does not change once returned.
func TestLargeResultsNotShared(t *testing.T) {
	s := mustNew(t, Config{})
	const n = maxKeptResults + 44
	secret := func(k, i int) string { return fmt.Sprintf("secret of %d, %d", k, i) }
	ops := func(k int) []*wire.Op {
		o := make([]*wire.Op, n)
		for i := range o {
			o[i] = ping(secret(k, i))
		}
		return o
	}
	bad := make([]*wire.Op, n)
	for i := range bad {
		bad[i] = encrypt(12345) // no such handle: an error, no data
	}
	var wg sync.WaitGroup
	for k := range 4 {
		wg.Go(func() {
			ss := doSession(t, s, uint32(1+k))
			id := idOf(uint32(1 + k))
			for r := range 30 {
				rep := do(t, ss, id, uint64(2*r+1), ops(k)...)
				keep := make([][]byte, n)
				for i, res := range rep.Results {
					if string(res.Data) != secret(k, i) {
						t.Errorf("session %d: result %d is %q", k, i, res.Data)
						return
					}
					keep[i] = bytes.Clone(res.Data)
				}
				rep2 := do(t, ss, id, uint64(2*r+2), bad...)
				for i, res := range rep2.Results {
					if len(res.Data) != 0 || res.Value != nil || res.Status == wire.Status_STATUS_OK {
						t.Errorf("session %d: a failed operation's result %d carries %q %v", k, i, res.Data, res.Value)
						return
					}
				}
				for i, res := range rep.Results {
					if !bytes.Equal(res.Data, keep[i]) {
						t.Errorf("session %d: result %d changed after the reply to %q", k, i, res.Data)
						return
					}
				}
			}
		})
	}
	wg.Wait()
}

package keystore

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/key"
)

// Two daemons unseal at once on a shared store of one header, while a
// third, on the store of one header, creates keys: whichever splits
// (a split whose header changed meanwhile is left to the next unseal), a
// daemon unsealing afterwards finds 16 shards that add up and every key
// whose creation succeeded.
func TestClusterConcurrentSplitsKeepEveryKey(t *testing.T) {
	c := etcdtest.Start(t, 1)
	defer func(n uint32) { storeShards = n }(storeShards)
	storeShards = 1
	a := clusterNode(t, c.Endpoints(), "/splitrace/", true)
	for i := range 10 {
		if err := a.Add(obj(t, 1, fmt.Sprintf("pre%d", i), false)); err != nil {
			t.Fatal(err)
		}
	}
	storeShards = 16
	var made sync.Map
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			o := obj(t, 1, fmt.Sprintf("during%d", i), false)
			if a.Add(o) == nil {
				made.Store(o.ID, true)
			}
		}
	})
	nodes := make([]*Store, 2)
	var uw sync.WaitGroup
	for i := range nodes {
		uw.Go(func() { nodes[i] = clusterNode(t, c.Endpoints(), "/splitrace/", false) })
	}
	uw.Wait()
	close(stop)
	wg.Wait()
	n := 0
	t.Logf("shards seen by the two: %d, %d", nodes[0].shardCount(), nodes[1].shardCount())
	// A third daemon, unsealing afresh, checks every shard adds up.
	d := clusterNode(t, c.Endpoints(), "/splitrace/", false)
	if d.shardCount() != 16 {
		t.Fatalf("%d shards", d.shardCount())
	}
	made.Range(func(k, _ any) bool {
		n++
		for _, s := range []*Store{d} {
			within(t, 2*time.Second, "key followed", func() bool { _, err := s.Get(k.(key.ID)); return err == nil })
		}
		return true
	})
	t.Logf("%d keys created during the splits", n)
}

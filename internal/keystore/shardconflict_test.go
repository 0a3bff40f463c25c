package keystore

import (
	"fmt"
	"sync"
	"testing"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/store"
)

// Three key stores on one shared store creating keys at once commit
// without losing a transaction to each other: each creates in a shard of
// its own, and writes no header another one writes.
func TestClusterCreationsAcrossDaemonsDoNotConflict(t *testing.T) {
	c := etcdtest.Start(t, 1)
	var nodes []*Store
	for i := range 3 {
		nodes = append(nodes, clusterNode(t, c.Endpoints(), "/noconflict/", i == 0))
	}
	round := func(name string, n int) (commits, lost int64) {
		var before []store.EtcdCounts
		for _, s := range nodes {
			before = append(before, s.db.(*store.Etcd).Counts())
		}
		var wg sync.WaitGroup
		for i, s := range nodes {
			for g := range 4 {
				wg.Go(func() {
					for j := range n {
						if err := s.Add(obj(t, 1, fmt.Sprintf("%s-n%d-g%d-%d", name, i, g, j), false)); err != nil {
							t.Error(err)
							return
						}
					}
				})
			}
		}
		wg.Wait()
		for i, s := range nodes {
			c := s.db.(*store.Etcd).Counts()
			lost += c.Conflicts - before[i].Conflicts
			commits += c.Commits - before[i].Commits
		}
		t.Logf("%s: %d transactions committed, %d lost", name, commits, lost)
		return commits, lost
	}
	// Daemons that picked the same shard at unseal (at random) move
	// apart once each sees the other write it.
	round("warm", 5)
	if commits, lost := round("measured", 15); lost != 0 {
		t.Fatalf("%d transactions of %d lost to another daemon's", lost, commits)
	}
}

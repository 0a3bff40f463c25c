package store

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

// Groups that begin from the values Follow passed on, while another
// writer (anyone who can write etcd) changes the key they read before,
// during and after: every committed group read the value the key held at
// its commit, never one the other writer had replaced by then, and the
// daemon's waits for its turn end while that writer keeps writing.
func TestEtcdGroupFromWatchedValuesStaysGuarded(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/watched/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	hot := e.BucketPrefix(testBucket) + "hot"
	if err := e.Update(func(tx Tx) error { return tx.Put(testBucket, []byte("hot"), []byte("init")) }); err != nil {
		t.Fatal(err)
	}
	var waits, over atomic.Int64
	h := func(others int, timeout time.Duration) {
		waits.Add(1)
		if others > maxTurns || timeout > time.Duration(2*maxTurns)*maxLinger {
			over.Add(1)
		}
	}
	hookTurn.Store(&h)
	t.Cleanup(func() { hookTurn.Store(nil) })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go e.Follow(ctx, 0, func(Commit) error { return nil }, func(int64, time.Time) {})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ctx.Err() == nil; i++ {
			raw.Put(ctx, hot, fmt.Sprintf("other-%d", i))
			time.Sleep(time.Duration(i%3) * time.Millisecond)
		}
	}()
	defer wg.Wait()
	defer cancel()
	for i := range 60 {
		var read string
		err := e.Update(func(tx Tx) error {
			read = string(tx.Get(testBucket, []byte("hot")))
			return tx.Put(testBucket, []byte("copy"), []byte(read))
		})
		if err != nil {
			t.Fatalf("update %d: %v", i, err)
		}
		resp, err := raw.Get(context.Background(), e.BucketPrefix(testBucket)+"copy")
		if err != nil || len(resp.Kvs) != 1 {
			t.Fatalf("copy: %v", err)
		}
		at := resp.Kvs[0].ModRevision
		then, err := raw.Get(context.Background(), hot, clientv3.WithRev(at))
		if err != nil || len(then.Kvs) != 1 {
			t.Fatalf("hot at %d: %v", at, err)
		}
		if string(resp.Kvs[0].Value) != read || string(then.Kvs[0].Value) != read {
			t.Fatalf("update %d committed at revision %d having read %q, where the key held %q", i, at, read, then.Kvs[0].Value)
		}
	}
	if over.Load() != 0 {
		t.Errorf("%d of %d waits for the turn beyond their bound", over.Load(), waits.Load())
	}
	t.Logf("%d waits for the turn", waits.Load())
}

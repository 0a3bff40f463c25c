package store

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

// Many concurrent calls while another writer keeps changing the
// key they all read (conflicts, joins, fresh retries). Each call's
// outcome must be its own: nil iff its write is in etcd and its commit
// function ran exactly once; its own error otherwise, with no write and
// no commit function.
func TestEtcdJoinedCallsOwnOutcomes(t *testing.T) {
	c := etcdtest.Start(t, 1)
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/rj/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	bp := e.BucketPrefix(testBucket)
	const n = 300
	// Keys the calls need, put behind the store's back: read as absent
	// from the last-commit snapshot, then found.
	for i := range n {
		if i%5 == 0 {
			if _, err := raw.Put(context.Background(), bp+fmt.Sprintf("pre%d", i), "x"); err != nil {
				t.Fatal(err)
			}
		}
	}
	if err := e.Update(func(tx Tx) error { return tx.Put(testBucket, []byte("hot"), []byte("0")) }); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for j := 0; ; j++ {
			select {
			case <-stop:
				return
			default:
			}
			raw.Put(context.Background(), bp+"hot", fmt.Sprint(j))
			if j%4 == 0 {
				time.Sleep(time.Millisecond)
			}
		}
	}()
	var commits [n]atomic.Int32
	errs := make([]error, n)
	var cw sync.WaitGroup
	for i := range n {
		cw.Add(1)
		go func() {
			defer cw.Done()
			time.Sleep(time.Duration(i%50) * time.Millisecond)
			errs[i] = e.Update(func(tx Tx) error {
				tx.Get(testBucket, []byte("hot"))
				if i%5 == 0 && tx.Get(testBucket, []byte(fmt.Sprintf("pre%d", i))) == nil {
					return fmt.Errorf("absent %d", i)
				}
				if i%7 == 0 {
					return fmt.Errorf("fail %d", i)
				}
				tx.OnCommit(func() { commits[i].Add(1) })
				return tx.Put(testBucket, []byte(fmt.Sprintf("k%d", i)), []byte(fmt.Sprint(i)))
			})
		}()
	}
	cw.Wait()
	close(stop)
	wg.Wait()
	ok, unavailable := 0, 0
	for i := range n {
		resp, err := raw.Get(context.Background(), bp+fmt.Sprintf("k%d", i))
		if err != nil {
			t.Fatal(err)
		}
		present := len(resp.Kvs) == 1
		switch {
		case i%7 == 0:
			if errs[i] == nil || errs[i].Error() != fmt.Sprintf("fail %d", i) {
				t.Errorf("call %d: %v, want its own error", i, errs[i])
			}
			if present || commits[i].Load() != 0 {
				t.Errorf("call %d failed but written %v / committed %d", i, present, commits[i].Load())
			}
		case errs[i] == nil:
			ok++
			if !present || commits[i].Load() != 1 {
				t.Errorf("call %d acknowledged: written %v, commit functions %d", i, present, commits[i].Load())
			}
		default:
			if errors.Is(errs[i], ErrUnavailable) {
				unavailable++
			} else {
				t.Errorf("call %d: unexpected error %v", i, errs[i])
			}
			if present || commits[i].Load() != 0 {
				t.Errorf("call %d failed (%v) but written %v / committed %d", i, errs[i], present, commits[i].Load())
			}
		}
	}
	t.Logf("%d acknowledged, %d unavailable (conflicts)", ok, unavailable)
}

package store

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/etcdtest"
)

// A walk of a bucket whose values are large reads it in pages that the
// client takes: every key is found, where a page of etcdPage keys would
// be a larger answer than the client accepts.
func TestEtcdForEachLargeValues(t *testing.T) {
	c := etcdtest.Start(t, 1)
	old := etcdRecvMax
	etcdRecvMax = 10 << 20 // above the send limit (8 MiB), as clientv3 wants
	t.Cleanup(func() { etcdRecvMax = old })
	e, err := OpenEtcd(EtcdConfig{Endpoints: c.Endpoints(), Prefix: "/page/", Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	val := []byte(strings.Repeat("v", 256<<10))
	const n = 48 // 12 MiB in all, more than one answer may hold
	for i := range n / 4 {
		if err := e.Update(func(tx Tx) error {
			for j := range 4 {
				if err := tx.Put([]byte("big"), fmt.Appendf(nil, "k%03d", i*4+j), val); err != nil {
					return err
				}
			}
			return nil
		}); err != nil {
			t.Fatal(err)
		}
	}
	for _, walk := range []func(func(Tx) error) error{e.View, e.Update} {
		got := 0
		if err := walk(func(tx Tx) error {
			got = 0
			return tx.ForEach([]byte("big"), nil, func(k, v []byte) error {
				if len(v) != len(val) {
					return fmt.Errorf("%s: %d bytes", k, len(v))
				}
				got++
				return nil
			})
		}); err != nil {
			t.Fatal(err)
		}
		if got != n {
			t.Fatalf("walked %d keys of %d", got, n)
		}
	}
}

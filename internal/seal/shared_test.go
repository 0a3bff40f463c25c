package seal

import (
	"context"
	"testing"

	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/store"
)

// Two daemons share one store (an etcd cluster): one was started before
// the other initialized the store, and unseals with the shares the init
// issued; shares it held toward an unseal are kept while the record does
// not change.
func TestUnsealOfAStoreInitializedElsewhere(t *testing.T) {
	st := store.NewMemory()
	late, err := Open(Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	first, err := Open(Config{Store: st})
	if err != nil {
		t.Fatal(err)
	}
	p, err := first.PrepareInit(context.Background(), Sealing{Shares: 3, Threshold: 2}, false)
	if err != nil {
		t.Fatal(err)
	}
	shares := make([]shamir.Share, len(p.Shares))
	for i, s := range p.Shares {
		shares[i] = shamir.Share{SplitID: s.SplitID, Threshold: s.Threshold, X: s.X, Y: append([]byte(nil), s.Y...)}
	}
	if err := first.CommitInit(p, func(*Keys) ([]byte, error) { return []byte("header"), nil }); err != nil {
		t.Fatal(err)
	}
	if st := late.State(); !st.Initialized || st.Shares != 3 {
		t.Fatalf("the other daemon's state after the init: %+v", st)
	}
	held, need, done, err := late.UnsealShare(cp(shares[0]), nil)
	if err != nil || done || held != 1 || need != 2 {
		t.Fatalf("first share on the other daemon: held %d need %d done %v err %v", held, need, done, err)
	}
	if _, _, done, err := late.UnsealShare(cp(shares[2]), nil); err != nil || !done {
		t.Fatalf("second share: %v %v", done, err)
	}
	if _, err := late.Keys(); err != nil {
		t.Fatal(err)
	}
}

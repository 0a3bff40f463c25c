package seal

import (
	"context"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

func sharedMaster(t *testing.T, k, n int) (*Master, []shamir.Share, *time.Time) {
	t.Helper()
	now := time.Now()
	m, err := Open(Config{Store: store.NewMemory(), Now: func() time.Time { return now }})
	if err != nil {
		t.Fatal(err)
	}
	p, err := m.PrepareInit(context.Background(), Sealing{Shares: n, Threshold: k}, false)
	if err != nil {
		t.Fatal(err)
	}
	shares := make([]shamir.Share, len(p.Shares))
	for i, s := range p.Shares {
		shares[i] = shamir.Share{SplitID: s.SplitID, Threshold: s.Threshold, X: s.X, Y: append([]byte(nil), s.Y...)}
	}
	if err := m.CommitInit(p, func(*Keys) ([]byte, error) { return []byte("header"), nil }); err != nil {
		t.Fatal(err)
	}
	if p.Shares != nil {
		t.Fatal("commit left the shares in memory")
	}
	m.Seal()
	return m, shares, &now
}

func cp(s shamir.Share) shamir.Share {
	s.Y = append([]byte(nil), s.Y...)
	return s
}

func TestUnsealWithShares(t *testing.T) {
	m, shares, _ := sharedMaster(t, 3, 5)
	if _, err := m.Keys(); wire.StatusOf(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("sealed Keys: %v", err)
	}
	for i, x := range []int{4, 1} {
		held, need, done, err := m.UnsealShare(cp(shares[x]), nil)
		if err != nil || done || held != i+1 || need != 3 {
			t.Fatalf("share %d: held %d need %d done %v err %v", i, held, need, done, err)
		}
	}
	if _, _, _, err := m.UnsealShare(cp(shares[1]), nil); wire.StatusOf(err) != wire.Status_STATUS_ALREADY_EXISTS {
		t.Fatalf("the same share twice: %v", err)
	}
	if st := m.State(); !st.Sealed || st.SharesHeld != 2 || st.Threshold != 3 {
		t.Fatalf("state with 2 of 3 shares: %+v", st)
	}
	_, _, done, err := m.UnsealShare(cp(shares[2]), nil)
	if err != nil || !done {
		t.Fatalf("third share: %v %v", done, err)
	}
	if _, err := m.Keys(); err != nil {
		t.Fatal(err)
	}
}

func TestWrongSharesFailAndAreRateLimited(t *testing.T) {
	m, shares, now := sharedMaster(t, 2, 3)
	// Without the commitments (a split made before them), a damaged share
	// is found only when the shares combine (TestBadShareNamed has them).
	editRecordAsIssued(t, m, shares[:2], func(r *persist.MasterRecord) { r.Shares.Commitments = nil })
	bad := cp(shares[0])
	bad.Y[0] ^= 1 // a damaged share combines to a wrong master key
	m.UnsealShare(bad, nil)
	_, _, done, err := m.UnsealShare(cp(shares[1]), nil)
	if done || wire.StatusOf(err) != wire.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("wrong shares: done %v, %v", done, err)
	}
	if m.State().SharesHeld != 0 {
		t.Fatal("a failed combination kept its shares")
	}
	if _, _, _, err := m.UnsealShare(cp(shares[0]), nil); wire.StatusOf(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("right after a failure: %v", err)
	}
	*now = now.Add(time.Second + time.Millisecond)
	m.UnsealShare(cp(shares[0]), nil)
	if _, _, done, err := m.UnsealShare(cp(shares[2]), nil); !done || err != nil {
		t.Fatalf("after the wait: %v %v", done, err)
	}
	// Backoff doubles with each failure in a row, up to a minute.
	var l limiter
	t0 := time.Now()
	for i, want := range []time.Duration{1, 2, 4, 8, 16, 32, 60, 60} {
		l.fail(t0)
		if got := l.wait(t0); got != want*time.Second {
			t.Errorf("after %d failures: wait %v, want %v", i+1, got, want*time.Second)
		}
	}
}

func TestShareOfAnotherSplit(t *testing.T) {
	m, _, _ := sharedMaster(t, 2, 3)
	_, other, _ := sharedMaster(t, 2, 3)
	if _, _, _, err := m.UnsealShare(cp(other[0]), nil); wire.StatusOf(err) != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("a share of another split: %v", err)
	}
}

func TestSealingNeedsSomething(t *testing.T) {
	m, _ := Open(Config{Store: store.NewMemory()})
	if _, err := m.PrepareInit(context.Background(), Sealing{}, false); wire.StatusOf(err) != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("init with neither passphrase nor shares: %v", err)
	}
	if _, err := m.PrepareInit(context.Background(), Sealing{Shares: 3, Threshold: 4}, false); wire.StatusOf(err) != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("threshold above shares: %v", err)
	}
}

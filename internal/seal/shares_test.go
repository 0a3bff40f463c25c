package seal

import (
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/wire"
)

// TestBadShareNamed: with exactly k shares of which one is not the share
// that was issued (altered beyond what its checksum catches), unseal
// names that share instead of failing the combination with "wrong
// shares", and keeps the good ones; the good share then unseals.
// CheckShare finds it without taking any share.
func TestBadShareNamed(t *testing.T) {
	m, shares, _ := sharedMaster(t, 3, 5)
	if n := len(m.Record().Shares.Commitments); n != 5 {
		t.Fatalf("the master record keeps %d commitments, want one per share", n)
	}
	bad := cp(shares[2])
	bad.Y[5] ^= 1
	if err := m.CheckShare(cp(bad)); wire.StatusOf(err) != wire.Status_STATUS_INVALID_ARGUMENT || !strings.Contains(err.Error(), "share 3 of split") {
		t.Fatalf("CheckShare of a bad share 3: %v", err)
	}
	for _, s := range shares {
		if err := m.CheckShare(cp(s)); err != nil {
			t.Fatalf("CheckShare of good share %d: %v", s.X, err)
		}
	}
	for _, i := range []int{0, 4} {
		if _, _, _, err := m.UnsealShare(cp(shares[i]), nil); err != nil {
			t.Fatal(err)
		}
	}
	held, need, done, err := m.UnsealShare(bad, nil)
	if done || wire.StatusOf(err) != wire.Status_STATUS_INVALID_ARGUMENT || !strings.Contains(err.Error(), "share 3 of split") ||
		!strings.Contains(err.Error(), "not the share that was issued") {
		t.Fatalf("the third of 3 shares is bad: done %v, %v; want share 3 named", done, err)
	}
	if held != 2 || need != 3 || m.State().SharesHeld != 2 {
		t.Fatalf("after a bad share: %d of %d held (state %d), want the 2 good ones kept", held, need, m.State().SharesHeld)
	}
	if _, _, done, err := m.UnsealShare(cp(shares[2]), nil); !done || err != nil {
		t.Fatalf("the good share 3: %v %v", done, err)
	}

	// A number the split does not have.
	m2, shares2, _ := sharedMaster(t, 2, 3)
	extra := cp(shares2[0])
	extra.X = 4
	if _, _, _, err := m2.UnsealShare(extra, nil); wire.StatusOf(err) != wire.Status_STATUS_INVALID_ARGUMENT || !strings.Contains(err.Error(), "only 3 shares") {
		t.Fatalf("share 4 of a split of 3: %v", err)
	}
}

// TestSharesWithoutCommitments: a split made before commitments existed
// (the record keeps none) still unseals, and a bad share fails the
// combination as before.
func TestSharesWithoutCommitments(t *testing.T) {
	m, shares, now := sharedMaster(t, 2, 3)
	editRecordAsIssued(t, m, shares[:2], func(r *persist.MasterRecord) { r.Shares.Commitments = nil })
	bad := cp(shares[0])
	bad.Y[0] ^= 1
	m.UnsealShare(bad, nil)
	if _, _, _, err := m.UnsealShare(cp(shares[1]), nil); wire.StatusOf(err) != wire.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("a bad share without commitments: %v", err)
	}
	*now = now.Add(2 * time.Second)
	for _, s := range []shamir.Share{shares[0], shares[2]} {
		if _, _, _, err := m.UnsealShare(cp(s), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := m.Keys(); err != nil {
		t.Fatalf("good shares without commitments: %v", err)
	}
}

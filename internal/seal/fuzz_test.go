package seal

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/shamir"
)

// FuzzCheckShare: a share set read from the store (any split id, counts
// and commitments, as a damaged or altered record may hold) and any share:
// checkShare never panics, and accepts only a share of the set's split,
// threshold and size whose number the split has and which matches its
// commitment when the set keeps one per share. Seeds are in
// testdata/fuzz/FuzzCheckShare.
func FuzzCheckShare(f *testing.F) {
	s := shamir.Share{SplitID: shamir.SplitID{1, 2, 3, 4, 5, 6, 7, 8}, Threshold: 2, X: 2, Y: bytes.Repeat([]byte{9}, KeyLen)}
	c := shamir.Commit(s)
	commits := append(append(bytes.Repeat([]byte{0}, 32), c[:]...), bytes.Repeat([]byte{1}, 32)...)
	f.Add(s.SplitID[:], uint32(2), uint32(3), commits, s.SplitID[:], 2, byte(2), s.Y)
	f.Add(s.SplitID[:], uint32(2), uint32(3), []byte{}, s.SplitID[:], 2, byte(3), s.Y)
	f.Add([]byte{}, uint32(0), uint32(0), []byte{}, s.SplitID[:], 0, byte(0), []byte{})
	m := &Master{log: slog.New(slog.DiscardHandler)}
	f.Fuzz(func(t *testing.T, split []byte, k, n uint32, commits []byte, shSplit []byte, shK int, x byte, y []byte) {
		set := &persist.ShareSet{SplitId: split, Threshold: k, Shares: n}
		// The commitments: 32-byte pieces, the last one possibly short.
		for len(commits) > 0 {
			c := commits[:min(32, len(commits))]
			set.Commitments = append(set.Commitments, c)
			commits = commits[len(c):]
		}
		var sh shamir.Share
		copy(sh.SplitID[:], shSplit)
		sh.Threshold, sh.X, sh.Y = shK, x, y
		if m.checkShare(set, sh) != nil {
			return
		}
		switch {
		case !bytes.Equal(sh.SplitID[:], split), sh.Threshold != int(k), sh.X == 0, uint32(sh.X) > n, len(sh.Y) != KeyLen:
			t.Fatalf("accepted share %d (k %d, %d bytes) of a set of %d (k %d)", sh.X, sh.Threshold, len(sh.Y), n, k)
		case len(set.Commitments) == int(n) && !sh.Matches(set.Commitments[sh.X-1]):
			t.Fatalf("accepted share %d that does not match its commitment", sh.X)
		}
	})
}

package shamir

import (
	"bytes"
	"crypto/sha256"
	"testing"
)

// TestCommitConstruction pins the commitment as doc.go states it.
func TestCommitConstruction(t *testing.T) {
	s := Share{SplitID: SplitID{1, 2, 3, 4, 5, 6, 7, 8}, Threshold: 3, X: 9, Y: []byte("thirty-two bytes of share data!!")}
	in := append([]byte("keywarden share commitment v1\x00"), 1, 2, 3, 4, 5, 6, 7, 8, 3, 9)
	want := sha256.Sum256(append(in, s.Y...))
	if got := Commit(s); got != want {
		t.Fatalf("Commit = %x, want %x", got, want)
	}
}

// TestCommitNamesTheBadShare: with exactly k shares, one of them damaged
// in a way its checksum does not catch (altered, and the checksum
// recomputed), Combine cannot tell that anything is wrong (k shares
// always interpolate to some secret), but the commitments made at the
// split name the share that is not the one issued.
func TestCommitNamesTheBadShare(t *testing.T) {
	secret := bytes.Repeat([]byte{0x5a}, 32)
	shares, err := Split(secret, 3, 5, nil)
	if err != nil {
		t.Fatal(err)
	}
	commitments := make([][CommitmentSize]byte, len(shares))
	for i, s := range shares {
		commitments[i] = Commit(s)
	}
	bad := shares[3]
	bad.Y = bytes.Clone(bad.Y)
	bad.Y[17] ^= 0x40
	file, err := Encode(bad) // a valid file: its checksum is right
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := Parse(file)
	if err != nil {
		t.Fatalf("the altered share's file: %v", err)
	}
	got, err := Combine([]Share{shares[0], parsed, shares[4]})
	if err != nil || bytes.Equal(got, secret) {
		t.Fatalf("Combine with a bad share: %x, %v (it cannot tell)", got, err)
	}
	for _, s := range []Share{shares[0], parsed, shares[4]} {
		if ok := s.Matches(commitments[s.X-1][:]); ok != (s.X != bad.X) {
			t.Fatalf("share %d matches its commitment: %v", s.X, ok)
		}
	}
	// Every field is committed to.
	s := shares[1]
	for name, mod := range map[string]func(*Share){
		"split id":  func(s *Share) { s.SplitID[0] ^= 1 },
		"threshold": func(s *Share) { s.Threshold++ },
		"x":         func(s *Share) { s.X++ },
		"data":      func(s *Share) { s.Y = append(bytes.Clone(s.Y[:31]), s.Y[31]^0x80) },
		"length":    func(s *Share) { s.Y = bytes.Clone(s.Y[:31]) },
	} {
		o := s
		mod(&o)
		if o.Matches(commitments[1][:]) {
			t.Errorf("a share with another %s matches", name)
		}
	}
	if !s.Matches(commitments[1][:]) || s.Matches(commitments[1][:31]) || s.Matches(nil) {
		t.Fatal("Matches with the right, a short, or no commitment")
	}
}

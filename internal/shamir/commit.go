package shamir

import (
	"crypto/sha256"
	"crypto/subtle"
)

// CommitmentSize is the length of a share's commitment.
const CommitmentSize = sha256.Size

// commitLabel starts the input of every commitment.
const commitLabel = "keywarden share commitment v1\x00"

// Commit returns the commitment to share s: SHA-256 of the label
// "keywarden share commitment v1" and a zero byte, the split id (8
// bytes), the threshold (1 byte), x (1 byte) and the share's bytes. Kept
// beside a split (keywarden keeps the n commitments in the master record),
// it tells the share that was issued from any other that claims its split
// and number, without the secret and before combining. It reveals nothing
// useful of the share: a share is as many uniformly random bytes as the
// secret (k >= 2), so finding it from its hash is a preimage search of
// that size, and with k-1 other shares, a search for the secret itself.
func Commit(s Share) [CommitmentSize]byte {
	h := sha256.New()
	h.Write([]byte(commitLabel))
	h.Write(s.SplitID[:])
	h.Write([]byte{byte(s.Threshold), s.X})
	h.Write(s.Y)
	var c [CommitmentSize]byte
	h.Sum(c[:0])
	return c
}

// Matches reports whether s is the share that commitment c was made of,
// comparing in constant time.
func (s Share) Matches(c []byte) bool {
	want := Commit(s)
	return subtle.ConstantTimeCompare(want[:], c) == 1
}

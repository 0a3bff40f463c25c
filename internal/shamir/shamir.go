package shamir

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
)

// Limits of a split.
const (
	// MinThreshold is the smallest threshold k: with k = 1 every share
	// would be the secret itself.
	MinThreshold = 2
	// MaxShares is the largest number of shares n, and of threshold k: the
	// x coordinates are the nonzero bytes.
	MaxShares = 255
	// MaxSecretLen is the longest secret, in bytes; keywarden shares
	// 32-byte master keys.
	MaxSecretLen = 1024
)

// SplitID identifies one split: the n shares that Split returns carry the
// same random id, so that shares of different splits are never combined.
type SplitID [8]byte

// String returns the id as 16 lowercase hex digits.
func (id SplitID) String() string { return hex.EncodeToString(id[:]) }

// Share is one share of a split secret.
type Share struct {
	SplitID   SplitID // common to the shares of one split
	Threshold int     // k: how many shares reconstruct the secret
	X         byte    // the x coordinate, 1 to 255: the share's number
	Y         []byte  // f(X) for each byte of the secret; as long as the secret
}

// Errors of Split and Combine. Errors about malformed arguments wrap
// ErrInvalid; their text says what is wrong but never contains share or
// secret bytes.
var (
	ErrInvalid = errors.New("shamir: invalid input")
	// ErrMixedSplits: the shares carry different split ids.
	ErrMixedSplits = errors.New("shares of different splits")
	// ErrInconsistent: more than k shares were given and they do not lie
	// on one set of polynomials: a share is damaged, or belongs to another
	// split with the same id.
	ErrInconsistent = errors.New("shares do not belong together")
)

// NotEnoughError is Combine's error for fewer shares than the threshold.
type NotEnoughError struct {
	Need, Have int
}

func (e *NotEnoughError) Error() string {
	return fmt.Sprintf("need %d shares, have %d", e.Need, e.Have)
}

func invalidf(format string, args ...any) error {
	return fmt.Errorf("%w: "+format, append([]any{ErrInvalid}, args...)...)
}

// Split splits secret (1 to MaxSecretLen bytes) into n shares, any k of
// which reconstruct it, for MinThreshold <= k <= n <= MaxShares. Share i
// (from 0) has x = i+1. rnd is the source of the split id and of the
// random coefficients; nil means crypto/rand. Split reads the id first,
// then the coefficients of degree 1 for every byte of the secret, then
// those of degree 2, and so on.
//
// Split does not keep or modify secret, and wipes the coefficients; the
// caller owns and should wipe the shares.
func Split(secret []byte, k, n int, rnd io.Reader) ([]Share, error) {
	switch {
	case len(secret) == 0 || len(secret) > MaxSecretLen:
		return nil, invalidf("a secret must be 1 to %d bytes, not %d", MaxSecretLen, len(secret))
	case k < MinThreshold || k > MaxShares:
		return nil, invalidf("threshold %d is not from %d to %d", k, MinThreshold, MaxShares)
	case n < k || n > MaxShares:
		return nil, invalidf("%d shares: need from the threshold %d to %d", n, k, MaxShares)
	}
	if rnd == nil {
		rnd = rand.Reader
	}
	var id SplitID
	if _, err := io.ReadFull(rnd, id[:]); err != nil {
		return nil, fmt.Errorf("shamir: reading randomness: %w", err)
	}
	// coef[j][b] is the coefficient of x^j of the polynomial of byte b.
	coef := make([][]byte, k)
	coef[0] = secret
	for j := 1; j < k; j++ {
		coef[j] = make([]byte, len(secret))
	}
	defer func() {
		for _, c := range coef[1:] {
			clear(c)
		}
	}()
	for _, c := range coef[1:] {
		if _, err := io.ReadFull(rnd, c); err != nil {
			return nil, fmt.Errorf("shamir: reading randomness: %w", err)
		}
	}
	shares := make([]Share, n)
	subtle.WithDataIndependentTiming(func() {
		for i := range shares {
			x := byte(i + 1)
			y := make([]byte, len(secret))
			evalAt(coef, x, y)
			shares[i] = Share{SplitID: id, Threshold: k, X: x, Y: y}
		}
	})
	return shares, nil
}

// Combine reconstructs the secret from shares of one split, in any order.
// It checks that the shares are well formed and agree (same split id,
// threshold and length, distinct x), that there are at least k of them,
// and, when there are more than k, that the others lie on the polynomials
// through the first k (ErrInconsistent otherwise).
//
// With exactly k shares nothing can be checked: a damaged share gives a
// wrong secret without error. The caller must verify the result. The
// secret is a fresh slice the caller should wipe.
func Combine(shares []Share) ([]byte, error) {
	if len(shares) == 0 {
		return nil, &NotEnoughError{Need: MinThreshold, Have: 0}
	}
	for _, s := range shares {
		switch {
		case s.Threshold < MinThreshold || s.Threshold > MaxShares:
			return nil, invalidf("threshold %d is not from %d to %d", s.Threshold, MinThreshold, MaxShares)
		case s.X == 0:
			return nil, invalidf("a share with x = 0 (share numbers start at 1)")
		case len(s.Y) == 0 || len(s.Y) > MaxSecretLen:
			return nil, invalidf("share %d of split %s holds %d bytes, not 1 to %d", s.X, s.SplitID, len(s.Y), MaxSecretLen)
		}
	}
	first := shares[0]
	var seen [256]bool
	for _, s := range shares {
		switch {
		case s.SplitID != first.SplitID:
			return nil, fmt.Errorf("%w: split %s and split %s", ErrMixedSplits, first.SplitID, s.SplitID)
		case s.Threshold != first.Threshold:
			return nil, invalidf("shares of split %s disagree on the threshold (%d and %d)", s.SplitID, first.Threshold, s.Threshold)
		case len(s.Y) != len(first.Y):
			return nil, invalidf("shares of split %s have different lengths (%d and %d bytes)", s.SplitID, len(first.Y), len(s.Y))
		case seen[s.X]:
			return nil, invalidf("share %d of split %s is given twice", s.X, s.SplitID)
		}
		seen[s.X] = true
	}
	k := first.Threshold
	if len(shares) < k {
		return nil, &NotEnoughError{Need: k, Have: len(shares)}
	}

	xs := make([]byte, k)
	ys := make([][]byte, k)
	for i, s := range shares[:k] {
		xs[i], ys[i] = s.X, s.Y
	}
	secret := make([]byte, len(first.Y))
	consistent := 1
	subtle.WithDataIndependentTiming(func() {
		interpolate(xs, ys, 0, secret)
		if len(shares) > k {
			y := make([]byte, len(secret))
			for _, s := range shares[k:] {
				interpolate(xs, ys, s.X, y)
				consistent &= subtle.ConstantTimeCompare(y, s.Y)
			}
			clear(y)
		}
	})
	if consistent != 1 {
		clear(secret)
		return nil, fmt.Errorf("%w: the %d shares of split %s do not lie on one polynomial (a damaged share, or one of another split)",
			ErrInconsistent, len(shares), first.SplitID)
	}
	return secret, nil
}

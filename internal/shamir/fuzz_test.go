package shamir

import (
	"bytes"
	"errors"
	"testing"
)

// FuzzParse: Parse never panics, returns a *ParseError on failure, and
// what it accepts is a valid share that Encode writes back to a file that
// parses to the same share. Seeds are in testdata/fuzz/FuzzParse.
func FuzzParse(f *testing.F) {
	f.Add([]byte(golden))
	f.Add([]byte("# comment\r\n" + golden + "\r\n"))
	f.Add([]byte("keywarden-share-v1:0000000000000000:255:255:ff:00000000"))
	f.Add([]byte("keywarden-share-v2:::::"))
	f.Fuzz(func(t *testing.T, in []byte) {
		s, err := Parse(in)
		if err != nil {
			var pe *ParseError
			if !errors.As(err, &pe) || (!errors.Is(err, ErrFormat) && !errors.Is(err, ErrTypo)) {
				t.Fatalf("error %v (%T) is not a *ParseError of ErrFormat or ErrTypo", err, err)
			}
			return
		}
		if s.Threshold < MinThreshold || s.Threshold > MaxShares || s.X == 0 ||
			len(s.Y) == 0 || len(s.Y) > MaxSecretLen {
			t.Fatalf("Parse accepted an invalid share: k=%d x=%d %d bytes", s.Threshold, s.X, len(s.Y))
		}
		file, err := Encode(s)
		if err != nil {
			t.Fatalf("Encode of a parsed share: %v", err)
		}
		back, err := Parse(file)
		if err != nil || !equalShare(back, s) {
			t.Fatalf("re-parse: %v", err)
		}
		// The commitment of what was parsed is that of what is written.
		if c := Commit(s); !back.Matches(c[:]) {
			t.Fatal("a re-parsed share does not match its commitment")
		}
	})
}

// FuzzCombine: Combine never panics on any set of shares, and what it
// returns on success is as long as the shares.
func FuzzCombine(f *testing.F) {
	f.Add([]byte{3, 1, 4, 0xaa, 0xbb, 2, 4, 0xcc, 0xdd, 3, 4, 0xee, 0xff})
	f.Add([]byte{2, 1, 3, 1, 2, 3, 3})
	f.Add([]byte{2, 0, 2, 0, 2, 2, 2})
	f.Fuzz(func(t *testing.T, in []byte) {
		// in: threshold, then records of x, length, bytes.
		if len(in) == 0 {
			return
		}
		k := int(in[0])
		var shares []Share
		for rest := in[1:]; len(rest) >= 2; {
			x, n := rest[0], int(rest[1])
			rest = rest[2:]
			n = min(n, len(rest))
			shares = append(shares, Share{Threshold: k, X: x, Y: bytes.Clone(rest[:n])})
			rest = rest[n:]
		}
		secret, err := Combine(shares)
		if err == nil && len(secret) != len(shares[0].Y) {
			t.Fatalf("secret of %d bytes from shares of %d", len(secret), len(shares[0].Y))
		}
	})
}

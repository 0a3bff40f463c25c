package e2e_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/shamir"
)

// With exactly the threshold of shares, one of which is not the share
// that was issued (its data altered and its checksum made to match, which
// no typo does), unseal names that share, from the commitments the store
// keeps, instead of "wrong passphrase or shares"; no share of the request
// is spent, and the good share unseals.
func TestUnsealNamesBadShare(t *testing.T) {
	sock, state, _ := persistentSetup(t)
	d := startPersistent(t, sock, state)
	dir := filepath.Join(t.TempDir(), "shares")
	if r := d.runCLI(t, nil, nil, "init", "--no-passphrase", "--shares", "5", "--threshold", "3", "--share-dir", dir); r.code != 0 {
		t.Fatalf("init with shares: %s", r)
	}
	if r := d.runCLI(t, nil, nil, "seal"); r.code != 0 {
		t.Fatalf("seal: %s", r)
	}
	share := func(i int) string { return filepath.Join(dir, "share-"+string(rune('0'+i))+".txt") }
	b, err := os.ReadFile(share(2))
	if err != nil {
		t.Fatal(err)
	}
	s, err := shamir.Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	s.Y[7] ^= 0x20
	forged, err := shamir.Encode(s)
	if err != nil {
		t.Fatal(err)
	}
	bad := filepath.Join(t.TempDir(), "share-2.txt")
	os.WriteFile(bad, forged, 0o600)

	r := d.runCLI(t, nil, nil, "unseal", "--share-file", share(1), "--share-file", bad, "--share-file", share(4))
	if r.code != 1 || !strings.Contains(r.stderr, "share 2 of split "+s.SplitID.String()) || !strings.Contains(r.stderr, "not the share that was issued") {
		t.Fatalf("unseal with a bad share 2: %s", r)
	}
	if st := status(t, d.client(t)); !st.Seal.Sealed || st.Seal.SharesHeld != 0 {
		t.Fatalf("after a request with a bad share: %+v, want no share held", st.Seal)
	}
	r = d.runCLI(t, nil, nil, "unseal", "--share-file", share(1), "--share-file", share(2), "--share-file", share(4))
	if r.code != 0 || !strings.Contains(r.stdout, "unsealed") {
		t.Fatalf("unseal with the good share 2: %s", r)
	}
}

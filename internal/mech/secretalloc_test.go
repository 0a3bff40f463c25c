package mech

import (
	"crypto/sha256"
	"testing"

	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
)

// Inside secmem.Do the runtime records every heap allocation (to erase it
// when it is freed), at a cost of up to a microsecond each. These tests
// keep the daemon's own share of that at nothing: a key's cached state is
// found without allocating, and a signature allocates there exactly what
// the standard library's signing does (about 60 for ECDSA), so that no
// parsing of the key, copy of it or check of it creeps in per signature.

func TestRunAllocatesNothing(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, typ := range []wire.KeyType{tAES, tHMAC256, tEd, tP256, tP384, tRSA2048, tX25519} {
		k := testKey(t, typ)
		noop := func(*expanded) error { return nil }
		if err := k.run(noop); err != nil { // build the cached state
			t.Fatal(err)
		}
		if n := testing.AllocsPerRun(20, func() { k.run(noop) }); n != 0 {
			t.Errorf("%s: entering the key's secret state allocates %v times", k.Spec().Name, n)
		}
		k.Destroy()
	}
}

func TestSignAllocatesWhatTheLibraryDoes(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector allocates")
	}
	for _, typ := range []wire.KeyType{tP256, tP384, tRSA2048} {
		k := testKey(t, typ)
		sign := stdSign(t, k)
		d := sha256.Sum256([]byte("a message"))
		p := SignParams{Hash: hSHA256, Prehashed: true}
		mustSign(t, k, p, d[:])
		got := testing.AllocsPerRun(20, func() {
			if _, err := k.Sign(p, d[:]); err != nil {
				t.Fatal(err)
			}
		})
		want := testing.AllocsPerRun(20, func() {
			var err error
			secmem.Do(func() { err = sign(d[:]) })
			if err != nil {
				t.Fatal(err)
			}
		})
		if got != want {
			t.Errorf("%s: a signature allocates %v times, the standard library's %v", k.Spec().Name, got, want)
		}
		k.Destroy()
	}
}

package mech

import (
	"math/big"
	"slices"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// waitCached waits until cond holds for the number of cached keys.
func waitCached(t *testing.T, what string, cond func(int) bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond(CachedKeys()) {
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d keys cached", what, CachedKeys())
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestExpandedStateExpires(t *testing.T) {
	SetCacheIdle(30 * time.Millisecond)
	defer SetCacheIdle(0)
	k, err := Generate(key.Lookup(wire.KeyType_KEY_TYPE_ED25519))
	if err != nil {
		t.Fatal(err)
	}
	defer k.Destroy()
	if k.exp.Load() == nil {
		t.Fatal("a new key has no expanded state")
	}
	waitCached(t, "idle key dropped", func(int) bool { return k.exp.Load() == nil })
	// Used again, it is rebuilt from the arena, and works.
	sig, err := k.Sign(SignParams{}, []byte("m"))
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Verify(SignParams{}, []byte("m"), sig); err != nil {
		t.Fatal(err)
	}
	if k.exp.Load() == nil {
		t.Fatal("no expanded state right after use")
	}
}

func TestExpandedStateBounded(t *testing.T) {
	SetCacheMax(3)
	defer SetCacheMax(0)
	var keys []*Key
	for range 10 {
		k, err := Generate(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM))
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, k)
		if n := CachedKeys(); n > 3 {
			t.Fatalf("%d keys cached with a bound of 3", n)
		}
	}
	for _, k := range keys {
		if _, err := k.Encrypt([]byte("x"), nil, 0, nil); err != nil {
			t.Fatal(err)
		}
		k.Destroy()
	}
}

func TestDestroyDropsExpandedState(t *testing.T) {
	k, err := Generate(key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256))
	if err != nil {
		t.Fatal(err)
	}
	e := k.exp.Load()
	if e == nil || len(e.macKey) == 0 {
		t.Fatal("no expanded state")
	}
	macKey := e.macKey
	before := CachedKeys()
	if err := k.Destroy(); err != nil {
		t.Fatal(err)
	}
	if k.exp.Load() != nil || CachedKeys() >= before {
		t.Fatal("destroyed key still cached")
	}
	for _, b := range macKey {
		if b != 0 {
			t.Fatal("Destroy left the expanded key bytes")
		}
	}
}

// The arena, not the heap, holds the canonical bytes.
func TestCanonicalBytesInArena(t *testing.T) {
	a, err := Arena()
	if err != nil {
		t.Fatal(err)
	}
	before := a.Stats().Allocations
	k, err := Generate(key.Lookup(wire.KeyType_KEY_TYPE_ECDSA_P256))
	if err != nil {
		t.Fatal(err)
	}
	if got := a.Stats().Allocations; got != before+1 {
		t.Fatalf("arena allocations %d, want %d", got, before+1)
	}
	k.Destroy()
	if got := a.Stats().Allocations; got != before {
		t.Fatalf("arena allocations after Destroy %d, want %d", got, before)
	}
}

// The parsed private keys cached for signing are overwritten by Destroy,
// as the HMAC key above is.
func TestDestroyWipesPrivateState(t *testing.T) {
	for _, typ := range []wire.KeyType{tEd, tP256, tP384, tRSA2048} {
		k := testKey(t, typ)
		mustSign(t, k, SignParams{}, []byte("a message"))
		e := k.exp.Load()
		if e == nil {
			t.Fatalf("%s: no expanded state after a signature", k.Spec().Name)
		}
		var limbs [][]big.Word
		var raw []byte
		switch {
		case e.ed != nil:
			raw = e.ed
		case e.ec != nil:
			limbs = append(limbs, e.ec.D.Bits())
		case e.rsa != nil:
			pc := e.rsa.Precomputed
			limbs = append(limbs, e.rsa.D.Bits(), pc.Dp.Bits(), pc.Dq.Bits(), pc.Qinv.Bits())
			for _, p := range e.rsa.Primes {
				limbs = append(limbs, p.Bits())
			}
		}
		if raw == nil && len(limbs) == 0 {
			t.Fatalf("%s: no private state cached", k.Spec().Name)
		}
		k.Destroy()
		if slices.ContainsFunc(raw, func(b byte) bool { return b != 0 }) {
			t.Errorf("%s: Destroy left the cached private key bytes", k.Spec().Name)
		}
		for _, l := range limbs {
			if len(l) == 0 {
				t.Errorf("%s: an empty private value", k.Spec().Name)
			}
			if slices.ContainsFunc(l, func(w big.Word) bool { return w != 0 }) {
				t.Errorf("%s: Destroy left a cached private value", k.Spec().Name)
			}
		}
	}
}

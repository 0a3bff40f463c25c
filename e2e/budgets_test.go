package e2e_test

import (
	"errors"
	"testing"

	"github.com/keywarden/keywarden"
)

// Copies of one AES-GCM key's material share one nonce budget, held by
// the first holder: neither the original and its unwrapped copy, nor N
// unwraps of one blob, may each encrypt with the material on a budget of
// their own. A copy decrypts at once and encrypts under a new version of
// fresh material (or, with refuse-when-spent, is refused).
func TestCopiesShareBudget(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	kek := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
	data := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "data", Wrappable: true})
	ct0 := ok(data.Encrypt(ctx, []byte("before the wrap"), nil))
	blob := ok(kek.Wrap(ctx, data, keywarden.WrapKeywarden, nil))
	unwrap := func(spec keywarden.KeySpec) *keywarden.Key {
		t.Helper()
		return ok(kek.Unwrap(ctx, blob, keywarden.WrapKeywarden, spec, nil))
	}
	encVersion := func(k *keywarden.Key) uint32 {
		t.Helper()
		return ctVersion(t, ok(k.Encrypt(ctx, []byte("x"), nil)))
	}

	// The original lives: an unwrapped copy encrypts under a version of
	// its own, the original under version 1 as before.
	cp := unwrap(keywarden.KeySpec{Name: "copy"})
	if v := encVersion(cp); v != 2 {
		t.Fatalf("the copy of a live key encrypted under version %d, want a new version 2", v)
	}
	if pt := ok(cp.Decrypt(ctx, ct0, nil)); string(pt) != "before the wrap" {
		t.Fatal("the copy does not decrypt the original's ciphertext")
	}
	if v := encVersion(data); v != 1 {
		t.Fatalf("the original encrypted under version %d", v)
	}

	// The original gone (or in another daemon): N unwraps of one blob.
	for _, k := range []*keywarden.Key{data, cp} {
		if err := k.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	}
	first := unwrap(keywarden.KeySpec{Name: "first"})
	if v := encVersion(first); v != 1 {
		t.Fatalf("the first unwrap encrypted under version %d, want the blob's version 1", v)
	}
	for _, name := range []string{"second", "third"} {
		k := unwrap(keywarden.KeySpec{Name: name})
		if v := encVersion(k); v != 2 {
			t.Fatalf("the %s unwrap of one blob encrypted under version %d, want a new version 2", name, v)
		}
	}
	strict := unwrap(keywarden.KeySpec{Name: "strict", RefuseWhenSpent: true})
	if _, err := strict.Encrypt(ctx, []byte("x"), nil); !errors.Is(err, keywarden.ErrResourceExhausted) {
		t.Fatalf("a refuse-when-spent copy encrypted: %v", err)
	}
	if pt := ok(strict.Decrypt(ctx, ct0, nil)); string(pt) != "before the wrap" {
		t.Fatal("a spent copy does not decrypt")
	}
	// A copy that cannot encrypt has no budget to spend.
	ro := unwrap(keywarden.KeySpec{Name: "ro", Usage: keywarden.UsageDecrypt})
	if pt := ok(ro.Decrypt(ctx, ct0, nil)); string(pt) != "before the wrap" {
		t.Fatal("a decrypt-only copy does not decrypt")
	}
}

package e2e_test

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
)

// Opening another user's key by name (or id) is answered from the key's
// record, before its bytes are loaded: exactly as a name that does not
// exist is. The daemon's key memory is filled first, so that loading the
// key would fail: a daemon that loaded it before deciding would answer
// RESOURCE_EXHAUSTED, telling the caller that the key exists.
func TestOpenOthersKeyNotLoaded(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, "--max-locked-memory", "256K", "--max-keys-per-user", "100000")
	owner := d.client(t)
	before := memoryAllocations(t, owner)
	k, err := owner.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "private"})
	if err != nil {
		t.Fatal(err)
	}
	id := k.ID().String()
	if err := k.Close(ctx); err != nil {
		t.Fatal(err)
	}
	// The key is unloaded once its last handle is closed.
	for deadline := time.Now().Add(10 * time.Second); memoryAllocations(t, owner) != before; {
		if time.Now().After(deadline) {
			t.Fatalf("the key stays loaded after its handle was closed: %d allocations, want %d", memoryAllocations(t, owner), before)
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Fill the key memory with ephemeral keys.
	n := 0
	for ; ; n++ {
		_, err := owner.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
		if errors.Is(err, keywarden.ErrResourceExhausted) {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		if n > 50000 {
			t.Fatal("the key memory never filled up")
		}
	}
	// The owner's open needs memory for the key: it is refused for that.
	if _, err := owner.Open(ctx, "private"); !errors.Is(err, keywarden.ErrResourceExhausted) {
		t.Fatalf("with the key memory full (%d keys), the owner's open: %v, want ErrResourceExhausted", n, err)
	}
	as := func(ref string) cliResult { return d.runCLI(t, nobody, nil, "key", "info", ref) }
	missing := as("0:no-such-key")
	if missing.code != 1 || !strings.Contains(missing.stderr, "no such key") {
		t.Fatalf("a name that does not exist: %s", missing)
	}
	for _, ref := range []string{"0:private", "id:" + id} {
		got := as(ref)
		if got.code != missing.code || strings.ReplaceAll(got.stderr, ref, "REF") != strings.ReplaceAll(missing.stderr, "0:no-such-key", "REF") {
			t.Errorf("another user's key %s: %s\nwant the answer to a name that does not exist: %s", ref, got, missing)
		}
	}
	d.healthy(t)
}

// memoryAllocations returns the daemon's live allocations of key memory.
func memoryAllocations(t *testing.T, c *keywarden.Client) uint64 {
	t.Helper()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st.Memory.Allocations
}

package e2e_test

import (
	be "encoding/binary"
	"strings"
	"testing"

	"github.com/keywarden/keywarden"
)

// ctVersion is the key version an AES-GCM ciphertext names.
func ctVersion(t *testing.T, ct []byte) uint32 {
	t.Helper()
	if len(ct) < 7 || string(ct[:3]) != "KW\x01" {
		t.Fatalf("not a keywarden ciphertext: %x", ct)
	}
	return be.BigEndian.Uint32(ct[3:7])
}

// TestGenerationClosesStoredVersions: after a generation change, a key
// that was not in memory, like one that was, encrypts under a new version
// (its old versions may be spent by every clone), across a restart too;
// its old ciphertexts still decrypt.
func TestGenerationClosesStoredVersions(t *testing.T) {
	requireRoot(t) // bumping needs root
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state, "--unseal-passphrase-file", passFile, "--generation-sources", "none")
	initStore(t, d, passFile)
	c := d.client(t)
	resident := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "resident"})
	away := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "away"})
	old, err := away.Encrypt(ctx, []byte("before"), nil)
	if err != nil || ctVersion(t, old) != 1 {
		t.Fatalf("before the change: %v", err)
	}
	if err := away.Close(ctx); err != nil { // no handle left: the key leaves memory
		t.Fatal(err)
	}
	bumpAsRootOrSkip(t, d)

	for name, k := range map[string]*keywarden.Key{"resident": resident, "away": nil} {
		if k == nil {
			if k, err = c.Open(ctx, name); err != nil {
				t.Fatal(err)
			}
		}
		ct, err := k.Encrypt(ctx, []byte("after"), nil)
		if err != nil {
			t.Fatal(err)
		}
		if v := ctVersion(t, ct); v != 2 {
			t.Errorf("key %s encrypts under version %d after the change, want a new version 2", name, v)
		}
		if name == "away" {
			if pt, err := k.Decrypt(ctx, old, nil); err != nil || string(pt) != "before" {
				t.Errorf("the old version no longer decrypts: %q, %v", pt, err)
			}
		}
	}
	c.Close()
	d.stop()

	d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile, "--generation-sources", "none")
	c = d.client(t)
	k, err := c.Open(ctx, "away")
	if err != nil {
		t.Fatal(err)
	}
	ct, err := k.Encrypt(ctx, []byte("after a restart"), nil)
	if err != nil || ctVersion(t, ct) != 2 {
		t.Fatalf("after a restart: %v", err)
	}
}

// TestManyGenerationChanges: thousands of generation changes with an
// encryption between each leave a key encrypting, and rotatable: the
// versions the changes make do not use up the 64 a key may have (issue
// #14; halving the budgets at each change used to end in "at most 64 live
// versions" after about 2,048).
func TestManyGenerationChanges(t *testing.T) {
	requireRoot(t) // bumping needs root
	if testing.Short() {
		t.Skip("thousands of changes")
	}
	d := startDaemon(t, "--generation-sources", "none", "--audit-log", "off")
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "k"})
	const changes = 2100
	for i := range changes {
		if _, err := c.Admin().BumpGeneration(ctx, nil); err != nil {
			t.Fatal(err)
		}
		ct, err := k.Encrypt(ctx, []byte("x"), nil)
		if err != nil {
			t.Fatalf("encryption after change %d: %v", i+1, err)
		}
		if v := ctVersion(t, ct); v != uint32(i+2) {
			t.Fatalf("after change %d: version %d", i+1, v)
		}
	}
	if _, err := k.Rotate(ctx); err != nil {
		t.Fatalf("rotate after %d changes: %v", changes, err)
	}
}

// TestDecryptWithAnotherKey: a ciphertext of another key that names a
// version this key never had is said not to be for this key, not to be
// of a retired version.
func TestDecryptWithAnotherKey(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	one := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM})
	two := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM})
	if _, err := two.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	ct, err := two.Encrypt(ctx, []byte("for two"), nil)
	if err != nil || ctVersion(t, ct) != 2 {
		t.Fatalf("encrypt: %v", err)
	}
	_, err = one.Decrypt(ctx, ct, nil)
	if err == nil || !strings.Contains(err.Error(), "not for this key: it names key version 2, and the key's newest version is 1") {
		t.Fatalf("decrypt with another key: %v", err)
	}
	if keywarden.CodeOf(err) != keywarden.CodeInvalidArgument {
		t.Errorf("code %v", keywarden.CodeOf(err))
	}
}

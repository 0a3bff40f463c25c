package e2e_test

import (
	"bytes"
	"crypto/sha256"
	endian "encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/persist"
)

// No routine command loses keys: a command that would is refused, says
// why, and leaves every file of the state directory as it was (the audit
// log only grows, by the refusal's record).

// dirState is the content of a state directory's files.
type dirState map[string][]byte

func readDirState(t *testing.T, dir string) dirState {
	t.Helper()
	st := dirState{}
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		st[e.Name()] = b
	}
	return st
}

// unchangedSince fails unless dir holds the same files as before, each
// with the same bytes (by SHA-256), except the audit log, which may only
// have grown.
func unchangedSince(t *testing.T, dir string, before dirState) {
	t.Helper()
	after := readDirState(t, dir)
	for name, b := range before {
		a, ok := after[name]
		switch {
		case !ok:
			t.Errorf("%s is gone", name)
		case strings.HasPrefix(name, "audit.log"):
			if !bytes.HasPrefix(a, b) {
				t.Errorf("%s changed other than by appending", name)
			}
		case sha256.Sum256(a) != sha256.Sum256(b):
			t.Errorf("%s changed (sha256 %x, was %x)", name, sha256.Sum256(a), sha256.Sum256(b))
		}
	}
	for name := range after {
		if _, ok := before[name]; !ok {
			t.Errorf("%s appeared", name)
		}
	}
}

// A development-mode daemon's master key exists only in its memory:
// sealing it would destroy every key for good, so seal is refused; a
// backup of its store could never be unsealed, so none is made.
func TestDevSealAndBackupRefused(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kept"})
	if err != nil {
		t.Fatal(err)
	}
	r := d.runCLI(t, nil, nil, "seal")
	if r.code != 1 || !strings.Contains(r.stderr, "development mode") || !strings.Contains(r.stderr, "destroy every key") {
		t.Fatalf("seal of a development-mode daemon: %s", r)
	}
	if st := status(t, c); st.Seal.Sealed {
		t.Fatal("the daemon is sealed after a refused seal")
	}
	if _, err := k.Encrypt(ctx, []byte("still here"), nil); err != nil {
		t.Fatalf("the key after a refused seal: %v", err)
	}
	wantErr(t, "seal through the client", c.Admin().Seal(ctx), keywarden.ErrPolicyViolation)

	dir := t.TempDir()
	out := filepath.Join(dir, "dev.backup")
	r = d.runCLI(t, nil, nil, "backup", out)
	if r.code != 1 || !strings.Contains(r.stderr, "could never be unsealed") {
		t.Fatalf("backup of a development-mode daemon: %s", r)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Fatalf("a refused backup left %s", ents[0].Name())
	}
	var buf bytes.Buffer
	if _, err := c.Admin().Backup(ctx, &buf); !errors.Is(err, keywarden.ErrPolicyViolation) || buf.Len() != 0 {
		t.Fatalf("backup through the client: %v, %d bytes", err, buf.Len())
	}
}

// rewriteBackup returns a copy of a backup file (docs/formats.md) with the
// master record changed by edit and the checksum made right.
func rewriteBackup(t *testing.T, in []byte, edit func(*persist.MasterRecord)) []byte {
	t.Helper()
	const magic = "keywarden-backup-v1\n"
	body := in[:len(in)-sha256.Size]
	if !bytes.HasPrefix(body, []byte(magic)) {
		t.Fatal("not a backup")
	}
	out := []byte(magic)
	p := body[len(magic):]
	for p[0] == 1 {
		bl := int(p[1])
		bucket := p[2 : 2+bl]
		p = p[2+bl:]
		kl := endian.BigEndian.Uint32(p)
		k := p[4 : 4+kl]
		p = p[4+kl:]
		vl := endian.BigEndian.Uint32(p)
		v := p[4 : 4+vl]
		p = p[4+vl:]
		if bytes.Equal(bucket, persist.BucketMeta) && bytes.Equal(k, persist.MetaMaster) {
			var m persist.MasterRecord
			if err := m.UnmarshalVT(v); err != nil {
				t.Fatal(err)
			}
			edit(&m)
			v, _ = m.MarshalVT()
		}
		out = append(out, 1, byte(bl))
		out = append(out, bucket...)
		out = endian.BigEndian.AppendUint32(out, uint32(len(k)))
		out = append(out, k...)
		out = endian.BigEndian.AppendUint32(out, uint32(len(v)))
		out = append(out, v...)
	}
	out = append(out, p...) // the trailer
	sum := sha256.Sum256(out)
	return append(out, sum[:]...)
}

// A backup whose master key is sealed under neither a passphrase nor
// shares (a development-mode daemon's, made by a version that allowed
// it) is refused before the restore touches anything: restored, it left a
// store that could never be opened.
func TestRestoreOfUnsealableBackupRefused(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	src := startPersistent(t, sock, state)
	initStore(t, src, passFile)
	if _, err := src.client(t).Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "k"}); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	if _, err := src.client(t).Admin().Backup(ctx, &buf); err != nil {
		t.Fatal(err)
	}
	src.stop()
	unsealable := filepath.Join(t.TempDir(), "unsealable.backup")
	os.WriteFile(unsealable, rewriteBackup(t, buf.Bytes(), func(m *persist.MasterRecord) { m.Passphrase, m.Shares = nil, nil }), 0o600)

	sock2, state2, _ := persistentSetup(t)
	dst := startPersistent(t, sock2, state2)
	before := readDirState(t, state2)
	r := dst.runCLI(t, nil, nil, "restore", "--force", unsealable)
	if r.code != 1 || !strings.Contains(r.stderr, "could never be unsealed") {
		t.Fatalf("restore of a backup nothing unseals: %s", r)
	}
	unchangedSince(t, state2, before)
	if st := status(t, dst.client(t)); st.Seal.Initialized {
		t.Fatal("a refused restore gave the store a master key")
	}
}

// A restore into a store that holds keys needs --force; without it the
// daemon says what would be lost (counts, and names for the caller's
// keys) and nothing changes. With it, the store replaced is kept beside
// the new one.
func TestRestoreOverNewerKeysNeedsForce(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state)
	initStore(t, d, passFile)
	c := d.client(t)
	old, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "old"})
	if err != nil {
		t.Fatal(err)
	}
	backup := filepath.Join(t.TempDir(), "store.backup")
	if r := d.runCLI(t, nil, nil, "backup", backup); r.code != 0 {
		t.Fatalf("backup: %s", r)
	}
	if _, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "newer"}); err != nil {
		t.Fatal(err)
	}
	if _, err := old.Rotate(ctx); err != nil {
		t.Fatal(err)
	}

	before := readDirState(t, state)
	r := d.runCLI(t, nil, nil, "restore", backup)
	if r.code != 1 || !strings.Contains(r.stderr, "nothing restored") ||
		!strings.Contains(r.stderr, "1 key created since the backup (yours: newer)") ||
		!strings.Contains(r.stderr, "1 key rotated since") || !strings.Contains(r.stderr, "(yours: old)") ||
		!strings.Contains(r.stderr, "--force") {
		t.Fatalf("restore over newer keys: %s", r)
	}
	unchangedSince(t, state, before)
	if st := status(t, c); st.Seal.Sealed {
		t.Fatal("a refused restore sealed the daemon")
	}
	if _, err := old.Encrypt(ctx, []byte("x"), nil); err != nil {
		t.Fatalf("a key after a refused restore: %v", err)
	}
	if _, err := c.Admin().Restore(ctx, bytes.NewReader(mustRead(t, backup)), nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("Restore through the client, without force: %v", err)
	}

	r = d.runCLI(t, nil, nil, "restore", "--force", backup)
	if r.code != 0 || !strings.Contains(r.stdout, "lost: 1 created since the backup (yours: newer)") ||
		!strings.Contains(r.stdout, "lost: 1 rotated since the backup") || !strings.Contains(r.stdout, "the store replaced is kept in") {
		t.Fatalf("restore --force: %s", r)
	}
	kept, _ := filepath.Glob(filepath.Join(state, "keywarden.db.replaced-*"))
	if len(kept) != 1 || !strings.Contains(r.stdout, kept[0]) {
		t.Fatalf("the store replaced: %v (said: %s)", kept, r.stdout)
	}
	if r := d.runCLI(t, nil, nil, "unseal", "--passphrase-file", passFile); r.code != 0 {
		t.Fatalf("unseal: %s", r)
	}
	c = d.client(t)
	if _, err := c.Open(ctx, "newer"); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("a key made after the backup, after the restore: %v", err)
	}
	if k, err := c.Open(ctx, "old"); err != nil || k.Info().Version != 1 {
		t.Fatalf("the backup's key after the restore: %v", err)
	}

	// The store kept aside is whole: put back in place, it has every key.
	d.stop()
	state3 := filepath.Join(t.TempDir(), "state")
	os.MkdirAll(state3, 0o700)
	os.WriteFile(filepath.Join(state3, "keywarden.db"), mustRead(t, kept[0]), 0o600)
	d3 := startPersistent(t, sock, state3)
	if r := d3.runCLI(t, nil, nil, "unseal", "--passphrase-file", passFile); r.code != 0 {
		t.Fatalf("unseal of the store kept aside: %s", r)
	}
	c3 := d3.client(t)
	if _, err := c3.Open(ctx, "newer"); err != nil {
		t.Fatalf("the store kept aside lacks the newer key: %v", err)
	}
	if k, err := c3.Open(ctx, "old"); err != nil || k.Info().Version != 2 {
		t.Fatalf("the store kept aside lacks the rotation: %v", err)
	}
}

func mustRead(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A persistent key is destroyed only once its deletion is allowed (as
// Vault transit's deletion_allowed): a destroy refused changes nothing
// on disk; the setting survives a restart. Ephemeral keys are destroyed
// at once.
func TestDestroyNeedsDeletionAllowed(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state)
	initStore(t, d, passFile)
	c := d.client(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "precious"})
	if err != nil {
		t.Fatal(err)
	}
	if k.Info().Lifecycle.DeletionAllowed {
		t.Fatal("a new persistent key allows deletion")
	}
	before := readDirState(t, state)
	r := d.runCLI(t, nil, nil, "key", "destroy", "precious")
	if r.code != 1 || !strings.Contains(r.stderr, "deletion is not allowed") || !strings.Contains(r.stderr, "--deletion-allowed") {
		t.Fatalf("destroy of a protected key: %s", r)
	}
	wantErr(t, "Destroy of a protected key", k.Destroy(ctx), keywarden.ErrPolicyViolation)
	unchangedSince(t, state, before)
	if _, err := k.Encrypt(ctx, []byte("x"), nil); err != nil {
		t.Fatalf("the key after a refused destroy: %v", err)
	}

	eph, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if !eph.Info().Lifecycle.DeletionAllowed {
		t.Fatal("an ephemeral key does not allow deletion")
	}
	if err := eph.Destroy(ctx); err != nil {
		t.Fatalf("destroy of an ephemeral key: %v", err)
	}

	r = d.runCLI(t, nil, nil, "key", "set", "precious", "--deletion-allowed")
	if r.code != 0 || !strings.Contains(r.stdout, "deletion:") || !strings.Contains(r.stdout, "allowed") {
		t.Fatalf("key set --deletion-allowed: %s", r)
	}
	// It is in the key's record: it survives a restart.
	d.stop()
	d = startPersistent(t, sock, state)
	if r := d.runCLI(t, nil, nil, "unseal", "--passphrase-file", passFile); r.code != 0 {
		t.Fatalf("unseal: %s", r)
	}
	r = d.runCLI(t, nil, nil, "key", "info", "precious", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"deletion_allowed": true`) {
		t.Fatalf("key info after a restart: %s", r)
	}
	// And can be taken back.
	if r := d.runCLI(t, nil, nil, "key", "set", "precious", "--deletion-allowed=false"); r.code != 0 {
		t.Fatalf("key set --deletion-allowed=false: %s", r)
	}
	if r := d.runCLI(t, nil, nil, "key", "destroy", "precious"); r.code != 1 {
		t.Fatalf("destroy after deletion was disallowed again: %s", r)
	}
	d.runCLI(t, nil, nil, "key", "set", "precious", "--deletion-allowed")
	if r := d.runCLI(t, nil, nil, "key", "destroy", "precious"); r.code != 0 || !strings.Contains(r.stdout, "destroyed precious") {
		t.Fatalf("destroy of a key whose deletion is allowed: %s", r)
	}
	if _, err := d.client(t).Open(ctx, "precious"); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("the key after its destruction: %v", err)
	}
}

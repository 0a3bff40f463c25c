package e2e_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	bolt "go.etcd.io/bbolt"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/persist"
)

// recordOf returns a key's record (MAC || KeyRecord) in a stopped daemon's
// store.
func recordOf(t *testing.T, state string, id keywarden.KeyID) []byte {
	t.Helper()
	var v []byte
	readStore(t, state, func(tx *bolt.Tx) error {
		v = bytes.Clone(tx.Bucket(persist.BucketKeys).Get(id[:]))
		return nil
	})
	if v == nil {
		t.Fatalf("no record for key %s", id)
	}
	return v
}

// replaceInFile overwrites every copy of from in the file at path with to,
// in place, as someone with write access to it could while the daemon
// runs. from and to have the same length.
func replaceInFile(t *testing.T, path string, from, to []byte) {
	t.Helper()
	if len(from) != len(to) {
		t.Fatalf("records of %d and %d bytes", len(from), len(to))
	}
	file, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Count(file, from) == 0 {
		t.Fatal("the record is not in the store file")
	}
	fh, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer fh.Close()
	for off := 0; ; {
		i := bytes.Index(file[off:], from)
		if i < 0 {
			break
		}
		if _, err := fh.WriteAt(to, int64(off+i)); err != nil {
			t.Fatal(err)
		}
		off += i + len(from)
	}
}

// A key's record put back, in the live file, as it was before a change
// (here, before its usage was narrowed) is refused at the next load, and
// putting the current record back before a restart does not hide it.
func TestStoreRollbackWhileRunning(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	initStore(t, d, passFile)
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "alpha"})
	id := k.ID()
	generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "beta"})
	c.Close()
	d.stop()
	before := recordOf(t, state, id)

	d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	c = d.client(t)
	k = open(t, c, "alpha")
	decrypt := keywarden.UsageDecrypt
	if _, err := k.SetAttributes(ctx, keywarden.Attributes{Usage: &decrypt}); err != nil {
		t.Fatal(err)
	}
	k.Close(ctx)
	c.Close()
	d.stop()
	after := recordOf(t, state, id)

	d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	c = d.client(t)
	open(t, c, "beta").Close(ctx)
	path := filepath.Join(state, "keywarden.db")
	replaceInFile(t, path, after, before)
	if k, err := c.Open(ctx, "alpha"); err == nil {
		t.Errorf("the record put back while the daemon runs is served, with usage %v", k.Info().Usage)
		k.Close(ctx)
	} else if !errors.Is(err, keywarden.ErrInternal) || !strings.Contains(err.Error(), "integrity check") {
		t.Errorf("open of a key whose record was put back: %v", err)
	}
	replaceInFile(t, path, before, after)
	if k, err := c.Open(ctx, "alpha"); err == nil {
		t.Error("the key is served again once its record is put back as it was")
		k.Close(ctx)
	}
	if st := status(t, c); st.Seal.Quarantined != 1 {
		t.Errorf("status after a record was put back: %+v", st.Seal)
	}
	if !logSays(d, "key record refused") {
		t.Errorf("the log does not say why:\n%s", d.log)
	}
	open(t, c, "beta").Close(ctx)
}

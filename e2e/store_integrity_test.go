package e2e_test

import (
	"bytes"
	"compress/gzip"
	"crypto/ecdsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

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

// Rotating the master key rotates the audit log's keys with it: the log
// starts a new key epoch (a rekey checkpoint, signed with the old key,
// names the new one), so that whoever held the old master key cannot make
// MACs or checkpoints for what the log records after the rotation. The
// whole log still verifies from the first public key, and audit.pub names
// the new one.
func TestMasterRotationRekeysAuditLog(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	initStore(t, d, passFile)
	c := d.client(t)
	generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "k"})
	logPath, pub := filepath.Join(state, "audit.log"), filepath.Join(state, "audit.pub")
	first := status(t, c).Audit.PublicKey
	firstPub, err := os.ReadFile(pub)
	if err != nil {
		t.Fatal(err)
	}
	oldPub := filepath.Join(t.TempDir(), "old.pub")
	os.WriteFile(oldPub, firstPub, 0o600)
	if r := d.runCLI(t, nil, nil, append([]string{"master", "rotate", "--passphrase-file", passFile}, cheapKDF...)...); r.code != 0 {
		t.Fatalf("master rotate: %s", r)
	}
	deadline := time.Now().Add(30 * time.Second)
	for status(t, c).Seal.Rotating {
		if time.Now().After(deadline) {
			t.Fatal("the rotation did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	open(t, c, "k").Close(ctx)
	st := status(t, c)
	if !st.Audit.Keyed || bytes.Equal(st.Audit.PublicKey, first) {
		t.Errorf("the audit log's public key is the same after a master-key rotation: %x", st.Audit.PublicKey)
	}
	if now, _ := os.ReadFile(pub); bytes.Equal(now, firstPub) {
		t.Error("audit.pub was not republished after the rotation")
	}
	c.Close()
	d.stop()
	if r := auditVerify(t, d, "--public-key", oldPub, "--closed", logPath); r.code != 0 || !strings.HasPrefix(r.stdout, "intact\n") {
		t.Fatalf("verify from the first public key: %s", r)
	}
}

// format1State makes a state directory holding a store written by format
// 1 (internal/keystore/testdata/format1), and returns it with what that
// directory's facts.json says of it.
func format1State(t *testing.T, name string) (string, map[string]string) {
	t.Helper()
	dir := "../internal/keystore/testdata/format1"
	b, err := os.ReadFile(filepath.Join(dir, "facts.json"))
	if err != nil {
		t.Fatal(err)
	}
	var facts map[string]string
	if err := json.Unmarshal(b, &facts); err != nil {
		t.Fatal(err)
	}
	f, err := os.Open(filepath.Join(dir, name+".db.gz"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	z, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	db, err := io.ReadAll(z)
	if err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(state, "keywarden.db"), db, 0o600); err != nil {
		t.Fatal(err)
	}
	return state, facts
}

func fromHex(t *testing.T, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// A store written by the previous format opens: the daemon checks it
// under that format's rules, upgrades it, and re-writes its records in the
// background; the keys work throughout and after a restart.
func TestUpgradeFormat1Store(t *testing.T) {
	state, facts := format1State(t, "keys")
	passFile := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(passFile, []byte(facts["passphrase"]+"\n"), 0o600)
	sock := filepath.Join(openDir(t), "kw.sock")
	check := func(c *keywarden.Client) {
		t.Helper()
		msg := fromHex(t, facts["message"])
		alpha := open(t, c, "alpha")
		for _, ct := range []string{facts["alpha_ct1"], facts["alpha_ct2"]} {
			if pt, err := alpha.Decrypt(ctx, fromHex(t, ct), nil); err != nil || !bytes.Equal(pt, msg) {
				t.Errorf("alpha: a ciphertext of format 1's time does not decrypt: %v", err)
			}
		}
		if got, err := open(t, c, "beta").Export(ctx, keywarden.FormatRaw); err != nil || !bytes.Equal(got, fromHex(t, facts["beta_raw"])) {
			t.Errorf("beta's bytes: %v", err)
		}
		gamma := open(t, c, "gamma")
		if pub, err := gamma.ExportPublic(ctx, keywarden.FormatSPKIDER); err != nil || !bytes.Equal(pub, fromHex(t, facts["gamma_public"])) {
			t.Errorf("gamma's public key: %v", err)
		}
		if _, err := gamma.SignMessageContext(ctx, msg, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("gamma, narrowed to verify, signs: %v", err)
		}
		delta := open(t, c, "delta")
		sig, err := delta.SignMessageContext(ctx, msg, nil)
		if err != nil {
			t.Fatal(err)
		}
		pub, _ := x509.ParsePKIXPublicKey(fromHex(t, facts["delta_public"]))
		h := sha256.Sum256(msg)
		if !ecdsa.VerifyASN1(pub.(*ecdsa.PublicKey), h[:], sig) {
			t.Error("delta's signature does not verify under its public key of format 1's time")
		}
		if _, err := c.Open(ctx, "doomed"); !errors.Is(err, keywarden.ErrNotFound) {
			t.Errorf("a key destroyed under format 1: %v", err)
		}
		if st := status(t, c); st.Keys != 5 {
			t.Errorf("%d keys, want 5", st.Keys)
		}
	}
	d := startPersistent(t, sock, state)
	if r := d.runCLI(t, nil, nil, "unseal", "--passphrase-file", passFile); r.code != 0 {
		t.Fatalf("unseal of a store of format 1: %s\n%s", r, d.log)
	}
	c := d.client(t)
	deadline := time.Now().Add(30 * time.Second)
	for status(t, c).Seal.Rotating {
		if time.Now().After(deadline) {
			t.Fatal("the re-write did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if !logSays(d, "store upgraded from format 1") {
		t.Errorf("the log does not say that the store was upgraded:\n%s", d.log)
	}
	check(c)
	c.Close()
	d.stop()
	readStore(t, state, func(tx *bolt.Tx) error {
		return tx.Bucket(persist.BucketKeys).ForEach(func(_, v []byte) error {
			r := &persist.KeyRecord{}
			if err := r.UnmarshalVT(v[persist.MACSize:]); err != nil {
				return err
			}
			if r.Format != persist.Format {
				t.Errorf("a record of format %d after the re-write", r.Format)
			}
			return nil
		})
	})
	d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	check(d.client(t))
}

// A master-key rotation killed (SIGKILL) while it re-writes the records
// resumes at the next unseal, with the new passphrase; no key is lost or
// changed, and the store checks out.
func TestMasterRotationSurvivesKill(t *testing.T) {
	if testing.Short() {
		t.Skip("kills the daemon")
	}
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	initStore(t, d, passFile)
	c := d.client(t)
	const n = 700 // three batches of re-writing
	secrets := map[keywarden.KeyID][]byte{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for w := range 8 {
		wg.Go(func() {
			for i := w; i < n; i += 8 {
				secret := sha256.Sum256([]byte{byte(i), byte(i >> 8), 'k'})
				k, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true}, keywarden.FormatRaw, bytes.Clone(secret[:]))
				if err != nil {
					errs <- err
					return
				}
				mu.Lock()
				secrets[k.ID()] = secret[:]
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	newPass := filepath.Join(t.TempDir(), "new-pass")
	os.WriteFile(newPass, []byte("the new master passphrase\n"), 0o600)
	if r := d.runCLI(t, nil, nil, append([]string{"master", "rotate", "--no-wait", "--passphrase-file", newPass}, cheapKDF...)...); r.code != 0 {
		t.Fatalf("master rotate: %s", r)
	}
	d.cmd.Process.Kill() // somewhere in the re-write, or after it
	<-d.done
	d.cmd.ProcessState = &os.ProcessState{}

	d = startPersistent(t, sock, state, "--unseal-passphrase-file", newPass)
	c = d.client(t)
	if st := status(t, c).Seal; st.Rotating {
		t.Logf("the rotation resumes at %d of %d records", st.RotationDone, st.RotationTotal)
	}
	deadline := time.Now().Add(60 * time.Second)
	for status(t, c).Seal.Rotating {
		if time.Now().After(deadline) {
			t.Fatal("the rotation did not finish after the restart")
		}
		time.Sleep(20 * time.Millisecond)
	}
	check := func(c *keywarden.Client) {
		t.Helper()
		if st := status(t, c); st.Keys != n || st.Seal.Generation != 2 || st.Seal.Quarantined != 0 {
			t.Fatalf("status: %d keys, %+v", st.Keys, st.Seal)
		}
		for id, secret := range secrets {
			k, err := c.OpenID(ctx, id)
			if err != nil {
				t.Fatalf("key %s after the rotation: %v", id, err)
			}
			if got, err := k.Export(ctx, keywarden.FormatRaw); err != nil || !bytes.Equal(got, secret) {
				t.Fatalf("key %s changed in the rotation: %v", id, err)
			}
			k.Close(ctx)
		}
	}
	check(c)
	c.Close()
	d.stop()
	readStore(t, state, func(tx *bolt.Tx) error {
		return tx.Bucket(persist.BucketKeys).ForEach(func(_, v []byte) error {
			r := &persist.KeyRecord{}
			if err := r.UnmarshalVT(v[persist.MACSize:]); err != nil {
				return err
			}
			if g, _ := persist.Generation(r); g != 2 {
				t.Errorf("a record of generation %d after the rotation", g)
			}
			return nil
		})
	})
	d = startPersistent(t, sock, state, "--unseal-passphrase-file", newPass)
	check(d.client(t))
}

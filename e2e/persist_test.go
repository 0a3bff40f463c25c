package e2e_test

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
)

// The master passphrase of the tests' stores, and cheap Argon2id costs.
const testPass = "correct horse battery staple"

var cheapKDF = []string{"--time", "1", "--memory", "8192", "--threads", "1"}

// persistentSetup makes a state directory and a passphrase file.
func persistentSetup(t *testing.T) (sock, state, passFile string) {
	t.Helper()
	dir := openDir(t)
	passFile = filepath.Join(t.TempDir(), "pass")
	if err := os.WriteFile(passFile, []byte(testPass+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return filepath.Join(dir, "kw.sock"), filepath.Join(t.TempDir(), "state"), passFile
}

// initStore runs "keywarden init" against d with the test passphrase.
func initStore(t *testing.T, d *daemon, passFile string, extra ...string) {
	t.Helper()
	args := append([]string{"init", "--passphrase-file", passFile}, cheapKDF...)
	if r := d.runCLI(t, nil, nil, append(args, extra...)...); r.code != 0 {
		t.Fatalf("init: %s", r)
	}
}

func status(t *testing.T, c *keywarden.Client) *keywarden.ServerStatus {
	t.Helper()
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// A daemon without --dev keeps its keys in its state directory under a
// master key; it starts sealed, and everything survives a restart.
func TestPersistentLifecycle(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state)
	c := d.client(t)
	if st := status(t, c); st.DevMode || st.Seal.Initialized || !st.Seal.Sealed || !st.Seal.Persistent {
		t.Fatalf("a new store's status: %+v", st.Seal)
	}
	if _, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "early"}); !errors.Is(err, keywarden.ErrUnavailable) ||
		!strings.Contains(err.Error(), "init") {
		t.Fatalf("generate before init: %v", err)
	}
	initStore(t, d, passFile)
	for _, m := range []os.FileMode{0o700} {
		fi, _ := os.Stat(state)
		if fi.Mode().Perm() != m {
			t.Fatalf("state directory mode %04o", fi.Mode().Perm())
		}
	}
	if fi, _ := os.Stat(filepath.Join(state, "keywarden.db")); fi == nil || fi.Mode().Perm() != 0o600 {
		t.Fatal("store file missing or not 0600")
	}

	aesKey := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "payroll",
		ACL: []keywarden.ACLEntry{{ID: 1234, Usage: keywarden.UsageEncrypt}}})
	ed := generate(t, c, keywarden.KeySpec{Type: keywarden.Ed25519, Name: "signer"})
	msg := []byte("persistent message")
	ct1, err := aesKey.Encrypt(ctx, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	sig1, _ := ed.SignMessageContext(ctx, msg, nil)
	info, err := aesKey.Rotate(ctx)
	if err != nil || info.Version != 2 {
		t.Fatalf("rotate: %v %v", info.Version, err)
	}
	ct2, _ := aesKey.Encrypt(ctx, msg, nil)
	if ct1[6] != 1 || ct2[6] != 2 {
		t.Fatalf("ciphertext headers name versions %d and %d", ct1[6], ct2[6])
	}
	if _, err := ed.Rotate(ctx); err != nil {
		t.Fatal(err)
	}
	sig2, _ := ed.SignMessageContext(ctx, msg, nil)
	before := []keywarden.KeyInfo{aesKey.Info(), ed.Info()}
	c.Close()

	// Restart: sealed, refusing key operations.
	d.stop()
	d = startPersistent(t, sock, state)
	c = d.client(t)
	if st := status(t, c); !st.Seal.Initialized || !st.Seal.Sealed || st.Seal.Generation != 1 || !st.Seal.Passphrase {
		t.Fatalf("status after a restart: %+v", st.Seal)
	}
	if _, err := c.Open(ctx, "payroll"); !errors.Is(err, keywarden.ErrUnavailable) || !strings.Contains(err.Error(), "sealed") {
		t.Fatalf("open while sealed: %v", err)
	}
	if r := d.runCLI(t, nil, []byte("x"), "encrypt", "--key", "payroll"); r.code != 1 || !strings.Contains(r.stderr, "sealed") {
		t.Fatalf("encrypt while sealed: %s", r)
	}
	// A wrong passphrase fails cleanly, and the next attempt must wait.
	r := d.runCLI(t, nil, []byte("wrong\n"), "unseal", "--passphrase-file", "-")
	if r.code != 1 || !strings.Contains(r.stderr, "wrong passphrase") {
		t.Fatalf("unseal with a wrong passphrase: %s", r)
	}
	if st := status(t, c); st.Seal.RetryAfter <= 0 {
		t.Fatal("status does not show the wait")
	}
	// The daemon refuses an attempt during the wait, saying how long it
	// is, rounded up; the CLI waits it out by itself, saying so.
	if err := c.Admin().Unseal(ctx, []byte(testPass), nil); !errors.Is(err, keywarden.ErrResourceExhausted) || !strings.Contains(err.Error(), "try again in 1s") {
		t.Fatalf("unseal right after a failure: %v", err)
	}
	r = d.runCLI(t, nil, nil, "unseal", "--passphrase-file", passFile)
	if r.code != 0 || !strings.Contains(r.stderr, "waiting 1s before trying again") {
		t.Fatalf("unseal right after a failure: %s", r)
	}

	// Every key, attribute and version is back.
	aesKey, err = c.Open(ctx, "payroll")
	if err != nil {
		t.Fatal(err)
	}
	ed, _ = c.Open(ctx, "signer")
	for i, k := range []*keywarden.Key{aesKey, ed} {
		got, want := k.Info(), before[i]
		got.CallerUsage, want.CallerUsage = 0, 0
		// A restart counts every reserved encryption as made.
		for j := range got.Lifecycle.Versions {
			if got.Lifecycle.Versions[j].Encryptions < want.Lifecycle.Versions[j].Encryptions {
				t.Errorf("fewer encryptions counted after a restart")
			}
			got.Lifecycle.Versions[j].Encryptions, want.Lifecycle.Versions[j].Encryptions = 0, 0
		}
		if gj, wj := jsonOf(got), jsonOf(want); gj != wj {
			t.Errorf("key changed across a restart:\n got %s\nwant %s", gj, wj)
		}
	}
	for _, ct := range [][]byte{ct1, ct2} {
		if pt, err := aesKey.Decrypt(ctx, ct, nil); err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("decrypt after a restart: %v", err)
		}
	}
	if err := ed.Verify(ctx, msg, sig1, nil); err != nil {
		t.Fatalf("version 1 signature: %v", err)
	}
	if err := ed.Verify(ctx, msg, sig2, &keywarden.SignOptions{KeyVersion: 2}); err != nil {
		t.Fatalf("version 2 signature: %v", err)
	}
	if err := ed.Verify(ctx, msg, sig1, &keywarden.SignOptions{KeyVersion: 2}); !errors.Is(err, keywarden.ErrVerification) {
		t.Fatalf("version 1 signature checked against version 2: %v", err)
	}

	// Retire version 1: its ciphertexts no longer decrypt; rewrap first.
	ct1new, err := aesKey.Rewrap(ctx, ct1, nil)
	if err != nil || ct1new[6] != 2 {
		t.Fatalf("rewrap: %v", err)
	}
	v2 := uint32(2)
	if _, err := aesKey.SetLifecycle(ctx, keywarden.LifecycleChange{MinVersion: &v2}); err != nil {
		t.Fatal(err)
	}
	if _, err := aesKey.Decrypt(ctx, ct1, nil); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("decrypt under a retired version: %v", err)
	}
	if pt, err := aesKey.Decrypt(ctx, ct1new, nil); err != nil || !bytes.Equal(pt, msg) {
		t.Fatalf("decrypt of the rewrapped ciphertext: %v", err)
	}
	if info, err := aesKey.SetLifecycle(ctx, keywarden.LifecycleChange{TrimBelow: &v2}); err != nil || len(info.Lifecycle.Versions) != 1 {
		t.Fatalf("trim: %v", err)
	}

	// Seal wipes every key: handles fail until unsealed and reopened.
	if r := d.runCLI(t, nil, nil, "seal"); r.code != 0 {
		t.Fatalf("seal: %s", r)
	}
	if _, err := aesKey.Encrypt(ctx, msg, nil); !errors.Is(err, keywarden.ErrUnavailable) {
		t.Fatalf("encrypt through a handle after seal: %v", err)
	}
	if r := d.runCLI(t, nil, []byte(testPass+"\n"), "unseal", "--passphrase-file", "-"); r.code != 0 {
		t.Fatalf("unseal: %s", r)
	}
	if _, err := aesKey.Encrypt(ctx, msg, nil); !errors.Is(err, keywarden.ErrUnavailable) {
		t.Fatalf("an old handle after unseal: %v", err)
	}
	if k, err := c.Open(ctx, "payroll"); err != nil {
		t.Fatal(err)
	} else if pt, err := k.Decrypt(ctx, ct1new, nil); err != nil || !bytes.Equal(pt, msg) {
		t.Fatalf("after seal and unseal: %v", err)
	}
}

func jsonOf(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// Only administrators manage the master key and the store.
func TestStoreOperationsAdminOnly(t *testing.T) {
	requireRoot(t)
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	initStore(t, d, passFile)
	// Files nobody can read and write, so that only the daemon refuses.
	shared := openDir(t)
	os.Chmod(shared, 0o777)
	nobodyPass := filepath.Join(shared, "pass")
	os.WriteFile(nobodyPass, []byte(testPass), 0o644)
	passFile = nobodyPass
	bk := filepath.Join(shared, "b")
	os.WriteFile(bk, []byte("not a backup"), 0o644)
	for _, args := range [][]string{
		{"seal"}, {"backup", bk}, {"restore", bk},
		append([]string{"init", "--force", "--passphrase-file", passFile}, cheapKDF...),
		append([]string{"master", "rotate", "--passphrase-file", passFile}, cheapKDF...),
	} {
		r := d.runCLI(t, nobody, nil, args...)
		if r.code != 1 || !strings.Contains(r.stderr, "only an administrator") {
			t.Errorf("%v as nobody: %s", args, r)
		}
	}
	// Unsealing an unsealed daemon is nothing to do, for anyone (the
	// status says as much to everyone); a sealed one only an
	// administrator unseals.
	if r := d.runCLI(t, nobody, nil, "unseal", "--passphrase-file", passFile); r.code != 0 || !strings.Contains(r.stdout, "already unsealed") {
		t.Errorf("unseal of an unsealed daemon as nobody: %s", r)
	}
	if r := d.runCLI(t, nil, nil, "seal"); r.code != 0 {
		t.Fatalf("seal: %s", r)
	}
	if r := d.runCLI(t, nobody, nil, "unseal", "--passphrase-file", passFile); r.code != 1 || !strings.Contains(r.stderr, "only an administrator") {
		t.Errorf("unseal as nobody: %s", r)
	}
}

// Shares: any threshold of them unseal; fewer do not; a share of another
// split is refused.
func TestUnsealWithShares(t *testing.T) {
	sock, state, _ := persistentSetup(t)
	d := startPersistent(t, sock, state)
	shares := filepath.Join(t.TempDir(), "shares")
	if r := d.runCLI(t, nil, nil, "init", "--no-passphrase", "--shares", "5", "--threshold", "3", "--share-dir", shares); r.code != 0 {
		t.Fatalf("init with shares: %s", r)
	}
	for i := 1; i <= 5; i++ {
		fi, err := os.Stat(filepath.Join(shares, "share-"+string(rune('0'+i))+".txt"))
		if err != nil || fi.Mode().Perm() != 0o600 {
			t.Fatalf("share %d: %v", i, err)
		}
	}
	c := d.client(t)
	generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "mac"})
	d.stop()
	d = startPersistent(t, sock, state)
	share := func(i int) string { return filepath.Join(shares, "share-"+string(rune('0'+i))+".txt") }
	r := d.runCLI(t, nil, nil, "unseal", "--share-file", share(2), "--share-file", share(5))
	if r.code != 0 || !strings.Contains(r.stdout, "2 of 3 shares") {
		t.Fatalf("two of three shares: %s", r)
	}
	c = d.client(t)
	if _, err := c.Open(ctx, "mac"); !errors.Is(err, keywarden.ErrUnavailable) {
		t.Fatalf("open with too few shares: %v", err)
	}
	// A share with a typo is caught before it is sent.
	bad := filepath.Join(t.TempDir(), "bad.txt")
	b, _ := os.ReadFile(share(1))
	b[bytes.LastIndexByte(b, ':')-3] ^= 1
	os.WriteFile(bad, b, 0o600)
	if r := d.runCLI(t, nil, nil, "unseal", "--share-file", bad); r.code == 0 || !strings.Contains(r.stderr, "typo") {
		t.Fatalf("a share with a typo: %s", r)
	}
	if r := d.runCLI(t, nil, nil, "unseal", "--share-file", share(4)); r.code != 0 || !strings.Contains(r.stdout, "unsealed") {
		t.Fatalf("third share: %s", r)
	}
	if _, err := c.Open(ctx, "mac"); err != nil {
		t.Fatal(err)
	}
}

// What a client was told exists, exists after a crash; what it was not
// told about is not half there; the store passes its consistency check.
func TestCrashSafety(t *testing.T) {
	if testing.Short() {
		t.Skip("kills the daemon repeatedly")
	}
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	initStore(t, d, passFile)

	type fact struct {
		id      keywarden.KeyID
		secret  []byte
		version uint32 // at least this version acknowledged
		gone    bool   // destruction acknowledged
		// A destruction was asked for: if the daemon died before it
		// answered, the key may or may not be there.
		destroying bool
	}
	facts := map[keywarden.KeyID]*fact{}
	for round := range 4 {
		c := d.client(t)
		cctx, cancel := context.WithCancel(ctx)
		results := make(chan *fact, 1024)
		for w := range 4 {
			go func() {
				for i := 0; cctx.Err() == nil; i++ {
					secret := make([]byte, 32)
					rand.Read(secret)
					k, err := c.Import(cctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true}, keywarden.FormatRaw, bytes.Clone(secret))
					if err != nil {
						return
					}
					f := &fact{id: k.ID(), secret: secret, version: 1}
					results <- f
					switch i % 3 {
					case 1:
						if info, err := k.Rotate(cctx); err == nil {
							results <- &fact{id: f.id, version: info.Version}
						}
					case 2:
						yes := true
						if _, err := k.SetLifecycle(cctx, keywarden.LifecycleChange{DeletionAllowed: &yes}); err != nil {
							continue
						}
						results <- &fact{id: f.id, destroying: true}
						if k.Destroy(cctx) == nil {
							results <- &fact{id: f.id, gone: true}
						}
					}
					_ = w
				}
			}()
		}
		time.Sleep(time.Duration(150+round*97) * time.Millisecond)
		d.cmd.Process.Kill() // SIGKILL, mid-write somewhere
		<-d.done
		cancel()
		time.Sleep(50 * time.Millisecond)
	drain:
		for {
			select {
			case r := <-results:
				f := facts[r.id]
				if f == nil {
					facts[r.id] = r
					continue
				}
				if r.gone {
					f.gone = true
				}
				if r.destroying {
					f.destroying = true
				}
				f.version = max(f.version, r.version)
			default:
				break drain
			}
		}
		d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
		c2 := d.client(t)
		if st := status(t, c2); st.Seal.Sealed {
			t.Fatalf("round %d: the store fails its consistency check after SIGKILL:\n%s", round, d.log)
		}
		for _, f := range facts {
			k, err := c2.OpenID(ctx, f.id)
			if f.gone {
				if !errors.Is(err, keywarden.ErrNotFound) {
					t.Fatalf("round %d: a key whose destruction was acknowledged is back: %v", round, err)
				}
				continue
			}
			if errors.Is(err, keywarden.ErrNotFound) && f.destroying {
				f.gone = true // destroyed, the answer lost with the daemon
				continue
			}
			if err != nil {
				t.Fatalf("round %d: an acknowledged key %s is lost: %v", round, f.id, err)
			}
			if v := k.Info().Version; v < f.version {
				t.Fatalf("round %d: acknowledged version %d, found %d", round, f.version, v)
			}
			if f.secret != nil && k.Info().Version == 1 {
				if got, err := k.Export(ctx, keywarden.FormatRaw); err != nil || !bytes.Equal(got, f.secret) {
					t.Fatalf("round %d: an acknowledged key's bytes changed: %v", round, err)
				}
			}
			k.Close(ctx)
		}
		// Every key in the store is one a client created (none half made).
		keys, err := c2.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		for _, info := range keys {
			if len(info.Lifecycle.Versions) == 0 {
				t.Fatalf("round %d: key %s has no versions", round, info.ID)
			}
		}
		c2.Close()
	}
	t.Logf("%d keys created, checked across 4 SIGKILLs", len(facts))
}

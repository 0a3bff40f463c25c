package sshagent

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/keywarden/keywarden/internal/wire"
)

func comments(t *testing.T, ac agent.ExtendedAgent) []string {
	t.Helper()
	keys, err := ac.List()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, k := range keys {
		out = append(out, k.Comment)
	}
	slices.Sort(out)
	return out
}

// The listing: the persistent keys marked for SSH that the caller may
// sign with, of an SSH type, then the keys it added; nothing else.
func TestListingFilters(t *testing.T) {
	ta := newTestAgent(t, Config{})
	me := selfID(uint32(os.Getuid()))
	ta.generate(t, me, "ssh-ed", wire.KeyType_KEY_TYPE_ED25519, 0, true)
	ta.generate(t, me, "ssh-p256", wire.KeyType_KEY_TYPE_ECDSA_P256, 0, true)
	ta.generate(t, me, "unmarked", wire.KeyType_KEY_TYPE_ED25519, 0, false)
	ta.generate(t, me, "verify-only", wire.KeyType_KEY_TYPE_ED25519, uint32(wire.Usage_USAGE_VERIFY), true)
	ta.generate(t, selfID(4242), "other-user", wire.KeyType_KEY_TYPE_ED25519, 0, true)

	ac := agent.NewClient(ta.dial(t))
	if got, want := comments(t, ac), []string{"ssh-ed", "ssh-p256"}; !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	if err := ac.Add(agent.AddedKey{PrivateKey: priv, Comment: "added"}); err != nil {
		t.Fatal(err)
	}
	if got, want := comments(t, ac), []string{"added", "ssh-ed", "ssh-p256"}; !slices.Equal(got, want) {
		t.Fatalf("listed %v, want %v", got, want)
	}
	// Signing with a key the listing does not offer is refused, and
	// recorded.
	_, other, _ := ed25519.GenerateKey(rand.Reader)
	op, _ := ssh.NewPublicKey(other.Public())
	if _, err := ac.Sign(op, []byte("data")); err == nil {
		t.Fatal("signed with a key not listed")
	}
	ta.mustRefusal(t, "sign", "NOT_FOUND", ssh.FingerprintSHA256(op))
}

// A key added with ssh-add -h is listed to a connection bound to a host
// it allows, or to none, and hidden from one bound elsewhere.
func TestListingDestinationConstrained(t *testing.T) {
	ta := newTestAgent(t, Config{})
	hA, hB := newSigner(t), newSigner(t)
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	ac := agent.NewClient(ta.dial(t))
	if err := ac.Add(agent.AddedKey{PrivateKey: priv, Comment: "to-a", ConstraintExtensions: []agent.ConstraintExtension{{
		ExtensionName: "restrict-destination-v00@openssh.com", ExtensionDetails: constraintBlob(local(), to("", "a", hA.PublicKey()))}}}); err != nil {
		t.Fatal(err)
	}
	if got := comments(t, ac); !slices.Equal(got, []string{"to-a"}) {
		t.Fatalf("unbound: %v", got)
	}
	for host, want := range map[ssh.Signer][]string{hA: {"to-a"}, hB: nil} {
		c := ta.dial(t)
		if r, err := roundTrip(c, msg(msgExtension, bindMsg(t, host, []byte("sid"), false))); err != nil || r[0] != msgSuccess {
			t.Fatalf("bind: %x %v", r, err)
		}
		if got := comments(t, agent.NewClient(c)); !slices.Equal(got, want) {
			t.Errorf("bound to %s: %v, want %v", ssh.FingerprintSHA256(host.PublicKey()), got, want)
		}
	}
}

// The lock: the passphrase is kept as HMAC-SHA-256 under a random salt;
// while locked nothing is listed and all but unlock is refused; a wrong
// passphrase is refused after a delay that grows; each refusal is in the
// audit log; the right one unlocks.
func TestLock(t *testing.T) {
	ta := newTestAgent(t, Config{})
	me := selfID(uint32(os.Getuid()))
	ta.generate(t, me, "ssh-ed", wire.KeyType_KEY_TYPE_ED25519, 0, true)
	ac := agent.NewClient(ta.dial(t))
	keys, err := ac.List()
	if err != nil || len(keys) != 1 {
		t.Fatalf("list: %v %v", keys, err)
	}
	pass := []byte("correct horse battery")
	if err := ac.Lock(pass); err != nil {
		t.Fatal(err)
	}
	u := ta.userOf(me.UID)
	u.mu.Lock()
	salt, mac, locked := u.lockSalt, u.lockMAC, u.locked.Load()
	u.mu.Unlock()
	m := hmac.New(sha256.New, salt[:])
	m.Write(pass)
	if !locked || !bytes.Equal(m.Sum(nil), mac[:]) || salt == [32]byte{} {
		t.Fatalf("the lock holds locked %v, salt %x, mac %x", locked, salt, mac)
	}
	if err := ac.Lock([]byte("again")); err == nil {
		t.Fatal("locked twice")
	}
	ta.mustRefusal(t, "lock", "PERMISSION_DENIED", "the agent is locked")

	// Another connection of the uid is locked too.
	ac2 := agent.NewClient(ta.dial(t))
	if got, err := ac2.List(); err != nil || len(got) != 0 {
		t.Fatalf("a locked agent lists %v %v", got, err)
	}
	ta.mustRefusal(t, "list", "PERMISSION_DENIED", "the agent is locked")
	if _, err := ac2.Sign(keys[0], []byte("x")); err == nil {
		t.Fatal("a locked agent signed")
	}
	ta.mustRefusal(t, "sign", "PERMISSION_DENIED", "the agent is locked")

	for i, want := range []time.Duration{100 * time.Millisecond, 200 * time.Millisecond} {
		start := time.Now()
		if err := ac.Unlock([]byte("wrong")); err == nil {
			t.Fatal("unlocked with a wrong passphrase")
		}
		if el := time.Since(start); el < want || el > want+2*time.Second {
			t.Errorf("wrong passphrase %d answered after %s, want %s", i+1, el, want)
		}
	}
	ta.mustRefusal(t, "unlock", "PERMISSION_DENIED", "wrong passphrase (2 since")
	if err := ac.Unlock([]byte("")); err == nil {
		t.Fatal("unlocked with an empty passphrase")
	}
	if err := ac.Unlock(pass); err != nil {
		t.Fatalf("unlock: %v", err)
	}
	if got, err := ac2.List(); err != nil || len(got) != 1 {
		t.Fatalf("after unlock: %v %v", got, err)
	}
	u.mu.Lock()
	if u.failures != 0 || u.lockMAC != [32]byte{} {
		t.Errorf("after unlock: failures %d, mac %x", u.failures, u.lockMAC)
	}
	u.mu.Unlock()
	if err := ac.Unlock(pass); err == nil {
		t.Fatal("unlocked an agent not locked")
	}
	ta.mustRefusal(t, "unlock", "INVALID_ARGUMENT", "not locked")
	for _, r := range ta.records(t) {
		if strings.Contains(r.Msg, string(pass)) || strings.Contains(r.Msg, "wrong\"") {
			t.Fatalf("a passphrase in the audit log: %q", r.Msg)
		}
	}
}

func TestUnlockDelay(t *testing.T) {
	for n, want := range map[int]time.Duration{1: 100 * time.Millisecond, 2: 200 * time.Millisecond, 100: 10 * time.Second, 1000: 10 * time.Second} {
		if got := unlockDelay(n); got != want {
			t.Errorf("unlockDelay(%d) = %s, want %s", n, got, want)
		}
	}
}

// A request for an SHA-1 ssh-rsa signature is refused, with the key in
// the audit log; rsa-sha2-256 and -512 sign.
func TestSignRSASHA1Refused(t *testing.T) {
	ta := newTestAgent(t, Config{})
	ta.generate(t, selfID(uint32(os.Getuid())), "rsa", wire.KeyType_KEY_TYPE_RSA_2048, 0, true)
	ac := agent.NewClient(ta.dial(t))
	keys, err := ac.List()
	if err != nil || len(keys) != 1 {
		t.Fatalf("list: %v %v", keys, err)
	}
	if _, err := ac.Sign(keys[0], []byte("x")); err == nil {
		t.Fatal("an ssh-rsa signature was made")
	}
	if r := ta.mustRefusal(t, "sign", "POLICY_VIOLATION", "SHA-1"); r.Key.IsZero() {
		t.Error("the refusal names no key")
	}
	pub, _ := ssh.ParsePublicKey(keys[0].Blob)
	for flag, alg := range map[agent.SignatureFlags]string{agent.SignatureFlagRsaSha256: ssh.KeyAlgoRSASHA256, agent.SignatureFlagRsaSha512: ssh.KeyAlgoRSASHA512} {
		sig, err := ac.SignWithFlags(keys[0], []byte("x"), flag)
		if err != nil || sig.Format != alg || pub.Verify([]byte("x"), sig) != nil {
			t.Errorf("%s: %v %v", alg, sig, err)
		}
	}
}

// A refusal that cannot be recorded is answered SSH_AGENT_FAILURE, and
// the connection is closed: nothing is answered that the audit log does
// not know of.
func TestRefusalFailsClosed(t *testing.T) {
	ta := newTestAgent(t, Config{})
	c := ta.dial(t)
	if r, err := roundTrip(c, msg(99)); err != nil || r[0] != msgFailure {
		t.Fatalf("unknown message: %x %v", r, err)
	}
	ta.log.Close()
	if r, err := roundTrip(c, msg(99)); err != nil || r[0] != msgFailure {
		t.Fatalf("unknown message, log closed: %x %v", r, err)
	}
	if !closed(t, c) {
		t.Fatal("the connection stayed open after a refusal that could not be recorded")
	}
}

// askpass writes a confirmation program of script into dir.
func askpass(t *testing.T, dir, name, script string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+script+"\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// The confirmation program of ssh-add -c: it approves by exiting 0 (with
// nothing or "yes" on its output); anything else, or no answer in time,
// refuses. It gets the question and SSH_ASKPASS_PROMPT=confirm, and none
// of the daemon's environment.
func TestConfirm(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "out")
	t.Setenv("KW_TEST_SECRET", "must not leak")
	pub, _ := ssh.NewPublicKey(ed25519.PublicKey(make([]byte, 32)))
	k := &added{pub: pub, comment: "the-key"}
	for _, tc := range []struct {
		name, script string
		ok           bool
		want         string
		max          time.Duration
	}{
		{"exit 0", `{ echo "$SSH_ASKPASS_PROMPT"; echo "$1"; env; } > ` + out + `; exit 0`, true, "", 0},
		{"yes", `echo yes`, true, "", 0},
		{"exit 1", `exit 1`, false, "refused", 0},
		{"answers no", `echo no`, false, `answered "no"`, 0},
		{"times out", `sleep 20`, false, "did not answer", 3 * time.Second},
		{"times out, exec", `exec sleep 20`, false, "did not answer", 3 * time.Second},
		{"exits, a child holds its output", `sleep 20 & exit 0`, false, "", 3 * time.Second},
	} {
		// A program that answers gets time enough on a loaded machine; the
		// ones that do not answer are given up on after 300 ms.
		timeout := 300 * time.Millisecond
		if tc.max == 0 {
			timeout = 20 * time.Second
		}
		c := &conn{a: New(Config{Askpass: askpass(t, dir, "ask", tc.script), AskpassTimeout: timeout}), id: selfID(uint32(os.Getuid()))}
		start := time.Now()
		err := c.confirm(k)
		if (err == nil) != tc.ok || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ok %v (%q)", tc.name, err, tc.ok, tc.want)
		}
		if el := time.Since(start); tc.max > 0 && el > tc.max {
			t.Errorf("%s: answered after %s", tc.name, el)
		}
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	got := string(b)
	if !strings.HasPrefix(got, "confirm\nAllow use of key the-key?") || !strings.Contains(got, ssh.FingerprintSHA256(pub)) ||
		!strings.Contains(got, "Requested by pid") {
		t.Errorf("the program got:\n%s", got)
	}
	if strings.Contains(got, "KW_TEST_SECRET") {
		t.Errorf("the daemon's environment reached the program:\n%s", got)
	}
	// No program configured.
	c := &conn{a: New(Config{}), id: selfID(0)}
	if err := c.confirm(k); err == nil {
		t.Error("confirmed with no program")
	}
	c = &conn{a: New(Config{Askpass: filepath.Join(dir, "missing")}), id: selfID(0)}
	if err := c.confirm(k); err == nil {
		t.Error("confirmed by a program that does not exist")
	}
}

// ssh-add -c through a connection: each signature asks the program; a
// refusal is SSH_AGENT_FAILURE and in the audit log with the key.
func TestConfirmSign(t *testing.T) {
	dir := t.TempDir()
	approve := filepath.Join(dir, "approve")
	ta := newTestAgent(t, Config{Askpass: askpass(t, dir, "ask", "test -e "+approve)})
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	ac := agent.NewClient(ta.dial(t))
	if err := ac.Add(agent.AddedKey{PrivateKey: priv, Comment: "c", ConfirmBeforeUse: true}); err != nil {
		t.Fatal(err)
	}
	keys, _ := ac.List()
	os.WriteFile(approve, nil, 0o644)
	if _, err := ac.Sign(keys[0], []byte("x")); err != nil {
		t.Fatalf("approved: %v", err)
	}
	os.Remove(approve)
	if _, err := ac.Sign(keys[0], []byte("x")); err == nil {
		t.Fatal("signed once the program refused")
	}
	if r := ta.mustRefusal(t, "sign", "PERMISSION_DENIED", "ssh-add -c"); r.Key.IsZero() {
		t.Error("the refusal names no key")
	}
	// Without a program, ssh-add -c is refused at once.
	ta2 := newTestAgent(t, Config{})
	if err := agent.NewClient(ta2.dial(t)).Add(agent.AddedKey{PrivateKey: priv, ConfirmBeforeUse: true}); err == nil {
		t.Fatal("ssh-add -c taken with no confirmation program")
	}
	ta2.mustRefusal(t, "import", "UNIMPLEMENTED", "no confirmation program")
}

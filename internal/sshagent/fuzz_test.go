package sshagent

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// The fuzz targets' seed corpora, in testdata/fuzz/<Target>, hold real
// messages: those golang.org/x/crypto/ssh/agent's client sends for each
// request (ssh-add with every constraint, sign with each flag, lock,
// unlock, remove), session bindings signed as ssh signs them, and the
// destination constraints ssh-add -h sends. go test -run TestFuzzSeeds
// -write-seeds writes them again.
var writeSeeds = flag.Bool("write-seeds", false, "write the fuzz targets' seed corpora into testdata/fuzz")

// recordClient runs f with an agent client whose messages are recorded
// (each answered SSH_AGENT_FAILURE, or an empty listing), and returns
// the messages without their length.
func recordClient(t testing.TB, f func(ac agent.ExtendedAgent)) [][]byte {
	t.Helper()
	a, b := net.Pipe()
	var msgs [][]byte
	done := make(chan struct{})
	go func() {
		defer close(done)
		for {
			m, err := readReply(b)
			if err != nil {
				return
			}
			msgs = append(msgs, m)
			reply := replyFailure
			switch m[0] {
			case msgRequestIdentities:
				reply = []byte{msgIdentitiesAnswer, 0, 0, 0, 0}
			case msgAddIdentity, msgAddIDConstrained, msgLock, msgUnlock, msgRemoveIdentity, msgRemoveAllIdentities:
				reply = replySuccess
			}
			if _, err := b.Write(frame(reply)); err != nil {
				return
			}
		}
	}()
	f(agent.NewClient(a))
	a.Close()
	<-done
	return msgs
}

// seedKeys are a key of each type the agent takes, and one it does not
// take (RSA 1024).
func seedKeys(t testing.TB) []any {
	t.Helper()
	_, ed, _ := ed25519.GenerateKey(rand.Reader)
	p256, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	p384, _ := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	r2048, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	r1024, _ := rsa.GenerateKey(rand.Reader, 1024)
	return []any{ed, p256, p384, r2048, r1024}
}

// seedMessages are real agent messages, by name.
func seedMessages(t testing.TB) map[string][]byte {
	t.Helper()
	hA, hB := newSigner(t), newSigner(t)
	dests := append(constraintBlob(local(), to("", "host-a", hA.PublicKey())),
		constraintBlob(to("", "host-a", hA.PublicKey()), to("git", "host-b", hB.PublicKey()))...)
	keys := seedKeys(t)
	out := map[string][]byte{}
	add := func(name string, msgs [][]byte) {
		for i, m := range msgs {
			out[fmt.Sprintf("%s-%d", name, i)] = m
		}
	}
	for i, k := range keys {
		add(fmt.Sprintf("add-%d", i), recordClient(t, func(ac agent.ExtendedAgent) {
			ac.Add(agent.AddedKey{PrivateKey: k, Comment: "seed"})
		}))
	}
	add("add-constrained", recordClient(t, func(ac agent.ExtendedAgent) {
		ac.Add(agent.AddedKey{PrivateKey: keys[0], Comment: "seed", LifetimeSecs: 60, ConfirmBeforeUse: true,
			ConstraintExtensions: []agent.ConstraintExtension{{ExtensionName: "restrict-destination-v00@openssh.com", ExtensionDetails: dests}}})
	}))
	pub, _ := ssh.NewPublicKey(keys[0].(ed25519.PrivateKey).Public())
	rpub, _ := ssh.NewPublicKey(keys[3].(*rsa.PrivateKey).Public())
	sid := []byte("an SSH session id, 32 bytes ....")
	add("misc", recordClient(t, func(ac agent.ExtendedAgent) {
		ac.List()
		ac.Sign(pub, userauth(sid, "git", pub, hA.PublicKey()))
		ac.SignWithFlags(rpub, []byte("data"), agent.SignatureFlagRsaSha256)
		ac.SignWithFlags(rpub, []byte("data"), agent.SignatureFlagRsaSha512)
		ac.Sign(rpub, []byte("sha-1"))
		ac.Remove(pub)
		ac.RemoveAll()
		ac.Lock([]byte("passphrase"))
		ac.Unlock([]byte("passphrase"))
		ac.Extension("session-bind@openssh.com", bindBody(t, hA, sid, sid, false))
		ac.Extension("query", nil)
	}))
	return out
}

// seedBinds are session-bind@openssh.com bodies (after the name): for
// authentication and forwarded, by Ed25519, ECDSA and RSA host keys.
func seedBinds(t testing.TB) map[string][]byte {
	t.Helper()
	out := map[string][]byte{}
	for i, k := range seedKeys(t)[:4] {
		s, err := ssh.NewSignerFromKey(k)
		if err != nil {
			t.Fatal(err)
		}
		if i == 3 {
			s, _ = ssh.NewSignerWithAlgorithms(s.(ssh.AlgorithmSigner), []string{ssh.KeyAlgoRSASHA512})
		}
		sid := bytes.Repeat([]byte{byte(i)}, 32)
		out[fmt.Sprintf("bind-%d", i)] = bindBody(t, s, sid, sid, false)
		out[fmt.Sprintf("bind-forwarded-%d", i)] = bindBody(t, s, sid, sid, true)
	}
	return out
}

// seedConstraints are ADD_ID_CONSTRAINED constraint lists, as ssh-add
// sends them for -t, -c and -h.
func seedConstraints(t testing.TB) map[string][]byte {
	t.Helper()
	hA, hB := fixedSigner(t, 1), fixedSigner(t, 2)
	dests := append(constraintBlob(local(), to("", "host-a", hA.PublicKey(), hB.PublicKey())),
		constraintBlob(to("", "host-a", hA.PublicKey()), hopBlob("git*", "*.example.org", []ssh.PublicKey{hB.PublicKey()}, []bool{true}))...)
	ext := append([]byte{constrainExtension}, append(sshString([]byte("restrict-destination-v00@openssh.com")), sshString(dests)...)...)
	return map[string][]byte{
		"lifetime":     {constrainLifetime, 0, 0, 0x0e, 0x10},
		"confirm":      {constrainConfirm},
		"destinations": ext,
		"all":          append([]byte{constrainLifetime, 0, 0, 0, 60, constrainConfirm}, ext...),
	}
}

// fixedSigner is an Ed25519 signer of a fixed seed: the seeds and the
// fuzz targets name the same keys.
func fixedSigner(t testing.TB, seed byte) ssh.Signer {
	t.Helper()
	s, err := ssh.NewSignerFromKey(ed25519.NewKeyFromSeed(bytes.Repeat([]byte{seed}, ed25519.SeedSize)))
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func addSeeds(f *testing.F, seeds map[string][]byte) {
	for _, s := range seeds {
		f.Add(s)
	}
}

// FuzzMessage hands arbitrary messages to a connection of an agent over
// the core, and checks that each gets a well-formed reply: no panic, a
// known reply type, within the size limit.
func FuzzMessage(f *testing.F) {
	addSeeds(f, seedMessages(f))
	ta := newTestAgent(f, Config{})
	uid := uint32(os.Getuid())
	u := ta.userOf(uid)
	f.Fuzz(func(t *testing.T, m []byte) {
		if len(m) == 0 || len(m) > MaxMessage {
			return
		}
		ss, err := ta.srv.NewSession(context.Background(), Front, selfID(uid))
		if err != nil {
			t.Fatal(err)
		}
		c := &conn{a: ta.Agent, ss: ss, id: selfID(uid), u: u, opened: map[string]openedKey{}}
		reply := c.handle(bytes.Clone(m))
		ss.Close()
		// What one input changed does not carry over to the next.
		u.mu.Lock()
		u.locked.Store(false)
		u.failures = 0
		u.mu.Unlock()
		u.removeAll()
		if len(reply) == 0 || len(reply) > MaxMessage {
			t.Fatalf("reply of %d bytes", len(reply))
		}
		switch reply[0] {
		case msgFailure, msgSuccess:
			if len(reply) != 1 {
				t.Fatalf("reply %x", reply)
			}
		case msgIdentitiesAnswer, msgSignResponse:
		default:
			t.Fatalf("reply type %d", reply[0])
		}
	})
}

// FuzzSessionBind checks that a session binding is taken only when its
// host key's signature of its session id verifies.
func FuzzSessionBind(f *testing.F) {
	addSeeds(f, seedBinds(f))
	f.Fuzz(func(t *testing.T, body []byte) {
		c := bareConn()
		s := cryptobyte.String(body)
		if err := c.sessionBind(&s); err != nil {
			if len(c.binds) != 0 {
				t.Fatal("a refused binding bound")
			}
			return
		}
		if len(c.binds) != 1 {
			t.Fatalf("%d binds", len(c.binds))
		}
		in := cryptobyte.String(body)
		var kb, sid, sb []byte
		readString(&in, &kb)
		readString(&in, &sid)
		readString(&in, &sb)
		k, err := ssh.ParsePublicKey(kb)
		var sig ssh.Signature
		if err != nil || ssh.Unmarshal(sb, &sig) != nil || k.Verify(sid, &sig) != nil {
			t.Fatal("a binding was taken whose signature does not verify")
		}
		if !bytes.Equal(c.binds[0].sid, sid) || !bytes.Equal(c.binds[0].key.Marshal(), kb) {
			t.Fatal("the binding is not the message's")
		}
	})
}

// FuzzConstraints reads arbitrary ADD_ID_CONSTRAINED constraints, and
// checks what is taken: a lifetime, a confirmation, 1 to 16 destination
// constraints each with a destination host and key; and that the hop
// checks run on them.
func FuzzConstraints(f *testing.F) {
	addSeeds(f, seedConstraints(f))
	hosts := []ssh.Signer{fixedSigner(f, 1), fixedSigner(f, 2)}
	c := bareConn()
	for i, h := range hosts {
		if err := c.bindRaw(bindBody(f, h, []byte{byte(i)}, []byte{byte(i)}, i == 0)); err != nil {
			f.Fatal(err)
		}
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		var k added
		s := cryptobyte.String(b)
		if _, err := readConstraints(&s, &k); err != nil {
			return
		}
		if k.dests != nil && (len(k.dests) == 0 || len(k.dests) > maxConstraints) {
			t.Fatalf("%d destination constraints", len(k.dests))
		}
		for _, d := range k.dests {
			if d.to.host == "" || len(d.to.keys) == 0 || len(d.to.keys) != len(d.to.ca) || d.from.user != "" {
				t.Fatalf("constraint taken: %+v", d)
			}
		}
		c.permitted(&k, "")
		c.permitted(&k, "git")
		k.pub = hosts[0].PublicKey()
		c.checkDestination(&k, userauth([]byte{1}, "git", k.pub, hosts[1].PublicKey()))
	})
}

// FuzzPrivateKey reads arbitrary keys as ssh-add sends them, and checks
// that a key taken is a consistent one: its PKCS #8 form parses, and its
// public key is the one returned.
func FuzzPrivateKey(f *testing.F) {
	for _, k := range seedKeys(f) {
		msgs := recordClient(f, func(ac agent.ExtendedAgent) { ac.Add(agent.AddedKey{PrivateKey: k}) })
		f.Add(msgs[0][1:])
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		s := cryptobyte.String(b)
		pkcs8, _, pub, err := readPrivateKey(&s)
		if err != nil {
			return
		}
		priv, err := x509.ParsePKCS8PrivateKey(pkcs8)
		if err != nil {
			t.Fatalf("the PKCS #8 form does not parse: %v", err)
		}
		p, err := ssh.NewPublicKey(priv.(interface{ Public() crypto.PublicKey }).Public())
		if err != nil || !bytes.Equal(p.Marshal(), pub.Marshal()) {
			t.Fatal("the public key is not the private key's")
		}
	})
}

// FuzzUserauth reads arbitrary data to sign as a user authentication
// request (what a destination-constrained key may sign).
func FuzzUserauth(f *testing.F) {
	addSeeds(f, seedUserauth(f))
	key := fixedSigner(f, 3).PublicKey()
	f.Fuzz(func(t *testing.T, b []byte) {
		user, sid, hk, err := parseUserauth(b, key)
		if err != nil {
			return
		}
		if len(sid) == 0 || !bytes.Contains(b, []byte(user)) || hk != nil && !bytes.Contains(b, hk.Marshal()) {
			t.Fatalf("parsed %q %x %v from %x", user, sid, hk, b)
		}
	})
}

// seedUserauth are user authentication requests by fixedSigner 3, to
// fixedSigner 1's host, as ssh signs them.
func seedUserauth(t testing.TB) map[string][]byte {
	key, host := fixedSigner(t, 3).PublicKey(), fixedSigner(t, 1).PublicKey()
	sid := bytes.Repeat([]byte{7}, 32)
	return map[string][]byte{"publickey": userauth(sid, "git", key, nil), "hostbound": userauth(sid, "git", key, host)}
}

// TestFuzzSeeds writes the seed corpora with -write-seeds, and otherwise
// checks that they are there.
func TestFuzzSeeds(t *testing.T) {
	corpora := map[string]func(testing.TB) map[string][]byte{
		"FuzzMessage": seedMessages, "FuzzSessionBind": seedBinds, "FuzzConstraints": seedConstraints,
		"FuzzPrivateKey": func(t testing.TB) map[string][]byte {
			out := map[string][]byte{}
			for i, k := range seedKeys(t) {
				out[fmt.Sprint("key-", i)] = recordClient(t, func(ac agent.ExtendedAgent) { ac.Add(agent.AddedKey{PrivateKey: k}) })[0][1:]
			}
			return out
		},
		"FuzzUserauth": seedUserauth,
	}
	for target, seeds := range corpora {
		dir := filepath.Join("testdata", "fuzz", target)
		if !*writeSeeds {
			if ents, err := os.ReadDir(dir); err != nil || len(ents) == 0 {
				t.Errorf("%s: no seed corpus in %s (%v)", target, dir, err)
			}
			continue
		}
		os.MkdirAll(dir, 0o755)
		for name, b := range seeds(t) {
			if err := os.WriteFile(filepath.Join(dir, "seed-"+name), fmt.Appendf(nil, "go test fuzz v1\n[]byte(%q)\n", b), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
}

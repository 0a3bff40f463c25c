package sshagent

import (
	"crypto/ed25519"
	"crypto/rand"
	"errors"
	"strings"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden/internal/wire"
)

func newSigner(t testing.TB) ssh.Signer {
	t.Helper()
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	s, err := ssh.NewSignerFromKey(priv)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

// bindBody is the body of a session-bind@openssh.com extension after its
// name: host's key, sid, host's signature of signed, forwarded.
func bindBody(t testing.TB, host ssh.Signer, sid, signed []byte, fwd bool) []byte {
	t.Helper()
	sig, err := host.Sign(rand.Reader, signed)
	if err != nil {
		t.Fatal(err)
	}
	f := byte(0)
	if fwd {
		f = 1
	}
	return build(func(b *cryptobyte.Builder) {
		addString(b, host.PublicKey().Marshal())
		addString(b, sid)
		addString(b, ssh.Marshal(sig))
		b.AddUint8(f)
	})
}

// bindMsg is the whole extension message's body.
func bindMsg(t testing.TB, host ssh.Signer, sid []byte, fwd bool) []byte {
	return append(sshString([]byte("session-bind@openssh.com")), bindBody(t, host, sid, sid, fwd)...)
}

// bareConn is a connection with no socket or session, for the checks
// that need neither.
func bareConn() *conn {
	return &conn{a: New(Config{}), opened: map[string]openedKey{}}
}

func (c *conn) bindRaw(body []byte) error {
	s := cryptobyte.String(body)
	return c.sessionBind(&s)
}

func statusOf(err error) wire.Status {
	var r *refusal
	if errors.As(err, &r) {
		return r.status
	}
	return wire.Status_STATUS_INVALID_ARGUMENT
}

// session-bind: a host key's valid signature of the session id binds the
// connection; a bad signature, a session id bound to another host key, a
// second binding after one for authentication, and malformed messages
// are refused and bind nothing.
func TestSessionBind(t *testing.T) {
	hostA, hostB := newSigner(t), newSigner(t)
	sidA, sidB := []byte("session id A, 32 bytes long ...."), []byte("session id B")

	c := bareConn()
	if err := c.bindRaw(bindBody(t, hostA, sidA, sidA, false)); err != nil {
		t.Fatalf("valid bind: %v", err)
	}
	if len(c.binds) != 1 || c.binds[0].fp != ssh.FingerprintSHA256(hostA.PublicKey()) || c.binds[0].forwarded {
		t.Fatalf("binds: %+v", c.binds)
	}
	if c.ident().SSHDest != ssh.FingerprintSHA256(hostA.PublicKey()) {
		t.Fatalf("the requests' destination: %q", c.ident().SSHDest)
	}
	// Bound for authentication: no further binding, not even a valid one.
	if err := c.bindRaw(bindBody(t, hostB, sidB, sidB, false)); err == nil {
		t.Fatal("a second binding after one for authentication was taken")
	}
	if len(c.binds) != 1 {
		t.Fatalf("binds after a refusal: %d", len(c.binds))
	}

	// A signature of something else, or by another key.
	c = bareConn()
	err := c.bindRaw(bindBody(t, hostA, sidA, []byte("other"), false))
	if err == nil || statusOf(err) != wire.Status_STATUS_VERIFICATION_FAILED {
		t.Fatalf("a signature of another session id: %v", err)
	}
	forged := bindBody(t, hostB, sidA, sidA, false)
	// hostA's key, hostB's signature.
	s := cryptobyte.String(forged)
	var kb, sid, sig []byte
	readString(&s, &kb)
	readString(&s, &sid)
	readString(&s, &sig)
	swapped := build(func(b *cryptobyte.Builder) {
		addString(b, hostA.PublicKey().Marshal())
		addString(b, sid)
		addString(b, sig)
		b.AddUint8(0)
	})
	if err := c.bindRaw(swapped); err == nil || statusOf(err) != wire.Status_STATUS_VERIFICATION_FAILED {
		t.Fatalf("another key's signature: %v", err)
	}
	if len(c.binds) != 0 {
		t.Fatalf("a refused binding bound: %+v", c.binds)
	}

	// Forwarding hops chain; the same binding again is a no-op; a session
	// id replayed with another host key is refused.
	c = bareConn()
	if err := c.bindRaw(bindBody(t, hostA, sidA, sidA, true)); err != nil {
		t.Fatal(err)
	}
	if err := c.bindRaw(bindBody(t, hostA, sidA, sidA, true)); err != nil || len(c.binds) != 1 {
		t.Fatalf("the same binding again: %v, %d binds", err, len(c.binds))
	}
	if err := c.bindRaw(bindBody(t, hostB, sidA, sidA, true)); err == nil || statusOf(err) != wire.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("a session id bound to another host key: %v", err)
	}
	if err := c.bindRaw(bindBody(t, hostB, sidB, sidB, false)); err != nil || len(c.binds) != 2 {
		t.Fatalf("a second hop: %v, %d binds", err, len(c.binds))
	}
	if c.ident().SSHDest != ssh.FingerprintSHA256(hostB.PublicKey()) {
		t.Fatal("the requests' destination is not the last hop")
	}

	// At most maxBinds.
	c = bareConn()
	for i := 0; i < maxBinds; i++ {
		if err := c.bindRaw(bindBody(t, hostA, []byte{byte(i)}, []byte{byte(i)}, true)); err != nil {
			t.Fatal(err)
		}
	}
	if err := c.bindRaw(bindBody(t, hostA, []byte{0xff}, []byte{0xff}, true)); err == nil || statusOf(err) != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("binding %d: %v", maxBinds+1, err)
	}

	// Malformed.
	good := bindBody(t, hostA, sidA, sidA, false)
	for name, body := range map[string][]byte{
		"empty":     nil,
		"trailing":  append(append([]byte{}, good...), 0),
		"no flag":   good[:len(good)-1],
		"cut":       good[:20],
		"not a key": append(sshString([]byte("not a key")), good[4+len(hostA.PublicKey().Marshal()):]...),
		"not signature": build(func(b *cryptobyte.Builder) {
			addString(b, hostA.PublicKey().Marshal())
			addString(b, sidA)
			addString(b, []byte{1})
			b.AddUint8(0)
		}),
	} {
		c := bareConn()
		if err := c.bindRaw(body); err == nil || len(c.binds) != 0 {
			t.Errorf("%s: bound (%v)", name, err)
		}
	}
}

// Through a connection: a refused binding is SSH_AGENT_FAILURE and in
// the audit log; a valid one is SSH_AGENT_SUCCESS.
func TestSessionBindRecorded(t *testing.T) {
	ta := newTestAgent(t, Config{})
	c := ta.dial(t)
	host := newSigner(t)
	sid := []byte("sid")
	if r, err := roundTrip(c, msg(msgExtension, bindMsg(t, host, sid, false))); err != nil || r[0] != msgSuccess {
		t.Fatalf("valid bind: %x %v", r, err)
	}
	bad := append(sshString([]byte("session-bind@openssh.com")), bindBody(t, host, sid, []byte("x"), false)...)
	if r, err := roundTrip(ta.dial(t), msg(msgExtension, bad)); err != nil || r[0] != msgFailure {
		t.Fatalf("bad bind: %x %v", r, err)
	}
	ta.mustRefusal(t, "session-bind", "VERIFICATION_FAILED", "does not verify")
	if r, err := roundTrip(c, msg(msgExtension, sshString([]byte("query")))); err != nil || r[0] != msgFailure {
		t.Fatalf("unsupported extension: %x %v", r, err)
	}
	ta.mustRefusal(t, "extension", "UNIMPLEMENTED", `unsupported extension "query"`)
}

// hopBlob encodes a hop of restrict-destination-v00.
func hopBlob(user, host string, keys []ssh.PublicKey, ca []bool) []byte {
	return build(func(b *cryptobyte.Builder) {
		addString(b, []byte(user))
		addString(b, []byte(host))
		addString(b, nil)
		for i, k := range keys {
			addString(b, k.Marshal())
			f := uint8(0)
			if ca != nil && ca[i] {
				f = 1
			}
			b.AddUint8(f)
		}
	})
}

// constraintBlob encodes one destination constraint.
func constraintBlob(from, to []byte) []byte {
	return sshString(build(func(b *cryptobyte.Builder) {
		addString(b, from)
		addString(b, to)
		addString(b, nil)
	}))
}

func local() []byte { return hopBlob("", "", nil, nil) }

func to(user, host string, keys ...ssh.PublicKey) []byte { return hopBlob(user, host, keys, nil) }

func TestReadDestConstraints(t *testing.T) {
	a, b := newSigner(t).PublicKey(), newSigner(t).PublicKey()
	ds, err := readDestConstraints(append(constraintBlob(local(), to("", "a", a)), constraintBlob(to("", "a", a), to("git*", "b", b))...))
	if err != nil {
		t.Fatal(err)
	}
	if len(ds) != 2 || ds[0].from.host != "" || ds[0].to.host != "a" || !ds[0].to.matchKey(a) || ds[1].to.user != "git*" || !ds[1].from.matchKey(a) {
		t.Fatalf("constraints: %+v", ds)
	}
	many := []byte{}
	for i := 0; i <= maxConstraints; i++ {
		many = append(many, constraintBlob(local(), to("", "a", a))...)
	}
	withExt := sshString(build(func(bb *cryptobyte.Builder) {
		addString(bb, local())
		addString(bb, to("", "a", a))
		addString(bb, []byte("ext"))
	}))
	hopExt := build(func(bb *cryptobyte.Builder) {
		addString(bb, nil)
		addString(bb, []byte("a"))
		addString(bb, []byte("ext"))
		addString(bb, a.Marshal())
		bb.AddUint8(0)
	})
	good := constraintBlob(local(), to("", "a", a))
	for name, blob := range map[string][]byte{
		"empty":                nil,
		"too many":             many,
		"constraint extension": withExt,
		"hop extension":        constraintBlob(local(), hopExt),
		"from with a user":     constraintBlob(hopBlob("u", "a", []ssh.PublicKey{a}, nil), to("", "b", b)),
		"from host, no keys":   constraintBlob(hopBlob("", "a", nil, nil), to("", "b", b)),
		"from keys, no host":   constraintBlob(hopBlob("", "", []ssh.PublicKey{a}, nil), to("", "b", b)),
		"to without host":      constraintBlob(local(), to("", "", a)),
		"to without keys":      constraintBlob(local(), to("", "b")),
		"cut":                  good[:len(good)-3],
		"trailing":             append(append([]byte{}, good...), 1),
		"bad key": constraintBlob(local(), build(func(bb *cryptobyte.Builder) {
			addString(bb, nil)
			addString(bb, []byte("a"))
			addString(bb, nil)
			addString(bb, []byte("junk"))
			bb.AddUint8(0)
		})),
		"key without ca flag": constraintBlob(local(), build(func(bb *cryptobyte.Builder) {
			addString(bb, nil)
			addString(bb, []byte("a"))
			addString(bb, nil)
			addString(bb, a.Marshal())
		})),
	} {
		if ds, err := readDestConstraints(blob); err == nil {
			t.Errorf("%s: taken: %+v", name, ds)
		}
	}
}

// readConstraints: lifetime, confirmation, destinations; each once;
// anything else refused.
func TestReadConstraints(t *testing.T) {
	a := newSigner(t).PublicKey()
	dest := append(sshString([]byte("restrict-destination-v00@openssh.com")), sshString(constraintBlob(local(), to("", "a", a)))...)
	all := append([]byte{constrainLifetime, 0, 0, 1, 0, constrainConfirm, constrainExtension}, dest...)
	var k added
	s := cryptobyte.String(all)
	life, err := readConstraints(&s, &k)
	if err != nil || life != 256 || !k.confirm || len(k.dests) != 1 {
		t.Fatalf("constraints: life %d confirm %v dests %d err %v", life, k.confirm, len(k.dests), err)
	}
	for name, tc := range map[string]struct {
		b  []byte
		st wire.Status
	}{
		"lifetime twice":     {[]byte{constrainLifetime, 0, 0, 0, 1, constrainLifetime, 0, 0, 0, 1}, wire.Status_STATUS_INVALID_ARGUMENT},
		"confirm twice":      {[]byte{constrainConfirm, constrainConfirm}, wire.Status_STATUS_INVALID_ARGUMENT},
		"lifetime cut":       {[]byte{constrainLifetime, 0, 0}, wire.Status_STATUS_INVALID_ARGUMENT},
		"maxsign":            {[]byte{constrainMaxSign, 0, 0, 0, 1}, wire.Status_STATUS_UNIMPLEMENTED},
		"unknown":            {[]byte{42}, wire.Status_STATUS_UNIMPLEMENTED},
		"other extension":    {append([]byte{constrainExtension}, append(sshString([]byte("sk-provider@openssh.com")), sshString(nil)...)...), wire.Status_STATUS_UNIMPLEMENTED},
		"destinations twice": {append(append([]byte{constrainExtension}, dest...), append([]byte{constrainExtension}, dest...)...), wire.Status_STATUS_INVALID_ARGUMENT},
		"extension cut":      {append([]byte{constrainExtension}, dest[:len(dest)-2]...), wire.Status_STATUS_INVALID_ARGUMENT},
	} {
		var k added
		s := cryptobyte.String(tc.b)
		if _, err := readConstraints(&s, &k); err == nil || statusOf(err) != tc.st {
			t.Errorf("%s: %v (status %v, want %v)", name, err, statusOf(err), tc.st)
		}
	}
}

// bound returns a connection bound through hosts (each forwarded but the
// last unless lastFwd).
func bound(t *testing.T, lastFwd bool, hosts ...ssh.Signer) *conn {
	c := bareConn()
	for i, h := range hosts {
		sid := []byte{byte(i + 1)}
		if err := c.bindRaw(bindBody(t, h, sid, sid, i < len(hosts)-1 || lastFwd)); err != nil {
			t.Fatal(err)
		}
	}
	return c
}

// The hop checks of ssh-add -h, as ssh-agent's identity_permitted: every
// hop the bindings record must be allowed, the last for the user of a
// signature; a certificate authority never matches; a signature on a
// forwarding hop is refused.
func TestPermitted(t *testing.T) {
	hA, hB, hC := newSigner(t), newSigner(t), newSigner(t)
	a, b := hA.PublicKey(), hB.PublicKey()
	mk := func(blobs ...[]byte) *added {
		var all []byte
		for _, bl := range blobs {
			all = append(all, bl...)
		}
		ds, err := readDestConstraints(all)
		if err != nil {
			t.Fatal(err)
		}
		return &added{dests: ds}
	}
	toA := mk(constraintBlob(local(), to("", "a", a)))
	toAthenB := mk(constraintBlob(local(), to("", "a", a)), constraintBlob(to("", "a", a), to("", "b", b)))
	toAasGit := mk(constraintBlob(local(), to("git*", "a", a)))
	toCA := mk(constraintBlob(local(), hopBlob("", "a", []ssh.PublicKey{a}, []bool{true})))

	for _, tc := range []struct {
		name string
		k    *added
		c    *conn
		user string
		ok   bool
	}{
		{"unconstrained anywhere", &added{}, bound(t, false, hC), "u", true},
		{"local use, no binding", toA, bareConn(), "", true},
		{"to A", toA, bound(t, false, hA), "u", true},
		{"to B", toA, bound(t, false, hB), "u", false},
		{"listing bound to B", toA, bound(t, false, hB), "", false},
		{"forwarded to A, used there", toA, bound(t, true, hA), "", false},
		{"signature on a forwarding hop", toAthenB, bound(t, true, hA), "u", false},
		{"forwarded to A, listed for beyond", toAthenB, bound(t, true, hA), "", true},
		{"through A to B", toAthenB, bound(t, false, hA, hB), "u", true},
		{"through A to C", toAthenB, bound(t, false, hA, hC), "u", false},
		{"through B to A", toAthenB, bound(t, false, hB, hA), "u", false},
		{"user matches", toAasGit, bound(t, false, hA), "github", true},
		{"user does not match", toAasGit, bound(t, false, hA), "root", false},
		{"CA key never matches", toCA, bound(t, false, hA), "u", false},
	} {
		err := tc.c.permitted(tc.k, tc.user)
		if (err == nil) != tc.ok {
			t.Errorf("%s: %v, want allowed %v", tc.name, err, tc.ok)
		}
	}
}

// userauth is an SSH_MSG_USERAUTH_REQUEST for publickey (hostKey nil) or
// publickey-hostbound-v00 as key signs it.
func userauth(sid []byte, user string, key ssh.PublicKey, hostKey ssh.PublicKey) []byte {
	return build(func(b *cryptobyte.Builder) {
		addString(b, sid)
		b.AddUint8(50)
		addString(b, []byte(user))
		addString(b, []byte("ssh-connection"))
		if hostKey == nil {
			addString(b, []byte("publickey"))
		} else {
			addString(b, []byte("publickey-hostbound-v00@openssh.com"))
		}
		b.AddUint8(1)
		addString(b, []byte(key.Type()))
		addString(b, key.Marshal())
		if hostKey != nil {
			addString(b, hostKey.Marshal())
		}
	})
}

// A destination-constrained key signs only a user authentication, for
// the session last bound, naming (if it names one) that session's host
// key, on a connection bound to a host its constraints allow.
func TestCheckDestination(t *testing.T) {
	hA, hB := newSigner(t), newSigner(t)
	key := newSigner(t).PublicKey()
	ds, err := readDestConstraints(constraintBlob(local(), to("", "a", hA.PublicKey())))
	if err != nil {
		t.Fatal(err)
	}
	k := &added{pub: key, dests: ds}
	c := bound(t, false, hA) // session id {1}
	sid := []byte{1}
	for _, tc := range []struct {
		name string
		c    *conn
		data []byte
		ok   bool
		want string
	}{
		{"publickey", c, userauth(sid, "u", key, nil), true, ""},
		{"hostbound", c, userauth(sid, "u", key, hA.PublicKey()), true, ""},
		{"hostbound, other host key", c, userauth(sid, "u", key, hB.PublicKey()), false, "another host key"},
		{"other session", c, userauth([]byte{2}, "u", key, nil), false, "not for the session last bound"},
		{"other key", c, userauth(sid, "u", hB.PublicKey(), nil), false, "user authentication"},
		{"not userauth", c, []byte("a file to sign"), false, "user authentication"},
		{"trailing", c, append(userauth(sid, "u", key, nil), 0), false, "trailing"},
		{"unbound", bareConn(), userauth(sid, "u", key, nil), false, "bound to a host"},
		{"bound elsewhere", bound(t, false, hB), userauth(sid, "u", key, nil), false, "do not allow"},
	} {
		err := tc.c.checkDestination(k, tc.data)
		if (err == nil) != tc.ok || err != nil && !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want ok %v (%q)", tc.name, err, tc.ok, tc.want)
		}
	}
	if err := bareConn().checkDestination(&added{pub: key}, []byte("anything")); err != nil {
		t.Errorf("an unconstrained key: %v", err)
	}
}

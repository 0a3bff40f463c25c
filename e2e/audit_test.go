package e2e_test

// The audit log (docs/audit.md), end to end: the real daemon records every
// request of the real client, exactly once, with every field; nothing
// secret reaches it. The tamper, fail-closed and identity tests are in
// audit_*_test.go.

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/wire"
)

// auditReader reads the records a daemon appends to its audit log, and
// checks that they continue one another.
type auditReader struct {
	t    *testing.T
	path string
	off  int64
	seq  uint64 // the last seq read
	mono time.Duration
	all  []*audit.Record
}

func newAuditReader(t *testing.T, path string) *auditReader {
	return &auditReader{t: t, path: path}
}

// read returns the complete records appended since the last read.
func (a *auditReader) read() []*audit.Record {
	a.t.Helper()
	b, err := os.ReadFile(a.path)
	if err != nil {
		a.t.Fatalf("audit log: %v", err)
	}
	if int64(len(b)) < a.off {
		a.t.Fatalf("audit log shrank from %d to %d bytes", a.off, len(b))
	}
	b = b[a.off:]
	end := bytes.LastIndexByte(b, '\n')
	if end < 0 {
		return nil
	}
	b = b[:end+1]
	a.off += int64(len(b))
	var out []*audit.Record
	for line := range bytes.Lines(b) {
		r, err := audit.ParseRecord(line)
		if err != nil {
			a.t.Fatalf("audit log: %v in %s", err, line)
		}
		if a.seq != 0 && r.Seq != a.seq+1 {
			a.t.Fatalf("audit log: seq %d after %d", r.Seq, a.seq)
		}
		if r.Mono < a.mono {
			a.t.Errorf("audit log: seq %d goes back in monotonic time: %v after %v", r.Seq, r.Mono, a.mono)
		}
		a.seq, a.mono = r.Seq, r.Mono
		out = append(out, r)
	}
	a.all = append(a.all, out...)
	return out
}

// requests returns the request records among recs.
func requests(recs []*audit.Record) []*audit.Record {
	var out []*audit.Record
	for _, r := range recs {
		if r.Kind == audit.KindRequest {
			out = append(out, r)
		}
	}
	return out
}

// events returns the event records among recs with the given op.
func events(recs []*audit.Record, op string) []*audit.Record {
	var out []*audit.Record
	for _, r := range recs {
		if r.Kind == audit.KindEvent && r.Op == op {
			out = append(out, r)
		}
	}
	return out
}

// auditConn follows one connection of this process in the log: its id
// (learned from its first record) and the id of its next request (the
// client numbers them 1, 2, 3, ...; Dial's status request is the first).
type auditConn struct {
	name string
	id   uint64
	next uint64
}

func newAuditConn(name string) *auditConn { return &auditConn{name: name, next: 1} }

// rec is what one record must say.
type rec struct {
	op     string
	status string // "" for OK
	key    keywarden.KeyID
	alg    keywarden.KeyType
	kv     uint32
	// session: the record names a streaming session.
	session bool
	// ops: a batch's operations, as the log writes them.
	ops []audit.OpEntry
	// made: the key the step makes, whose id, type and version the
	// record names (known only once the step has run).
	made **keywarden.Key
	// msg: the message of a successful step that has one (what a made
	// key came from).
	msg string
	// noMAC: the record is written while the daemon has no audit keys.
	noMAC bool
}

// makes is the record of an operation that makes *k.
func makes(op string, k **keywarden.Key) rec { return rec{op: op, made: k} }

// madeFrom is makes, for a key whose record says what it came from.
func madeFrom(op string, k **keywarden.Key, msg string) rec { return rec{op: op, made: k, msg: msg} }

// monoNow is CLOCK_MONOTONIC, as the log's mono field.
func monoNow() time.Duration {
	var ts unix.Timespec
	unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts)
	return time.Duration(ts.Nano())
}

// selfExe is this test binary's path, as the daemon reads it from /proc.
func selfExe(t *testing.T) string {
	t.Helper()
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil {
		t.Fatal(err)
	}
	if e, err := os.Executable(); err != nil || e != exe {
		t.Fatalf("os.Executable %q (%v), /proc/self/exe %q", e, err, exe)
	}
	return exe
}

// auditCheck runs one step against the daemon and checks that it left
// exactly the request records wanted, from this process on conn ac, in
// order, with every field as expected.
type auditCheck struct {
	t   *testing.T
	log *auditReader
	exe string
}

func (ck *auditCheck) step(ac *auditConn, what string, do func(), want ...rec) []*audit.Record {
	t := ck.t
	t.Helper()
	ck.log.read() // anything before this step is not its
	wall0, mono0 := time.Now(), monoNow()
	do()
	wall1, mono1 := time.Now(), monoNow()
	got := requests(ck.log.read())
	if len(got) != len(want) {
		var b strings.Builder
		for _, r := range got {
			b.Write(audit.AppendLine(nil, r))
		}
		t.Fatalf("%s: %d request records, want %d:\n%s", what, len(got), len(want), &b)
	}
	for i, r := range got {
		w := want[i]
		if w.made != nil {
			info := (*w.made).Info()
			w.key, w.alg, w.kv = info.ID, info.Type, info.Version
		}
		line := string(audit.AppendLine(nil, r))
		bad := func(format string, args ...any) {
			t.Helper()
			t.Errorf("%s: record %d: %s\n%s", what, i+1, fmt.Sprintf(format, args...), line)
		}
		// When and in which order.
		if r.Time.Before(wall0.Add(-time.Minute)) || r.Time.After(wall1.Add(time.Minute)) {
			bad("time %v is not around the step's %v", r.Time, wall0)
		}
		if r.Mono < mono0-time.Second || r.Mono > mono1+time.Second {
			bad("mono %v is not within the step's [%v, %v]", r.Mono, mono0, mono1)
		}
		if r.HasMAC == w.noMAC {
			bad("MAC %v: want one exactly when the daemon holds its audit keys", r.HasMAC)
		}
		// Who.
		c := r.Caller
		if c.PID != int32(os.Getpid()) || c.UID != uint32(os.Getuid()) || c.GID != uint32(os.Getgid()) {
			bad("caller pid %d uid %d gid %d, want %d %d %d", c.PID, c.UID, c.GID, os.Getpid(), os.Getuid(), os.Getgid())
		}
		if c.Exe != ck.exe || c.ExeError != "" || c.Exited {
			bad("caller exe %q (error %q, exited %v), want %q", c.Exe, c.ExeError, c.Exited, ck.exe)
		}
		if c.Cgroup == "" {
			bad("no cgroup")
		}
		if c.Unverified == kernelPidfds() {
			bad("unverified %v, but the kernel (%s) gives pidfds: %v", c.Unverified, kernelRelease(), kernelPidfds())
		}
		// On which connection, which request.
		if ac.id == 0 {
			ac.id = r.Conn
		}
		if r.Conn != ac.id || r.Request != ac.next {
			bad("conn %d request %d, want conn %d (%s) request %d", r.Conn, r.Request, ac.id, ac.name, ac.next)
		}
		ac.next++
		// What.
		wantStatus := w.status
		if wantStatus == "" {
			wantStatus = "OK"
		}
		if r.Op != w.op || r.Status != wantStatus {
			bad("op %s status %s, want %s %s", r.Op, r.Status, w.op, wantStatus)
		}
		switch {
		case w.msg != "":
			if r.Msg != w.msg {
				bad("msg %q, want %q", r.Msg, w.msg)
			}
		case (r.Msg != "") != (wantStatus != "OK"):
			bad("msg %q for status %s: want a reason exactly for refusals", r.Msg, r.Status)
		}
		if r.Key != audit.KeyID(w.key) {
			bad("key %s, want %s", r.Key, audit.KeyID(w.key))
		}
		switch {
		case r.Alg != string(w.alg):
			bad("alg %q, want %q", r.Alg, w.alg)
		case r.KeyVersion != w.kv:
			bad("kv %d, want %d", r.KeyVersion, w.kv)
		}
		if (r.Session != 0) != w.session {
			bad("session %d, want one: %v", r.Session, w.session)
		}
		if w.op == audit.OpBatch {
			if fmt.Sprint(r.Ops) != fmt.Sprint(w.ops) {
				bad("batch ops\n got %+v\nwant %+v", r.Ops, w.ops)
			}
		} else if len(r.Ops) != 0 {
			bad("ops in a record of one operation")
		}
	}
	return got
}

// kernelPidfds reports whether the kernel attaches pidfds to messages
// (SCM_PIDFD, Linux 6.5, which also brought SO_PEERPIDFD).
var kernelPidfds = sync.OnceValue(func() bool {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return false
	}
	defer unix.Close(fds[0])
	defer unix.Close(fds[1])
	const soPeerPidfd = 77
	pidfd, err := unix.GetsockoptInt(fds[0], unix.SOL_SOCKET, soPeerPidfd)
	if err != nil {
		return false
	}
	unix.Close(pidfd)
	return true
})

func kernelRelease() string {
	var u unix.Utsname
	unix.Uname(&u)
	return unix.ByteSliceToString(u.Release[:])
}

// refused is a refusal's record, naming key k if not nil. The version is
// recorded only where an operation used one.
func refused(op, status string, k *keywarden.Key) rec {
	r := rec{op: op, status: status}
	if k != nil {
		i := k.Info()
		r.key, r.alg = i.ID, i.Type
	}
	return r
}

// on is the record of an operation on key k that uses its current
// version (the data path).
func on(op string, k *keywarden.Key) rec {
	i := k.Info()
	return rec{op: op, key: i.ID, alg: i.Type, kv: i.Version}
}

// about is the record of an operation about key k, whose version it does
// not record.
func about(op string, k *keywarden.Key) rec {
	r := on(op, k)
	r.kv = 0
	return r
}

// session is the record of an operation of a streaming session on key k.
func session(op string, k *keywarden.Key) rec {
	r := about(op, k)
	r.session = true
	return r
}

// unkeyed says the record is written while the daemon has no audit keys
// (sealed): it has no MAC.
func (r rec) unkeyed() rec {
	r.noMAC = true
	return r
}

// v sets the version the record names.
func (r rec) v(kv uint32) rec {
	r.kv = kv
	return r
}

func opEntry(op string, k *keywarden.Key, status string, n uint32) audit.OpEntry {
	e := audit.OpEntry{Op: op, Status: status, Count: n}
	if k != nil {
		i := k.Info()
		e.Alg, e.Key, e.KeyVersion = string(i.Type), audit.KeyID(i.ID), i.Version
	}
	if n == 0 {
		e.Count = 1
	}
	return e
}

// wantErr fails the test unless err is the refusal wanted.
func wantErr(t *testing.T, what string, err, want error) {
	t.Helper()
	if !errors.Is(err, want) {
		t.Fatalf("%s: %v, want %v", what, err, want)
	}
}

func must(t *testing.T, what string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// secrets collects what must never appear in the log.
type secrets map[string][]byte

func (s secrets) add(name string, b []byte) {
	if len(b) < 8 {
		panic("a secret too short to search for: " + name)
	}
	s[name] = bytes.Clone(b)
}

// logEncoded is b as the log writes it in a string field: JSON escapes,
// and U+FFFD for bytes that are not UTF-8.
func logEncoded(b []byte) []byte {
	line := audit.AppendLine(nil, &audit.Record{Kind: audit.KindEvent, Op: "x", Msg: string(b)})
	const open, end = `"msg":"`, `","h":"`
	i, j := bytes.Index(line, []byte(open)), bytes.LastIndex(line, []byte(end))
	return line[i+len(open) : j]
}

// check searches log for every secret: raw, as the log would encode it in
// a string, in hex and in base64; and for any 16-byte piece of it, raw or
// encoded.
func (s secrets) check(t *testing.T, log []byte) {
	t.Helper()
	for name, b := range s {
		forms := map[string][]byte{
			"raw":              b,
			"as a JSON string": logEncoded(b),
			"hex":              []byte(hex.EncodeToString(b)),
			"HEX":              []byte(strings.ToUpper(hex.EncodeToString(b))),
			"base64":           []byte(base64.StdEncoding.EncodeToString(b)),
			"base64 raw":       []byte(base64.RawStdEncoding.EncodeToString(b)),
			"base64url":        []byte(base64.URLEncoding.EncodeToString(b)),
			"base64url raw":    []byte(base64.RawURLEncoding.EncodeToString(b)),
		}
		for form, p := range forms {
			if bytes.Contains(log, p) {
				t.Errorf("the audit log contains %s (%s)", name, form)
			}
		}
		for _, form := range []string{"raw", "as a JSON string"} {
			p := forms[form]
			for i := 0; i+16 <= len(p); i += 4 {
				if bytes.Contains(log, p[i:i+16]) {
					t.Errorf("the audit log contains bytes %d-%d of %s (%s)", i, i+16, name, form)
					break
				}
			}
		}
	}
}

func randomBytes(n int) []byte {
	b := make([]byte, n)
	rand.Read(b)
	return b
}

// TestAuditEveryOperation runs every kind of operation against a
// persistent daemon, once successfully and once refused, and checks each
// left exactly one record, with every field; then that nothing secret
// reached the log.
func TestAuditEveryOperation(t *testing.T) {
	sock, state, _ := persistentSetup(t)
	d := startPersistent(t, sock, state)
	logPath := filepath.Join(state, "audit.log")
	ck := &auditCheck{t: t, log: newAuditReader(t, logPath), exe: selfExe(t)}
	sec := secrets{}
	pass := []byte(testPass + " " + hex.EncodeToString(randomBytes(8)))
	sec.add("the master passphrase", pass)
	wrongPass := []byte("not-it-" + hex.EncodeToString(randomBytes(12)))
	sec.add("a wrong passphrase", wrongPass)
	newPass := []byte("rotated passphrase " + hex.EncodeToString(randomBytes(8)))
	sec.add("the new master passphrase", newPass)

	// Before the daemon has its keys (it starts uninitialized, so sealed),
	// records carry no MAC.
	ac := newAuditConn("client")
	var c *keywarden.Client
	ck.step(ac, "dial", func() { c = d.client(t) }, rec{op: "status"}.unkeyed())
	ck.step(ac, "generate before init", func() {
		_, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "early"})
		wantErr(t, "generate before init", err, keywarden.ErrUnavailable)
	}, refused("generate", "UNAVAILABLE", nil).unkeyed())

	// init: prepare and commit, two requests. From here the log has keys.
	ck.step(ac, "init", func() {
		_, err := c.Admin().Init(ctx, keywarden.MasterSealing{Passphrase: bytes.Clone(pass), Argon2: small}, nil)
		must(t, "init", err)
	}, rec{op: "init"}.unkeyed(), rec{op: "init"})
	pubPath := filepath.Join(state, "audit.pub")
	if b, err := os.ReadFile(pubPath); err != nil || !strings.Contains(string(b), "keywarden audit log") {
		t.Fatalf("audit.pub after init: %v %q", err, b)
	}
	ck.step(ac, "init again", func() {
		_, err := c.Admin().Init(ctx, keywarden.MasterSealing{Passphrase: bytes.Clone(pass), Argon2: small}, nil)
		if err == nil {
			t.Fatal("a second init without force succeeded")
		}
	}, refused("init", "ALREADY_EXISTS", nil))

	ck.step(ac, "status", func() { status(t, c) }, rec{op: "status"})
	ck.step(ac, "ping", func() { must(t, "ping", c.Ping(ctx, []byte("ping payload"))) }, rec{op: "ping"})

	// Keys.
	var aes, ed, hm *keywarden.Key
	ck.step(ac, "generate", func() {
		aes = generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "aes", Exportable: true, Wrappable: true})
	}, makes("generate", &aes))
	ck.step(ac, "generate refused", func() {
		_, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Usage: keywarden.UsageWrap | keywarden.UsageDecrypt, Ephemeral: true})
		wantErr(t, "generate wrap+decrypt", err, keywarden.ErrPolicyViolation)
	}, refused("generate", "POLICY_VIOLATION", nil))
	ck.step(ac, "generate more", func() {
		ed = generate(t, c, keywarden.KeySpec{Type: keywarden.Ed25519, Name: "ed"})
		hm = generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "hm", Usage: keywarden.UsageSign | keywarden.UsageVerify | keywarden.UsageDerive})
	}, makes("generate", &ed), makes("generate", &hm))

	imported := randomBytes(32)
	sec.add("imported key bytes", imported)
	var imp *keywarden.Key
	ck.step(ac, "import", func() {
		var err error
		imp, err = c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "imported", Exportable: true}, keywarden.FormatRaw, bytes.Clone(imported))
		must(t, "import", err)
	}, makes("import", &imp))
	badImport := randomBytes(16)
	sec.add("refused import bytes", badImport)
	ck.step(ac, "import refused", func() {
		_, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, keywarden.FormatRaw, badImport)
		wantErr(t, "import of 16 bytes as AES-256", err, keywarden.ErrInvalidArgument)
	}, refused("import", "INVALID_ARGUMENT", nil))

	var opened *keywarden.Key
	ck.step(ac, "open", func() {
		var err error
		opened, err = c.Open(ctx, "aes")
		must(t, "open", err)
	}, on("open", aes))
	ck.step(ac, "open refused", func() {
		_, err := c.Open(ctx, "no-such-key")
		wantErr(t, "open of a missing key", err, keywarden.ErrNotFound)
	}, refused("open", "NOT_FOUND", nil))
	ck.step(ac, "info", func() {
		_, err := opened.Refresh(ctx)
		must(t, "info", err)
	}, about("info", aes))
	ck.step(ac, "close", func() { must(t, "close", opened.Close(ctx)) }, about("close", aes))
	ck.step(ac, "info refused", func() {
		_, err := opened.Refresh(ctx)
		wantErr(t, "info on a closed handle", err, keywarden.ErrNotFound)
	}, refused("info", "NOT_FOUND", nil))
	ck.step(ac, "list", func() {
		keys, err := c.List(ctx)
		must(t, "list", err)
		if len(keys) != 4 {
			t.Fatalf("list: %d keys", len(keys))
		}
	}, rec{op: "list"})
	ck.step(ac, "public-key", func() {
		_, err := ed.ExportPublic(ctx, keywarden.FormatSPKIDER)
		must(t, "public key", err)
	}, about("public-key", ed))

	var exported []byte
	ck.step(ac, "export", func() {
		var err error
		exported, err = aes.Export(ctx, keywarden.FormatRaw)
		must(t, "export", err)
	}, about("export", aes))
	sec.add("exported key bytes", exported)
	ck.step(ac, "export refused", func() {
		_, err := ed.Export(ctx, keywarden.FormatPKCS8DER)
		wantErr(t, "export of a non-exportable key", err, keywarden.ErrPolicyViolation)
	}, refused("export", "POLICY_VIOLATION", ed))

	// Attributes and ACLs.
	no, yes := false, true
	ck.step(ac, "set-attributes", func() {
		_, err := imp.SetAttributes(ctx, keywarden.Attributes{Exportable: &no})
		must(t, "set attributes", err)
	}, about("set-attributes", imp))
	ck.step(ac, "set-attributes refused", func() {
		_, err := imp.SetAttributes(ctx, keywarden.Attributes{Exportable: &yes})
		wantErr(t, "exportable back on", err, keywarden.ErrPolicyViolation)
	}, refused("set-attributes", "POLICY_VIOLATION", imp))
	ck.step(ac, "set-acl", func() {
		_, err := aes.SetACL(ctx, []keywarden.ACLEntry{{ID: 4321, Usage: keywarden.UsageEncrypt}})
		must(t, "set acl", err)
	}, about("set-acl", aes))
	ck.step(ac, "set-acl refused", func() {
		_, err := ed.SetACL(ctx, []keywarden.ACLEntry{{ID: 4321, Usage: keywarden.UsageDecrypt}})
		if err == nil {
			t.Fatal("an ACL granting a usage the key cannot have")
		}
	}, refused("set-acl", "INVALID_ARGUMENT", ed))

	// Data path.
	pt := []byte("plaintext " + hex.EncodeToString(randomBytes(16)))
	sec.add("a plaintext", pt)
	var ct []byte
	ck.step(ac, "encrypt", func() {
		var err error
		ct, err = aes.Encrypt(ctx, pt, nil)
		must(t, "encrypt", err)
	}, on("encrypt", aes))
	ck.step(ac, "encrypt refused", func() {
		_, err := ed.Encrypt(ctx, pt, nil)
		wantErr(t, "encrypt with Ed25519", err, keywarden.ErrPolicyViolation)
	}, refused("encrypt", "POLICY_VIOLATION", ed))
	ck.step(ac, "decrypt", func() {
		got, err := aes.Decrypt(ctx, ct, nil)
		must(t, "decrypt", err)
		if !bytes.Equal(got, pt) {
			t.Fatal("decrypt: wrong plaintext")
		}
	}, on("decrypt", aes))
	ck.step(ac, "decrypt refused", func() {
		_, err := aes.Decrypt(ctx, flip(ct, len(ct)-1), nil)
		wantErr(t, "decrypt of a forged ciphertext", err, keywarden.ErrInvalidArgument)
	}, refused("decrypt", "INVALID_ARGUMENT", aes).v(1))
	msg := []byte("message " + hex.EncodeToString(randomBytes(16)))
	sec.add("a signed message", msg)
	var sig []byte
	ck.step(ac, "sign", func() {
		var err error
		sig, err = ed.SignMessageContext(ctx, msg, nil)
		must(t, "sign", err)
	}, on("sign", ed))
	ck.step(ac, "sign refused", func() {
		_, err := aes.SignMessageContext(ctx, msg, nil)
		wantErr(t, "sign with AES", err, keywarden.ErrPolicyViolation)
	}, refused("sign", "POLICY_VIOLATION", aes))
	ck.step(ac, "verify", func() { must(t, "verify", ed.Verify(ctx, msg, sig, nil)) }, on("verify", ed))
	ck.step(ac, "verify refused", func() {
		wantErr(t, "verify of a forged signature", ed.Verify(ctx, msg, flip(sig, 3), nil), keywarden.ErrVerification)
	}, refused("verify", "VERIFICATION_FAILED", ed))
	var tag []byte
	ck.step(ac, "mac", func() {
		var err error
		tag, err = hm.MAC(ctx, msg)
		must(t, "mac", err)
	}, on("mac", hm))
	ck.step(ac, "mac refused", func() {
		_, err := aes.MAC(ctx, msg)
		wantErr(t, "MAC with AES", err, keywarden.ErrPolicyViolation)
	}, refused("mac", "POLICY_VIOLATION", aes))
	ck.step(ac, "mac-verify", func() { must(t, "mac verify", hm.VerifyMAC(ctx, msg, tag)) }, on("mac-verify", hm))
	ck.step(ac, "mac-verify refused", func() {
		wantErr(t, "forged tag", hm.VerifyMAC(ctx, msg, flip(tag, 0)), keywarden.ErrVerification)
	}, refused("mac-verify", "VERIFICATION_FAILED", hm))
	ck.step(ac, "hash", func() {
		_, err := c.Hash(ctx, crypto.SHA256, msg)
		must(t, "hash", err)
	}, rec{op: "hash"})

	// Raw requests, for what the client library never sends.
	raw := dialRaw(t, sock)
	rc := newAuditConn("raw")
	ck.step(rc, "hash refused", func() {
		r := raw.one(&wire.Op{Op: &wire.Op_Hash{Hash: &wire.Hash{Data: msg}}})
		if r.Status != wire.Status_STATUS_INVALID_ARGUMENT {
			t.Fatalf("hash without an algorithm: %v", r.Status)
		}
	}, refused("hash", "INVALID_ARGUMENT", nil))

	var child *keywarden.Key
	ck.step(ac, "derive", func() {
		var err error
		child, err = hm.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, keywarden.DeriveParams{Salt: []byte("salt"), Info: []byte("info")})
		must(t, "derive", err)
	}, madeFrom("derive", &child, "derived from key "+hm.Info().ID.String()+" with HKDF"))
	ck.step(ac, "derive refused", func() {
		_, err := hm.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true, Ephemeral: true}, keywarden.DeriveParams{})
		wantErr(t, "exportable child of a locked parent", err, keywarden.ErrPolicyViolation)
	}, refused("derive", "POLICY_VIOLATION", hm))

	// Streaming sessions.
	var s *keywarden.Stream
	ck.step(ac, "session-open", func() {
		var err error
		s, err = hm.NewMAC(ctx)
		must(t, "session open", err)
	}, session("session-open", hm))
	ck.step(ac, "session-update and session-final", func() {
		s.Write(msg)
		_, err := s.Sum()
		must(t, "session sum", err)
	}, session("session-update", hm),
		session("session-final", hm))
	ck.step(ac, "session-open refused", func() {
		_, err := aes.NewMAC(ctx)
		wantErr(t, "MAC stream with AES", err, keywarden.ErrPolicyViolation)
	}, refused("session-open", "POLICY_VIOLATION", aes))
	ck.step(ac, "session-abort", func() {
		s, err := ed.NewSigner(ctx, nil)
		must(t, "signing stream", err)
		must(t, "abort", s.Close())
	}, session("session-open", ed),
		session("session-abort", ed))
	for _, op := range []*wire.Op{
		{Op: &wire.Op_SessionUpdate{SessionUpdate: &wire.SessionUpdate{Session: 999, Data: msg}}},
		{Op: &wire.Op_SessionFinal{SessionFinal: &wire.SessionFinal{Session: 999}}},
		{Op: &wire.Op_SessionAbort{SessionAbort: &wire.SessionAbort{Session: 999}}},
	} {
		name := "session-" + strings.TrimPrefix(strings.ToLower(fmt.Sprintf("%T", op.Op)), "*wire.op_session")
		ck.step(rc, name+" refused", func() {
			if r := raw.one(op); r.Status != wire.Status_STATUS_NOT_FOUND {
				t.Fatalf("%s of an unknown session: %v", name, r.Status)
			}
		}, rec{op: name, status: "NOT_FOUND", session: true})
	}

	// Versions and wrapping.
	ck.step(ac, "rotate", func() {
		info, err := aes.Rotate(ctx)
		must(t, "rotate", err)
		if info.Version != 2 {
			t.Fatalf("rotated to version %d", info.Version)
		}
	}, rec{op: "rotate", key: aes.ID(), alg: keywarden.AES256GCM, kv: 2}) // the new version
	var pubKey *keywarden.Key
	ck.step(ac, "import a public key", func() {
		pub, _, _ := ed25519.GenerateKey(rand.Reader)
		der, _ := x509.MarshalPKIXPublicKey(pub)
		var err error
		pubKey, err = c.Import(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Ephemeral: true}, keywarden.FormatSPKIDER, der)
		must(t, "import of a public key", err)
	}, makes("import", &pubKey))
	ck.step(ac, "rotate refused", func() {
		_, err := pubKey.Rotate(ctx)
		wantErr(t, "rotation of a public key", err, keywarden.ErrPolicyViolation)
	}, refused("rotate", "POLICY_VIOLATION", pubKey))
	ck.step(ac, "rewrap", func() {
		_, err := aes.Rewrap(ctx, ct, nil)
		must(t, "rewrap", err)
	}, on("rewrap", aes))
	ck.step(ac, "rewrap refused", func() {
		_, err := aes.Rewrap(ctx, flip(ct, len(ct)-2), nil)
		wantErr(t, "rewrap of a forged ciphertext", err, keywarden.ErrInvalidArgument)
	}, refused("rewrap", "INVALID_ARGUMENT", aes))
	var dk keywarden.DataKey
	ck.step(ac, "data-key", func() {
		var err error
		dk, err = aes.GenerateDataKey(ctx, nil, &keywarden.DataKeyOptions{Length: 32, Plaintext: true})
		must(t, "data key", err)
	}, on("data-key", aes))
	sec.add("a data key", dk.Plaintext)
	ck.step(ac, "data-key refused", func() {
		_, err := ed.GenerateDataKey(ctx, nil, &keywarden.DataKeyOptions{Length: 32, Plaintext: true})
		wantErr(t, "data key under Ed25519", err, keywarden.ErrPolicyViolation)
	}, refused("data-key", "POLICY_VIOLATION", ed))
	var kek *keywarden.Key
	ck.step(ac, "generate a wrapping key", func() {
		kek = generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
	}, makes("generate", &kek))
	var blob []byte
	ck.step(ac, "wrap", func() {
		var err error
		blob, err = kek.Wrap(ctx, aes, keywarden.WrapKeywarden, nil)
		must(t, "wrap", err)
	}, on("wrap", aes))
	ck.step(ac, "wrap refused", func() {
		_, err := kek.Wrap(ctx, ed, keywarden.WrapKeywarden, nil)
		wantErr(t, "wrap of a key that is not wrappable", err, keywarden.ErrPolicyViolation)
	}, refused("wrap", "POLICY_VIOLATION", ed))
	var unwrapped *keywarden.Key
	ck.step(ac, "unwrap", func() {
		var err error
		unwrapped, err = kek.Unwrap(ctx, blob, keywarden.WrapKeywarden, keywarden.KeySpec{Name: "unwrapped"}, nil)
		must(t, "unwrap", err)
	}, madeFrom("unwrap", &unwrapped, "unwrapped with key "+kek.Info().ID.String()))
	ck.step(ac, "unwrap refused", func() {
		_, err := kek.Unwrap(ctx, flip(blob, len(blob)-1), keywarden.WrapKeywarden, keywarden.KeySpec{Name: "forged"}, nil)
		if err == nil {
			t.Fatal("unwrap of a forged blob")
		}
	}, refused("unwrap", "INVALID_ARGUMENT", kek))

	// A batch is one record listing its operations; alike neighbours are
	// counted.
	ck.step(ac, "batch", func() {
		b := c.NewBatch()
		r1 := b.Encrypt(aes, pt, nil)
		b.Encrypt(aes, pt, nil)
		b.Encrypt(aes, pt, nil)
		r2 := b.SignMessage(ed, msg, nil)
		r3 := b.Decrypt(aes, []byte("not a ciphertext at all"), nil)
		r4 := b.MAC(hm, msg)
		must(t, "batch", b.Do(ctx))
		if r1.Err() != nil || r2.Err() != nil || r3.Err() == nil || r4.Err() != nil {
			t.Fatalf("batch results: %v %v %v %v", r1.Err(), r2.Err(), r3.Err(), r4.Err())
		}
	}, rec{op: "batch", ops: []audit.OpEntry{
		opEntry("encrypt", aes, "OK", 3),
		opEntry("sign", ed, "OK", 1),
		{Op: "decrypt", Alg: "aes256-gcm", Key: audit.KeyID(aes.ID()), Status: "INVALID_ARGUMENT", Count: 1}, // no version: the ciphertext names none
		opEntry("mac", hm, "OK", 1),
	}})

	ck.step(ac, "destroy before deletion is allowed", func() {
		wantErr(t, "destroy of a persistent key", unwrapped.Destroy(ctx), keywarden.ErrPolicyViolation)
	}, refused("destroy", "POLICY_VIOLATION", unwrapped))
	ck.step(ac, "allow deletion", func() {
		_, err := unwrapped.SetLifecycle(ctx, keywarden.LifecycleChange{DeletionAllowed: &yes})
		must(t, "allow deletion", err)
	}, about("set-lifecycle", unwrapped))
	ck.step(ac, "destroy", func() { must(t, "destroy", unwrapped.Destroy(ctx)) }, about("destroy", unwrapped))
	ck.step(ac, "destroy refused", func() {
		wantErr(t, "destroy through a closed handle", unwrapped.Destroy(ctx), keywarden.ErrNotFound)
	}, refused("destroy", "NOT_FOUND", nil))

	// Whole requests refused before any operation: recorded as "request".
	ck.step(rc, "a request of another protocol version", func() {
		b, _ := (&wire.Request{Version: 99, Id: rc.next, Ops: []*wire.Op{{Op: &wire.Op_Ping{Ping: &wire.Ping{}}}}}).MarshalVT()
		raw.next++
		raw.send(b)
		if rep := raw.recv(); rep.Status != wire.Status_STATUS_UNIMPLEMENTED {
			t.Fatalf("version 99: %v", rep.Status)
		}
	}, rec{op: "request", status: "UNIMPLEMENTED"})
	ck.step(rc, "an empty request", func() {
		if rep := raw.do(); rep.Status != wire.Status_STATUS_INVALID_ARGUMENT {
			t.Fatalf("no operations: %v", rep.Status)
		}
	}, rec{op: "request", status: "INVALID_ARGUMENT"})

	// The store: backup, master-key rotation, seal, unseal.
	var backup bytes.Buffer
	ck.step(ac, "backup", func() {
		_, err := c.Admin().Backup(ctx, &backup)
		must(t, "backup", err)
	}, rec{op: "backup"})
	ck.step(rc, "backup refused", func() {
		if r := raw.one(&wire.Op{Op: &wire.Op_Backup{Backup: &wire.Backup{Token: []byte("no such backup")}}}); r.Status != wire.Status_STATUS_NOT_FOUND {
			t.Fatalf("backup with a bogus token: %v", r.Status)
		}
	}, refused("backup", "NOT_FOUND", nil))
	ck.step(ac, "master-key-rotate", func() {
		_, err := c.Admin().RotateMaster(ctx, keywarden.MasterSealing{Passphrase: bytes.Clone(newPass), Argon2: small})
		must(t, "master rotate", err)
	}, rec{op: "master-key-rotate"}, rec{op: "master-key-rotate"})
	// Wait for the rotation's re-wrapping before sealing.
	deadline := time.Now().Add(30 * time.Second)
	for {
		st := status(t, c)
		ac.next++
		if !st.Seal.Rotating {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("master-key rotation did not finish")
		}
		time.Sleep(20 * time.Millisecond)
	}
	// The daemon drops its audit keys as it seals: the seal's record has
	// no MAC (the next checkpoint authenticates it).
	ck.step(ac, "seal", func() { must(t, "seal", c.Admin().Seal(ctx)) }, rec{op: "seal"}.unkeyed())
	// Sealed, the log has no keys: its records carry no MAC.
	ck.step(ac, "seal refused", func() {
		wantErr(t, "sealing a sealed daemon", c.Admin().Seal(ctx), keywarden.ErrUnavailable)
	}, refused("seal", "UNAVAILABLE", nil).unkeyed())
	ck.step(ac, "list refused", func() {
		_, err := c.List(ctx)
		wantErr(t, "list while sealed", err, keywarden.ErrUnavailable)
	}, refused("list", "UNAVAILABLE", nil).unkeyed())
	ck.step(ac, "master-key-rotate refused", func() {
		_, err := c.Admin().RotateMaster(ctx, keywarden.MasterSealing{Passphrase: bytes.Clone(pass), Argon2: small})
		wantErr(t, "master rotate while sealed", err, keywarden.ErrUnavailable)
	}, refused("master-key-rotate", "UNAVAILABLE", nil).unkeyed())
	ck.step(ac, "unseal refused", func() {
		wantErr(t, "unseal with a wrong passphrase", c.Admin().Unseal(ctx, bytes.Clone(wrongPass), nil), keywarden.ErrPermissionDenied)
	}, refused("unseal", "PERMISSION_DENIED", nil).unkeyed())
	// The next attempt must wait a moment after a failure.
	for {
		st := status(t, c)
		ac.next++
		if st.Seal.RetryAfter <= 0 {
			break
		}
		time.Sleep(st.Seal.RetryAfter + 10*time.Millisecond)
	}
	// The unseal's record is written once the daemon has its keys again:
	// it has a MAC.
	ck.step(ac, "unseal", func() { must(t, "unseal", c.Admin().Unseal(ctx, bytes.Clone(newPass), nil)) }, rec{op: "unseal"})
	ck.step(ac, "list after unseal", func() {
		_, err := c.List(ctx)
		must(t, "list", err)
	}, rec{op: "list"})

	// Each request of this test is in the log once: conn and request id
	// are unique, and every request of ours is accounted for.
	all := ck.log.all
	seen := map[[2]uint64]bool{}
	for _, r := range requests(all) {
		k := [2]uint64{r.Conn, r.Request}
		if seen[k] {
			t.Errorf("two records of conn %d request %d", r.Conn, r.Request)
		}
		seen[k] = true
	}
	for id := uint64(1); id < ac.next; id++ {
		if !seen[[2]uint64{ac.id, id}] {
			t.Errorf("no record of conn %d request %d", ac.id, id)
		}
	}
	for id := uint64(1); id < rc.next; id++ {
		if !seen[[2]uint64{rc.id, id}] {
			t.Errorf("no record of conn %d request %d", rc.id, id)
		}
	}

	// The CLI finds a key's records, in batches too.
	r := d.runCLI(t, nil, nil, "audit", "query", "--key", hm.ID().String(), "--json", "--log", logPath)
	if r.code != 0 {
		t.Fatalf("audit query: %s", r)
	}
	var n int
	for line := range strings.Lines(r.stdout) {
		rec, err := audit.ParseRecord([]byte(line))
		if err != nil {
			t.Fatalf("audit query --json printed %q: %v", line, err)
		}
		if rec.Key != audit.KeyID(hm.ID()) && rec.Op != audit.OpBatch {
			t.Errorf("audit query --key %s printed a record of key %s", hm.ID(), rec.Key)
		}
		n++
	}
	// generate, mac, mac refused... every record naming hm, and the batch.
	want := 0
	for _, rec := range requests(all) {
		if rec.Key == audit.KeyID(hm.ID()) {
			want++
		}
	}
	if n != want+1 {
		t.Errorf("audit query --key printed %d records, want %d and the batch", n, want)
	}

	t.Run("no secrets", func(t *testing.T) {
		d.stop()
		b, err := os.ReadFile(logPath)
		if err != nil {
			t.Fatal(err)
		}
		sec.check(t, b)
		if len(b) == 0 || !bytes.Contains(b, []byte(imp.ID().String())) {
			t.Fatal("the search found nothing because the log is not what it seems")
		}
	})
}

// TestAuditReadNeedsAdmin: an ordinary user who asks for the audit log is
// told that it is for administrators, not only "permission denied".
func TestAuditReadNeedsAdmin(t *testing.T) {
	requireRoot(t)
	dir := t.TempDir()
	state := filepath.Join(dir, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	log := filepath.Join(state, "audit.log")
	if err := os.WriteFile(log, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	user := &syscall.Credential{Uid: 4203, Gid: 4203}
	env := append(os.Environ(), mainEnv+"=1")
	for _, args := range [][]string{
		{"audit", "tail", "--log", log},
		{"audit", "query", "--log", log},
	} {
		r := runAs(t, user, env, nil, args...)
		if r.code == 0 || !strings.Contains(r.stderr, "readable only by administrators") {
			t.Errorf("%v as uid 4203: exit %d, stderr %q", args, r.code, r.stderr)
		}
	}
}

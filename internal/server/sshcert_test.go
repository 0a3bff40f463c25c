package server

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

func sshSubject(t *testing.T) ssh.PublicKey {
	t.Helper()
	pub, _, _ := ed25519.GenerateKey(rand.Reader)
	k, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func certifyOp(h uint32, sub ssh.PublicKey, principals ...string) *wire.Op {
	now := uint64(time.Now().Unix())
	return &wire.Op{Op: &wire.Op_SshCertify{SshCertify: &wire.SshCertify{Handle: h, PublicKey: sub.Marshal(),
		CertType: wire.SshCertType_SSH_CERT_TYPE_USER, Principals: principals, ValidAfter: now - 60, ValidBefore: now + 3600,
		KeyId: "test", Extensions: []*wire.SshCertOption{{Name: "permit-pty"}}}}}
}

// certConn is a connection of uid to an audited server, with the path of
// its audit log.
func certConn(t *testing.T, uid uint32) (*seqConn, Identity, string) {
	t.Helper()
	s, path := auditedServer(t, Limits{})
	a, b, err := seqpacket.Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	return testConn(t, s, a, uid), Identity{PID: int32(os.Getpid()), UID: uid, GID: uid, Pidfd: -1}, path
}

// run executes req on cn and writes its record; it returns the reply and
// the record.
func runAudited(t *testing.T, cn *seqConn, id Identity, ops ...*wire.Op) (*wire.Reply, *audit.Record) {
	t.Helper()
	req := &wire.Request{Version: 1, Id: 9, Ops: ops}
	caller := cn.s.callerOf(id)
	notes := cn.notesFor(new([]auditNote), &caller, len(ops))
	rep := cn.execute(req, id, &arena{}, notes, false)
	r := cn.requestRecord(req, rep, &caller, notes, req.SizeVT())
	r.Seq, r.Mono, r.HasMAC = 1<<40, 1<<50, true
	line := audit.AppendLine(nil, r)
	if est := recordSize(r); est < len(line) {
		t.Errorf("recordSize %d < %d written", est, len(line))
	}
	back, err := audit.ParseRecord(line)
	if err != nil {
		t.Fatal(err)
	}
	putRecord(r)
	return rep, back
}

func genKey(t *testing.T, cn *seqConn, id Identity, typ wire.KeyType, usage uint32) uint32 {
	t.Helper()
	op := &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Type: typ, Ephemeral: true, Usage: usage}}}}
	res := cn.safeDispatch(rowOf(op), op, id, 0, &arena{}, &wire.Result{}, nil)
	if res.Status != wire.Status_STATUS_OK {
		t.Fatal(res.Message)
	}
	return res.GetKey().GetHandle()
}

// TestSSHCertify: the daemon issues a certificate that a checker accepts
// for its principal, signed by the key, and its audit record says what
// the certificate says; in a batch, each certificate is recorded.
func TestSSHCertify(t *testing.T) {
	for _, typ := range []wire.KeyType{wire.KeyType_KEY_TYPE_ED25519, wire.KeyType_KEY_TYPE_ECDSA_P256,
		wire.KeyType_KEY_TYPE_ECDSA_P384, wire.KeyType_KEY_TYPE_RSA_2048} {
		t.Run(typ.String(), func(t *testing.T) {
			cn, id, _ := certConn(t, 1000)
			h := genKey(t, cn, id, typ, 0)
			sub := sshSubject(t)
			rep, r := runAudited(t, cn, id, certifyOp(h, sub, "alice", "deploy"))
			res := rep.Results[0]
			if res.Status != wire.Status_STATUS_OK {
				t.Fatal(res.Message)
			}
			k, err := ssh.ParsePublicKey(res.Data)
			if err != nil {
				t.Fatal(err)
			}
			cert := k.(*ssh.Certificate)
			checker := &ssh.CertChecker{IsUserAuthority: func(a ssh.PublicKey) bool {
				return bytes.Equal(a.Marshal(), cert.SignatureKey.Marshal())
			}}
			if err := checker.CheckCert("deploy", cert); err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(cert.Key.Marshal(), sub.Marshal()) {
				t.Fatal("certifies another key")
			}
			if typ == wire.KeyType_KEY_TYPE_RSA_2048 && cert.Signature.Format != ssh.KeyAlgoRSASHA512 {
				t.Errorf("RSA signature %s", cert.Signature.Format)
			}
			if r.Op != "ssh-certify" || r.Status != "OK" || len(r.SSHCerts) != 1 {
				t.Fatalf("record %+v", r)
			}
			got := r.SSHCerts[0]
			if got.Type != "user" || got.Serial != cert.Serial || got.KeyID != "test" ||
				strings.Join(got.Principals, ",") != "alice,deploy" || got.ValidAfter != cert.ValidAfter ||
				got.ValidBefore != cert.ValidBefore || got.Key != ssh.FingerprintSHA256(sub) {
				t.Errorf("recorded %+v for %+v", got, cert)
			}
			if r.Key.IsZero() {
				t.Error("the record names no authority")
			}
		})
	}
	cn, id, _ := certConn(t, 1000)
	h := genKey(t, cn, id, wire.KeyType_KEY_TYPE_ED25519, 0)
	rep, r := runAudited(t, cn, id, certifyOp(h, sshSubject(t), "a"), ping("x"), certifyOp(h, sshSubject(t), "b"),
		certifyOp(h, sshSubject(t)))
	if rep.Results[0].Status != wire.Status_STATUS_OK || rep.Results[3].Status == wire.Status_STATUS_OK {
		t.Fatalf("results %v", rep.Results)
	}
	if r.Op != audit.OpBatch || len(r.SSHCerts) != 2 || r.SSHCerts[0].Principals[0] != "a" || r.SSHCerts[1].Principals[0] != "b" {
		t.Errorf("batch record %+v", r)
	}
	if r.SSHCerts[0].Serial == r.SSHCerts[1].Serial {
		t.Error("two random serials alike")
	}
	var serial uint64 = 0
	op := certifyOp(h, sshSubject(t), "a")
	op.GetSshCertify().Serial = &serial
	if rep, r := runAudited(t, cn, id, op); rep.Results[0].Status != wire.Status_STATUS_OK || r.SSHCerts[0].Serial != 0 {
		t.Errorf("serial 0 given: %v %+v", rep.Results[0], r.SSHCerts)
	}
}

// TestSSHCertifyRefused: an authority is used only as its policy allows,
// and nothing is certified that should not be; a refusal records no
// certificate.
func TestSSHCertifyRefused(t *testing.T) {
	cn, id, _ := certConn(t, 1000)
	ed := genKey(t, cn, id, wire.KeyType_KEY_TYPE_ED25519, 0)
	verifyOnly := genKey(t, cn, id, wire.KeyType_KEY_TYPE_ED25519, uint32(wire.Usage_USAGE_VERIFY))
	aes := genKey(t, cn, id, wire.KeyType_KEY_TYPE_AES256_GCM, 0)
	sub := sshSubject(t)
	certOp := func(mod func(c *wire.SshCertify)) *wire.Op {
		op := certifyOp(ed, sub, "alice")
		mod(op.GetSshCertify())
		return op
	}
	// A certificate as the key to certify.
	rep, _ := runAudited(t, cn, id, certifyOp(ed, sub, "alice"))
	certBytes := rep.Results[0].Data
	for name, c := range map[string]struct {
		op   *wire.Op
		want wire.Status
	}{
		"no sign usage":   {certOp(func(c *wire.SshCertify) { c.Handle = verifyOnly }), wire.Status_STATUS_PERMISSION_DENIED},
		"an AES key":      {certOp(func(c *wire.SshCertify) { c.Handle = aes }), wire.Status_STATUS_PERMISSION_DENIED},
		"no principals":   {certOp(func(c *wire.SshCertify) { c.Principals = nil }), wire.Status_STATUS_INVALID_ARGUMENT},
		"no type":         {certOp(func(c *wire.SshCertify) { c.CertType = 0 }), wire.Status_STATUS_INVALID_ARGUMENT},
		"no validity":     {certOp(func(c *wire.SshCertify) { c.ValidAfter, c.ValidBefore = 0, 0 }), wire.Status_STATUS_INVALID_ARGUMENT},
		"a certificate":   {certOp(func(c *wire.SshCertify) { c.PublicKey = certBytes }), wire.Status_STATUS_INVALID_ARGUMENT},
		"garbage key":     {certOp(func(c *wire.SshCertify) { c.PublicKey = []byte("ssh-ed25519") }), wire.Status_STATUS_INVALID_ARGUMENT},
		"host extensions": {certOp(func(c *wire.SshCertify) { c.CertType = wire.SshCertType_SSH_CERT_TYPE_HOST }), wire.Status_STATUS_INVALID_ARGUMENT},
		"no such handle":  {certOp(func(c *wire.SshCertify) { c.Handle = 999 }), wire.Status_STATUS_NOT_FOUND},
	} {
		rep, r := runAudited(t, cn, id, c.op)
		if st := rep.Results[0].Status; st != c.want && !(c.want == wire.Status_STATUS_PERMISSION_DENIED && st == wire.Status_STATUS_POLICY_VIOLATION) {
			t.Errorf("%s: %v %q, want %v", name, st, rep.Results[0].Message, c.want)
		}
		if len(r.SSHCerts) != 0 || rep.Results[0].Data != nil {
			t.Errorf("%s: a certificate was issued or recorded", name)
		}
		if r.Msg == "" {
			t.Errorf("%s: the record says not why", name)
		}
	}
	// Another user's key, not shared: refused.
	other, oid, _ := certConn(t, 1001)
	other.s = cn.s
	other.handles[ed] = cn.handles[ed]
	if rep, r := runAudited(t, other, oid, certifyOp(ed, sub, "alice")); rep.Results[0].Status == wire.Status_STATUS_OK || len(r.SSHCerts) != 0 {
		t.Errorf("another user certified with a key not shared with them: %v", rep.Results[0])
	}
}

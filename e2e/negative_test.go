package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/wire"
)

// TestRefusals tries each forbidden thing with the owner's own identity.
func TestRefusals(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	msg := []byte("m")

	t.Run("export of a non-exportable key", func(t *testing.T) {
		for _, typ := range []keywarden.KeyType{keywarden.AES256GCM, keywarden.HMACSHA256, keywarden.Ed25519, keywarden.ECDSAP256, keywarden.RSA2048, keywarden.X25519} {
			k := generate(t, c, keywarden.KeySpec{Type: typ})
			for _, f := range []keywarden.KeyFormat{keywarden.FormatAuto, keywarden.FormatRaw, keywarden.FormatPKCS8DER, keywarden.FormatPKCS8PEM} {
				if b, err := k.Export(ctx, f); !errors.Is(err, keywarden.ErrPolicyViolation) || b != nil {
					t.Errorf("%s export as %d: %v (%d bytes)", typ, f, err, len(b))
				}
			}
			if k.Info().Class == keywarden.ClassPrivate {
				if _, err := k.ExportPublic(ctx, keywarden.FormatSPKIDER); err != nil {
					t.Errorf("%s public half: %v", typ, err)
				}
			}
		}
	})
	t.Run("usage the key lacks", func(t *testing.T) {
		encOnly := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Usage: keywarden.UsageEncrypt})
		ct, err := encOnly.Encrypt(ctx, msg, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := encOnly.Decrypt(ctx, ct, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("decrypt with an encrypt-only key: %v", err)
		}
		verifyOnly := generate(t, c, keywarden.KeySpec{Type: keywarden.Ed25519, Usage: keywarden.UsageVerify})
		if _, err := verifyOnly.SignMessageContext(ctx, msg, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("sign with a verify-only key: %v", err)
		}
		if _, err := verifyOnly.NewSigner(ctx, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("signing stream with a verify-only key: %v", err)
		}
		ed := generate(t, c, keywarden.KeySpec{Type: keywarden.Ed25519})
		if _, err := ed.Encrypt(ctx, msg, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("encrypt with an Ed25519 key: %v", err)
		}
		aes := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM})
		if _, err := aes.MAC(ctx, msg); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("MAC with an AES key: %v", err)
		}
		hm := generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Usage: keywarden.UsageSign})
		if _, err := hm.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, keywarden.DeriveParams{}); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("derive from an HMAC key without derive usage: %v", err)
		}
	})
	t.Run("forbidden usage pairs", func(t *testing.T) {
		for _, u := range []keywarden.Usage{
			keywarden.UsageWrap | keywarden.UsageDecrypt,
			keywarden.UsageUnwrap | keywarden.UsageEncrypt,
			keywarden.UsageWrap | keywarden.UsageUnwrap | keywarden.UsageEncrypt | keywarden.UsageDecrypt,
		} {
			if _, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Usage: u, Ephemeral: true}); !errors.Is(err, keywarden.ErrPolicyViolation) {
				t.Errorf("generate with %s: %v", u, err)
			}
			raw := make([]byte, 32)
			if _, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Usage: u, Ephemeral: true}, keywarden.FormatRaw, raw); !errors.Is(err, keywarden.ErrPolicyViolation) {
				t.Errorf("import with %s: %v", u, err)
			}
		}
		// Usages a type cannot have are invalid, not silently dropped.
		if _, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Usage: keywarden.UsageDecrypt, Ephemeral: true}); !errors.Is(err, keywarden.ErrInvalidArgument) {
			t.Errorf("Ed25519 with decrypt: %v", err)
		}
	})
	t.Run("attributes only narrow", func(t *testing.T) {
		k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true})
		no, yes := false, true
		if _, err := k.SetAttributes(ctx, keywarden.Attributes{Exportable: &no}); err != nil {
			t.Fatal(err)
		}
		if _, err := k.SetAttributes(ctx, keywarden.Attributes{Exportable: &yes}); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("exportable back on: %v", err)
		}
		if _, err := k.Export(ctx, keywarden.FormatRaw); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("export after switching exportable off: %v", err)
		}
		if _, err := k.SetAttributes(ctx, keywarden.Attributes{Wrappable: &yes}); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("wrappable on: %v", err)
		}
		enc := keywarden.UsageEncrypt
		if _, err := k.SetAttributes(ctx, keywarden.Attributes{Usage: &enc}); err != nil {
			t.Fatal(err)
		}
		both := keywarden.UsageEncrypt | keywarden.UsageDecrypt
		if _, err := k.SetAttributes(ctx, keywarden.Attributes{Usage: &both}); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Errorf("usage widened: %v", err)
		}
		info, _ := k.Refresh(ctx)
		if info.Exportable || info.Usage != keywarden.UsageEncrypt {
			t.Errorf("attributes after refused changes: %+v", info)
		}
	})
}

// TestHandlesBelongToTheirConnection uses a handle on another connection.
func TestHandlesBelongToTheirConnection(t *testing.T) {
	d := startDaemon(t)
	a, b := dialRaw(t, d.sock), dialRaw(t, d.sock)
	res := a.one(genOp(wire.KeyType_KEY_TYPE_AES256_GCM, "a-key", 0))
	if res.Status != wire.Status_STATUS_OK {
		t.Fatal(res.Message)
	}
	h := res.GetKey().Handle
	for probe := uint32(0); probe < 64; probe++ {
		r := b.one(&wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: probe, Plaintext: []byte("x")}}})
		if r.Status != wire.Status_STATUS_NOT_FOUND {
			t.Fatalf("handle %d of another connection: %v", probe, r.Status)
		}
	}
	r := a.one(&wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Plaintext: []byte("x")}}})
	if r.Status != wire.Status_STATUS_OK {
		t.Fatalf("own handle: %v", r.Status)
	}
	// Closed handles and unknown sessions are NOT_FOUND too.
	a.one(&wire.Op{Op: &wire.Op_Close{Close: &wire.Close{Handle: h}}})
	r = a.one(&wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Plaintext: []byte("x")}}})
	if r.Status != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("closed handle: %v", r.Status)
	}
	r = a.one(&wire.Op{Op: &wire.Op_SessionUpdate{SessionUpdate: &wire.SessionUpdate{Session: 1}}})
	if r.Status != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("unknown session: %v", r.Status)
	}
	d.healthy(t)
}

// TestOtherUsers runs the CLI as uid 65534 against keys root owns.
func TestOtherUsers(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	c := d.client(t)
	secret, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "secret", Exportable: true})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "shared", Exportable: true,
		ACL: []keywarden.ACLEntry{{ID: nobody.Uid, Usage: keywarden.UsageEncrypt}}}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "group-mac",
		ACL: []keywarden.ACLEntry{{Group: true, ID: nobody.Gid, Usage: keywarden.UsageSign}}}); err != nil {
		t.Fatal(err)
	}
	as := func(stdin string, args ...string) cliResult { return d.runCLI(t, nobody, []byte(stdin), args...) }
	expect := func(r cliResult, code int, stderr string) {
		t.Helper()
		if r.code != code || !strings.Contains(r.stderr, stderr) {
			t.Errorf("want exit %d and %q on stderr, got %s", code, stderr, r)
		}
		if strings.Count(strings.TrimSpace(r.stderr), "\n") > 0 {
			t.Errorf("error is not one line: %q", r.stderr)
		}
	}

	r := as("", "status", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"uid": 65534`) {
		t.Fatalf("status as nobody: %s", r)
	}
	// A key not shared with the caller does not exist for it.
	expect(as("x", "encrypt", "--key", "0:secret"), 1, "no such key")
	expect(as("", "key", "info", "id:"+secret.ID().String()), 1, "no such key")
	expect(as("", "key", "export", "0:secret"), 1, "no such key")
	expect(as("", "key", "destroy", "0:secret"), 1, "no such key")
	// A shared key gives exactly the usages granted.
	if r := as("data", "encrypt", "--key", "0:shared"); r.code != 0 || len(r.stdout) != 7+12+4+16 {
		t.Fatalf("encrypt with a shared key: %s", r)
	}
	expect(as("x", "decrypt", "--key", "0:shared"), 1, "permission denied")
	expect(as("", "key", "export", "0:shared"), 1, "permission denied")
	expect(as("", "key", "destroy", "0:shared"), 1, "permission denied")
	expect(as("", "key", "set", "0:shared", "--exportable=false"), 1, "permission denied")
	expect(as("", "key", "share", "0:shared", "--uid", "65534", "--usage", "encrypt,decrypt"), 1, "permission denied")
	// Group grants follow the caller's gid.
	if r := as("data", "mac", "--key", "0:group-mac"); r.code != 0 || len(r.stdout) != 32 {
		t.Fatalf("MAC with a group-shared key: %s", r)
	}
	// Listing shows only what the caller may see.
	r = as("", "key", "list")
	if r.code != 0 || !strings.Contains(r.stdout, "shared") || strings.Contains(r.stdout, "secret") {
		t.Fatalf("list as nobody: %s", r)
	}
	// Keys nobody creates are nobody's, and root cannot use them either.
	if r := as("", "key", "generate", "--type", "ed25519", "--name", "mine"); r.code != 0 || !strings.Contains(r.stdout, "owner:       uid 65534") {
		t.Fatalf("generate as nobody: %s", r)
	}
	if _, err := c.OpenShared(ctx, nobody.Uid, "mine"); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("root opened nobody's key: %v", err)
	}
	// A grantee of derive gets only locked-in children, even of an
	// exportable parent: export is the owner's right.
	kx, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.X25519, Name: "kx", Exportable: true,
		ACL: []keywarden.ACLEntry{{ID: nobody.Uid, Usage: keywarden.UsageDerive}}})
	if err != nil {
		t.Fatal(err)
	}
	peerPEM, err := kx.ExportPublic(ctx, keywarden.FormatSPKIPEM)
	if err != nil {
		t.Fatal(err)
	}
	peerFile := filepath.Join(openDir(t), "peer.pem")
	if err := os.WriteFile(peerFile, peerPEM, 0o644); err != nil {
		t.Fatal(err)
	}
	expect(as("", "derive", "--key", "0:kx", "--peer", peerFile, "--name", "child", "--exportable"), 1, "only the parent's owner")
	if r := as("", "derive", "--key", "0:kx", "--peer", peerFile, "--name", "child"); r.code != 0 || !strings.Contains(r.stdout, "exportable:  no") {
		t.Fatalf("locked derive as a grantee: %s", r)
	}

	// Names are per owner: nobody may have its own "secret".
	if r := as("", "key", "generate", "--type", "aes256-gcm", "--name", "secret"); r.code != 0 {
		t.Fatalf("same name, other owner: %s", r)
	}
	d.healthy(t)
}

// fdChildEnv makes the test binary act as a process that inherited a
// connected socket on descriptor 3 and uses it.
const fdChildEnv = "KEYWARDEN_E2E_FDCHILD"

func init() {
	if os.Getenv(fdChildEnv) == "" {
		return
	}
	h, _ := strconv.Atoi(os.Getenv(fdChildEnv))
	out := map[string]any{}
	req := &wire.Request{Version: 1, Id: 99, Ops: []*wire.Op{
		{Op: &wire.Op_Status{Status: &wire.StatusOp{}}},
		{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: uint32(h), Plaintext: []byte("x")}}},
	}}
	b, _ := req.MarshalVT()
	if err := unix.Sendmsg(3, b, nil, nil, 0); err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	buf := make([]byte, 1<<20)
	n, _, _, _, err := unix.Recvmsg(3, buf, nil, 0)
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	rep := new(wire.Reply)
	if err := rep.UnmarshalVT(buf[:n]); err != nil || len(rep.Results) != 2 {
		fmt.Println("bad reply", err)
		os.Exit(1)
	}
	out["uid"] = rep.Results[0].GetServer().GetCallerUid()
	out["pid"] = rep.Results[0].GetServer().GetCallerPid()
	out["encrypt"] = rep.Results[1].Status.String()
	json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(0)
}

// TestIdentityIsPerMessage passes a connection root opened (and opened a
// key on) to an unprivileged process: its requests carry its own identity,
// so root's handle does not work for it.
func TestIdentityIsPerMessage(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: d.sock}); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fd), "conn")
	defer f.Close()
	// As root: make a key on this connection and use it.
	req := &wire.Request{Version: 1, Id: 1, Ops: []*wire.Op{genOp(wire.KeyType_KEY_TYPE_AES256_GCM, "root-key", 0)}}
	b, _ := req.MarshalVT()
	unix.Sendmsg(fd, b, nil, nil, 0)
	buf := make([]byte, 1<<16)
	n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	rep := new(wire.Reply)
	rep.UnmarshalVT(buf[:n])
	h := rep.Results[0].GetKey().GetHandle()
	if h == 0 {
		t.Fatalf("generate as root: %v", rep.Results[0].Message)
	}

	cmd := exec.Command(binary(t))
	cmd.Env = append(os.Environ(), fdChildEnv+"="+strconv.Itoa(int(h)))
	cmd.ExtraFiles = []*os.File{f}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("child: %v: %s", err, out)
	}
	var got struct {
		UID     uint32
		PID     int32
		Encrypt string
	}
	if err := json.Unmarshal(out, &got); err != nil {
		t.Fatalf("child output %q: %v", out, err)
	}
	if got.UID != nobody.Uid {
		t.Errorf("request from the child attributed to uid %d, want %d", got.UID, nobody.Uid)
	}
	if got.PID == int32(os.Getpid()) || got.PID == 0 {
		t.Errorf("request from the child attributed to pid %d (ours is %d)", got.PID, os.Getpid())
	}
	if got.Encrypt != wire.Status_STATUS_NOT_FOUND.String() {
		t.Errorf("the child used root's key: %s", got.Encrypt)
	}
}

package e2e_test

import (
	"bytes"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// AES-GCM through pkcs11-tool: --encrypt and --decrypt with a key of the
// daemon. The daemon chooses the nonce, so the IV given must be all zeros
// (docs/pkcs11.md); another IV is refused, never silently replaced. The
// ciphertext is keywarden's format: the CLI opens it too, and a changed
// byte makes the module's decryption fail.
func TestPKCS11ToolAESGCM(t *testing.T) {
	e := p11Daemon(t, "aes256-gcm gcm1")
	id := idOf(t, e.tool(t, "-O", "--login", "--pin", "any"), "gcm1")
	msg := []byte("sealed through the PKCS #11 module, opened by the daemon")
	os.WriteFile(filepath.Join(e.dir, "pt"), msg, 0o644)
	zero := strings.Repeat("00", 12)
	out, code := e.run(t, nil, needTool(t, "pkcs11-tool"), "--module", e.mod, "--login", "--pin", "any", "--encrypt",
		"--mechanism", "AES-GCM", "--iv", zero, "--id", id, "-i", "pt", "-o", "ct")
	if code != 0 && strings.Contains(out, "Mechanism AES-GCM illegal or not supported") {
		// pkcs11-tool itself, before it asks the module: OpenSC 0.23
		// (Debian 12) encrypts with AES-ECB and AES-CBC only.
		t.Skip("this pkcs11-tool cannot encrypt with AES-GCM (OpenSC 0.24 and later can)")
	}
	if code != 0 {
		t.Fatalf("pkcs11-tool --encrypt: exit %d\n%s", code, out)
	}
	ct, err := os.ReadFile(filepath.Join(e.dir, "ct"))
	if err != nil || len(ct) < len(msg)+16 || bytes.Contains(ct, msg) {
		t.Fatalf("ciphertext of %d bytes (%v)", len(ct), err)
	}
	e.tool(t, "--login", "--pin", "any", "--decrypt", "--mechanism", "AES-GCM", "--iv", zero, "--id", id, "-i", "ct", "-o", "pt2")
	if got, _ := os.ReadFile(filepath.Join(e.dir, "pt2")); !bytes.Equal(got, msg) {
		t.Fatalf("decrypted %q", got)
	}
	// The same ciphertext through the daemon's own socket.
	r := e.d.runCLI(t, nil, ct, "decrypt", "--key", "gcm1")
	if r.code != 0 || !bytes.Equal([]byte(r.stdout), msg) {
		t.Fatalf("keywarden decrypt of the module's ciphertext: %s", r)
	}

	// A changed byte: nothing is released.
	bad := bytes.Clone(ct)
	bad[len(bad)-1] ^= 1
	os.WriteFile(filepath.Join(e.dir, "bad"), bad, 0o644)
	out, code = e.run(t, nil, needTool(t, "pkcs11-tool"), "--module", e.mod, "--login", "--pin", "any", "--decrypt",
		"--mechanism", "AES-GCM", "--iv", zero, "--id", id, "-i", "bad", "-o", "pt3")
	if code == 0 {
		t.Fatalf("a tampered ciphertext decrypted:\n%s", out)
	}
	if got, _ := os.ReadFile(filepath.Join(e.dir, "pt3")); bytes.Contains(got, msg[:16]) {
		t.Fatalf("a tampered ciphertext released plaintext")
	}

	// A caller's own IV is refused, not replaced.
	out, code = e.run(t, nil, needTool(t, "pkcs11-tool"), "--module", e.mod, "--login", "--pin", "any", "--encrypt",
		"--mechanism", "AES-GCM", "--iv", strings.Repeat("01", 12), "--id", id, "-i", "pt", "-o", "ct2")
	if code == 0 || !strings.Contains(out, "CKR_MECHANISM_PARAM_INVALID") {
		t.Fatalf("an IV of the caller's: exit %d\n%s", code, out)
	}
}

// OpenSSH logs in with a key of the daemon through the module: ssh -I
// MODULE, the key listed by ssh-keygen -D in authorized_keys, a real
// sshd. The signature is made by the daemon, recorded in its audit log
// as a PKCS #11 front's sign by /usr/bin/ssh. (OpenSSH 9.2 takes ECDSA
// and RSA keys from a PKCS #11 module; Ed25519 only from 9.4 on.)
func TestPKCS11SSHLogin(t *testing.T) {
	sshd := needSSHServer(t)
	e := p11Daemon(t, "ecdsa-p256 login-ec", "rsa-3072 login-rsa")
	out, code := e.run(t, nil, needTool(t, "ssh-keygen"), "-D", e.mod)
	if code != 0 {
		t.Fatalf("ssh-keygen -D: exit %d: %s", code, out)
	}
	for _, key := range []string{"login-ec", "login-rsa"} {
		t.Run(key, func(t *testing.T) {
			pub := strings.Fields(e.d.runCLI(t, nil, nil, "key", "public", "--format", "ssh", key).ok(t, "key public").stdout)
			if len(pub) < 2 || !strings.Contains(out, pub[0]+" "+pub[1]) {
				t.Fatalf("ssh-keygen -D does not list %s:\n%s", key, out)
			}
			dir := openDir(t)
			port, hostPub := agentSSHD(t, sshd, dir, "sshd", pub[0]+" "+pub[1]+"\n")
			kh := filepath.Join(dir, "known_hosts")
			os.WriteFile(kh, []byte(fmt.Sprintf("[127.0.0.1]:%d %s", port, hostPub)), 0o644)
			al := newAuditReader(t, e.logPath)
			al.read()
			got, code := e.run(t, nil, needTool(t, "ssh"), "-F", "/dev/null", "-p", strconv.Itoa(port),
				"-I", e.mod, "-o", "IdentityAgent=none", "-o", "IdentitiesOnly=no", "-o", "IdentityFile=none",
				"-o", "UserKnownHostsFile="+kh, "-o", "GlobalKnownHostsFile=/dev/null",
				// Not BatchMode: with it ssh refuses to log in to a token
				// at all; the token's protected authentication path
				// (CKF_PROTECTED_AUTHENTICATION_PATH) means it asks for
				// no PIN.
				"-o", "StrictHostKeyChecking=yes", "-o", "PasswordAuthentication=no",
				"-o", "KbdInteractiveAuthentication=no", "-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
				sshTestUser+"@127.0.0.1", "echo", "hello through the module")
			if code != 0 || strings.TrimSpace(got) != "hello through the module" {
				t.Fatalf("ssh -I: exit %d\n%s", code, got)
			}
			signs := 0
			for _, rec := range requests(al.read()) {
				if rec.Op == "sign" && rec.Status == "OK" {
					signs++
					if rec.Front != "pkcs11" || rec.Caller.Exe != "/usr/bin/ssh" {
						t.Errorf("sign record: front %q, exe %q", rec.Front, rec.Caller.Exe)
					}
				}
			}
			if signs == 0 {
				t.Error("no sign record for the login")
			}
		})
	}
}

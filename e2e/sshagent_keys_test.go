package e2e_test

import (
	"encoding/hex"
	"fmt"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
)

// ssh-add FILE gives the daemon a key that is the caller's and cannot
// leave it: the daemon makes it a non-exportable, ephemeral key owned by
// the uid that ran ssh-add (root, and another user), the import is in the
// audit log with ssh-add's executable and that uid, and the key is
// reachable through the agent alone: neither its owner nor an
// administrator can read its attributes or export it through the daemon's
// socket.
func TestSSHAgentAddedKeyIsCallers(t *testing.T) {
	needSSH(t, "ssh-add")
	requireRoot(t)
	d, sock, logPath := agentDaemon(t)
	al := newAuditReader(t, logPath)
	dir := openDir(t)
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(u.Uid)
	nobody := &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}

	for _, c := range []struct {
		name string
		cred *syscall.Credential
		uid  int
	}{{"root", nil, 0}, {"nobody", nobody, uid}} {
		key, pub := sshKeygen(t, dir, "id_"+c.name, "ed25519", "")
		if c.cred != nil {
			os.Chown(key, uid, uid)
		}
		pk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(pub))
		if err != nil {
			t.Fatal(err)
		}
		al.read()
		if out, code := agentRun(dir, sock, c.cred, nil, "ssh-add", key); code != 0 {
			t.Fatalf("%s: ssh-add: exit %d\n%s", c.name, code, out)
		}
		// The import, as the audit log has it.
		var id string
		for _, rec := range requests(al.read()) {
			if rec.Front == "ssh-agent" && rec.Op == "import" && rec.Status == "OK" {
				id = hex.EncodeToString(rec.Key[:])
				if rec.Key.IsZero() || rec.Caller.UID != uint32(c.uid) || rec.Caller.Exe != "/usr/bin/ssh-add" {
					t.Errorf("%s: import recorded for uid %d by %q, key %s", c.name, rec.Caller.UID, rec.Caller.Exe, id)
				}
			}
		}
		if id == "" {
			t.Fatalf("%s: no import by the agent in the audit log", c.name)
		}
		// The key the daemon made of it, in the daemon's log (read from a
		// pipe: the line may come a little after ssh-add's reply).
		created := ""
		for deadline := time.Now().Add(5 * time.Second); created == "" && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
			for _, l := range strings.Split(d.log.String(), "\n") {
				if strings.Contains(l, `msg="key created"`) && strings.Contains(l, "key="+id+" ") {
					created = l
				}
			}
		}
		for _, want := range []string{"front=ssh-agent", fmt.Sprintf("owner=%d ", c.uid), "usage=sign,verify",
			"exportable=false", "ephemeral=true"} {
			if !strings.Contains(created, want) {
				t.Errorf("%s: the key ssh-add gave is not %s: %q", c.name, want, created)
			}
		}
		// Listed to its owner, under ssh-add's comment.
		out, _ := agentRun(dir, sock, c.cred, nil, "ssh-add", "-L")
		if !strings.Contains(out, sshKeyFields(pub)) || !has(listedComments(out), "id_"+c.name+"@example.org") {
			t.Errorf("%s: the added key %s is not listed to its owner:\n%s", c.name, ssh.FingerprintSHA256(pk), out)
		}
		// Out of reach of the daemon's own socket, for the owner and for
		// root, an administrator.
		for _, who := range []*syscall.Credential{c.cred, nil} {
			for _, args := range [][]string{{"key", "export", "id:" + id}, {"key", "info", "--json", "id:" + id}} {
				r := d.runCLI(t, who, nil, args...)
				if r.code == 0 || !strings.Contains(r.stderr+r.stdout, "no such key") || strings.Contains(r.stdout, "PRIVATE KEY") {
					t.Errorf("%s: keywarden %s: %s", c.name, strings.Join(args, " "), r)
				}
			}
		}
		if out, code := agentRun(dir, sock, c.cred, nil, "ssh-add", "-d", key+".pub"); code != 0 {
			t.Fatalf("%s: ssh-add -d: exit %d\n%s", c.name, code, out)
		}
	}
}

// A user's certificate used through the agent: the user's key is a
// keywarden key marked for SSH, its certificate is issued by a keywarden
// CA (ssh certify), and ssh, given the certificate (CertificateFile) and
// the agent (IdentityAgent), logs in to an sshd that trusts only the CA
// (TrustedUserCAKeys, no authorized_keys) and presents a host certificate
// from another keywarden CA (@cert-authority in known_hosts). The login's
// signature is made through the agent: one sign record with front
// ssh-agent, the user's key, ssh's executable and, as ssh_dest, the
// fingerprint of the host key ssh bound the connection to. The agent
// holds keys, not certificates, so the certificate is a file.
func TestSSHAgentCertificateLogin(t *testing.T) {
	sshd := needSSHServer(t)
	d, sock, logPath := agentDaemon(t)
	dir := openDir(t)
	cli := func(args ...string) cliResult {
		t.Helper()
		return d.runCLI(t, nil, nil, args...).ok(t, strings.Join(args, " "))
	}
	cli("key", "generate", "--type", "ed25519", "--name", "user-ca")
	cli("key", "generate", "--type", "ecdsa-p256", "--name", "host-ca")
	cli("key", "generate", "--type", "ed25519", "--name", "login", "--ssh")
	write := func(name, text string) string {
		t.Helper()
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	userCA := write("user_ca.pub", cli("key", "public", "user-ca", "--format", "ssh").stdout)
	hostCAPub := cli("key", "public", "host-ca", "--format", "ssh").stdout
	loginPub := write("login.pub", cli("key", "public", "login", "--format", "ssh").stdout)

	// The user's certificate, of the key in keywarden.
	cli("ssh", "certify", "--ca", "user-ca", "--principals", sshTestUser, "--validity", "-5m:+1h",
		"--key-id", "login@example.org", "--serial", "4242", loginPub)
	cert := filepath.Join(dir, "login-cert.pub")
	if l := run(t, dir, "ssh-keygen", "-L", "-f", cert); !strings.Contains(l, "Serial: 4242") {
		t.Fatalf("the certificate:\n%s", l)
	}

	// The host's key and certificate; sshd with no authorized_keys at all.
	hostKey, hostPub := sshKeygen(t, dir, "host_key", "ed25519", "")
	cli("ssh", "certify", "--ca", "host-ca", "--host", "--principals", "127.0.0.1", "--validity", "-5m:+1h", hostKey+".pub")
	port := freePort(t)
	startSSHD(t, sshd, dir, port, sshdConfig(port, hostKey,
		"HostCertificate "+hostKey+"-cert.pub",
		"TrustedUserCAKeys "+userCA,
		"AuthorizedKeysFile none",
		"AuthorizedPrincipalsFile none"))
	knownHosts := write("known_hosts", fmt.Sprintf("@cert-authority [127.0.0.1]:%d %s", port, hostCAPub))

	// login logs in with the agent's keys, or with the certificate if one
	// is given: then only with the agent's key that the public key file
	// names (-i login.pub, as ssh_config(5) says for keys in an agent) and
	// that certificate.
	login := func(certFile string) (string, int) {
		ids := []string{"-o", "IdentityFile=none", "-o", "IdentitiesOnly=no"}
		if certFile != "" {
			ids = []string{"-o", "IdentityFile=" + loginPub, "-o", "CertificateFile=" + certFile, "-o", "IdentitiesOnly=yes"}
		}
		args := append([]string{"-F", "/dev/null", "-p", strconv.Itoa(port), "-o", "IdentityAgent=" + sock}, ids...)
		return agentRun(dir, sock, nil, nil, "ssh", append(args,
			"-o", "UserKnownHostsFile="+knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
			"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
			"-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
			sshTestUser+"@127.0.0.1", "echo", "hello with a certificate")...)
	}
	// The agent's keys alone are no way in: sshd trusts only certificates.
	if out, code := login(""); code == 0 {
		t.Fatalf("logged in without the certificate:\n%s", out)
	}
	al := newAuditReader(t, logPath)
	al.read()
	if out, code := login(cert); code != 0 || strings.TrimSpace(out) != "hello with a certificate" {
		t.Fatalf("login with the certificate through the agent: exit %d\n%s", code, out)
	}

	info := cli("key", "info", "--json", "login").stdout
	signs := 0
	loginRecs := requests(al.read())
	for _, rec := range loginRecs {
		if rec.Op != "sign" {
			continue
		}
		signs++
		id := hex.EncodeToString(rec.Key[:])
		if rec.Front != "ssh-agent" || rec.Status != "OK" || rec.Caller.Exe != "/usr/bin/ssh" || rec.Caller.PID == 0 ||
			!strings.Contains(info, id) || rec.Caller.SSHDest == "" {
			t.Errorf("sign record: front %q status %s exe %q pid %d key %s ssh_dest %q (want the login key, a destination)",
				rec.Front, rec.Status, rec.Caller.Exe, rec.Caller.PID, id, rec.Caller.SSHDest)
		}
	}
	if signs != 1 {
		t.Errorf("%d sign records for one login", signs)
	}

	// ssh_dest is the host key's fingerprint, as ssh-keygen -l and sshd
	// print it, whether the host presented its key or a certificate of it.
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostPub))
	if err != nil {
		t.Fatal(err)
	}
	certLine, _ := os.ReadFile(hostKey + "-cert.pub")
	hc, _, _, _, err := ssh.ParseAuthorizedKey(certLine)
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range loginRecs {
		if rec.Op == "sign" && rec.Caller.SSHDest != ssh.FingerprintSHA256(hk) {
			t.Errorf("ssh_dest %q, want the host key's %s (its certificate's blob hashes to %s)",
				rec.Caller.SSHDest, ssh.FingerprintSHA256(hk), ssh.FingerprintSHA256(hc))
		}
	}
}

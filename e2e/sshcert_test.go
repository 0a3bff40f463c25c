package e2e_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// sshTestUser is the unprivileged account the tests log in as through a
// real sshd.
const sshTestUser = "kwtest"

// needSSHServer skips a test that needs OpenSSH's sshd and client and
// root (sshd's privilege separation, and the test user), and makes the
// test user if it is missing.
func needSSHServer(t *testing.T) string {
	t.Helper()
	needSSH(t, "ssh")
	sshd := "/usr/sbin/sshd"
	if _, err := os.Stat(sshd); err != nil {
		t.Skip("no /usr/sbin/sshd (openssh-server; scripts/test.sh installs it)")
	}
	if os.Geteuid() != 0 {
		t.Skip("a real sshd login needs root: sshd's privilege separation, and a test user to log in as")
	}
	if _, err := user.Lookup(sshTestUser); err != nil {
		run(t, "", "useradd", "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh", sshTestUser)
	}
	// sshd refuses a locked account ("!" in /etc/shadow, as useradd
	// leaves it) when it does not use PAM; "*" is no password, unlocked.
	// Home is / (sshd changes into it), the shell /bin/sh.
	run(t, "", "usermod", "-p", "*", "-d", "/", "-s", "/bin/sh", sshTestUser)
	// Privilege separation's empty directory.
	if err := os.MkdirAll("/run/sshd", 0o755); err != nil {
		t.Fatal(err)
	}
	return sshd
}

// freePort returns a TCP port on 127.0.0.1 that nothing listens on.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// sshdConfig is the sshd_config of a test's sshd: on 127.0.0.1 at port,
// with the host key hostKey, the lines that differ (how users are
// authorized), and public-key authentication only, without PAM, for the
// test user alone.
func sshdConfig(port int, hostKey string, lines ...string) string {
	return fmt.Sprintf("Port %d\nListenAddress 127.0.0.1\nHostKey %s\n", port, hostKey) + strings.Join(lines, "\n") + fmt.Sprintf(`
PubkeyAuthentication yes
AuthenticationMethods publickey
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PidFile none
AllowUsers %s
LogLevel VERBOSE
`, sshTestUser)
}

// startSSHD runs sshd in the foreground with config on 127.0.0.1:port
// until the test ends, and returns its log.
func startSSHD(t *testing.T, sshd, dir string, port int, config string) *syncBuffer {
	t.Helper()
	conf := filepath.Join(dir, "sshd_config")
	if err := os.WriteFile(conf, []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	run(t, dir, sshd, "-t", "-f", conf)
	log := &syncBuffer{}
	cmd := exec.Command(sshd, "-D", "-e", "-f", conf)
	cmd.Stdout, cmd.Stderr = log, log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("sshd's log:\n%s", log.String())
		}
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), time.Second)
		if err == nil {
			c.Close()
			return log
		}
		if time.Now().After(deadline) {
			t.Fatalf("sshd does not listen on port %d:\n%s", port, log.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// sshLogin runs "echo" through ssh as user with the key file and its
// certificate, checking the host against knownHosts strictly. It returns
// ssh's output and exit status.
func sshLogin(dir string, port int, knownHosts, keyFile, user string) (string, int) {
	return tryRun(dir, nil, "ssh", "-F", "/dev/null", "-p", strconv.Itoa(port),
		"-i", keyFile, "-o", "CertificateFile="+keyFile+"-cert.pub", "-o", "IdentitiesOnly=yes",
		"-o", "IdentityAgent=none", "-o", "UserKnownHostsFile="+knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
		"-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
		user+"@127.0.0.1", "echo", "hello from keywarden")
}

// A certificate authority in keywarden: user certificates from `keywarden
// ssh certify` log in to a real sshd that trusts the CA
// (TrustedUserCAKeys, no authorized_keys at all), with an Ed25519 and an
// RSA authority; the host's certificate, from the same command, is what
// the client checks the host by (@cert-authority, StrictHostKeyChecking
// yes). ssh-keygen -L reads each certificate's fields; sshd refuses a
// certificate for another principal, an expired one and one from an
// authority it does not trust; the client refuses a host whose
// certificate is from another authority. Every certificate is in the
// audit log with its serial, principals and validity.
func TestSSHCertificateAuthority(t *testing.T) {
	sshd := needSSHServer(t)
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	auditLog := filepath.Join(dir, "audit.log")
	d := startDaemon(t, "--audit-log", auditLog)
	cli := func(args ...string) cliResult { t.Helper(); return d.runCLI(t, nil, nil, args...) }
	pubOf := func(name string) string {
		t.Helper()
		p := filepath.Join(dir, name+".pub")
		os.WriteFile(p, []byte(cli("key", "public", name, "--format", "ssh").ok(t, "key public").stdout), 0o644)
		return p
	}
	for name, typ := range map[string]string{"user-ca": "ed25519", "user-ca-rsa": "rsa-3072", "host-ca": "ecdsa-p384", "other-ca": "ed25519"} {
		cli("key", "generate", "--type", typ, "--name", name).ok(t, "generate "+name)
	}
	userCA, userCARSA, hostCA, otherCA := pubOf("user-ca"), pubOf("user-ca-rsa"), pubOf("host-ca"), pubOf("other-ca")
	trusted := filepath.Join(dir, "trusted_user_ca")
	a, _ := os.ReadFile(userCA)
	b, _ := os.ReadFile(userCARSA)
	os.WriteFile(trusted, append(a, b...), 0o644)

	// The host's key and its certificate.
	hostKey, _ := sshKeygen(t, dir, "host_key", "ed25519", "")
	out := cli("ssh", "certify", "--ca", "host-ca", "--host", "--principals", "localhost,127.0.0.1", "--validity", "-5m:+1h",
		"--key-id", "test host", hostKey+".pub").ok(t, "certify the host")
	if !strings.Contains(out.stdout, "Signed host key "+hostKey+"-cert.pub") {
		t.Errorf("ssh certify --host said %q", out.stdout)
	}
	port := freePort(t)
	sshdLog := startSSHD(t, sshd, dir, port, sshdConfig(port, hostKey,
		"HostCertificate "+hostKey+"-cert.pub",
		"TrustedUserCAKeys "+trusted,
		"AuthorizedKeysFile none",
		"AuthorizedPrincipalsFile none"))

	knownHosts := filepath.Join(dir, "known_hosts")
	hostCAPub, _ := os.ReadFile(hostCA)
	os.WriteFile(knownHosts, []byte(fmt.Sprintf("@cert-authority [127.0.0.1]:%d,127.0.0.1,localhost %s", port, hostCAPub)), 0o644)
	otherHosts := filepath.Join(dir, "other_known_hosts")
	otherCAPub, _ := os.ReadFile(otherCA)
	os.WriteFile(otherHosts, []byte(fmt.Sprintf("@cert-authority [127.0.0.1]:%d,127.0.0.1,localhost %s", port, otherCAPub)), 0o644)

	// certify makes a user key and its certificate.
	certify := func(name string, args ...string) string {
		t.Helper()
		key, _ := sshKeygen(t, dir, name, "ed25519", "")
		cli(append(append([]string{"ssh", "certify"}, args...), key+".pub")...).ok(t, "certify "+name)
		return key
	}
	good := certify("id_alice", "--ca", "user-ca", "--principals", sshTestUser+",alice", "--validity", "-5m:+1h",
		"--serial", "77", "--key-id", "alice@example.org")
	if out, code := sshLogin(dir, port, knownHosts, good, sshTestUser); code != 0 || strings.TrimSpace(out) != "hello from keywarden" {
		t.Fatalf("login with keywarden's user certificate: exit %d\n%s", code, out)
	}
	rsa := certify("id_bob", "--ca", "user-ca-rsa", "--principals", sshTestUser, "--validity", "+1h")
	if out, code := sshLogin(dir, port, knownHosts, rsa, sshTestUser); code != 0 {
		t.Fatalf("login with a certificate from an RSA authority: exit %d\n%s", code, out)
	}

	// ssh-keygen -L reads what the certificates say.
	l := run(t, dir, "ssh-keygen", "-L", "-f", good+"-cert.pub")
	for _, want := range []string{"Type: ssh-ed25519-cert-v01@openssh.com user certificate", "Signing CA: ED25519",
		`Key ID: "alice@example.org"`, "Serial: 77", "Valid: from ", "Principals: \n                " + sshTestUser + "\n                alice",
		"permit-pty", "Critical Options: (none)"} {
		if !strings.Contains(l, want) {
			t.Errorf("ssh-keygen -L lacks %q:\n%s", want, l)
		}
	}
	l = run(t, dir, "ssh-keygen", "-L", "-f", rsa+"-cert.pub")
	if !strings.Contains(l, "using rsa-sha2-512") {
		t.Errorf("the RSA authority's signature is not rsa-sha2-512:\n%s", l)
	}
	l = run(t, dir, "ssh-keygen", "-L", "-f", hostKey+"-cert.pub")
	for _, want := range []string{"host certificate", "Signing CA: ECDSA", `Key ID: "test host"`, "localhost", "127.0.0.1", "Extensions: (none)"} {
		if !strings.Contains(l, want) {
			t.Errorf("ssh-keygen -L of the host certificate lacks %q:\n%s", want, l)
		}
	}

	// What sshd and ssh must refuse.
	for name, c := range map[string]struct {
		key, hosts string
	}{
		"another principal":  {certify("id_wrong", "--ca", "user-ca", "--principals", "root,alice", "--validity", "+1h"), knownHosts},
		"expired":            {certify("id_old", "--ca", "user-ca", "--principals", sshTestUser, "--validity", "-2h:-1h"), knownHosts},
		"not yet valid":      {certify("id_soon", "--ca", "user-ca", "--principals", sshTestUser, "--validity", "+1h:+2h"), knownHosts},
		"untrusted CA":       {certify("id_other", "--ca", "other-ca", "--principals", sshTestUser, "--validity", "+1h"), knownHosts},
		"host of another CA": {good, otherHosts},
	} {
		if out, code := sshLogin(dir, port, c.hosts, c.key, sshTestUser); code == 0 || strings.Contains(out, "hello from keywarden") {
			t.Errorf("%s: logged in:\n%s", name, out)
		} else {
			t.Logf("%s: refused: %s", name, strings.TrimSpace(out))
		}
	}
	// sshd refused them for these reasons.
	for _, want := range []string{"Certificate invalid: expired", "Certificate invalid: not yet valid",
		"Certificate invalid: name is not a listed principal"} {
		if !strings.Contains(sshdLog.String(), want) {
			t.Errorf("sshd's log lacks %q", want)
		}
	}
	// A host certificate is no user certificate.
	if out, code := tryRun(dir, nil, "ssh", "-F", "/dev/null", "-p", strconv.Itoa(port), "-i", hostKey, "-o", "CertificateFile="+hostKey+"-cert.pub",
		"-o", "IdentitiesOnly=yes", "-o", "IdentityAgent=none", "-o", "UserKnownHostsFile="+knownHosts, "-o", "StrictHostKeyChecking=yes",
		"-o", "BatchMode=yes", sshTestUser+"@127.0.0.1", "true"); code == 0 {
		t.Errorf("logged in with the host's certificate:\n%s", out)
	}

	// The audit log: one record for each certificate, with its fields.
	f, err := os.Open(auditLog)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	type certRec struct {
		Type        string   `json:"type"`
		Serial      uint64   `json:"serial"`
		KeyID       string   `json:"key_id"`
		Principals  []string `json:"principals"`
		ValidAfter  uint64   `json:"valid_after"`
		ValidBefore uint64   `json:"valid_before"`
		Key         string   `json:"key"`
	}
	var certs []certRec
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var rec struct {
			Op       string    `json:"op"`
			Status   string    `json:"status"`
			Key      string    `json:"key"`
			SSHCerts []certRec `json:"ssh_certs"`
		}
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatal(err)
		}
		if rec.Op == "ssh-certify" {
			if rec.Status != "OK" || len(rec.SSHCerts) != 1 || rec.Key == "" {
				t.Errorf("record %s", sc.Bytes())
			}
			certs = append(certs, rec.SSHCerts...)
		}
	}
	if len(certs) != 7 {
		t.Fatalf("%d certificates recorded, want 7", len(certs))
	}
	host, alice := certs[0], certs[1]
	if host.Type != "host" || host.KeyID != "test host" || strings.Join(host.Principals, ",") != "localhost,127.0.0.1" {
		t.Errorf("host certificate recorded as %+v", host)
	}
	fp := run(t, dir, "ssh-keygen", "-l", "-f", good+".pub")
	if alice.Type != "user" || alice.Serial != 77 || alice.KeyID != "alice@example.org" ||
		strings.Join(alice.Principals, ",") != sshTestUser+",alice" || alice.ValidBefore-alice.ValidAfter != 65*60 ||
		!strings.Contains(fp, alice.Key) {
		t.Errorf("user certificate recorded as %+v (key %s)", alice, fp)
	}
	if certs[2].Serial == 0 || certs[2].Serial == certs[3].Serial {
		t.Errorf("serials not random: %d, %d", certs[2].Serial, certs[3].Serial)
	}
	d.runCLI(t, nil, nil, "audit", "verify", auditLog).ok(t, "audit verify")
}

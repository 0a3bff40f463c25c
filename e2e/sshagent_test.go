package e2e_test

import (
	"bytes"
	bin "encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/keywarden/keywarden/internal/audit"
)

// agentDaemon starts a daemon that serves the ssh-agent protocol on a
// socket beside its own, with an audit log, and returns it with the
// agent socket's and the audit log's paths.
func agentDaemon(t *testing.T, flags ...string) (d *daemon, sock, logPath string) {
	t.Helper()
	dir := openDir(t)
	sock = filepath.Join(dir, "agent.sock")
	logPath = filepath.Join(dir, "audit.log")
	d = startDaemonAt(t, filepath.Join(dir, "kw.sock"), append([]string{"--ssh-agent", sock, "--audit-log", logPath}, flags...)...)
	return d, sock, logPath
}

// agentRun runs an OpenSSH command with SSH_AUTH_SOCK=sock (and env),
// as cred if not nil, and returns its combined output and exit status.
func agentRun(dir, sock string, cred *syscall.Credential, env []string, name string, args ...string) (string, int) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	cmd.Env = append(append(os.Environ(), "SSH_AUTH_SOCK="+sock, "DISPLAY=", "SSH_ASKPASS="), env...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		return err.Error(), -1
	}
	return string(out), 0
}

// listed returns the comments of ssh-add -L's lines.
func listedComments(out string) []string {
	var cs []string
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if f := strings.Fields(l); len(f) >= 3 && (strings.HasPrefix(f[0], "ssh-") || strings.HasPrefix(f[0], "ecdsa-")) {
			cs = append(cs, f[2])
		}
	}
	return cs
}

// agentRefusal fails the test unless recs hold a refusal recorded by the
// ssh-agent front (or, with status OK, something it did itself): op,
// status, the client's executable exe, a msg holding want. It returns the
// record.
func agentRefusal(t *testing.T, recs []*audit.Record, op, status, exe, want string) *audit.Record {
	t.Helper()
	for _, rec := range requests(recs) {
		if rec.Front == "ssh-agent" && rec.Op == op && rec.Status == status && strings.Contains(rec.Msg, want) {
			if rec.Caller.Exe != exe || rec.Caller.PID <= 0 {
				t.Errorf("%s %s refusal %q recorded with exe %q pid %d, want exe %q", op, status, rec.Msg, rec.Caller.Exe, rec.Caller.PID, exe)
			}
			return rec
		}
	}
	var got []string
	for _, rec := range requests(recs) {
		got = append(got, fmt.Sprintf("%s %s %s %q %q", rec.Front, rec.Op, rec.Status, rec.Caller.Exe, rec.Msg))
	}
	t.Fatalf("no %s %s refusal %q by %s in the audit log; records:\n%s", op, status, want, exe, strings.Join(got, "\n"))
	return nil
}

func has(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// ssh-add against the daemon's agent socket: -L lists the keys marked for
// SSH that the caller may sign with, by name; ssh-add FILE adds a key that
// -L then lists and -d and -D remove (and only such keys); -t expires a
// key; -x locks and -X unlocks. Another user sees none of it, but a key
// shared with it for signing. What the agent refuses itself (-d of a
// stored key, -c with no confirmation program, anything while locked, a
// wrong unlock passphrase) is in the audit log with ssh-add's executable.
func TestSSHAgentSSHAdd(t *testing.T) {
	needSSH(t, "ssh-add")
	requireRoot(t)
	d, sock, logPath := agentDaemon(t)
	al := newAuditReader(t, logPath)
	dir := t.TempDir()
	cli := func(args ...string) cliResult {
		t.Helper()
		return d.runCLI(t, nil, nil, args...).ok(t, strings.Join(args, " "))
	}
	cli("key", "generate", "--type", "ed25519", "--name", "login", "--ssh")
	cli("key", "generate", "--type", "ecdsa-p256", "--name", "p256", "--ssh")
	cli("key", "generate", "--type", "ecdsa-p384", "--name", "p384")
	cli("key", "set", "p384", "--ssh")
	cli("key", "generate", "--type", "rsa-2048", "--name", "rsa", "--ssh")
	cli("key", "generate", "--type", "ed25519", "--name", "unmarked")
	cli("key", "generate", "--type", "ed25519", "--name", "verify-only", "--usage", "verify", "--ssh")

	// keywarden ssh-agent prints what eval needs.
	r := cli("ssh-agent")
	if !strings.Contains(r.stdout, "SSH_AUTH_SOCK="+sock+"; export SSH_AUTH_SOCK;") {
		t.Fatalf("keywarden ssh-agent: %q", r.stdout)
	}
	if r := cli("ssh-agent", "-c"); !strings.Contains(r.stdout, "setenv SSH_AUTH_SOCK "+sock+";") {
		t.Fatalf("keywarden ssh-agent -c: %q", r.stdout)
	}

	list := func() []string {
		t.Helper()
		out, code := agentRun(dir, sock, nil, nil, "ssh-add", "-L")
		if code != 0 && code != 1 {
			t.Fatalf("ssh-add -L: exit %d\n%s", code, out)
		}
		return listedComments(out)
	}
	got := list()
	for _, want := range []string{"login", "p256", "p384", "rsa"} {
		if !has(got, want) {
			t.Errorf("ssh-add -L does not list %s: %v", want, got)
		}
	}
	for _, not := range []string{"unmarked", "verify-only"} {
		if has(got, not) {
			t.Errorf("ssh-add -L lists %s: %v", not, got)
		}
	}
	// The line is key public --format ssh's.
	pub := strings.TrimSpace(cli("key", "public", "login", "--format", "ssh").stdout)
	if out, _ := agentRun(dir, sock, nil, nil, "ssh-add", "-L"); !strings.Contains(out, pub) {
		t.Errorf("ssh-add -L:\n%s\nlacks %s", out, pub)
	}

	// Another user sees none of root's keys, but the one shared with it
	// for signing, named by its owner.
	u, err := user.Lookup("nobody")
	if err != nil {
		t.Skip("no user nobody")
	}
	uid, _ := strconv.Atoi(u.Uid)
	nobody := &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}
	if out, _ := agentRun("/", sock, nobody, nil, "ssh-add", "-L"); strings.Contains(out, "ssh-") || strings.Contains(out, "ecdsa-") {
		t.Fatalf("another user lists root's keys:\n%s", out)
	}
	cli("key", "share", "p256", "--uid", u.Uid, "--usage", "sign")
	if out, _ := agentRun("/", sock, nobody, nil, "ssh-add", "-L"); !has(listedComments(out), "0:p256") || len(listedComments(out)) != 1 {
		t.Fatalf("the key shared for signing is not the only one another user lists:\n%s", out)
	}

	// ssh-add FILE, -d, -D.
	key1, pub1 := sshKeygen(t, dir, "id_one", "ed25519", "")
	key2, _ := sshKeygen(t, dir, "id_two", "ecdsa", "")
	key3, _ := sshKeygen(t, dir, "id_three", "rsa", "")
	for _, k := range []string{key1, key2, key3} {
		if out, code := agentRun(dir, sock, nil, nil, "ssh-add", k); code != 0 {
			t.Fatalf("ssh-add %s: exit %d\n%s", k, code, out)
		}
	}
	got = list()
	for _, want := range []string{"id_one@example.org", "id_two@example.org", "id_three@example.org", "login"} {
		if !has(got, want) {
			t.Errorf("after ssh-add, -L does not list %s: %v", want, got)
		}
	}
	if out, _ := agentRun(dir, sock, nil, nil, "ssh-add", "-L"); !strings.Contains(out, sshKeyFields(pub1)) {
		t.Errorf("the added key's public half is not listed:\n%s", out)
	}
	if has(func() []string {
		out, _ := agentRun("/", sock, nobody, nil, "ssh-add", "-L")
		return listedComments(out)
	}(), "id_one@example.org") {
		t.Error("another user lists a key root added")
	}
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", "-d", key1); code != 0 {
		t.Fatalf("ssh-add -d: exit %d\n%s", code, out)
	}
	if got := list(); has(got, "id_one@example.org") || !has(got, "id_two@example.org") {
		t.Errorf("after ssh-add -d: %v", got)
	}
	// -d of a stored key is refused: ssh-add never destroys those.
	loginPub := filepath.Join(dir, "login.pub")
	os.WriteFile(loginPub, []byte(pub+"\n"), 0o644)
	al.read()
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", "-d", loginPub); code == 0 {
		t.Errorf("ssh-add -d removed a stored key:\n%s", out)
	}
	agentRefusal(t, al.read(), "destroy", "NOT_FOUND", "/usr/bin/ssh-add", "not added through the agent")
	// -c without --ssh-askpass: refused, and recorded.
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", "-c", key2); code == 0 {
		t.Errorf("ssh-add -c taken with no confirmation program:\n%s", out)
	}
	agentRefusal(t, al.read(), "import", "UNIMPLEMENTED", "/usr/bin/ssh-add", "no confirmation program")
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", "-D"); code != 0 {
		t.Fatalf("ssh-add -D: exit %d\n%s", code, out)
	}
	got = list()
	if has(got, "id_two@example.org") || has(got, "id_three@example.org") || !has(got, "login") || !has(got, "rsa") {
		t.Errorf("after ssh-add -D: %v", got)
	}
	cli("key", "info", "login")

	// -t: the key goes when its lifetime ends.
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", "-t", "2", key1); code != 0 {
		t.Fatalf("ssh-add -t: exit %d\n%s", code, out)
	}
	if !has(list(), "id_one@example.org") {
		t.Fatal("the key added with -t is not listed")
	}
	time.Sleep(3 * time.Second)
	if has(list(), "id_one@example.org") {
		t.Fatal("the key added with -t 2 is listed after 3 seconds")
	}
	// Its end is recorded, for root, by no process.
	expired := false
	for _, rec := range requests(al.read()) {
		if rec.Front == "ssh-agent" && rec.Op == "destroy" && rec.Status == "OK" && strings.Contains(rec.Msg, "ssh-add -t: the lifetime of 2 s") {
			expired = true
			if rec.Caller.UID != 0 || rec.Caller.PID != 0 || len(rec.Key) == 0 {
				t.Errorf("the expiry is recorded for uid %d, pid %d, key %x", rec.Caller.UID, rec.Caller.PID, rec.Key)
			}
		}
	}
	if !expired {
		t.Error("the end of the key's lifetime is not in the audit log")
	}

	// -x / -X, the passphrase from an askpass program.
	askpass := filepath.Join(dir, "askpass")
	os.WriteFile(askpass, []byte("#!/bin/sh\necho \"$KW_PASS\"\n"), 0o755)
	pass := func(p string) []string {
		return []string{"SSH_ASKPASS=" + askpass, "SSH_ASKPASS_REQUIRE=force", "DISPLAY=:0", "KW_PASS=" + p}
	}
	if out, code := agentRun(dir, sock, nil, pass("correct horse"), "ssh-add", "-x"); code != 0 {
		t.Fatalf("ssh-add -x: exit %d\n%s", code, out)
	}
	agentRefusal(t, al.read(), "lock", "OK", "/usr/bin/ssh-add", "the agent is locked for this uid")
	if got := list(); len(got) != 0 {
		t.Fatalf("a locked agent lists %v", got)
	}
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", key1); code == 0 {
		t.Fatalf("a locked agent took a key:\n%s", out)
	}
	if out, code := agentRun(dir, sock, nil, pass("wrong"), "ssh-add", "-X"); code == 0 {
		t.Fatalf("unlocked with a wrong passphrase:\n%s", out)
	}
	recs := al.read()
	agentRefusal(t, recs, "list", "PERMISSION_DENIED", "/usr/bin/ssh-add", "the agent is locked")
	agentRefusal(t, recs, "import", "PERMISSION_DENIED", "/usr/bin/ssh-add", "the agent is locked")
	agentRefusal(t, recs, "unlock", "PERMISSION_DENIED", "/usr/bin/ssh-add", "wrong passphrase")
	// The lock is root's: another user's connections are not locked.
	if out, _ := agentRun("/", sock, nobody, nil, "ssh-add", "-L"); !has(listedComments(out), "0:p256") {
		t.Fatalf("root's lock locked another user:\n%s", out)
	}
	if out, code := agentRun(dir, sock, nil, pass("correct horse"), "ssh-add", "-X"); code != 0 {
		t.Fatalf("ssh-add -X: exit %d\n%s", code, out)
	}
	agentRefusal(t, al.read(), "unlock", "OK", "/usr/bin/ssh-add", "the agent is unlocked for this uid")
	if !has(list(), "login") {
		t.Fatal("an unlocked agent does not list the keys")
	}
	if strings.Contains(d.log.String(), "correct horse") {
		t.Fatal("the lock passphrase is in the daemon's log")
	}
}

// agentSSHD starts an sshd on a free port with a new host key whose
// AuthorizedKeysFile holds authorized, and returns its port and host
// public key line.
func agentSSHD(t *testing.T, sshd, dir, name, authorized string) (int, string) {
	t.Helper()
	sub := filepath.Join(dir, name)
	os.MkdirAll(sub, 0o755)
	hostKey, hostPub := sshKeygen(t, sub, "host_key", "ed25519", "")
	ak := filepath.Join(sub, "authorized_keys")
	os.WriteFile(ak, []byte(authorized), 0o644)
	port := freePort(t)
	startSSHD(t, sshd, sub, port, sshdConfig(port, hostKey, "AuthorizedKeysFile "+ak))
	return port, hostPub
}

// agentSSH runs echo through ssh with the agent at sock and only it.
func agentSSH(dir, sock string, port int, knownHosts string) (string, int) {
	return agentRun(dir, sock, nil, nil, "ssh", "-F", "/dev/null", "-p", strconv.Itoa(port),
		"-o", "IdentityAgent="+sock, "-o", "IdentitiesOnly=no", "-o", "IdentityFile=none",
		"-o", "UserKnownHostsFile="+knownHosts, "-o", "GlobalKnownHostsFile=/dev/null",
		"-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "PasswordAuthentication=no",
		"-o", "ConnectTimeout=10", "-o", "LogLevel=ERROR",
		sshTestUser+"@127.0.0.1", "echo", "hello through the agent")
}

// A real login through the agent: sshd trusts key public --format ssh in
// authorized_keys, ssh signs through IdentityAgent=SOCK, and the
// signature is one audit record naming the ssh process and the host key
// ssh bound the connection to (session-bind@openssh.com).
func TestSSHAgentLogin(t *testing.T) {
	sshd := needSSHServer(t)
	d, sock, logPath := agentDaemon(t)
	dir := openDir(t)
	d.runCLI(t, nil, nil, "key", "generate", "--type", "ed25519", "--name", "login", "--ssh").ok(t, "generate")
	pub := d.runCLI(t, nil, nil, "key", "public", "login", "--format", "ssh").ok(t, "key public").stdout
	port, hostPub := agentSSHD(t, sshd, dir, "a", pub)
	kh := filepath.Join(dir, "known_hosts")
	os.WriteFile(kh, []byte(fmt.Sprintf("[127.0.0.1]:%d %s", port, hostPub)), 0o644)
	al := newAuditReader(t, logPath)
	al.read()
	out, code := agentSSH(dir, sock, port, kh)
	if code != 0 || strings.TrimSpace(out) != "hello through the agent" {
		t.Fatalf("ssh through the agent: exit %d\n%s", code, out)
	}
	hk, _, _, _, err := ssh.ParseAuthorizedKey([]byte(hostPub))
	if err != nil {
		t.Fatal(err)
	}
	signs := 0
	loginRecs := al.read()
	// The binding itself is recorded, before the signature it leads to.
	agentRefusal(t, loginRecs, "session-bind", "OK", "/usr/bin/ssh", "bound to the host key "+ssh.FingerprintSHA256(hk))
	for _, rec := range requests(loginRecs) {
		if rec.Op != "sign" {
			continue
		}
		signs++
		if rec.Front != "ssh-agent" || rec.Status != "OK" || rec.Caller.Exe != "/usr/bin/ssh" || rec.Caller.PID == 0 ||
			rec.Caller.SSHDest != ssh.FingerprintSHA256(hk) || rec.Caller.Cgroup == "" {
			t.Errorf("sign record: front %q status %s exe %q pid %d ssh_dest %q (want %s) cgroup %q",
				rec.Front, rec.Status, rec.Caller.Exe, rec.Caller.PID, rec.Caller.SSHDest, ssh.FingerprintSHA256(hk), rec.Caller.Cgroup)
		}
	}
	if signs != 1 {
		t.Errorf("%d sign records for one login", signs)
	}
}

// ssh-keygen -Y sign through the agent, checked by ssh-keygen -Y verify;
// git commit -S with gpg.format ssh and a key:: signing key, checked by
// git verify-commit. Then the key is restricted to ssh-keygen: it still
// signs for it, and a Go agent client (this test) is refused, in the
// audit log with its executable.
func TestSSHAgentSignatures(t *testing.T) {
	needSSH(t, "git")
	requireRoot(t)
	d, sock, logPath := agentDaemon(t)
	dir := t.TempDir()
	for _, typ := range []string{"ed25519", "ecdsa-p384", "rsa-3072"} {
		d.runCLI(t, nil, nil, "key", "generate", "--type", typ, "--name", "s-"+typ, "--ssh").ok(t, "generate")
		pub := d.runCLI(t, nil, nil, "key", "public", "s-"+typ, "--format", "ssh").ok(t, "key public").stdout
		pubFile := filepath.Join(dir, typ+".pub")
		os.WriteFile(pubFile, []byte(pub), 0o644)
		os.WriteFile(filepath.Join(dir, "allowed"), []byte("dev@example.org "+pub), 0o644)
		data := filepath.Join(dir, "data")
		os.WriteFile(data, []byte("signed through the agent"), 0o644)
		if out, code := agentRun(dir, sock, nil, nil, "ssh-keygen", "-Y", "sign", "-f", pubFile, "-n", "file", data); code != 0 {
			t.Fatalf("%s: ssh-keygen -Y sign: exit %d\n%s", typ, code, out)
		}
		in, _ := os.Open(data)
		out, code := tryRun(dir, in, "ssh-keygen", "-Y", "verify", "-f", filepath.Join(dir, "allowed"), "-I", "dev@example.org", "-n", "file", "-s", data+".sig")
		in.Close()
		if code != 0 {
			t.Fatalf("%s: ssh-keygen -Y verify: exit %d\n%s", typ, code, out)
		}
		os.Remove(data + ".sig")
	}

	// git, with the key named by its public key line.
	pub := strings.TrimSpace(d.runCLI(t, nil, nil, "key", "public", "s-ed25519", "--format", "ssh").ok(t, "key public").stdout)
	os.WriteFile(filepath.Join(dir, "allowed_signers"), []byte("dev@example.org "+pub+"\n"), 0o644)
	repo := filepath.Join(dir, "repo")
	os.Mkdir(repo, 0o755)
	gitEnv := append(os.Environ(), "SSH_AUTH_SOCK="+sock, "HOME="+dir, "GIT_CONFIG_NOSYSTEM=1")
	git := func(args ...string) (string, error) {
		cmd := exec.Command("git", args...)
		cmd.Dir, cmd.Env = repo, gitEnv
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	for _, args := range [][]string{
		{"init", "-q"},
		{"config", "user.email", "dev@example.org"},
		{"config", "user.name", "Dev"},
		{"config", "gpg.format", "ssh"},
		{"config", "user.signingkey", "key::" + pub},
		{"config", "gpg.ssh.allowedSignersFile", filepath.Join(dir, "allowed_signers")},
		{"commit", "-q", "-S", "--allow-empty", "-m", "signed through keywarden's agent"},
	} {
		if out, err := git(args...); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	if out, err := git("verify-commit", "-v", "HEAD"); err != nil || !strings.Contains(out, `Good "git" signature for dev@example.org`) {
		t.Fatalf("git verify-commit: %v\n%s", err, out)
	}

	// --allow-exe: ssh-keygen may, this test's own agent client may not.
	d.runCLI(t, nil, nil, "key", "set", "s-ed25519", "--allow-exe", "/usr/bin/ssh-keygen").ok(t, "key set --allow-exe")
	data := filepath.Join(dir, "data")
	if out, code := agentRun(dir, sock, nil, nil, "ssh-keygen", "-Y", "sign", "-f", filepath.Join(dir, "ed25519.pub"), "-n", "file", data); code != 0 {
		t.Fatalf("ssh-keygen, allowed, refused: exit %d\n%s", code, out)
	}
	al := newAuditReader(t, logPath)
	al.read()
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ac := agent.NewClient(conn)
	keys, err := ac.List()
	if err != nil {
		t.Fatal(err)
	}
	var target *agent.Key
	for _, k := range keys {
		if k.Comment == "s-ed25519" {
			target = k
		}
	}
	if target == nil {
		t.Fatalf("the restricted key is not listed to the Go client: %v", keys)
	}
	if _, err := ac.Sign(target, []byte("not for you")); err == nil {
		t.Fatal("a program not allowed signed with the restricted key")
	}
	self, _ := os.Executable()
	self, _ = filepath.EvalSymlinks(self)
	found := false
	for _, rec := range requests(al.read()) {
		if rec.Op == "sign" && rec.Status == "PERMISSION_DENIED" && rec.Front == "ssh-agent" {
			found = true
			if rec.Caller.Exe != self || !strings.Contains(rec.Msg, "/usr/bin/ssh-keygen") {
				t.Errorf("refusal recorded with exe %q, msg %q", rec.Caller.Exe, rec.Msg)
			}
		}
	}
	if !found {
		t.Fatal("the refusal is not in the audit log")
	}

	// A SHA-1 ssh-rsa signature (the Go client's Sign asks for one) is
	// refused by the agent, and recorded with the key and the client.
	var rsaKey *agent.Key
	for _, k := range keys {
		if k.Comment == "s-rsa-3072" {
			rsaKey = k
		}
	}
	if rsaKey == nil {
		t.Fatalf("the RSA key is not listed: %v", keys)
	}
	if _, err := ac.Sign(rsaKey, []byte("sha-1, please")); err == nil {
		t.Fatal("the agent made an ssh-rsa (SHA-1) signature")
	}
	if sig, err := ac.SignWithFlags(rsaKey, []byte("sha-2"), agent.SignatureFlagRsaSha256); err != nil || sig.Format != ssh.KeyAlgoRSASHA256 {
		t.Fatalf("rsa-sha2-256: %v %v", sig, err)
	}
	if rec := agentRefusal(t, al.read(), "sign", "POLICY_VIOLATION", self, "SHA-1"); rec.Key.IsZero() {
		t.Error("the SHA-1 refusal names no key")
	}
}

// ssh-add -h: a key constrained to one host signs for a login to it and
// is refused for a login to another (another sshd, another host key), and
// for anything but a login (ssh-keygen -Y sign): that refusal is in the
// audit log with ssh-keygen's executable and the key.
func TestSSHAgentDestinationConstraints(t *testing.T) {
	sshd := needSSHServer(t)
	d, sock, logPath := agentDaemon(t)
	dir := openDir(t)
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("daemon's log:\n%s", d.log.String())
		}
	})
	key, pub := sshKeygen(t, dir, "id_dest", "ed25519", "")
	portA, hostA := agentSSHD(t, sshd, dir, "a", pub)
	portB, hostB := agentSSHD(t, sshd, dir, "b", pub)
	kh := filepath.Join(dir, "known_hosts")
	os.WriteFile(kh, []byte(fmt.Sprintf("[127.0.0.1]:%d %s[127.0.0.1]:%d %s", portA, hostA, portB, hostB)), 0o644)
	// ssh-add looks the destination's host keys up by name.
	named := filepath.Join(dir, "named_hosts")
	os.WriteFile(named, []byte("host-a "+hostA), 0o644)
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", "-H", named, "-h", "host-a", key); code != 0 {
		t.Fatalf("ssh-add -h: exit %d\n%s", code, out)
	}
	if out, code := agentSSH(dir, sock, portA, kh); code != 0 {
		t.Fatalf("login to the allowed host: exit %d\n%s", code, out)
	}
	if out, code := agentSSH(dir, sock, portB, kh); code == 0 {
		t.Fatalf("a key constrained to host-a logged in to another host:\n%s", out)
	}
	al := newAuditReader(t, logPath)
	al.read()
	data := filepath.Join(dir, "data")
	os.WriteFile(data, []byte("not a login"), 0o644)
	if out, code := agentRun(dir, sock, nil, nil, "ssh-keygen", "-Y", "sign", "-f", key+".pub", "-n", "file", data); code == 0 {
		t.Fatalf("a key constrained to host-a signed a file:\n%s", out)
	}
	if rec := agentRefusal(t, al.read(), "sign", "PERMISSION_DENIED", "/usr/bin/ssh-keygen", "ssh-add -h"); rec.Key.IsZero() {
		t.Error("the destination refusal names no key")
	}
	// Unconstrained, it logs in to both.
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", key); code != 0 {
		t.Fatalf("ssh-add: exit %d\n%s", code, out)
	}
	if out, code := agentSSH(dir, sock, portB, kh); code != 0 {
		t.Fatalf("login once the constraint is gone: exit %d\n%s", code, out)
	}
}

// Bad input: a message cut short, one longer than 256 KiB, unknown
// message types, and a client that never reads its replies. The daemon
// stays up, answers SSH_AGENT_FAILURE or closes the connection, and
// another client is served meanwhile without delay. Each refusal is in
// the audit log with the client's executable.
func TestSSHAgentBadInput(t *testing.T) {
	requireRoot(t)
	d, sock, logPath := agentDaemon(t)
	al := newAuditReader(t, logPath)
	d.runCLI(t, nil, nil, "key", "generate", "--type", "ed25519", "--name", "login", "--ssh").ok(t, "generate")
	dial := func() net.Conn {
		t.Helper()
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
	msg := func(body ...byte) []byte {
		b := bin.BigEndian.AppendUint32(nil, uint32(len(body)))
		return append(b, body...)
	}
	reply := func(c net.Conn) ([]byte, error) {
		c.SetReadDeadline(time.Now().Add(15 * time.Second))
		var h [4]byte
		if _, err := ioReadFull(c, h[:]); err != nil {
			return nil, err
		}
		b := make([]byte, bin.BigEndian.Uint32(h[:]))
		_, err := ioReadFull(c, b)
		return b, err
	}
	// Unknown types, and a known one malformed: failure, and the
	// connection goes on.
	c := dial()
	for _, m := range [][]byte{msg(200), msg(1), msg(msgSign, 0, 0, 0, 9, 1), msg(27, 0, 0, 0, 4, 'n', 'o', 'p', 'e')} {
		c.Write(m)
		if r, err := reply(c); err != nil || !bytes.Equal(r, []byte{5}) {
			t.Fatalf("reply to %x: %x %v", m, r, err)
		}
	}
	c.Write(msg(11))
	if r, err := reply(c); err != nil || len(r) < 5 || r[0] != 12 {
		t.Fatalf("list after bad messages: %x %v", r, err)
	}
	self := selfExe(t)
	recs := al.read()
	agentRefusal(t, recs, "request", "UNIMPLEMENTED", self, "unknown message type 200")
	agentRefusal(t, recs, "request", "UNIMPLEMENTED", self, "unknown message type 1")
	agentRefusal(t, recs, "sign", "INVALID_ARGUMENT", self, "malformed sign request")
	agentRefusal(t, recs, "extension", "UNIMPLEMENTED", self, `unsupported extension "nope"`)
	// Longer than 256 KiB: closed without reading it.
	c = dial()
	c.Write(bin.BigEndian.AppendUint32(nil, 256<<10+1))
	if _, err := reply(c); err == nil {
		t.Fatal("an oversized message was answered")
	}
	// A zero-length message: closed.
	c = dial()
	c.Write(msg())
	if _, err := reply(c); err == nil {
		t.Fatal("an empty message was answered")
	}
	recs = al.read()
	agentRefusal(t, recs, "request", "RESOURCE_EXHAUSTED", self, fmt.Sprintf("a message of %d bytes", 256<<10+1))
	agentRefusal(t, recs, "request", "RESOURCE_EXHAUSTED", self, "a message of 0 bytes")
	// Cut short: header of 100 bytes, 10 sent, then the client goes.
	c = dial()
	c.Write(append(bin.BigEndian.AppendUint32(nil, 100), make([]byte, 10)...))
	c.Close()

	// A client that never reads: it asks for listings and reads no reply.
	stalled := dial()
	if uc, ok := stalled.(*net.UnixConn); ok {
		uc.SetReadBuffer(4096)
	}
	go func() {
		stalled.SetWriteDeadline(time.Now().Add(20 * time.Second))
		for i := 0; i < 5000; i++ {
			if _, err := stalled.Write(msg(11)); err != nil {
				return
			}
		}
	}()
	time.Sleep(2 * time.Second)
	// Meanwhile another client is served at once.
	for i := 0; i < 5; i++ {
		start := time.Now()
		conn := dial()
		keys, err := agent.NewClient(conn).List()
		if err != nil || len(keys) != 1 {
			t.Fatalf("another client while one stalls: %v %v", keys, err)
		}
		if el := time.Since(start); el > 2*time.Second {
			t.Fatalf("another client waited %s while one stalls", el)
		}
	}
	d.healthy(t)
}

const msgSign = 13

func ioReadFull(c net.Conn, b []byte) (int, error) {
	n := 0
	for n < len(b) {
		m, err := c.Read(b[n:])
		n += m
		if err != nil {
			return n, err
		}
	}
	return n, nil
}

// ssh-add -c: each use of the key asks the --ssh-askpass program, which
// approves by exiting 0; once it refuses, the signature is refused, and
// the refusal is in the audit log with ssh-keygen's executable and the
// key.
func TestSSHAgentConfirm(t *testing.T) {
	requireRoot(t)
	dir := openDir(t)
	approve := filepath.Join(dir, "approve")
	askpass := filepath.Join(dir, "askpass")
	os.WriteFile(askpass, []byte("#!/bin/sh\ntest \"$SSH_ASKPASS_PROMPT\" = confirm && test -e "+approve+"\n"), 0o755)
	_, sock, logPath := agentDaemon(t, "--ssh-askpass", askpass)
	key, _ := sshKeygen(t, dir, "id_confirm", "ed25519", "")
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", "-c", key); code != 0 {
		t.Fatalf("ssh-add -c: exit %d\n%s", code, out)
	}
	data := filepath.Join(dir, "data")
	os.WriteFile(data, []byte("confirmed"), 0o644)
	sign := func() int {
		os.Remove(data + ".sig")
		_, code := agentRun(dir, sock, nil, nil, "ssh-keygen", "-Y", "sign", "-f", key+".pub", "-n", "file", data)
		return code
	}
	os.WriteFile(approve, nil, 0o644)
	if code := sign(); code != 0 {
		t.Fatalf("a use the program approved was refused: exit %d", code)
	}
	al := newAuditReader(t, logPath)
	al.read()
	os.Remove(approve)
	if code := sign(); code == 0 {
		t.Fatal("a use the program refused signed")
	}
	if rec := agentRefusal(t, al.read(), "sign", "PERMISSION_DENIED", "/usr/bin/ssh-keygen", "ssh-add -c"); rec.Key.IsZero() {
		t.Error("the confirmation refusal names no key")
	}
}

package e2e_test

import (
	"bytes"
	"crypto"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
)

// needSSH skips a test without OpenSSH's ssh-keygen (scripts/test.sh
// installs it).
func needSSH(t *testing.T, tools ...string) {
	t.Helper()
	for _, tool := range append([]string{"ssh-keygen"}, tools...) {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
}

// run runs a command in dir and returns its combined output, failing the
// test if it fails.
func run(t *testing.T, dir string, name string, args ...string) string {
	t.Helper()
	out, code := tryRun(dir, nil, name, args...)
	if code != 0 {
		t.Fatalf("%s %s: exit %d\n%s", name, strings.Join(args, " "), code, out)
	}
	return out
}

// tryRun runs a command in dir with stdin from the file in (if not nil)
// and returns its combined output and exit status.
func tryRun(dir string, in *os.File, name string, args ...string) (string, int) {
	cmd := exec.Command(name, args...)
	cmd.Dir = dir
	if in != nil {
		cmd.Stdin = in
	}
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		return err.Error(), -1
	}
	return string(out), 0
}

// runCLIFile runs the keywarden command against d with stdin from a file
// (for input too large to hold as a []byte comfortably).
func (d *daemon) runCLIFile(t *testing.T, stdin string, args ...string) cliResult {
	t.Helper()
	in, err := os.Open(stdin)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	return d.runFrom(t, binary(t), nil, in, args...)
}

// ok fails the test unless r exited 0.
func (r cliResult) ok(t *testing.T, what string) cliResult {
	t.Helper()
	if r.code != 0 {
		t.Fatalf("%s: %s", what, r)
	}
	return r
}

// randomFile writes size random bytes to a new file in dir.
func randomFile(t *testing.T, dir, name string, size int) string {
	t.Helper()
	p := filepath.Join(dir, name)
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rand.Reader, int64(size)); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	return p
}

// sshKeyFields is an OpenSSH public key without its comment.
func sshKeyFields(line string) string {
	f := strings.Fields(line)
	if len(f) < 2 {
		return line
	}
	return f[0] + " " + f[1]
}

// sshsigFormat returns the signature scheme named inside an armored SSH
// signature.
func sshsigFormat(t *testing.T, armored []byte) string {
	t.Helper()
	block, _ := pem.Decode(armored)
	if block == nil || block.Type != "SSH SIGNATURE" {
		t.Fatalf("not an armored SSH signature:\n%s", armored)
	}
	for _, f := range []string{"rsa-sha2-512", "rsa-sha2-256", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384"} {
		// The signature's own format is the last string naming a scheme.
		if i := bytes.LastIndex(block.Bytes, []byte(f)); i > 0 && i > len(block.Bytes)-600 {
			return f
		}
	}
	return ""
}

// keywarden sign --format sshsig signs a 100 MB file with Ed25519, ECDSA
// and RSA keys; ssh-keygen -Y verify accepts each signature with the key
// from key public --format ssh in allowed_signers, and refuses it for
// another namespace or an altered file.
func TestSSHSigSignedByKeywarden(t *testing.T) {
	needSSH(t)
	d := startDaemon(t)
	dir := t.TempDir()
	big := randomFile(t, dir, "release.tar", 100<<20)
	for _, typ := range []keywarden.KeyType{keywarden.Ed25519, keywarden.ECDSAP256, keywarden.ECDSAP384, keywarden.RSA3072} {
		t.Run(string(typ), func(t *testing.T) {
			name := "rel-" + string(typ)
			d.runCLI(t, nil, nil, "key", "generate", "--type", string(typ), "--name", name).ok(t, "generate")
			pub := d.runCLI(t, nil, nil, "key", "public", name, "--format", "ssh").ok(t, "key public --format ssh").stdout
			if !strings.HasSuffix(pub, " "+name+"\n") || strings.Count(pub, "\n") != 1 {
				t.Fatalf("key public --format ssh: %q", pub)
			}
			pubFile := filepath.Join(dir, name+".pub")
			os.WriteFile(pubFile, []byte(pub), 0o600)
			// ssh-keygen reads it, and its fingerprint is the key's.
			fp := run(t, dir, "ssh-keygen", "-l", "-f", pubFile)
			info, _ := d.client(t).Open(ctx, name)
			cryptoPub, _ := info.Info().PublicKey()
			sshPub, err := ssh.NewPublicKey(cryptoPub)
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(fp, ssh.FingerprintSHA256(sshPub)) || !strings.Contains(fp, name) {
				t.Fatalf("ssh-keygen -l: %s, want %s", fp, ssh.FingerprintSHA256(sshPub))
			}
			signers := filepath.Join(dir, name+".allowed")
			os.WriteFile(signers, []byte("release@example.org "+pub), 0o600)

			start := time.Now()
			r := d.runCLIFile(t, big, "sign", "--key", name, "--format", "sshsig", "--namespace", "file").ok(t, "sign --format sshsig")
			t.Logf("%s: signed 100 MB in %v", typ, time.Since(start).Round(time.Millisecond))
			sigFile := filepath.Join(dir, name+".sig")
			os.WriteFile(sigFile, []byte(r.stdout), 0o600)
			want := map[keywarden.KeyType]string{keywarden.Ed25519: "ssh-ed25519", keywarden.ECDSAP256: "ecdsa-sha2-nistp256",
				keywarden.ECDSAP384: "ecdsa-sha2-nistp384", keywarden.RSA3072: "rsa-sha2-512"}[typ]
			if got := sshsigFormat(t, []byte(r.stdout)); got != want {
				t.Errorf("signature scheme %q, want %q", got, want)
			}

			in, _ := os.Open(big)
			defer in.Close()
			out, code := tryRun(dir, in, "ssh-keygen", "-Y", "verify", "-f", signers, "-I", "release@example.org", "-n", "file", "-s", sigFile)
			if code != 0 || !strings.Contains(out, `Good "file" signature for release@example.org`) {
				t.Fatalf("ssh-keygen -Y verify refused keywarden's signature: exit %d\n%s", code, out)
			}
			in.Seek(0, io.SeekStart)
			if out, code := tryRun(dir, in, "ssh-keygen", "-Y", "verify", "-f", signers, "-I", "release@example.org", "-n", "git", "-s", sigFile); code == 0 {
				t.Errorf("ssh-keygen accepted the signature in another namespace:\n%s", out)
			}
			// keywarden verifies its own signature, and refuses another
			// namespace.
			d.runCLIFile(t, big, "verify", "--key", name, "--format", "sshsig", "--namespace", "file", "--signature", sigFile).ok(t, "verify")
			if r := d.runCLIFile(t, big, "verify", "--key", name, "--format", "sshsig", "--namespace", "git", "--signature", sigFile); r.code != 3 {
				t.Errorf("keywarden verify in another namespace: %s", r)
			}
		})
	}
	// The file altered by one bit: both refuse.
	f, _ := os.OpenFile(big, os.O_RDWR, 0)
	b := make([]byte, 1)
	f.ReadAt(b, 50<<20)
	b[0] ^= 1
	f.WriteAt(b, 50<<20)
	f.Close()
	for _, name := range []string{"rel-ed25519", "rel-rsa-3072"} {
		in, _ := os.Open(big)
		out, code := tryRun(dir, in, "ssh-keygen", "-Y", "verify", "-f", filepath.Join(dir, name+".allowed"), "-I", "release@example.org", "-n", "file", "-s", filepath.Join(dir, name+".sig"))
		in.Close()
		if code == 0 {
			t.Errorf("%s: ssh-keygen accepted an altered file:\n%s", name, out)
		}
		if r := d.runCLIFile(t, big, "verify", "--key", name, "--format", "sshsig", "--namespace", "file", "--signature", filepath.Join(dir, name+".sig")); r.code != 3 {
			t.Errorf("%s: keywarden verify of an altered file: %s", name, r)
		}
	}
}

// sshKeygen makes an OpenSSH key pair in dir with ssh-keygen: typ is
// ed25519, ecdsa or rsa; pass "" for no passphrase.
func sshKeygen(t *testing.T, dir, name, typ, pass string) (keyFile, pubLine string) {
	t.Helper()
	keyFile = filepath.Join(dir, name)
	run(t, dir, "ssh-keygen", "-q", "-t", typ, "-N", pass, "-C", name+"@example.org", "-f", keyFile)
	pub, err := os.ReadFile(keyFile + ".pub")
	if err != nil {
		t.Fatal(err)
	}
	return keyFile, string(pub)
}

// OpenSSH private keys made by ssh-keygen, without and with a passphrase,
// are imported without --type; the key's public half is ssh-keygen's, and
// what it signs ssh-keygen -Y verify accepts. A wrong passphrase imports
// nothing; the passphrase is never printed or logged.
func TestSSHImportOpenSSHKeys(t *testing.T) {
	needSSH(t)
	d := startDaemon(t)
	dir := t.TempDir()
	const pass = "correct horse battery staple"
	passFile := filepath.Join(dir, "pass.txt")
	os.WriteFile(passFile, []byte(pass+"\n"), 0o600)
	msg := randomFile(t, dir, "msg", 300<<10) // above one message
	wantType := map[string]keywarden.KeyType{"ed25519": keywarden.Ed25519, "ecdsa": keywarden.ECDSAP256, "rsa": keywarden.RSA3072}
	for _, typ := range []string{"ed25519", "ecdsa", "rsa"} {
		for _, encrypted := range []bool{false, true} {
			name := "ssh-" + typ
			p := ""
			if encrypted {
				name, p = name+"-enc", pass
			}
			t.Run(name, func(t *testing.T) {
				keyFile, pubLine := sshKeygen(t, dir, name, typ, p)
				key, _ := os.ReadFile(keyFile)
				if !bytes.Contains(key, []byte("-----BEGIN OPENSSH PRIVATE KEY-----")) {
					t.Fatalf("ssh-keygen wrote no OpenSSH key:\n%s", key)
				}
				args := []string{"key", "import", "--name", name, "--json"}
				if encrypted {
					// Without the passphrase, and with a wrong one: nothing
					// is imported.
					if r := d.runCLI(t, nil, key, args...); r.code != 2 || !strings.Contains(r.stderr, "passphrase") {
						t.Errorf("encrypted key without a passphrase or terminal: %s", r)
					}
					wrong := filepath.Join(dir, "wrong.txt")
					os.WriteFile(wrong, []byte("not it\n"), 0o600)
					if r := d.runCLI(t, nil, key, append(args, "--passphrase-file", wrong)...); r.code != 1 || !strings.Contains(r.stderr, "incorrect passphrase") {
						t.Errorf("wrong passphrase: %s", r)
					}
					if r := d.runCLI(t, nil, nil, "key", "info", name); r.code == 0 {
						t.Errorf("a key was imported with a wrong passphrase: %s", r)
					}
					args = append(args, "--passphrase-file", passFile)
				}
				r := d.runCLI(t, nil, key, args...).ok(t, "key import")
				if !strings.Contains(r.stdout, `"type": "`+string(wantType[typ])+`"`) && !strings.Contains(r.stdout, `"type":"`+string(wantType[typ])+`"`) {
					t.Errorf("imported as %s, want %s", r.stdout, wantType[typ])
				}
				if strings.Contains(r.stdout+r.stderr, pass) {
					t.Errorf("the passphrase was printed")
				}
				got := d.runCLI(t, nil, nil, "key", "public", name, "--format", "ssh").ok(t, "key public").stdout
				if sshKeyFields(got) != sshKeyFields(pubLine) {
					t.Fatalf("public key %q, ssh-keygen's %q", got, pubLine)
				}
				// Sign with the imported key; ssh-keygen checks it against
				// its own public key.
				sig := d.runCLIFile(t, msg, "sign", "--key", name, "--format", "sshsig", "--namespace", "file").ok(t, "sign").stdout
				sigFile := filepath.Join(dir, name+".sig")
				os.WriteFile(sigFile, []byte(sig), 0o600)
				signers := filepath.Join(dir, name+".allowed")
				os.WriteFile(signers, []byte("me@example.org "+pubLine), 0o600)
				in, _ := os.Open(msg)
				defer in.Close()
				if out, code := tryRun(dir, in, "ssh-keygen", "-Y", "verify", "-f", signers, "-I", "me@example.org", "-n", "file", "-s", sigFile); code != 0 {
					t.Fatalf("ssh-keygen -Y verify: exit %d\n%s", code, out)
				}
			})
		}
	}
	if strings.Contains(d.log.String(), pass) {
		t.Errorf("the daemon logged the passphrase")
	}
}

// An encrypted OpenSSH key's passphrase is asked on the terminal with
// echo off, as ssh-keygen asks it.
func TestSSHImportAsksPassphrase(t *testing.T) {
	needSSH(t)
	d := startDaemon(t)
	dir := t.TempDir()
	const pass = "typed at the prompt"
	keyFile, pubLine := sshKeygen(t, dir, "prompted", "ed25519", pass)
	m, err := os.OpenFile("/dev/ptmx", os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skip("no pseudo-terminals: ", err)
	}
	defer m.Close()
	if err := unix.IoctlSetPointerInt(int(m.Fd()), unix.TIOCSPTLCK, 0); err != nil {
		t.Skip("unlockpt: ", err)
	}
	n, err := unix.IoctlGetInt(int(m.Fd()), unix.TIOCGPTN)
	if err != nil {
		t.Skip("ptsname: ", err)
	}
	s, err := os.OpenFile(fmt.Sprintf("/dev/pts/%d", n), os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		t.Skip("open the terminal: ", err)
	}
	defer s.Close()
	in, _ := os.Open(keyFile)
	defer in.Close()
	cmd := exec.Command(binary(t), "key", "import", "--name", "prompted")
	cmd.Env = append(os.Environ(), mainEnv+"=1", keywarden.SocketEnv+"="+d.sock)
	cmd.Stdin = in
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.ExtraFiles = []*os.File{s}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Setctty: true, Ctty: 3}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Wait for the prompt, then type the passphrase.
	var seen []byte
	buf := make([]byte, 256)
	deadline := time.Now().Add(20 * time.Second)
	for !bytes.Contains(seen, []byte("Enter passphrase: ")) {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatalf("no prompt; the terminal shows %q", seen)
		}
		m.SetReadDeadline(time.Now().Add(time.Second))
		n, _ := m.Read(buf)
		seen = append(seen, buf[:n]...)
	}
	m.Write([]byte(pass + "\n"))
	if err := cmd.Wait(); err != nil {
		t.Fatalf("key import: %v\n%s", err, out.String())
	}
	// The terminal did not echo it.
	m.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
	n2, _ := m.Read(buf)
	if rest := append(seen, buf[:max(n2, 0)]...); bytes.Contains(rest, []byte(pass)) {
		t.Errorf("the passphrase was echoed: %q", rest)
	}
	got := d.runCLI(t, nil, nil, "key", "public", "prompted", "--format", "ssh").ok(t, "key public").stdout
	if sshKeyFields(got) != sshKeyFields(pubLine) {
		t.Errorf("public key %q, ssh-keygen's %q", got, pubLine)
	}
}

// keywarden verify --format sshsig accepts a signature that ssh-keygen -Y
// sign made with a key keywarden imported (the private key, or only the
// public line), and refuses another namespace, an altered file, another
// key's signature and a damaged signature.
func TestSSHSigVerifiesSSHKeygen(t *testing.T) {
	needSSH(t)
	d := startDaemon(t)
	dir := t.TempDir()
	data := randomFile(t, dir, "data", 1<<20)
	altered := filepath.Join(dir, "altered")
	b, _ := os.ReadFile(data)
	b[12345] ^= 0x80
	os.WriteFile(altered, b, 0o600)
	_, otherPub := sshKeygen(t, dir, "other", "ed25519", "")
	d.runCLI(t, nil, []byte(otherPub), "key", "import", "--name", "other").ok(t, "import other")
	for _, typ := range []string{"ed25519", "ecdsa", "rsa"} {
		t.Run(typ, func(t *testing.T) {
			keyFile, pubLine := sshKeygen(t, dir, "v-"+typ, typ, "")
			key, _ := os.ReadFile(keyFile)
			d.runCLI(t, nil, key, "key", "import", "--name", "v-"+typ).ok(t, "import private")
			d.runCLI(t, nil, []byte(pubLine), "key", "import", "--name", "v-"+typ+"-pub").ok(t, "import public")
			run(t, dir, "ssh-keygen", "-Y", "sign", "-f", keyFile, "-n", "file", data)
			sig := data + ".sig"
			if typ == "rsa" {
				armored, _ := os.ReadFile(sig)
				if f := sshsigFormat(t, armored); f != "rsa-sha2-512" {
					t.Errorf("ssh-keygen signed with %s", f)
				}
			}
			for _, k := range []string{"v-" + typ, "v-" + typ + "-pub"} {
				d.runCLIFile(t, data, "verify", "--key", k, "--format", "sshsig", "--namespace", "file", "--signature", sig).ok(t, "verify "+k)
				for what, args := range map[string][]string{
					"another namespace": {"--key", k, "--namespace", "git", "--signature", sig},
					"another key":       {"--key", "other", "--namespace", "file", "--signature", sig},
				} {
					if r := d.runCLIFile(t, data, append([]string{"verify", "--format", "sshsig"}, args...)...); r.code != 3 {
						t.Errorf("%s: %s: %s", k, what, r)
					}
				}
				if r := d.runCLIFile(t, altered, "verify", "--key", k, "--format", "sshsig", "--namespace", "file", "--signature", sig); r.code != 3 {
					t.Errorf("%s: altered file: %s", k, r)
				}
			}
			// A signature whose last signature byte is changed.
			armored, _ := os.ReadFile(sig)
			block, _ := pem.Decode(armored)
			block.Bytes[len(block.Bytes)-1] ^= 1
			bad := filepath.Join(dir, "bad-"+typ+".sig")
			os.WriteFile(bad, pem.EncodeToMemory(block), 0o600)
			if r := d.runCLIFile(t, data, "verify", "--key", "v-"+typ, "--format", "sshsig", "--namespace", "file", "--signature", bad); r.code != 3 {
				t.Errorf("damaged signature: %s", r)
			}
			os.Remove(sig)
		})
	}
}

// git verify-commit accepts a commit signed by keywarden through git's
// ssh signing program hook, checked against key public --format ssh.
func TestSSHSigGitVerifyCommit(t *testing.T) {
	needSSH(t, "git")
	d := startDaemon(t)
	dir := t.TempDir()
	d.runCLI(t, nil, nil, "key", "generate", "--type", "ed25519", "--name", "git-signer").ok(t, "generate")
	pub := d.runCLI(t, nil, nil, "key", "public", "git-signer", "--format", "ssh").ok(t, "key public").stdout
	os.WriteFile(filepath.Join(dir, "signer.pub"), []byte(pub), 0o600)
	os.WriteFile(filepath.Join(dir, "allowed_signers"), []byte("dev@example.org "+pub), 0o600)
	// git runs PROGRAM -Y sign -n git -f KEYFILE [-U] FILE and reads
	// FILE.sig; it verifies with the same program, here ssh-keygen itself.
	wrapper := filepath.Join(dir, "kw-sign")
	script := fmt.Sprintf("#!/bin/sh\n[ \"$2\" = sign ] || exec ssh-keygen \"$@\"\n"+
		"for f; do :; done\nexec %q sign --key git-signer --format sshsig --namespace git < \"$f\" > \"$f.sig\"\n", binary(t))
	os.WriteFile(wrapper, []byte(script), 0o755)
	repo := filepath.Join(dir, "repo")
	os.Mkdir(repo, 0o755)
	gitEnv := append(os.Environ(), mainEnv+"=1", keywarden.SocketEnv+"="+d.sock, "HOME="+dir, "GIT_CONFIG_NOSYSTEM=1")
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
		{"config", "gpg.ssh.program", wrapper},
		{"config", "user.signingkey", filepath.Join(dir, "signer.pub")},
		{"config", "gpg.ssh.allowedSignersFile", filepath.Join(dir, "allowed_signers")},
		{"commit", "-q", "-S", "--allow-empty", "-m", "signed by keywarden"},
	} {
		if out, err := git(args...); err != nil {
			t.Fatalf("git %s: %v\n%s", strings.Join(args, " "), err, out)
		}
	}
	out, err := git("verify-commit", "-v", "HEAD")
	if err != nil || !strings.Contains(out, `Good "git" signature for dev@example.org`) {
		t.Fatalf("git verify-commit: %v\n%s", err, out)
	}
}

// PKCS #8 and SPKI files of every asymmetric type, PEM and DER, are
// imported without --type: the file names the type. What a file cannot
// name (raw secret bytes) still needs --type, and a --type the file
// contradicts is refused.
func TestSSHImportNamesItsType(t *testing.T) {
	d := startDaemon(t)
	ecKey := func(c elliptic.Curve) any { k, _ := ecdsa.GenerateKey(c, rand.Reader); return k }
	rsaKey := func(bits int) any { k, _ := rsa.GenerateKey(rand.Reader, bits); return k }
	_, edKey, _ := ed25519.GenerateKey(rand.Reader)
	xKey, _ := ecdh.X25519().GenerateKey(rand.Reader)
	keys := map[keywarden.KeyType]any{
		keywarden.Ed25519: edKey, keywarden.ECDSAP256: ecKey(elliptic.P256()), keywarden.ECDSAP384: ecKey(elliptic.P384()),
		keywarden.RSA2048: rsaKey(2048), keywarden.RSA3072: rsaKey(3072), keywarden.X25519: xKey,
	}
	for typ, priv := range keys {
		der, err := x509.MarshalPKCS8PrivateKey(priv)
		if err != nil {
			t.Fatal(err)
		}
		spki, err := x509.MarshalPKIXPublicKey(priv.(interface{ Public() crypto.PublicKey }).Public())
		if err != nil {
			t.Fatal(err)
		}
		for form, data := range map[string][]byte{
			"pkcs8-der": der, "pkcs8-pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}),
			"spki-der": spki, "spki-pem": pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: spki}),
		} {
			name := strings.ReplaceAll(string(typ)+"-"+form, "_", "-")
			r := d.runCLI(t, nil, data, "key", "import", "--name", name, "--json").ok(t, name)
			if !strings.Contains(strings.ReplaceAll(r.stdout, " ", ""), `"type":"`+string(typ)+`"`) {
				t.Errorf("%s: imported as %s", name, r.stdout)
			}
		}
	}
	// With --format too the file names the type.
	rsaDER, _ := x509.MarshalPKCS8PrivateKey(rsaKey(2048))
	for format, data := range map[string][]byte{"der": rsaDER, "pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: rsaDER})} {
		r := d.runCLI(t, nil, data, "key", "import", "--name", "rsa-format-"+format, "--format", format, "--json").ok(t, "--format "+format)
		if !strings.Contains(strings.ReplaceAll(r.stdout, " ", ""), `"type":"rsa-2048"`) {
			t.Errorf("--format %s: imported as %s", format, r.stdout)
		}
	}
	// EC private keys in SEC 1 and RSA in PKCS #1 name their type too.
	sec1, _ := x509.MarshalECPrivateKey(keys[keywarden.ECDSAP384].(*ecdsa.PrivateKey))
	d.runCLI(t, nil, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: sec1}), "key", "import", "--name", "sec1").ok(t, "sec1")
	pkcs1 := x509.MarshalPKCS1PrivateKey(keys[keywarden.RSA2048].(*rsa.PrivateKey))
	d.runCLI(t, nil, pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: pkcs1}), "key", "import", "--name", "pkcs1").ok(t, "pkcs1")

	secret := make([]byte, 32)
	rand.Read(secret)
	if r := d.runCLI(t, nil, secret, "key", "import", "--name", "raw"); r.code != 2 || !strings.Contains(r.stderr, "--type") {
		t.Errorf("raw bytes without --type: %s", r)
	}
	if r := d.runCLI(t, nil, secret, "key", "import", "--name", "raw", "--format", "raw"); r.code != 2 {
		t.Errorf("--format raw without --type: %s", r)
	}
	d.runCLI(t, nil, secret, "key", "import", "--name", "raw", "--type", "aes256-gcm").ok(t, "raw with --type")
	// The file says Ed25519; --type says ECDSA: refused.
	der, _ := x509.MarshalPKCS8PrivateKey(edKey)
	if r := d.runCLI(t, nil, der, "key", "import", "--name", "liar", "--type", "ecdsa-p256"); r.code == 0 {
		t.Errorf("a --type the file contradicts was accepted: %s", r)
	}
	// P-256 keys are taken for ECDSA; --type ecdh-p256 still imports one
	// for key agreement.
	p256, _ := x509.MarshalPKCS8PrivateKey(ecKey(elliptic.P256()))
	d.runCLI(t, nil, p256, "key", "import", "--name", "agree", "--type", "ecdh-p256").ok(t, "ecdh-p256")
}

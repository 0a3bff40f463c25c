package e2e_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The PKCS #11 tests drive the daemon's PKCS #11 front with the programs
// people use: OpenSC's pkcs11-tool, OpenSSL with libp11's engine,
// OpenSSH's ssh-keygen and GnuTLS's p11tool, all through
// libkeywarden-pkcs11.so built from pkcs11/ (the module speaks the
// front's protocol itself; p11-kit's own client is not involved). A
// missing program skips its test, or fails it when KEYWARDEN_PKCS11_TEST
// is "require" (scripts/test.sh installs them).

// needTool skips or fails a test that needs the program or file at path.
func needTool(t *testing.T, path string) string {
	t.Helper()
	p := path
	if !filepath.IsAbs(path) {
		var err error
		if p, err = exec.LookPath(path); err != nil {
			p = ""
		}
	} else if _, err := os.Stat(path); err != nil {
		p = ""
	}
	if p == "" {
		if os.Getenv("KEYWARDEN_PKCS11_TEST") == "require" {
			t.Fatalf("%s is missing (apt-get install opensc libp11-kit-dev libengine-pkcs11-openssl gnutls-bin)", path)
		}
		t.Skipf("%s is missing", path)
	}
	return p
}

var (
	p11ModOnce sync.Once
	p11Mod     string
	p11ModErr  error
)

// pkcs11Module builds libkeywarden-pkcs11.so once and returns its path.
func pkcs11Module(t *testing.T) string {
	t.Helper()
	needTool(t, "cc")
	needTool(t, "/usr/include/p11-kit-1/p11-kit/pkcs11.h")
	p11ModOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keywarden-pkcs11-")
		if err != nil {
			p11ModErr = err
			return
		}
		os.Chmod(dir, 0o755)
		_, file, _, _ := runtime.Caller(0)
		src := filepath.Join(filepath.Dir(file), "..", "pkcs11", "keywarden-pkcs11.c")
		p11Mod = filepath.Join(dir, "libkeywarden-pkcs11.so")
		out, err := exec.Command("cc", "-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-fvisibility=hidden",
			"-I/usr/include/p11-kit-1", "-o", p11Mod, src, "-lpthread").CombinedOutput()
		if err != nil {
			p11ModErr = fmt.Errorf("building the module: %v\n%s", err, out)
		}
	})
	if p11ModErr != nil {
		t.Fatal(p11ModErr)
	}
	return p11Mod
}

// p11Daemon starts a daemon serving PKCS #11 beside its own socket, with
// an audit log, and the keys named in keys ("type name").
type p11Env struct {
	d        *daemon
	dir      string
	sock     string
	logPath  string
	mod      string
	extraEnv []string
}

func p11Daemon(t *testing.T, keys ...string) *p11Env {
	t.Helper()
	mod := pkcs11Module(t)
	dir := openDir(t)
	e := &p11Env{dir: dir, sock: filepath.Join(dir, "p11.sock"), logPath: filepath.Join(dir, "audit.log"), mod: mod}
	e.d = startDaemonAt(t, filepath.Join(dir, "kw.sock"), "--pkcs11", e.sock, "--audit-log", e.logPath)
	for _, k := range keys {
		f := strings.Fields(k)
		args := []string{"key", "generate", "--type", f[0], "--name", f[1]}
		args = append(args, f[2:]...)
		if r := e.d.runCLI(t, nil, nil, args...); r.code != 0 {
			t.Fatalf("key generate %s: %s", k, r)
		}
	}
	return e
}

// run runs a program with the module's socket set, as cred if not nil.
func (e *p11Env) run(t *testing.T, cred *syscall.Credential, name string, args ...string) (string, int) {
	t.Helper()
	cmd := exec.Command(name, args...)
	cmd.Dir = e.dir
	cmd.Env = append(append(os.Environ(), "KEYWARDEN_PKCS11_SOCKET="+e.sock), e.extraEnv...)
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	done := make(chan struct{})
	timer := time.AfterFunc(60*time.Second, func() {
		if cmd.Process != nil {
			cmd.Process.Kill()
		}
		close(done)
	})
	defer timer.Stop()
	out, err := cmd.CombinedOutput()
	if ee, ok := err.(*exec.ExitError); ok {
		return string(out), ee.ExitCode()
	} else if err != nil {
		t.Fatalf("%s: %v", name, err)
	}
	return string(out), 0
}

// tool runs pkcs11-tool with the module and args, and fails the test if
// it fails.
func (e *p11Env) tool(t *testing.T, args ...string) string {
	t.Helper()
	out, code := e.run(t, nil, needTool(t, "pkcs11-tool"), append([]string{"--module", e.mod}, args...)...)
	if code != 0 {
		t.Fatalf("pkcs11-tool %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// idOf returns the hex CKA_ID of the object labelled label in out
// (pkcs11-tool -O).
func idOf(t *testing.T, out, label string) string {
	t.Helper()
	m := regexp.MustCompile(`label:\s+` + regexp.QuoteMeta(label) + `\n\s+ID:\s+([0-9a-f]+)`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no object %q in:\n%s", label, out)
	}
	return m[1]
}

func TestPKCS11ToolListsTheCallersKeys(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1", "rsa-2048 rsa1", "aes256-gcm aes1", "hmac-sha256 mac1", "ed25519 ed1")
	out := e.tool(t, "-L")
	if !strings.Contains(out, "token label        : keywarden") || !strings.Contains(out, "PIN pad present") {
		t.Fatalf("pkcs11-tool -L: no keywarden token with a protected authentication path:\n%s", out)
	}
	// Without login only the public halves show.
	out = e.tool(t, "-O")
	if strings.Contains(out, "Private Key Object") || strings.Contains(out, "Secret Key Object") {
		t.Fatalf("private objects listed before login:\n%s", out)
	}
	for _, l := range []string{"ec1", "rsa1", "ed1"} {
		idOf(t, out, l)
	}
	// Any PIN logs in: the kernel says who the caller is.
	out = e.tool(t, "-O", "--login", "--pin", "anything at all")
	for _, want := range []string{"Private Key Object; EC", "Private Key Object; RSA", "Private Key Object; EC_EDWARDS",
		"Secret Key Object; AES length 32", "Secret Key Object; Generic secret length 32", "EC_POINT 256 bits", "RSA 2048 bits"} {
		if !strings.Contains(out, want) {
			t.Errorf("pkcs11-tool -O --login: no %q in:\n%s", want, out)
		}
	}
	// No value of a key that is not exportable.
	if strings.Contains(out, "VALUE:") {
		t.Fatalf("a secret key's value was shown:\n%s", out)
	}
	if !strings.Contains(out, "sensitive, always sensitive, never extractable, local") {
		t.Errorf("keys not marked sensitive and never extractable:\n%s", out)
	}
	// CKA_ID is the key id the daemon gave.
	r := e.d.runCLI(t, nil, nil, "key", "info", "ec1")
	if id := idOf(t, out, "ec1"); !strings.Contains(r.stdout, id) {
		t.Fatalf("CKA_ID %s is not ec1's key id:\n%s", id, r.stdout)
	}
}

func TestPKCS11ToolSignsAndVerifies(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1", "rsa-2048 rsa1", "hmac-sha256 mac1")
	openssl := needTool(t, "openssl")
	objs := e.tool(t, "-O")
	data := filepath.Join(e.dir, "data")
	os.WriteFile(data, []byte("signed through PKCS #11"), 0o644)
	digest := sha256.Sum256([]byte("signed through PKCS #11"))
	os.WriteFile(filepath.Join(e.dir, "digest"), digest[:], 0o644)
	pubPEM := func(label string) string {
		der := filepath.Join(e.dir, label+".der")
		e.tool(t, "--read-object", "--type", "pubkey", "--id", idOf(t, objs, label), "-o", der)
		pem := filepath.Join(e.dir, label+".pem")
		if out, code := e.run(t, nil, openssl, "pkey", "-pubin", "-inform", "DER", "-in", der, "-out", pem); code != 0 {
			t.Fatalf("openssl pkey: %s", out)
		}
		return pem
	}
	cases := []struct {
		label, mech, in string
		extra           []string
		opensslVerify   []string // how openssl checks the signature, with PUB and SIG
	}{
		{"ec1", "ECDSA", "digest", nil, nil},
		{"rsa1", "SHA256-RSA-PKCS", "data", nil, []string{"dgst", "-sha256", "-verify", "PUB", "-signature", "SIG", "data"}},
		{"rsa1", "RSA-PKCS-PSS", "digest", []string{"--hash-algorithm", "SHA256", "--mgf", "MGF1-SHA256"},
			[]string{"pkeyutl", "-verify", "-pubin", "-inkey", "PUB", "-in", "digest", "-sigfile", "SIG", "-pkeyopt", "rsa_padding_mode:pss",
				"-pkeyopt", "rsa_pss_saltlen:32", "-pkeyopt", "digest:sha256"}},
	}
	for _, c := range cases {
		t.Run(c.mech, func(t *testing.T) {
			id := idOf(t, objs, c.label)
			sig := filepath.Join(e.dir, c.mech+".sig")
			e.tool(t, append([]string{"--login", "--pin", "any", "--sign", "--mechanism", c.mech, "--id", id, "-i", c.in, "-o", sig}, c.extra...)...)
			out := e.tool(t, append([]string{"--verify", "--mechanism", c.mech, "--id", id, "-i", c.in, "--signature-file", sig}, c.extra...)...)
			if !strings.Contains(out, "Signature is valid") {
				t.Fatalf("pkcs11-tool --verify: %s", out)
			}
			if c.opensslVerify != nil {
				pub := pubPEM(c.label)
				args := make([]string, len(c.opensslVerify))
				for i, a := range c.opensslVerify {
					args[i] = strings.NewReplacer("PUB", pub, "SIG", sig).Replace(a)
				}
				if out, code := e.run(t, nil, openssl, args...); code != 0 {
					t.Fatalf("openssl does not verify the signature: %s", out)
				}
			}
			// A changed message does not verify.
			bad := filepath.Join(e.dir, "bad")
			in, _ := os.ReadFile(filepath.Join(e.dir, c.in))
			in[0] ^= 1
			os.WriteFile(bad, in, 0o644)
			out, code := e.run(t, nil, needTool(t, "pkcs11-tool"), append([]string{"--module", e.mod, "--verify", "--mechanism", c.mech,
				"--id", id, "-i", bad, "--signature-file", sig}, c.extra...)...)
			if code == 0 && strings.Contains(out, "Signature is valid") {
				t.Fatalf("a changed message verified: %s", out)
			}
		})
	}
	t.Run("SHA256-HMAC", func(t *testing.T) {
		tag := filepath.Join(e.dir, "tag")
		e.tool(t, "--login", "--pin", "any", "--sign", "--mechanism", "SHA256-HMAC", "--id", idOf(t, e.tool(t, "-O", "--login", "--pin", "any"), "mac1"), "-i", "data", "-o", tag)
		if b, _ := os.ReadFile(tag); len(b) != 32 {
			t.Fatalf("HMAC tag of %d bytes", len(b))
		}
	})
}

func TestPKCS11ToolGeneratesKeys(t *testing.T) {
	e := p11Daemon(t)
	out := e.tool(t, "--login", "--pin", "any", "--keypairgen", "--key-type", "EC:prime256v1", "--label", "made-ec", "--id", "01")
	if !strings.Contains(out, "made-ec") {
		t.Fatalf("keypairgen: %s", out)
	}
	e.tool(t, "--login", "--pin", "any", "--keygen", "--key-type", "AES:32", "--label", "made-aes")
	e.tool(t, "--login", "--pin", "any", "--keygen", "--key-type", "GENERIC:32", "--label", "made-hmac")
	// They are the daemon's keys, with the usages their kinds allow.
	r := e.d.runCLI(t, nil, nil, "key", "list")
	for _, k := range []string{"made-ec", "made-aes", "made-hmac"} {
		if !strings.Contains(r.stdout, k) {
			t.Fatalf("%s not among the daemon's keys:\n%s", k, r.stdout)
		}
	}
	if r := e.d.runCLI(t, nil, nil, "key", "info", "made-ec"); !strings.Contains(r.stdout, "usage:       sign,verify\n") {
		t.Fatalf("made-ec's usages: %s", r.stdout)
	}
	// And they sign.
	objs := e.tool(t, "-O")
	d := sha256.Sum256([]byte("x"))
	os.WriteFile(filepath.Join(e.dir, "d"), d[:], 0o644)
	e.tool(t, "--login", "--pin", "any", "--sign", "--mechanism", "ECDSA", "--id", idOf(t, objs, "made-ec"), "-i", "d", "-o", "s")
}

// TestPKCS11ToolSelfTest runs OpenSC's own test of a module. The one
// failure allowed is raw RSA: CKM_RSA_PKCS over data that is not a
// DigestInfo, which the daemon does not offer (docs/pkcs11.md).
func TestPKCS11ToolSelfTest(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1", "rsa-2048 rsa1", "aes256-gcm aes1", "rsa-2048 rsaenc --usage encrypt,decrypt")
	out, _ := e.run(t, nil, needTool(t, "pkcs11-tool"), "--module", e.mod, "--test", "--login", "--pin", "any")
	for _, want := range []string{"seems to be OK", "all 4 digest functions seem to work"} {
		if !strings.Contains(out, want) {
			t.Errorf("pkcs11-tool --test: no %q", want)
		}
	}
	for _, l := range strings.Split(out, "\n") {
		if strings.Contains(l, "ERR") && !strings.Contains(l, "RSA-PKCS:   ERR: C_Sign() returned CKR_DATA_INVALID") {
			t.Errorf("pkcs11-tool --test: %s", l)
		}
	}
	if t.Failed() {
		t.Log(out)
	}
}

func TestPKCS11SSHKeygenListsKeys(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1", "rsa-2048 rsa1")
	out, code := e.run(t, nil, needTool(t, "ssh-keygen"), "-D", e.mod)
	if code != 0 {
		t.Fatalf("ssh-keygen -D: exit %d: %s", code, out)
	}
	for _, k := range []string{"ec1", "rsa1"} {
		r := e.d.runCLI(t, nil, nil, "key", "public", "--format", "ssh", k)
		f := strings.Fields(r.stdout)
		if len(f) < 2 || !strings.Contains(out, f[0]+" "+f[1]) {
			t.Errorf("ssh-keygen -D does not list %s (%q):\n%s", k, r.stdout, out)
		}
	}
}

func TestPKCS11P11ToolListsKeys(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1", "rsa-2048 rsa1")
	out, code := e.run(t, nil, needTool(t, "p11tool"), "--provider", e.mod, "--list-all")
	if code != 0 {
		t.Fatalf("p11tool: exit %d: %s", code, out)
	}
	for _, want := range []string{"object=ec1;type=public", "object=rsa1;type=public", "EC/ECDSA-SECP256R1", "RSA-2048"} {
		if !strings.Contains(out, want) {
			t.Errorf("p11tool --list-all: no %q in:\n%s", want, out)
		}
	}
}

// engineConf writes an OpenSSL configuration that loads libp11's engine
// with the module.
func (e *p11Env) engineConf(t *testing.T) {
	t.Helper()
	engine := needTool(t, "/usr/lib/x86_64-linux-gnu/engines-3/pkcs11.so")
	conf := filepath.Join(e.dir, "openssl.cnf")
	os.WriteFile(conf, []byte(fmt.Sprintf(`openssl_conf = openssl_init
[openssl_init]
engines = engine_section
[engine_section]
pkcs11 = pkcs11_section
[pkcs11_section]
engine_id = pkcs11
dynamic_path = %s
MODULE_PATH = %s
PIN = any
init = 0
`, engine, e.mod)), 0o644)
	e.extraEnv = []string{"OPENSSL_CONF=" + conf}
}

func TestPKCS11OpenSSLEngineSigns(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1")
	openssl := needTool(t, "openssl")
	e.engineConf(t)
	d := sha256.Sum256([]byte("through the engine"))
	os.WriteFile(filepath.Join(e.dir, "dg"), d[:], 0o644)
	uri := "pkcs11:token=keywarden;object=ec1;type=private"
	if out, code := e.run(t, nil, openssl, "pkeyutl", "-engine", "pkcs11", "-keyform", "engine", "-inkey", uri, "-sign", "-in", "dg", "-out", "sig"); code != 0 {
		t.Fatalf("openssl pkeyutl -sign: %s", out)
	}
	r := e.d.runCLI(t, nil, nil, "key", "public", "ec1")
	os.WriteFile(filepath.Join(e.dir, "ec1.pem"), []byte(r.stdout), 0o644)
	e.extraEnv = nil
	if out, code := e.run(t, nil, openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "ec1.pem", "-in", "dg", "-sigfile", "sig"); code != 0 {
		t.Fatalf("the engine's signature does not verify with the key's public half: %s", out)
	}
}

// TestPKCS11TLSHandshake serves TLS with openssl s_server holding no key:
// the engine signs each handshake through the daemon. TLS 1.3 with ECDSA
// and RSA-PSS, and TLS 1.2 with RSA PKCS #1 v1.5.
func TestPKCS11TLSHandshake(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1", "rsa-2048 rsa1")
	openssl := needTool(t, "openssl")
	e.engineConf(t)
	for i, c := range []struct {
		key, want string
		client    []string
	}{
		{"ec1", "Peer signature type: ECDSA", nil},
		{"rsa1", "Peer signature type: RSA-PSS", nil},
		{"rsa1", "Peer signature type: RSA\n", []string{"-tls1_2", "-sigalgs", "RSA+SHA256"}},
	} {
		uri := "pkcs11:token=keywarden;object=" + c.key + ";type=private"
		cert := fmt.Sprintf("cert%d.pem", i)
		if out, code := e.run(t, nil, openssl, "req", "-new", "-x509", "-engine", "pkcs11", "-keyform", "engine", "-key", uri,
			"-subj", "/CN=localhost", "-days", "1", "-out", cert); code != 0 {
			t.Fatalf("openssl req: %s", out)
		}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		srv := exec.Command(openssl, "s_server", "-engine", "pkcs11", "-keyform", "engine", "-key", uri, "-cert", cert,
			"-accept", addr, "-www")
		srv.Dir, srv.Env = e.dir, append(os.Environ(), "KEYWARDEN_PKCS11_SOCKET="+e.sock, e.extraEnv[0])
		var srvOut bytes.Buffer
		srv.Stdout, srv.Stderr = &srvOut, &srvOut
		if err := srv.Start(); err != nil {
			t.Fatal(err)
		}
		var out string
		for try := 0; try < 50; try++ {
			time.Sleep(100 * time.Millisecond)
			cmd := exec.Command(openssl, append([]string{"s_client", "-connect", addr, "-CAfile", cert, "-verify_return_error"}, c.client...)...)
			cmd.Dir, cmd.Stdin = e.dir, strings.NewReader("")
			b, _ := cmd.CombinedOutput()
			if out = string(b); !strings.Contains(out, "connect:errno") && !strings.Contains(out, "Connection refused") {
				break
			}
		}
		srv.Process.Kill()
		srv.Wait()
		if !strings.Contains(out, c.want) || !strings.Contains(out, "Verify return code: 0 (ok)") {
			t.Fatalf("handshake with %s: want %q\n%s\nserver: %s", c.key, c.want, out, srvOut.String())
		}
	}
}

var (
	p11ClientOnce sync.Once
	p11ClientBin  string
	p11ClientErr  error
)

// p11Client builds testdata/pkcs11/p11client.c once: a C host process
// that loads the module as programs do.
func p11Client(t *testing.T) string {
	t.Helper()
	needTool(t, "cc")
	needTool(t, "/usr/include/p11-kit-1/p11-kit/pkcs11.h")
	p11ClientOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keywarden-p11client-")
		if err != nil {
			p11ClientErr = err
			return
		}
		os.Chmod(dir, 0o755)
		p11ClientBin = filepath.Join(dir, "p11client")
		out, err := exec.Command("cc", "-Wall", "-Wextra", "-Werror", "-I/usr/include/p11-kit-1", "-o", p11ClientBin,
			"testdata/pkcs11/p11client.c", "-ldl", "-lpthread").CombinedOutput()
		if err != nil {
			p11ClientErr = fmt.Errorf("building p11client: %v\n%s", err, out)
		}
	})
	if p11ClientErr != nil {
		t.Fatal(p11ClientErr)
	}
	return p11ClientBin
}

var (
	p11AttacksOnce sync.Once
	p11AttacksBin  string
	p11AttacksErr  error
)

// p11Attacks builds testdata/pkcs11/p11attacks.c once.
func p11Attacks(t *testing.T) string {
	t.Helper()
	needTool(t, "cc")
	needTool(t, "/usr/include/p11-kit-1/p11-kit/pkcs11.h")
	p11AttacksOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keywarden-p11attacks-")
		if err != nil {
			p11AttacksErr = err
			return
		}
		os.Chmod(dir, 0o755)
		p11AttacksBin = filepath.Join(dir, "p11attacks")
		out, err := exec.Command("cc", "-Wall", "-Wextra", "-Werror", "-I/usr/include/p11-kit-1", "-o", p11AttacksBin,
			"testdata/pkcs11/p11attacks.c", "-ldl").CombinedOutput()
		if err != nil {
			p11AttacksErr = fmt.Errorf("building p11attacks: %v\n%s", err, out)
		}
	})
	if p11AttacksErr != nil {
		t.Fatal(p11AttacksErr)
	}
	return p11AttacksBin
}

var (
	p11BenchOnce sync.Once
	p11BenchBin  string
	p11BenchErr  error
)

// p11BenchHost builds pkcs11/keywarden-p11bench.c once.
func p11BenchHost(t *testing.T) string {
	t.Helper()
	needTool(t, "cc")
	needTool(t, "/usr/include/p11-kit-1/p11-kit/pkcs11.h")
	p11BenchOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keywarden-p11bench-")
		if err != nil {
			p11BenchErr = err
			return
		}
		os.Chmod(dir, 0o755)
		p11BenchBin = filepath.Join(dir, "keywarden-p11bench")
		out, err := exec.Command("cc", "-O2", "-Wall", "-Wextra", "-Werror", "-I/usr/include/p11-kit-1", "-o", p11BenchBin,
			"../pkcs11/keywarden-p11bench.c", "-ldl", "-lpthread").CombinedOutput()
		if err != nil {
			p11BenchErr = fmt.Errorf("building keywarden-p11bench: %v\n%s", err, out)
		}
	})
	if p11BenchErr != nil {
		t.Fatal(p11BenchErr)
	}
	return p11BenchBin
}

// clientRun runs p11client with args and fails the test on a failed check.
func (e *p11Env) clientRun(t *testing.T, args ...string) string {
	t.Helper()
	out, code := e.run(t, nil, p11Client(t), append([]string{e.mod}, args...)...)
	if code != 0 {
		t.Fatalf("p11client %s: exit %d\n%s", strings.Join(args, " "), code, out)
	}
	return out
}

// Threads share the module: each with its own session, all signing at once.
func TestPKCS11Threads(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1")
	e.clientRun(t, "threads", "8")
}

// A process that forks after C_Initialize: the child initializes again
// and signs on a connection of its own; the parent is unaffected. A
// child of the fork system call itself, which runs no pthread_atfork
// handler, finds the module not initialized too.
func TestPKCS11Fork(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1")
	e.clientRun(t, "fork")
}

// C_Finalize while other threads wait for replies: their calls fail, it
// waits for them to leave the module before it frees what they use (the
// module and the host built with AddressSanitizer), and they then see
// CKR_CRYPTOKI_NOT_INITIALIZED.
func TestPKCS11FinalizeDuringCalls(t *testing.T) {
	mod, host := p11Sanitized(t)
	e := p11Daemon(t)
	e.extraEnv = append(e.extraEnv, "ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:exitcode=66",
		"UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=67")
	out, code := e.run(t, nil, host, mod, "finrace", "5")
	if code != 0 || strings.Contains(out, "Sanitizer") || strings.Contains(out, "runtime error") {
		t.Fatalf("p11client finrace: exit %d\n%s", code, out)
	}
}

// C_Finalize then C_Initialize, and dlclose then dlopen, work.
func TestPKCS11Reinitialize(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1")
	e.clientRun(t, "reinit")
}

// With no daemon, C_Initialize succeeds and no slot has a token (p11-kit's
// client treats a server that is not there as a removed device).
func TestPKCS11NoDaemon(t *testing.T) {
	mod := pkcs11Module(t)
	e := &p11Env{dir: openDir(t), mod: mod}
	e.sock = filepath.Join(e.dir, "nobody-listens.sock")
	e.clientRun(t, "nodaemon")
}

// A daemon restart under an open session: the call in flight fails, and
// the program recovers by finalizing and initializing the module again.
func TestPKCS11DaemonRestart(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1")
	marker := filepath.Join(e.dir, "restarted")
	cmd := exec.Command(p11Client(t), e.mod, "restart", marker)
	cmd.Env = append(os.Environ(), "KEYWARDEN_PKCS11_SOCKET="+e.sock)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 100 && !strings.Contains(out.String(), "waiting"); i++ {
		time.Sleep(50 * time.Millisecond)
	}
	e.d.stop()
	e.d = startDaemonAt(t, filepath.Join(e.dir, "kw.sock"), "--pkcs11", e.sock, "--audit-log", e.logPath+".2")
	if r := e.d.runCLI(t, nil, nil, "key", "generate", "--type", "ecdsa-p256", "--name", "ec2"); r.code != 0 {
		t.Fatal(r)
	}
	os.WriteFile(marker, nil, 0o644)
	err := cmd.Wait()
	if err != nil || strings.Contains(out.String(), "FAILED") {
		t.Fatalf("p11client restart: %v\n%s", err, out.String())
	}
	t.Log(out.String())
	if !strings.Contains(out.String(), "sign across the restart: rv 0x") || strings.Contains(out.String(), "sign across the restart: rv 0x0\n") {
		t.Fatalf("the call across the restart did not fail:\n%s", out.String())
	}
}

// An attack: another user loads the module. The token is the caller's
// view: nothing of root's keys shows, nothing signs with them.
func TestPKCS11OtherUserSeesNoKeys(t *testing.T) {
	requireRoot(t)
	e := p11Daemon(t, "ecdsa-p256 ec1", "aes256-gcm aes1")
	nobody := &syscall.Credential{Uid: 65534, Gid: 65534}
	out, code := e.run(t, nobody, needTool(t, "pkcs11-tool"), "--module", e.mod, "-O", "--login", "--pin", "any")
	if code != 0 {
		t.Fatalf("pkcs11-tool as nobody: exit %d\n%s", code, out)
	}
	if strings.Contains(out, "ec1") || strings.Contains(out, "aes1") || strings.Contains(out, "Key Object") {
		t.Fatalf("another user's keys show:\n%s", out)
	}
	out, _ = e.run(t, nobody, p11Client(t), e.mod, "threads", "1")
	if !strings.Contains(out, "thread signs 50 times: FAILED") {
		t.Fatalf("another user signed with root's key:\n%s", out)
	}
}

// The p11-kit module file makes the module one of p11-kit's: p11-kit
// list-modules (and every program that loads p11-kit's proxy) shows the
// token. Run as another user, whose own module directory p11-kit reads
// (it reads none for root), with the module file of pkcs11/ naming the
// built module.
func TestPKCS11P11KitListsModule(t *testing.T) {
	requireRoot(t)
	e := p11Daemon(t, "ecdsa-p256 ec1")
	p11kit := needTool(t, "p11-kit")
	home := openDir(t)
	mods := filepath.Join(home, ".config", "pkcs11", "modules")
	os.MkdirAll(mods, 0o755)
	src, err := os.ReadFile("../pkcs11/keywarden.module")
	if err != nil {
		t.Fatal(err)
	}
	conf := strings.Replace(string(src), "module: libkeywarden-pkcs11.so", "module: "+e.mod, 1)
	if conf == string(src) {
		t.Fatal("the module file names no libkeywarden-pkcs11.so")
	}
	os.WriteFile(filepath.Join(mods, "keywarden.module"), []byte(conf), 0o644)
	for _, d := range []string{home, filepath.Join(home, ".config"), filepath.Join(home, ".config", "pkcs11"), mods} {
		os.Chmod(d, 0o755)
	}
	e.extraEnv = []string{"HOME=" + home}
	out, code := e.run(t, &syscall.Credential{Uid: 65534, Gid: 65534}, p11kit, "list-modules")
	if code != 0 || !strings.Contains(out, "keywarden: "+e.mod) || !strings.Contains(out, "token: keywarden") {
		t.Fatalf("p11-kit list-modules: exit %d\n%s", code, out)
	}
}

// TestPKCS11Bench measures PKCS #11 signatures and MACs through the module
// and through SoftHSM2, in the same C loader and run (docs/performance.md).
// It runs only with KEYWARDEN_PKCS11_BENCH=1: figures on a busy machine
// mean little, and the test takes about 20 s.
func TestPKCS11Bench(t *testing.T) {
	if os.Getenv("KEYWARDEN_PKCS11_BENCH") != "1" {
		t.Skip("KEYWARDEN_PKCS11_BENCH=1 runs it")
	}
	softhsm := needTool(t, "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
	util := needTool(t, "softhsm2-util")
	e := p11Daemon(t)
	tokens := filepath.Join(e.dir, "softhsm")
	os.MkdirAll(tokens, 0o700)
	conf := filepath.Join(e.dir, "softhsm2.conf")
	os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600)
	e.extraEnv = []string{"SOFTHSM2_CONF=" + conf}
	if out, code := e.run(t, nil, util, "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678"); code != 0 {
		t.Fatalf("softhsm2-util: %s", out)
	}
	for _, threads := range []string{"1", "4"} {
		for _, m := range []struct{ name, mod, pin string }{{"keywarden", e.mod, "any"}, {"softhsm2", softhsm, "1234"}} {
			out, code := e.run(t, nil, p11BenchHost(t), m.mod, m.pin, "2", threads)
			if code != 0 {
				t.Fatalf("%s: %s", m.name, out)
			}
			for _, l := range strings.Split(out, "\n") {
				if strings.HasSuffix(l, "/s") {
					t.Logf("%-9s %s threads: %s", m.name, threads, l)
				}
			}
		}
	}
}

// C_CreateObject and C_DestroyObject through pkcs11-tool: a public key
// and a secret key written, listed, deleted.
func TestPKCS11ToolWritesAndDeletesObjects(t *testing.T) {
	e := p11Daemon(t)
	openssl := needTool(t, "openssl")
	if out, code := e.run(t, nil, "sh", "-c", openssl+" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 | "+
		openssl+" pkey -pubout -outform DER -out pub.der"); code != 0 {
		t.Fatalf("openssl: %s", out)
	}
	os.WriteFile(filepath.Join(e.dir, "aes.key"), bytes.Repeat([]byte{7}, 32), 0o600)
	e.tool(t, "--login", "--pin", "any", "--write-object", "pub.der", "--type", "pubkey", "--label", "imported-pub")
	e.tool(t, "--login", "--pin", "any", "--write-object", "aes.key", "--type", "secrkey", "--key-type", "AES:32", "--label", "imported-aes")
	out := e.tool(t, "-O", "--login", "--pin", "any")
	if !strings.Contains(out, "imported-pub") || !strings.Contains(out, "imported-aes") {
		t.Fatalf("written objects not listed:\n%s", out)
	}
	if r := e.d.runCLI(t, nil, nil, "key", "info", "imported-aes"); !strings.Contains(r.stdout, "imported") {
		t.Fatalf("the daemon's view of the imported key:\n%s", r)
	}
	// A private key, imported and signing; not "always sensitive": it
	// was outside the daemon.
	if out, code := e.run(t, nil, "sh", "-c", openssl+" genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out priv.pem && "+
		openssl+" pkey -in priv.pem -outform DER -out priv.der && "+openssl+" pkey -in priv.pem -pubout -out privpub.pem"); code != 0 {
		t.Fatalf("openssl: %s", out)
	}
	out = e.tool(t, "--login", "--pin", "any", "--write-object", "priv.der", "--type", "privkey", "--label", "imported-ec")
	if !strings.Contains(out, "Access:     sensitive\n") {
		t.Fatalf("the imported private key's access flags:\n%s", out)
	}
	d := sha256.Sum256([]byte("imported"))
	os.WriteFile(filepath.Join(e.dir, "d"), d[:], 0o644)
	e.tool(t, "--login", "--pin", "any", "--sign", "--mechanism", "ECDSA", "--id", idOf(t, out, "imported-ec"), "-i", "d", "-o", "sig",
		"--signature-format", "openssl")
	if out, code := e.run(t, nil, openssl, "pkeyutl", "-verify", "-pubin", "-inkey", "privpub.pem", "-in", "d", "-sigfile", "sig"); code != 0 {
		t.Fatalf("the imported key's signature does not verify: %s", out)
	}
	e.tool(t, "--login", "--pin", "any", "--delete-object", "--type", "pubkey", "--label", "imported-pub")
	if out := e.tool(t, "-O"); strings.Contains(out, "imported-pub") {
		t.Fatalf("a deleted object is listed:\n%s", out)
	}
	if r := e.d.runCLI(t, nil, nil, "key", "info", "imported-pub"); r.code == 0 {
		t.Fatalf("the deleted key is still the daemon's:\n%s", r)
	}
}

// RSA-OAEP: a ciphertext OpenSSL made with the public half decrypts
// through the module (pkcs11-tool's --encrypt takes secret keys only).
func TestPKCS11ToolDecryptsOAEP(t *testing.T) {
	e := p11Daemon(t, "rsa-2048 rsaenc --usage encrypt,decrypt")
	openssl := needTool(t, "openssl")
	r := e.d.runCLI(t, nil, nil, "key", "public", "rsaenc")
	os.WriteFile(filepath.Join(e.dir, "rsaenc.pem"), []byte(r.stdout), 0o644)
	os.WriteFile(filepath.Join(e.dir, "pt"), []byte("to the daemon only"), 0o644)
	if out, code := e.run(t, nil, openssl, "pkeyutl", "-encrypt", "-pubin", "-inkey", "rsaenc.pem", "-pkeyopt", "rsa_padding_mode:oaep",
		"-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256", "-in", "pt", "-out", "ct"); code != 0 {
		t.Fatalf("openssl: %s", out)
	}
	id := idOf(t, e.tool(t, "-O"), "rsaenc")
	e.tool(t, "--login", "--pin", "any", "--decrypt", "--mechanism", "RSA-PKCS-OAEP", "--hash-algorithm", "SHA256",
		"--mgf", "MGF1-SHA256", "--id", id, "-i", "ct", "-o", "pt2")
	if b, _ := os.ReadFile(filepath.Join(e.dir, "pt2")); string(b) != "to the daemon only" {
		t.Fatalf("decrypted %q", b)
	}
}

// TestPKCS11Attacks runs the classic PKCS #11 API attacks
// (testdata/pkcs11/p11attacks.c) through the module and through SoftHSM2,
// side by side: every one must be refused through the module. What
// SoftHSM2 does is logged (docs/security.md has the table).
func TestPKCS11Attacks(t *testing.T) {
	e := p11Daemon(t)
	bin := p11Attacks(t)
	out, code := e.run(t, nil, bin, e.mod, "any")
	if code != 0 {
		t.Fatalf("p11attacks: exit %d\n%s", code, out)
	}
	n := 0
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		n++
		if !strings.Contains(l, ": refused (") {
			t.Errorf("through the module: %s", l)
		}
	}
	if n != 10 {
		t.Fatalf("%d attacks run, want 10:\n%s", n, out)
	}
	t.Logf("keywarden, through the module:\n%s", out)
	softhsm := needTool(t, "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so")
	util := needTool(t, "softhsm2-util")
	tokens := filepath.Join(e.dir, "softhsm")
	os.MkdirAll(tokens, 0o700)
	conf := filepath.Join(e.dir, "softhsm2.conf")
	os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600)
	e.extraEnv = []string{"SOFTHSM2_CONF=" + conf}
	if out, code := e.run(t, nil, util, "--init-token", "--free", "--label", "attacks", "--pin", "1234", "--so-pin", "5678"); code != 0 {
		t.Fatalf("softhsm2-util: %s", out)
	}
	out, code = e.run(t, nil, bin, softhsm, "1234")
	if code != 0 {
		t.Fatalf("p11attacks on SoftHSM2: exit %d\n%s", code, out)
	}
	t.Logf("SoftHSM2:\n%s", out)
	if !strings.Contains(out, ": falls (") {
		t.Errorf("SoftHSM2 refused every attack: the attacks may not be running\n%s", out)
	}
}

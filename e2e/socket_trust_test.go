package e2e_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// Another local user must not be able to stand in for the daemon, nor make
// the daemon write through files of theirs: the tests below play that user
// (attacker) against another (victim), as the issue describes.

// The two unprivileged users of these tests; neither needs to exist.
var (
	victim   = &syscall.Credential{Uid: 3000, Gid: 3000}
	attacker = &syscall.Credential{Uid: 3001, Gid: 3001}
)

const (
	// fakeDaemonEnv makes the test binary a fake daemon serving the socket
	// it names: it answers status (and open, with a made-up key) as the
	// real one does, so that a client that trusts it goes on to send its
	// secrets, and appends every byte it receives to the file
	// fakeCaptureEnv names, and a line per connection to that file's
	// ".conns".
	fakeDaemonEnv  = "KEYWARDEN_E2E_FAKE_DAEMON"
	fakeCaptureEnv = "KEYWARDEN_E2E_FAKE_CAPTURE"
)

func init() {
	sock := os.Getenv(fakeDaemonEnv)
	if sock == "" {
		return
	}
	if err := fakeDaemon(sock, os.Getenv(fakeCaptureEnv)); err != nil {
		fmt.Fprintln(os.Stderr, "fake daemon:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

func fakeDaemon(sock, capture string) error {
	if err := os.MkdirAll(filepath.Dir(sock), 0o755); err != nil {
		return err
	}
	data, err := os.OpenFile(capture, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	conns, err := os.OpenFile(capture+".conns", os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		return err
	}
	l, err := seqpacket.Listen(sock, 0o777)
	if err != nil {
		return err
	}
	fmt.Println("ready")
	var mu sync.Mutex
	for {
		c, err := l.Accept()
		if err != nil {
			return err
		}
		mu.Lock()
		conns.WriteString("connection\n")
		mu.Unlock()
		go func() {
			defer c.Close()
			buf := make([]byte, 1<<20)
			for {
				n, err := c.Recv(buf)
				if err != nil {
					return
				}
				mu.Lock()
				data.Write(buf[:n])
				mu.Unlock()
				req := new(wire.Request)
				if req.UnmarshalVT(buf[:n]) != nil {
					return
				}
				rep := &wire.Reply{Version: wire.ProtocolVersion, Id: req.Id}
				for _, op := range req.Ops {
					res := &wire.Result{Status: wire.Status_STATUS_UNAVAILABLE, Message: "fake"}
					switch op.Op.(type) {
					case *wire.Op_Status:
						res = &wire.Result{Value: &wire.Result_Server{Server: &wire.StatusResult{
							ProtocolVersion: wire.ProtocolVersion, ServerVersion: "keywarden",
							Limits: &wire.Limits{MaxMessageBytes: 256 << 10, MaxInFlight: 64, MaxBatchOps: 64},
						}}}
					case *wire.Op_Open:
						res = &wire.Result{Value: &wire.Result_Key{Key: &wire.KeyResult{Handle: 1,
							Info: &wire.KeyInfo{Id: make([]byte, 16), Name: "backups", Type: wire.KeyType_KEY_TYPE_AES256_GCM, Class: wire.KeyClass_KEY_CLASS_SECRET}}}}
					}
					rep.Results = append(rep.Results, res)
				}
				b, _ := rep.MarshalVT()
				if c.Send(b) != nil {
					return
				}
			}
		}()
	}
}

// fake is a fake daemon run by the attacker.
type fake struct {
	cmd     *exec.Cmd
	capture string
}

// startFake runs a fake daemon as the attacker on sock (creating its
// directory as the attacker if needed) and waits until it listens.
func startFake(t *testing.T, sock string) *fake {
	t.Helper()
	capDir := openDir(t)
	f := &fake{capture: filepath.Join(capDir, "capture")}
	for _, p := range []string{f.capture, f.capture + ".conns"} {
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o666)
	}
	f.cmd = exec.Command(binary(t))
	f.cmd.Env = append(os.Environ(), fakeDaemonEnv+"="+sock, fakeCaptureEnv+"="+f.capture)
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: attacker}
	var stderr syncBuffer
	f.cmd.Stderr = &stderr
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.cmd.Process.Kill()
		f.cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("fake daemon did not start: %q %v\n%s", line, err, &stderr)
	}
	return f
}

// received returns how many connections the fake accepted and every byte
// it received.
func (f *fake) received(t *testing.T) (conns int, data []byte) {
	t.Helper()
	data, err := os.ReadFile(f.capture)
	if err != nil {
		t.Fatal(err)
	}
	c, err := os.ReadFile(f.capture + ".conns")
	if err != nil {
		t.Fatal(err)
	}
	return bytes.Count(c, []byte("\n")), data
}

// sharedDir returns a directory that every user may create files in, with
// the sticky bit: a stand-in for /tmp.
func sharedDir(t *testing.T) string {
	t.Helper()
	dir := openDir(t)
	if err := os.Chmod(dir, 0o777|os.ModeSticky); err != nil {
		t.Fatal(err)
	}
	return dir
}

// userEnv is the environment of a user's command: no XDG_RUNTIME_DIR, so
// that the default socket is under $TMPDIR, and none of the test's
// keywarden variables, with extra added.
func userEnv(tmpdir string, extra ...string) []string {
	var env []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "XDG_RUNTIME_DIR=") || strings.HasPrefix(kv, "TMPDIR=") || strings.HasPrefix(kv, "KEYWARDEN_") {
			continue
		}
		env = append(env, kv)
	}
	return append(append(env, mainEnv+"=1", "TMPDIR="+tmpdir), extra...)
}

// runAs runs the keywarden command as cred with env.
func runAs(t *testing.T, cred *syscall.Credential, env []string, stdin []byte, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(binary(t), args...)
	cmd.Env = env
	cmd.Stdin = bytes.NewReader(stdin)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return cliResult{out.String(), errb.String(), code}
}

// The victim's secrets, as the commands of the issue send them.
const (
	victimPassphrase = "victim master passphrase 7d41"
	victimPlaintext  = "victim plaintext 92ce"
	victimPassword   = "victim password 5b07"
)

// victimCommands are unseal, encrypt and password hash, with their secrets
// in files the victim can read.
func victimCommands(t *testing.T, dir string) []struct {
	args  []string
	stdin []byte
} {
	t.Helper()
	pass := filepath.Join(dir, "victim-pass")
	pw := filepath.Join(dir, "victim-password")
	os.WriteFile(pass, []byte(victimPassphrase+"\n"), 0o644)
	os.WriteFile(pw, []byte(victimPassword+"\n"), 0o644)
	return []struct {
		args  []string
		stdin []byte
	}{
		{[]string{"unseal", "--passphrase-file", pass, "--timeout", "20s"}, nil},
		{[]string{"encrypt", "--key", "backups", "--timeout", "20s"}, []byte(victimPlaintext)},
		{[]string{"password", "hash", "--passphrase-file", pw, "--timeout", "20s"}, nil},
	}
}

func skipIfSystemSocket(t *testing.T) {
	t.Helper()
	if fi, err := os.Stat(keywarden.SystemSocketPath); err == nil && fi.Mode().Type() == os.ModeSocket {
		t.Skipf("a system daemon listens at %s: a user's default socket is that one", keywarden.SystemSocketPath)
	}
}

// Without XDG_RUNTIME_DIR the victim's default socket is
// $TMPDIR/keywarden-UID/keywarden.sock. The attacker made that directory
// first (or a symbolic link by that name) and serves a fake daemon in it:
// neither the CLI nor the library sends it anything, and the error says
// what was found.
func TestClientRefusesSocketDirectoryOfAnotherUser(t *testing.T) {
	requireRoot(t)
	skipIfSystemSocket(t)
	for _, tc := range []struct {
		name  string
		setup func(t *testing.T, tmp, dir string) (sock, found string)
	}{
		{"directory", func(t *testing.T, tmp, dir string) (string, string) {
			return filepath.Join(dir, "keywarden.sock"), "belongs to uid 3001"
		}},
		{"symlink", func(t *testing.T, tmp, dir string) (string, string) {
			real := filepath.Join(tmp, "attacker-dir")
			if err := os.Symlink(real, dir); err != nil {
				t.Fatal(err)
			}
			os.Lchown(dir, int(attacker.Uid), int(attacker.Gid))
			return filepath.Join(real, "keywarden.sock"), "is a symbolic link made by uid 3001"
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmp := sharedDir(t)
			dir := filepath.Join(tmp, "keywarden-3000") // the victim's default
			served, found := tc.setup(t, tmp, dir)
			f := startFake(t, served)
			want := fmt.Sprintf("keywarden: the socket's directory %s %s, not to root or you (uid 3000): "+
				"another user may have made it to receive what you send; refusing to connect", dir, found)
			for _, c := range victimCommands(t, tmp) {
				r := runAs(t, victim, userEnv(tmp), c.stdin, c.args...)
				if r.code != 1 || !strings.Contains(r.stderr, want) || !strings.Contains(r.stderr, "KEYWARDEN_DAEMON_UID=3001") {
					t.Errorf("%v as the victim: %s\nwant the error %q", c.args, r, want)
				}
			}
			// The library, as root, names the path itself.
			_, err := keywarden.Dial(ctx, filepath.Join(dir, "keywarden.sock"))
			var ue *keywarden.UntrustedSocketError
			if !errors.As(err, &ue) || !errors.Is(err, keywarden.ErrUntrustedSocket) || ue.UID != attacker.Uid || ue.Path != dir {
				t.Errorf("library Dial: %v, want an UntrustedSocketError for %s, uid 3001", err, dir)
			}
			if conns, data := f.received(t); conns != 0 || len(data) != 0 {
				t.Fatalf("the fake daemon got %d connections and %d bytes", conns, len(data))
			}
		})
	}
}

// The victim names a socket (here in a shared directory, which a client
// accepts: it is root's and sticky) at which the attacker serves a fake
// daemon: the kernel's word on who listens (SO_PEERCRED) makes the client
// refuse before it sends a byte. Trusting the attacker's uid explicitly
// (--daemon-uid, $KEYWARDEN_DAEMON_UID, DialOptions.DaemonUID) lets it
// through, which shows that the fake would have received the secrets.
func TestClientRefusesDaemonOfAnotherUser(t *testing.T) {
	requireRoot(t)
	tmp := sharedDir(t)
	sock := filepath.Join(tmp, "kw.sock")
	f := startFake(t, sock)
	want := fmt.Sprintf("keywarden: the socket %s is served by uid 3001 (pid %d), not by root or you (uid 3000): "+
		"refusing to send anything; if uid 3001 runs the daemon you mean, set KEYWARDEN_DAEMON_UID=3001", sock, f.cmd.Process.Pid)
	env := userEnv(tmp, keywarden.SocketEnv+"="+sock)
	for _, c := range victimCommands(t, tmp) {
		r := runAs(t, victim, env, c.stdin, c.args...)
		if r.code != 1 || !strings.Contains(r.stderr, want) {
			t.Errorf("%v as the victim: %s\nwant the error %q", c.args, r, want)
		}
	}
	// The library refuses it too, for root.
	_, err := keywarden.Dial(ctx, sock)
	var ue *keywarden.UntrustedSocketError
	if !errors.As(err, &ue) || ue.UID != attacker.Uid || ue.PID != int32(f.cmd.Process.Pid) || ue.Path != sock {
		t.Errorf("library Dial: %v, want an UntrustedSocketError for uid 3001", err)
	}
	if _, data := f.received(t); len(data) != 0 {
		t.Fatalf("the fake daemon received %d bytes", len(data))
	}

	// Trusted by name, the same daemon gets the secrets.
	cmds := victimCommands(t, tmp)
	runAs(t, victim, env, nil, append(cmds[0].args, "--daemon-uid", "3001")...)
	runAs(t, victim, append(env, keywarden.DaemonUIDEnv+"=3001"), cmds[1].stdin, cmds[1].args...)
	c, err := keywarden.DialWithOptions(ctx, sock, &keywarden.DialOptions{DaemonUID: attacker.Uid})
	if err != nil {
		t.Fatalf("DialWithOptions trusting uid 3001: %v", err)
	}
	c.Close()
	_, data := f.received(t)
	for _, s := range []string{victimPassphrase, victimPlaintext} {
		if !bytes.Contains(data, []byte(s)) {
			t.Errorf("trusted explicitly, the fake daemon did not receive %q: the test cannot see a leak", s)
		}
	}
}

// A malformed $KEYWARDEN_DAEMON_UID is an error, not a silent default.
func TestDaemonUIDEnvMustBeANumber(t *testing.T) {
	d := startDaemon(t)
	r := d.runCLI(t, nil, nil, "status")
	if r.code != 0 {
		t.Fatalf("status: %s", r)
	}
	cmd := exec.Command(binary(t), "status")
	cmd.Env = append(os.Environ(), mainEnv+"=1", keywarden.SocketEnv+"="+d.sock, keywarden.DaemonUIDEnv+"=keywarden")
	out, err := cmd.CombinedOutput()
	if err == nil || !strings.Contains(string(out), `$KEYWARDEN_DAEMON_UID is "keywarden", not a uid`) {
		t.Fatalf("status with a user name in $KEYWARDEN_DAEMON_UID: %v\n%s", err, out)
	}
	r = d.runCLI(t, nil, nil, "status", "--daemon-uid", "keywarden")
	if r.code != 2 || !strings.Contains(r.stderr, "want a numeric uid") {
		t.Fatalf("status --daemon-uid keywarden: %s", r)
	}
}

// A daemon run as a dedicated user in a directory root gave that user
// (as systemd's RuntimeDirectory= makes /run/keywarden): every user's
// client trusts it without being told, since only root can have made that
// directory, and only its owner can have put a socket in it.
func TestClientTrustsDaemonInDirectoryRootGaveIt(t *testing.T) {
	requireRoot(t)
	// As systemd's RuntimeDirectory= makes it for a service run as a
	// system account: directly in /run, given to that account.
	dir, err := os.MkdirTemp("/run", "kw-e2e-")
	if err != nil {
		t.Skipf("cannot make a directory in /run: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	service := &syscall.Credential{Uid: 990, Gid: 990}
	os.Chown(dir, int(service.Uid), int(service.Gid))
	sock := filepath.Join(dir, "keywarden.sock")

	d := &daemon{t: t, sock: sock, log: &syncBuffer{}, done: make(chan error, 1), uid: service.Uid}
	d.cmd = exec.Command(binary(t), "serve", "--dev", "--socket", sock, "--socket-mode", "0666")
	d.cmd.Env = append(os.Environ(), mainEnv+"=1")
	d.cmd.Stderr = d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: service}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(d.stop)
	d.waitReady()

	for _, cred := range []*syscall.Credential{victim, nil} {
		r := runAs(t, cred, userEnv(os.TempDir(), keywarden.SocketEnv+"="+sock), nil, "status")
		if r.code != 0 {
			t.Errorf("status as %v, with no daemon uid named: %s", cred, r)
		}
	}
	c, err := keywarden.Dial(ctx, sock)
	if err != nil {
		t.Fatalf("library Dial, with no daemon uid named: %v", err)
	}
	c.Close()

	// The same daemon's directory opened to its group: no longer vouched.
	os.Chmod(dir, 0o775)
	r := runAs(t, victim, userEnv(os.TempDir(), keywarden.SocketEnv+"="+sock), nil, "status")
	if r.code != 1 || !strings.Contains(r.stderr, "belongs to uid 990, not to root or you (uid 3000)") {
		t.Errorf("status with the directory group-writable: %s", r)
	}
	// A person's directory (uid 3002, as a home is) is not vouched for,
	// however closed: a daemon, or a relay, there is trusted only when
	// named.
	os.Chmod(dir, 0o755)
	os.Chown(dir, 3002, 3002)
	r = runAs(t, victim, userEnv(os.TempDir(), keywarden.SocketEnv+"="+sock), nil, "status")
	if r.code != 1 || !strings.Contains(r.stderr, "belongs to uid 3002, not to root or you (uid 3000)") {
		t.Errorf("status with the directory a person's: %s", r)
	}
}

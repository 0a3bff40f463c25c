package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/cli"
)

// mainEnv makes the test binary behave as the keywarden command.
const mainEnv = "KEYWARDEN_E2E_MAIN"

// selfBin is a copy of the test binary that every user may execute.
var selfBin string

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	code := testscript.RunMain(m, map[string]func() int{
		"keywarden": func() int { return cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr) },
	})
	if selfBin != "" {
		os.RemoveAll(filepath.Dir(selfBin))
	}
	os.Exit(code)
}

var setupOnce sync.Once

// binary returns the path of an executable copy of the test binary in a
// directory every user can traverse.
func binary(t *testing.T) string {
	t.Helper()
	setupOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keywarden-e2e-bin-")
		if err != nil {
			panic(err)
		}
		os.Chmod(dir, 0o755)
		self, err := os.Executable()
		if err != nil {
			panic(err)
		}
		b, err := os.ReadFile(self)
		if err != nil {
			panic(err)
		}
		selfBin = filepath.Join(dir, "keywarden")
		if err := os.WriteFile(selfBin, b, 0o755); err != nil {
			panic(err)
		}
	})
	return selfBin
}

// openDir returns a temporary directory that every user can traverse, so
// that a client running as another uid reaches the socket in it.
func openDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "kw-e2e-")
	if err != nil {
		t.Fatal(err)
	}
	os.Chmod(dir, 0o755)
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// syncBuffer collects a process's output safely.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// daemon is a running keywarden daemon.
type daemon struct {
	t    *testing.T
	cmd  *exec.Cmd
	sock string
	log  *syncBuffer
	done chan error
	// uid is the daemon's uid when it is not root: clients are told to
	// trust it.
	uid uint32
}

// dial connects to the daemon, trusting its uid.
func (d *daemon) dial(ctx context.Context) (*keywarden.Client, error) {
	return keywarden.DialWithOptions(ctx, d.sock, &keywarden.DialOptions{DaemonUID: d.uid})
}

// startDaemon starts "keywarden serve --dev" on a fresh socket with extra
// flags, waits until it answers, and stops it (checking it exits cleanly)
// when the test ends.
func startDaemon(t *testing.T, flags ...string) *daemon {
	t.Helper()
	return startDaemonAt(t, filepath.Join(openDir(t), "kw.sock"), flags...)
}

// startDaemonAt is startDaemon on a given socket path.
func startDaemonAt(t *testing.T, sock string, flags ...string) *daemon {
	t.Helper()
	return launch(t, sock, append([]string{"--dev"}, flags...))
}

// startPersistent starts a daemon whose store is in state (which it
// creates), sealed or uninitialized as the store is, with extra flags. It
// takes the tests' cheap master passphrase costs (cheapKDF), below the
// floor a daemon otherwise keeps (--insecure-master-kdf, for tests only).
func startPersistent(t *testing.T, sock, state string, flags ...string) *daemon {
	t.Helper()
	return launch(t, sock, append([]string{"--state", state, "--kdf-max-memory", "65536", "--insecure-master-kdf"}, flags...))
}

// launch starts "keywarden serve" with flags and waits until it answers.
func launch(t *testing.T, sock string, flags []string) *daemon {
	t.Helper()
	d := &daemon{t: t, sock: sock, log: &syncBuffer{}, done: make(chan error, 1)}
	args := append([]string{"serve", "--socket", sock, "--log-level", "debug", "--socket-mode", "0666"}, flags...)
	d.cmd = exec.Command(binary(t), args...)
	d.cmd.Env = append(os.Environ(), mainEnv+"=1")
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(d.stop)
	d.waitReady()
	return d
}

// waitReady waits until the daemon answers, failing the test if it exits
// or takes more than 10 seconds.
func (d *daemon) waitReady() {
	d.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		c, err := d.dial(ctx)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-d.done:
			d.t.Fatalf("daemon exited during start-up: %v\n%s", err, d.log)
		case <-ctx.Done():
			d.t.Fatalf("daemon did not come up: %v\n%s", err, d.log)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// stop sends SIGTERM and checks for a clean exit without panics.
func (d *daemon) stop() {
	if d.cmd.ProcessState != nil {
		return
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-d.done:
		if err != nil {
			d.t.Errorf("daemon exited with %v\n%s", err, d.log)
		}
	case <-time.After(15 * time.Second):
		d.cmd.Process.Kill()
		d.t.Errorf("daemon did not stop within 15s of SIGTERM\n%s", d.log)
	}
	if strings.Contains(d.log.String(), "panic") {
		d.t.Errorf("daemon log mentions a panic:\n%s", d.log)
	}
}

// client dials the daemon; the client is closed when the test ends.
func (d *daemon) client(t *testing.T) *keywarden.Client {
	t.Helper()
	c, err := d.dial(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// healthy checks the daemon still answers on a new connection.
func (d *daemon) healthy(t *testing.T) {
	t.Helper()
	c, err := d.dial(context.Background())
	// Connections just closed may take a moment to leave the daemon's count.
	for i := 0; i < 100 && errors.Is(err, keywarden.ErrResourceExhausted); i++ {
		time.Sleep(20 * time.Millisecond)
		c, err = d.dial(context.Background())
	}
	if err != nil {
		t.Fatalf("daemon unhealthy: %v\n%s", err, d.log)
	}
	defer c.Close()
	if err := c.Ping(context.Background(), []byte("ping")); err != nil {
		t.Fatalf("daemon unhealthy: %v", err)
	}
}

// cliResult is what one CLI run produced.
type cliResult struct {
	stdout, stderr string
	code           int
}

func (r cliResult) String() string {
	return fmt.Sprintf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
}

// runCLI runs the keywarden command against d, as uid/gid when cred is
// not nil.
func (d *daemon) runCLI(t *testing.T, cred *syscall.Credential, stdin []byte, args ...string) cliResult {
	t.Helper()
	return d.runProgram(t, binary(t), cred, stdin, args...)
}

// runProgram runs the keywarden command at path (a copy of it, for
// tests that tell programs apart) as runCLI does.
func (d *daemon) runProgram(t *testing.T, path string, cred *syscall.Credential, stdin []byte, args ...string) cliResult {
	t.Helper()
	return d.runFrom(t, path, cred, bytes.NewReader(stdin), args...)
}

// runFrom is runProgram with stdin from any reader (a file, for input too
// large to hold as a []byte comfortably).
func (d *daemon) runFrom(t *testing.T, path string, cred *syscall.Credential, stdin io.Reader, args ...string) cliResult {
	t.Helper()
	cmd := exec.Command(path, args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1", keywarden.SocketEnv+"="+d.sock)
	if d.uid != 0 {
		cmd.Env = append(cmd.Env, fmt.Sprintf("%s=%d", keywarden.DaemonUIDEnv, d.uid))
	}
	cmd.Stdin = stdin
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return cliResult{out.String(), errb.String(), code}
}

// requireRoot skips tests that need to act as other users.
func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to run clients as other uids (CI runs as root)")
	}
}

// nobody is the unprivileged identity clients run as in tests.
var nobody = &syscall.Credential{Uid: 65534, Gid: 65534}

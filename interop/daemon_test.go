package interop

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"testing"
	"time"
)

// keywardenBin is the keywarden binary built once for the package's tests.
var keywardenBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "keywarden-interop-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	keywardenBin = filepath.Join(dir, "keywarden")
	_, file, _, _ := runtime.Caller(0)
	cmd := exec.Command("go", "build", "-o", keywardenBin, "./cmd/keywarden")
	cmd.Dir = filepath.Join(filepath.Dir(file), "..")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "building keywarden:", err)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	if nodeVaultDir != "" {
		os.RemoveAll(nodeVaultDir)
	}
	os.Exit(code)
}

// daemon is a development-mode keywarden serving the transit API.
type daemon struct {
	dir       string
	socket    string // the daemon's own socket
	transit   string // the transit API's Unix socket
	auditLog  string
	stderr    *bytes.Buffer
	extraArgs []string
}

// startDaemon starts keywarden serve with --http unix:SOCKET and the
// extra arguments (--dev unless they name a --state directory), and stops
// it when the test ends.
func startDaemon(t testing.TB, extra ...string) *daemon {
	t.Helper()
	dir := t.TempDir()
	os.Chmod(dir, 0o755)
	d := &daemon{dir: dir, socket: filepath.Join(dir, "keywarden.sock"), transit: filepath.Join(dir, "transit.sock"),
		stderr: new(bytes.Buffer)}
	d.auditLog = d.socket + ".audit.log"
	args := []string{"serve", "--socket", d.socket, "--log-level", "warn", "--http", "unix:" + d.transit}
	if !slices.Contains(extra, "--state") {
		// A daemon with no state directory runs in development mode.
		args = append(args, "--dev")
	}
	args = append(args, extra...)
	ctx, cancel := context.WithCancel(context.Background())
	cmd := exec.CommandContext(ctx, keywardenBin, args...)
	cmd.Stderr = d.stderr
	cmd.Cancel = func() error { return cmd.Process.Signal(os.Interrupt) }
	cmd.WaitDelay = 10 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cancel()
		cmd.Wait()
		if t.Failed() {
			t.Logf("daemon's log:\n%s", d.stderr)
		}
	})
	deadline := time.Now().Add(20 * time.Second)
	for {
		c, err := net.Dial("unix", d.transit)
		if err == nil {
			c.Close()
			return d
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not come up: %v\n%s", err, d.stderr)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

package daemon

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// TestRunNeedsStateDir: a persistent daemon without a state directory
// stops before it touches anything.
func TestRunNeedsStateDir(t *testing.T) {
	err := Run(context.Background(), Config{SocketPath: filepath.Join(t.TempDir(), "s"), Logger: slog.New(slog.DiscardHandler)})
	if err == nil || !strings.Contains(err.Error(), "no state directory") {
		t.Fatalf("Run without --state: %v", err)
	}
}

// TestRunRefusesStateDirInUse: a second daemon on a state directory whose
// lock another holds stops at once, naming the holder's pid, before it
// hardens itself or opens the store; the lock file says who holds it,
// and is free again once released.
func TestRunRefusesStateDirInUse(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	lock, err := lockStateDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(dir, "lock"))
	if err != nil || strings.TrimSpace(string(b)) != strconv.Itoa(os.Getpid()) {
		t.Fatalf("the lock file holds %q, %v; want this pid", b, err)
	}
	sock := filepath.Join(t.TempDir(), "s")
	err = Run(context.Background(), Config{SocketPath: sock, StateDir: dir, Logger: slog.New(slog.DiscardHandler)})
	want := fmt.Sprintf("in use by another keywarden daemon (pid %d)", os.Getpid())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Run on a locked state directory: %v, want %q", err, want)
	}
	if _, err := os.Lstat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("the refused daemon made its socket: %v", err)
	}
	lock.Close()
	again, err := lockStateDir(dir)
	if err != nil {
		t.Fatalf("the lock once released: %v", err)
	}
	again.Close()
}

// TestStateDirCreatedPrivate: the state directory is made 0700.
func TestStateDirCreatedPrivate(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "a", "state")
	if err := prepareStateDir(dir); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil || fi.Mode().Perm() != 0o700 {
		t.Fatalf("state directory: %v, %v; want mode 0700", fi.Mode(), err)
	}
}

// TestSocketDirCreated: the socket's directory is made 0755 by root (every
// user reaches the system socket), 0700 by anyone else, and one that
// others may write to is refused.
func TestSocketDirCreated(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run", "keywarden")
	if err := prepareDir(dir); err != nil {
		t.Fatal(err)
	}
	want := os.FileMode(0o700)
	if os.Getuid() == 0 {
		want = 0o755
	}
	if fi, err := os.Stat(dir); err != nil || fi.Mode().Perm() != want {
		t.Fatalf("socket directory: %v, %v; want %v", fi.Mode(), err, want)
	}
	open := filepath.Join(t.TempDir(), "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chmod(open, 0o777)
	if err := prepareDir(open); err == nil || !strings.Contains(err.Error(), "writable by others") {
		t.Fatalf("a world-writable socket directory: %v", err)
	}
}

// TestAuditLogLockedOnce: a second daemon given the same audit log is
// refused, naming the first.
func TestAuditLogLockedOnce(t *testing.T) {
	path := filepath.Join(t.TempDir(), "log", "audit.log")
	lock, err := lockAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	_, err = lockAuditLog(path)
	want := fmt.Sprintf("in use by another keywarden daemon (pid %d)", os.Getpid())
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("the audit log locked twice: %v, want %q", err, want)
	}
}

// TestNoAuditLog: without an audit log the daemon's helpers record
// nothing and fail nothing.
func TestNoAuditLog(t *testing.T) {
	var a *auditLog
	if err := a.event("start", "", "msg"); err != nil {
		t.Fatal(err)
	}
	if a.get() != nil {
		t.Fatal("no audit log, yet a log")
	}
	if st := a.linuxStatus(); st.Reason != "no audit log" {
		t.Fatalf("linux audit status without a log: %+v", st)
	}
	for cfg, want := range map[string]string{"": "", "/var/log/keywarden/audit.log": "/var/log/keywarden/audit.pub", "/x/log": "/x/log.pub"} {
		if got := auditPubPath(Config{AuditLog: cfg}); got != want {
			t.Errorf("auditPubPath(%q) = %q, want %q", cfg, got, want)
		}
	}
}

// TestReadSecretFile: the unseal passphrase file loses one line ending,
// and only one; a file others may read is refused unread.
func TestReadSecretFile(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		want    string
		err     string
	}{
		{"plain", "pass phrase", 0o600, "pass phrase", ""},
		{"newline", "pass phrase\n", 0o600, "pass phrase", ""},
		{"crlf", "pass phrase\r\n", 0o400, "pass phrase", ""},
		{"two newlines", "pass phrase\n\n", 0o600, "pass phrase\n", ""},
		{"inner newline", "pass\nphrase", 0o600, "pass\nphrase", ""},
		{"group-readable", "pass phrase", 0o640, "", "readable by others (mode 0640)"},
		{"world-readable", "pass phrase", 0o604, "", "readable by others (mode 0604)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := filepath.Join(dir, tc.name)
			if err := os.WriteFile(p, []byte(tc.content), 0o600); err != nil {
				t.Fatal(err)
			}
			os.Chmod(p, tc.mode)
			got, err := readSecretFile(p)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) || got != nil {
					t.Fatalf("%q, %v; want refused: %q", got, err, tc.err)
				}
				return
			}
			if err != nil || string(got) != tc.want {
				t.Fatalf("%q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := readSecretFile(filepath.Join(dir, "missing")); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("a missing file: %v", err)
	}
}

// TestReadSecretFileRefusesForeign: a passphrase file that another user
// owns is refused even at mode 0600 (its owner can read it, or chmod it
// and read it), and so is a FIFO, which would stall the start.
func TestReadSecretFileRefusesForeign(t *testing.T) {
	dir := t.TempDir()
	if os.Geteuid() == 0 {
		p := filepath.Join(dir, "theirs")
		if err := os.WriteFile(p, []byte("pass phrase"), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(p, 65534, 65534); err != nil {
			t.Fatal(err)
		}
		if got, err := readSecretFile(p); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") || got != nil {
			t.Fatalf("a file of uid 65534: %q, %v; want refused", got, err)
		}
	} else {
		t.Log("not root: the foreign-owner case is skipped")
	}
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { _, err := readSecretFile(fifo); done <- err }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not a regular file") {
			t.Fatalf("a FIFO: %v; want refused", err)
		}
	case <-time.After(2 * time.Second):
		t.Fatal("a FIFO: readSecretFile blocked")
	}
}

// hardenChild is set in the process that TestHarden starts: it hardens
// itself and reports.
const hardenChild = "KEYWARDEN_TEST_HARDEN_CHILD"

// TestHarden: harden leaves the process not dumpable with no core limit,
// and refuses to run under a tracer (a debugger attached at start could
// read every key). Each runs in a child process of its own.
func TestHarden(t *testing.T) {
	if os.Getenv(hardenChild) != "" {
		h, err := harden(slog.New(slog.DiscardHandler))
		if err != nil {
			fmt.Println("refused:", err)
			os.Exit(0)
		}
		var rl unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_CORE, &rl)
		fmt.Printf("dumpable=%v core=%d/%d mlockall=%v\n", dumpable(), rl.Cur, rl.Max, h.mlockall)
		os.Exit(0)
	}
	child := func(traced bool) string {
		t.Helper()
		cmd := exec.Command(os.Args[0], "-test.run=^TestHarden$")
		cmd.Env = append(os.Environ(), hardenChild+"=1")
		if !traced {
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("child: %v", err)
			}
			return string(out)
		}
		return runTraced(t, cmd)
	}
	out := child(false)
	if !strings.Contains(out, "dumpable=false core=0/0") {
		t.Fatalf("hardened: %q", out)
	}
	if os.Geteuid() == 0 && !strings.Contains(out, "mlockall=true") {
		t.Fatalf("hardened as root, memory not locked: %q", out)
	}
	if out := child(true); !strings.Contains(out, "refused:") || !strings.Contains(out, "being traced") {
		t.Fatalf("traced: %q, want refused", out)
	}
}

// runTraced runs cmd under ptrace, as a debugger would, passing on every
// signal, and returns its output.
func runTraced(t *testing.T, cmd *exec.Cmd) string {
	t.Helper()
	// The tracer is the thread that started the child.
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	var out strings.Builder
	cmd.Stdout = &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	for {
		var ws unix.WaitStatus
		if _, err := unix.Wait4(pid, &ws, 0, nil); err != nil {
			t.Fatalf("wait: %v", err)
		}
		if ws.Exited() || ws.Signaled() {
			break
		}
		sig := 0
		if ws.Stopped() && ws.StopSignal() != unix.SIGTRAP {
			sig = int(ws.StopSignal())
		}
		if err := unix.PtraceCont(pid, sig); err != nil {
			t.Fatalf("ptrace cont: %v", err)
		}
	}
	// Reaped already: Wait only closes the pipes and copies the output.
	cmd.Wait()
	return out.String()
}

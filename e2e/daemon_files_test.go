package e2e_test

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"
)

// serveAs runs "keywarden serve" as cred with env and args until it exits
// or says it listens. It returns the exit status (-1 if it came up, in
// which case it is stopped) and its log.
func serveAs(t *testing.T, cred *syscall.Credential, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"serve"}, args...)...)
	cmd.Env = env
	log := &syncBuffer{}
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	deadline := time.After(60 * time.Second)
	for {
		select {
		case err := <-done:
			var ee *exec.ExitError
			if errors.As(err, &ee) {
				return ee.ExitCode(), log.String()
			}
			if err != nil {
				t.Fatal(err)
			}
			return 0, log.String()
		case <-time.After(20 * time.Millisecond):
			if strings.Contains(log.String(), "msg=listening") {
				cmd.Process.Signal(syscall.SIGTERM)
				<-done
				return -1, log.String()
			}
		case <-deadline:
			cmd.Process.Kill()
			<-done
			t.Fatalf("the daemon neither came up nor stopped within 60s\n%s", log)
		}
	}
}

// victimFile makes an empty file of the victim's, in a directory of the
// victim's, for the attacker to point a link at.
func victimFile(t *testing.T, name string) string {
	t.Helper()
	dir := filepath.Join(openDir(t), "victim")
	os.MkdirAll(dir, 0o700)
	os.Chown(dir, int(victim.Uid), int(victim.Gid))
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	os.Chown(p, int(victim.Uid), int(victim.Gid))
	return p
}

// attackerLink makes a symbolic link at link to target, owned by the
// attacker, as if the attacker had made it.
func attackerLink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, int(attacker.Uid), int(attacker.Gid)); err != nil {
		t.Fatal(err)
	}
}

// The victim's daemon, started where the attacker could prepare files,
// refuses to start rather than write through them, and leaves the files
// the attacker pointed it at as they were.
func TestDaemonRefusesFilesOthersPrepared(t *testing.T) {
	requireRoot(t)

	// Its socket in a shared directory, where the attacker linked the
	// audit log, its lock and the public key's temporary file (the names
	// --dev puts beside the socket) to files of the victim's.
	t.Run("audit files beside the socket", func(t *testing.T) {
		tmp := sharedDir(t)
		sock := filepath.Join(tmp, "kw.sock")
		targets := map[string]string{}
		for _, name := range []string{".audit.log", ".audit.log.lock", ".audit.pub.tmp"} {
			target := victimFile(t, "target"+name)
			targets[name] = target
			attackerLink(t, target, sock+name)
		}
		code, log := serveAs(t, victim, userEnv(tmp), "--dev", "--socket", sock)
		want := fmt.Sprintf("audit log directory %s is writable by others (mode 1777)", tmp)
		if code != 1 || !strings.Contains(log, want) {
			t.Errorf("serve --dev --socket %s: exit %d, want 1 and %q\n%s", sock, code, want, log)
		}
		for name, target := range targets {
			if b, err := os.ReadFile(target); err != nil || len(b) != 0 {
				t.Errorf("the file that %s pointed at holds %d bytes now (%v)", sock+name, len(b), err)
			}
		}
	})

	// The socket's lock file, made by the attacker.
	t.Run("socket lock", func(t *testing.T) {
		tmp := sharedDir(t)
		sock := filepath.Join(tmp, "kw.sock")
		if err := os.WriteFile(sock+".lock", nil, 0o666); err != nil {
			t.Fatal(err)
		}
		os.Chmod(sock+".lock", 0o666)
		os.Chown(sock+".lock", int(attacker.Uid), int(attacker.Gid))
		code, log := serveAs(t, victim, userEnv(tmp), "--dev", "--socket", sock, "--audit-log", "off")
		want := fmt.Sprintf("lock file %s.lock belongs to uid 3001, not to this user (uid 3000) or root", sock)
		if code != 1 || !strings.Contains(log, want) {
			t.Errorf("serve with the attacker's lock file: exit %d, want 1 and %q\n%s", code, want, log)
		}
	})

	// The default socket directory, $TMPDIR/keywarden-UID, made by the
	// attacker as a symbolic link to the shared directory itself (root's
	// and sticky), where the attacker linked the audit log to a file of
	// the victim's.
	t.Run("socket directory link", func(t *testing.T) {
		skipIfSystemSocket(t)
		tmp := sharedDir(t)
		dir := filepath.Join(tmp, "keywarden-3000")
		attackerLink(t, tmp, dir)
		target := victimFile(t, "target.audit.log")
		attackerLink(t, target, filepath.Join(tmp, "keywarden.sock.audit.log"))
		code, log := serveAs(t, victim, userEnv(tmp), "--dev")
		want := fmt.Sprintf("socket directory %s is a symbolic link made by uid 3001, not by this user (uid 3000) or root", dir)
		if code != 1 || !strings.Contains(log, want) {
			t.Errorf("serve --dev with the attacker's link as its directory: exit %d, want 1 and %q\n%s", code, want, log)
		}
		if b, _ := os.ReadFile(target); len(b) != 0 {
			t.Errorf("the victim's file the attacker linked holds %d bytes now", len(b))
		}
	})

	// The default socket directory, made by the attacker.
	t.Run("socket directory", func(t *testing.T) {
		skipIfSystemSocket(t)
		tmp := sharedDir(t)
		dir := filepath.Join(tmp, "keywarden-3000")
		os.Mkdir(dir, 0o755)
		os.Chown(dir, int(attacker.Uid), int(attacker.Gid))
		code, log := serveAs(t, victim, userEnv(tmp), "--dev")
		want := fmt.Sprintf("socket directory %s belongs to uid 3001, not to this user (uid 3000) or root", dir)
		if code != 1 || !strings.Contains(log, want) {
			t.Errorf("serve --dev in the attacker's directory: exit %d, want 1 and %q\n%s", code, want, log)
		}
	})
}

package sshagent

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/server"
)

// A daemon given capabilities by its unit (AmbientCapabilities=, as the
// shipped one has: CAP_SYS_PTRACE among them) must not hand them to the
// confirmation program: with CAP_SYS_PTRACE it could read any process's
// memory, the daemon's keys and root's processes included. The program is
// started from a thread whose ambient set holds CAP_SYS_PTRACE, and must
// run with an empty one.
func TestConfirmProgramGetsNoAmbientCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("raising an ambient capability needs root")
	}
	dir := t.TempDir()
	out := filepath.Join(dir, "caps")
	prog := filepath.Join(dir, "askpass")
	script := "#!/bin/sh\ngrep '^CapAmb:' /proc/self/status > " + out + "\n"
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	a := New(Config{Askpass: prog, AskpassTimeout: 5 * time.Second})
	defer a.Close()
	pub, _, _ := ed25519.GenerateKey(nil)
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	// The key's uid is root's, so the program is not switched to another
	// uid (which would clear the ambient set by itself).
	c := &conn{a: a, id: server.Identity{PID: int32(os.Getpid()), UID: 0, GID: 0, Pidfd: -1}}

	done := make(chan error, 1)
	go func() {
		runtime.LockOSThread() // never unlocked: the raised thread ends with this goroutine
		hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
		var data [2]unix.CapUserData
		if err := unix.Capget(&hdr, &data[0]); err != nil {
			done <- err
			return
		}
		data[0].Inheritable |= 1 << unix.CAP_SYS_PTRACE
		if err := unix.Capset(&hdr, &data[0]); err != nil {
			done <- err
			return
		}
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_RAISE, unix.CAP_SYS_PTRACE, 0, 0); err != nil {
			done <- err
			return
		}
		done <- c.confirm(&added{pub: sp, comment: "k"})
	}()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	if f := strings.Fields(string(b)); len(f) != 2 || strings.Trim(f[1], "0") != "" {
		t.Fatalf("the confirmation program ran with ambient capabilities: %q", b)
	}
}

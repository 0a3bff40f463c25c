package sshagent

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden/internal/server"
)

// A confirmation program that outlives its time limit is refused in
// bounded time, even when a child it started keeps its output open (a
// script that runs a dialog), and the child is killed with it: a pending
// confirmation holds neither the connection nor the daemon's shutdown.
func TestConfirmProgramChildBounded(t *testing.T) {
	dir := t.TempDir()
	pidFile := filepath.Join(dir, "child")
	prog := filepath.Join(dir, "askpass")
	script := "#!/bin/sh\nsleep 20 &\necho $! > " + pidFile + "\nwait\n"
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	a := New(Config{Askpass: prog, AskpassTimeout: 200 * time.Millisecond})
	defer a.Close()
	pub, _, _ := ed25519.GenerateKey(nil)
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{a: a, id: server.Identity{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Pidfd: -1}}
	start := time.Now()
	if err := c.confirm(&added{pub: sp, comment: "k"}); err == nil {
		t.Fatal("a confirmation program that did not answer approved")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Fatalf("refused after %s: the child holding the program's output was waited for", el)
	}
	b, err := os.ReadFile(pidFile)
	if err != nil {
		t.Fatal(err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		st, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil || len(st) > 0 && zombie(st) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the program's child (pid %d) outlived the refusal", pid)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// zombie reports whether a /proc/PID/stat line is a zombie's.
func zombie(stat []byte) bool {
	for i := len(stat) - 1; i > 0; i-- {
		if stat[i] == ')' {
			return i+2 < len(stat) && stat[i+2] == 'Z'
		}
	}
	return false
}

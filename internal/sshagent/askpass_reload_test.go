package sshagent

import (
	"crypto/ed25519"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/crypto/ssh"

	"github.com/keywarden/keywarden/internal/server"
)

// SetAskpass (a configuration reload) replaces the confirmation program
// for the next confirmation: none refuses, one that approves approves,
// one that refuses refuses.
func TestAskpassReload(t *testing.T) {
	dir := t.TempDir()
	script := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body+"\n"), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	yes, no := script("yes", "exit 0"), script("no", "exit 1")
	a := New(Config{})
	defer a.Close()
	pub, _, _ := ed25519.GenerateKey(nil)
	sp, err := ssh.NewPublicKey(pub)
	if err != nil {
		t.Fatal(err)
	}
	c := &conn{a: a, id: server.Identity{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Pidfd: -1}}
	k := &added{pub: sp, comment: "k"}
	if err := c.confirm(k); err == nil {
		t.Fatal("approved with no confirmation program")
	}
	a.SetAskpass(yes)
	if err := c.confirm(k); err != nil {
		t.Fatalf("the new program approves: %v", err)
	}
	a.SetAskpass(no)
	if err := c.confirm(k); err == nil {
		t.Fatal("approved after the program was replaced by one that refuses")
	}
	a.SetAskpass("")
	if err := c.confirm(k); err == nil {
		t.Fatal("approved after the program was removed")
	}
}

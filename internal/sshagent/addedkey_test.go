package sshagent

import (
	"crypto/ed25519"
	"crypto/rand"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"golang.org/x/crypto/cryptobyte"
	"testing"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
)

// Many connections of one uid sign at once with one key ssh-add gave the
// agent, each hanging up at once after, while another removes and re-adds
// it: run with -race. Every OK signature names this process, unclaimed.
func TestAddedKeySignsWhileConnectionsEnd(t *testing.T) {
	ta := newTestAgent(t, Config{})
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	add := func() {
		c := ta.dial(t)
		agent.NewClient(c).Add(agent.AddedKey{PrivateKey: priv, Comment: "added"})
		c.Close()
	}
	add()
	signer, _ := ssh.NewSignerFromKey(priv)
	pub := signer.PublicKey()
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; i < 30; i++ {
			c := ta.dial(t)
			ag := agent.NewClient(c)
			ag.Remove(pub)
			c.Close()
			add()
		}
	}()
	for g := 0; g < 6; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 30; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c := ta.dial(t)
				ag := agent.NewClient(c)
				ag.List()
				ag.Sign(pub, []byte("data"))
				// hang up with a signature in flight
				c.Write(msg(msgSignRequest, sshString(pub.Marshal()), sshString([]byte("x")), u32(0)))
				c.Close()
			}
		}()
	}
	wg.Wait()
	close(stop)
	n := 0
	for _, r := range ta.records(t) {
		if r.Op != "sign" || r.Status != "OK" {
			continue
		}
		n++
		if r.Caller.PID != int32(os.Getpid()) || r.Caller.Claimed || r.Caller.Exited || !r.Caller.Peer.IsZero() {
			t.Errorf("sign caller %+v", r.Caller)
		}
	}
	t.Logf("%d signatures recorded", n)
}

// As TestAddedKeySignReadAgainstConnection, but the program run after the
// exec removes the key (ssh-add -d): the destroy runs on the key's
// session too, and is recorded without the connecting process as peer,
// unlike the signature before it.
func TestAddedKeyRemoveReadAgainstConnection(t *testing.T) {
	ta := newTestAgent(t, Config{})
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	if err := agent.NewClient(ta.dial(t)).Add(agent.AddedKey{PrivateKey: priv, Comment: "added"}); err != nil {
		t.Fatal(err)
	}
	self, _ := os.Executable()
	other := filepath.Join(t.TempDir(), "other-program")
	copyFile(t, self, other)
	cmd := exec.Command(self, "-test.run=^TestAddedKeyExecClient$", "-test.v", "-test.timeout=10s")
	cmd.Env = append(os.Environ(), "KW_RVIA=connect", "KW_RVIA_SOCK="+ta.sockPath, "KW_RVIA_NEXT="+other)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	for _, r := range ta.records(t) {
		if r.Front != Front || r.Caller.PID != int32(cmd.Process.Pid) || (r.Op != "sign" && r.Op != "destroy") {
			continue
		}
		t.Logf("%s %s conn=%d exe=%s peer=%+v claimed=%v", r.Op, r.Status, r.Conn, r.Caller.Exe, r.Caller.Peer, r.Caller.Claimed)
		if r.Caller.Peer.Exe != self {
			t.Errorf("%s by %s recorded without the connecting process %s as peer", r.Op, r.Caller.Exe, self)
		}
	}
}

func TestAddedKeyExecClient(t *testing.T) {
	switch os.Getenv("KW_RVIA") {
	case "connect":
		fd, _ := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0)
		if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: os.Getenv("KW_RVIA_SOCK")}); err != nil {
			t.Fatal(err)
		}
		call(t, fdConn(fd), msg(msgRequestIdentities))
		next := os.Getenv("KW_RVIA_NEXT")
		os.Setenv("KW_RVIA", "run")
		os.Setenv("KW_RVIA_FD", strconv.Itoa(fd))
		t.Fatal(syscall.Exec(next, []string{next, "-test.run=^TestAddedKeyExecClient$", "-test.v", "-test.timeout=10s"}, os.Environ()))
	case "run":
		fd, _ := strconv.Atoi(os.Getenv("KW_RVIA_FD"))
		c := fdConn(fd)
		list := call(t, c, msg(msgRequestIdentities))
		s := cryptobyte.String(list)
		var typ uint8
		var n uint32
		var blob []byte
		if !s.ReadUint8(&typ) || !s.ReadUint32(&n) || n != 1 || !readString(&s, &blob) {
			t.Fatalf("listing %v", list)
		}
		if r := call(t, c, msg(msgSignRequest, sshString(blob), sshString([]byte("d")), u32(0))); r[0] != msgSignResponse {
			t.Fatalf("sign %v", r)
		}
		if r := call(t, c, msg(msgRemoveIdentity, sshString(blob))); r[0] != msgSuccess {
			t.Fatalf("remove %v", r)
		}
	default:
		t.Skip("client")
	}
}

// A signature with a key added with ssh-add -c whose confirmation is
// pending when another connection of the uid locks the agent (ssh-add -x)
// is still made once confirmed: the lock is checked only before the
// confirmation.
func TestLockDuringConfirmRefuses(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	prog := filepath.Join(dir, "askpass")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\nwhile [ ! -e "+gate+" ]; do sleep 0.05; done\nexit 0\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	ta := newTestAgent(t, Config{Askpass: prog, AskpassTimeout: 10 * time.Second})
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	if err := agent.NewClient(ta.dial(t)).Add(agent.AddedKey{PrivateKey: priv, ConfirmBeforeUse: true}); err != nil {
		t.Fatal(err)
	}
	signer, _ := ssh.NewSignerFromKey(priv)
	done := make(chan error, 1)
	go func() {
		_, err := agent.NewClient(ta.dial(t)).Sign(signer.PublicKey(), []byte("data"))
		done <- err
	}()
	time.Sleep(300 * time.Millisecond) // the confirmation is pending
	if err := agent.NewClient(ta.dial(t)).Lock([]byte("pass")); err != nil {
		t.Fatal(err)
	}
	if ks, _ := agent.NewClient(ta.dial(t)).List(); len(ks) != 0 {
		t.Fatalf("locked agent lists %d keys", len(ks))
	}
	os.WriteFile(gate, nil, 0o600)
	if err := <-done; err == nil {
		t.Error("the agent was locked while the confirmation was pending, yet the signature was made")
	}
}

// ssh-add -D while a confirmation is pending: the signature fails (the
// key's session is closed), and the failure is recorded nowhere.
func TestRemoveDuringConfirmRecorded(t *testing.T) {
	dir := t.TempDir()
	gate := filepath.Join(dir, "gate")
	prog := filepath.Join(dir, "askpass")
	os.WriteFile(prog, []byte("#!/bin/sh\nwhile [ ! -e "+gate+" ]; do sleep 0.05; done\nexit 0\n"), 0o755)
	ta := newTestAgent(t, Config{Askpass: prog, AskpassTimeout: 10 * time.Second})
	_, priv, _ := ed25519.GenerateKey(rand.Reader)
	if err := agent.NewClient(ta.dial(t)).Add(agent.AddedKey{PrivateKey: priv, ConfirmBeforeUse: true}); err != nil {
		t.Fatal(err)
	}
	signer, _ := ssh.NewSignerFromKey(priv)
	done := make(chan error, 1)
	go func() {
		_, err := agent.NewClient(ta.dial(t)).Sign(signer.PublicKey(), []byte("data"))
		done <- err
	}()
	time.Sleep(300 * time.Millisecond)
	if err := agent.NewClient(ta.dial(t)).RemoveAll(); err != nil {
		t.Fatal(err)
	}
	os.WriteFile(gate, nil, 0o600)
	if err := <-done; err == nil {
		t.Fatal("signed with a removed key")
	}
	for _, r := range ta.records(t) {
		t.Logf("%s %s %s", r.Op, r.Status, r.Msg)
		if r.Op == "sign" {
			return
		}
	}
	t.Error("the failed signature has no record")
}

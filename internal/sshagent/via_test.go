package sshagent

import (
	"crypto/ed25519"
	"crypto/rand"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"syscall"
	"testing"

	"golang.org/x/crypto/cryptobyte"
	"golang.org/x/crypto/ssh/agent"
)

// A signature with a key ssh-add gave the agent is recorded with the
// caller read against the process that opened the connection, as one with
// a persistent key is: a process that ran another program since it
// connected is recorded with that program, and the connecting process as
// its peer. (The key's own session was opened by no process: read against
// it, the caller had no peer, and its namespaces were read again for every
// signature.)
func TestAddedKeySignReadAgainstConnection(t *testing.T) {
	ta := newTestAgent(t, Config{})
	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	if err := agent.NewClient(ta.dial(t)).Add(agent.AddedKey{PrivateKey: priv, Comment: "added"}); err != nil {
		t.Fatal(err)
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	// Another program: a copy of this one.
	other := filepath.Join(t.TempDir(), "other-program")
	copyFile(t, self, other)
	cmd := exec.Command(self, "-test.run=^TestExecThenSignClient$", "-test.v", "-test.timeout=10s")
	cmd.Env = append(os.Environ(), "KW_EXEC_SIGN=connect", "KW_EXEC_SIGN_SOCK="+ta.sockPath, "KW_EXEC_SIGN_NEXT="+other)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var found bool
	for _, r := range ta.records(t) {
		if r.Front != Front || r.Op != "sign" || r.Caller.PID != int32(cmd.Process.Pid) {
			continue
		}
		found = true
		if r.Status != "OK" || r.Caller.Exe != other || r.Caller.Peer.PID != r.Caller.PID || r.Caller.Peer.Exe != self || r.Caller.Claimed {
			t.Errorf("sign recorded as %s, caller %+v; want OK by %s, peer %s", r.Status, r.Caller, other, self)
		}
	}
	if !found {
		t.Fatal("no record of the signature")
	}
}

// TestExecThenSignClient is the client of TestAddedKeySignReadAgainstConnection:
// it connects to the agent, runs another program (KW_EXEC_SIGN_NEXT, a
// copy of this one) on the same connection, which lists the agent's key
// and signs with it.
func TestExecThenSignClient(t *testing.T) {
	switch os.Getenv("KW_EXEC_SIGN") {
	case "connect":
		fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM, 0) // kept across exec
		if err != nil {
			t.Fatal(err)
		}
		if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: os.Getenv("KW_EXEC_SIGN_SOCK")}); err != nil {
			t.Fatal(err)
		}
		// One request answered: the agent has read who connected (at
		// accept, which may come after the connect) before the exec.
		if reply := call(t, fdConn(fd), msg(msgRequestIdentities)); reply[0] != msgIdentitiesAnswer {
			t.Fatalf("reply %v", reply)
		}
		next := os.Getenv("KW_EXEC_SIGN_NEXT")
		os.Setenv("KW_EXEC_SIGN", "sign")
		os.Setenv("KW_EXEC_SIGN_FD", strconv.Itoa(fd))
		env := os.Environ()
		t.Fatal(syscall.Exec(next, []string{next, "-test.run=^TestExecThenSignClient$", "-test.v", "-test.timeout=10s"}, env))
	case "sign":
		fd, err := strconv.Atoi(os.Getenv("KW_EXEC_SIGN_FD"))
		if err != nil {
			t.Fatal(err)
		}
		c := fdConn(fd)
		list := call(t, c, msg(msgRequestIdentities))
		s := cryptobyte.String(list)
		var typ uint8
		var n uint32
		var blob []byte
		if !s.ReadUint8(&typ) || typ != msgIdentitiesAnswer || !s.ReadUint32(&n) || n != 1 || !readString(&s, &blob) {
			t.Fatalf("listing %v", list)
		}
		if reply := call(t, c, msg(msgSignRequest, sshString(blob), sshString([]byte("data")), u32(0))); reply[0] != msgSignResponse {
			t.Fatalf("reply %v", reply)
		}
	default:
		t.Skip("the client of TestAddedKeySignReadAgainstConnection")
	}
}

// fdConn is a blocking socket, read and written by system calls (an
// os.File would close it when collected, before the exec).
type fdConn int

func (fd fdConn) Read(b []byte) (int, error) {
	n, err := syscall.Read(int(fd), b)
	if n == 0 && err == nil {
		return 0, io.EOF
	}
	return max(n, 0), err
}

func (fd fdConn) Write(b []byte) (int, error) {
	n, err := syscall.Write(int(fd), b)
	return max(n, 0), err
}

// call writes m on c and reads one reply.
func call(t *testing.T, c io.ReadWriter, m []byte) []byte {
	t.Helper()
	if _, err := c.Write(m); err != nil {
		t.Fatal(err)
	}
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatal(err)
	}
	b := make([]byte, int(h[0])<<24|int(h[1])<<16|int(h[2])<<8|int(h[3]))
	if _, err := io.ReadFull(c, b); err != nil {
		t.Fatal(err)
	}
	return b
}

func copyFile(t *testing.T, from, to string) {
	t.Helper()
	b, err := os.ReadFile(from)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(to, b, 0o755); err != nil {
		t.Fatal(err)
	}
}

package e2e_test

import (
	bin "encoding/binary"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"
	"golang.org/x/sys/unix"
)

// An agent connection speaks for the process that opened it, and for no
// other: a request written on it by another process (one the connection
// was passed to, or that inherited it) is not served. Otherwise a key
// restricted to some programs (--allow-exe) would sign for any program
// handed a connection that an allowed one opened, or, the other way
// round, for any process that connects, forks, and execs an allowed
// program that then sits idle while the child writes.
func TestSSHAgentOtherWriter(t *testing.T) {
	requireRoot(t)
	d, sock, logPath := agentDaemon(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	self, _ = filepath.EvalSymlinks(self)
	d.runCLI(t, nil, nil, "key", "generate", "--type", "ed25519", "--name", "only-me", "--ssh").ok(t, "generate")
	d.runCLI(t, nil, nil, "key", "set", "only-me", "--allow-exe", self).ok(t, "key set --allow-exe")

	// This program is allowed: it signs.
	mine, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer mine.Close()
	ac := agent.NewClient(mine)
	keys, err := ac.List()
	if err != nil || len(keys) != 1 {
		t.Fatalf("list: %v %v", keys, err)
	}
	if _, err := ac.Sign(keys[0], []byte("mine")); err != nil {
		t.Fatalf("the allowed program's own request refused: %v", err)
	}

	// It opens another connection, on which another program (sh) writes a
	// sign request.
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	var body []byte
	body = append(body, msgSign)
	body = appendSSHString(body, keys[0].Marshal())
	body = appendSSHString(body, []byte("written by sh"))
	body = bin.BigEndian.AppendUint32(body, 0)
	req := filepath.Join(t.TempDir(), "req")
	os.WriteFile(req, append(bin.BigEndian.AppendUint32(nil, uint32(len(body))), body...), 0o644)
	rc, err := conn.(*net.UnixConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var dup int
	rc.Control(func(fd uintptr) { dup, err = unix.Dup(int(fd)) })
	if err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(dup), "agent connection")
	cmd := exec.Command("/bin/sh", "-c", `cat "$1" >&3`, "sh", req)
	cmd.ExtraFiles = []*os.File{f}
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("sh: %v\n%s", err, out)
	}
	f.Close()
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	var h [4]byte
	if _, err := ioReadFull(conn, h[:]); err == nil {
		r := make([]byte, bin.BigEndian.Uint32(h[:]))
		ioReadFull(conn, r)
		if len(r) > 0 && r[0] == 14 {
			t.Fatal("a request written by another program was signed with a key restricted to the program that connected")
		}
		t.Fatalf("a request written by another program was answered: %x", r)
	}

	// The audit log has no signature of that request: one sign, the
	// allowed one's.
	signs := 0
	recs := newAuditReader(t, logPath).read()
	for _, rec := range requests(recs) {
		if rec.Op == "sign" && rec.Status == "OK" {
			signs++
		}
	}
	if signs != 1 {
		t.Fatalf("%d signatures recorded, want 1", signs)
	}
	// The connection's end is recorded, under the process that opened it.
	agentRefusal(t, recs, "request", "PERMISSION_DENIED", self, "wrote on the connection: it is closed")
	// The daemon serves the next connection as before.
	c2, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	if ks, err := agent.NewClient(c2).List(); err != nil || len(ks) != 1 || ssh.FingerprintSHA256(ks[0]) != ssh.FingerprintSHA256(keys[0]) {
		t.Fatalf("list on a new connection: %v %v", ks, err)
	}
}

func appendSSHString(b, s []byte) []byte {
	return append(bin.BigEndian.AppendUint32(b, uint32(len(s))), s...)
}

// ssh-add of a key whose bytes a key restricted to some programs holds
// is refused (the copy rule): otherwise the added copy, restricted to
// nothing, would sign for any program.
func TestSSHAgentAddRestrictedCopy(t *testing.T) {
	needSSH(t, "ssh-add", "ssh-keygen")
	requireRoot(t)
	d, sock, _ := agentDaemon(t)
	dir := t.TempDir()
	file := filepath.Join(dir, "id")
	if out, code := tryRun(dir, nil, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", file); code != 0 {
		t.Fatalf("ssh-keygen: %s", out)
	}
	in, _ := os.ReadFile(file)
	d.runCLI(t, nil, in, "key", "import", "--name", "guarded", "--ssh").ok(t, "key import")
	d.runCLI(t, nil, nil, "key", "set", "guarded", "--allow-exe", "/usr/bin/ssh-keygen").ok(t, "key set --allow-exe")
	if out, code := agentRun(dir, sock, nil, nil, "ssh-add", file); code == 0 {
		t.Fatalf("ssh-add of a restricted key's bytes succeeded:\n%s", out)
	}
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ac := agent.NewClient(conn)
	keys, _ := ac.List()
	for _, k := range keys {
		if _, err := ac.Sign(k, []byte("x")); err == nil {
			t.Fatalf("key %s signed for a program not allowed", k.Comment)
		}
	}
}

package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/wire"
)

// Who asked (docs/audit.md, "Who asked"): the caller of a record is the
// process that sent that very message, as the kernel attests it, and the
// executable it runs when the request arrives.

// auditHelperEnv makes the test binary act as one of the client
// processes below (its value names which), speaking the wire protocol
// directly on a socket it inherited, received or opened.
const auditHelperEnv = "KEYWARDEN_E2E_AUDIT_HELPER"

// The helpers' other parameters.
const (
	auditHelperSock   = "KEYWARDEN_E2E_AUDIT_SOCK"   // the daemon's socket
	auditHelperFD     = "KEYWARDEN_E2E_AUDIT_FD"     // a connected descriptor
	auditHelperTarget = "KEYWARDEN_E2E_AUDIT_TARGET" // the program to exec
)

// helperResult is what a helper prints as JSON.
type helperResult struct {
	PID    int      `json:"pid"`
	Errors []string `json:"errors,omitempty"` // what the kernel said to forged credentials
}

func init() {
	mode := os.Getenv(auditHelperEnv)
	if mode == "" {
		return
	}
	res, err := auditHelper(mode)
	if err != nil {
		fmt.Fprintf(os.Stderr, "audit helper %s: %v\n", mode, err)
		os.Exit(1)
	}
	json.NewEncoder(os.Stdout).Encode(res)
	os.Exit(0)
}

func auditHelper(mode string) (*helperResult, error) {
	res := &helperResult{PID: os.Getpid()}
	switch mode {
	case "recvfd":
		// Descriptor 3 is a socket pair with the test; the connection to
		// the daemon arrives over it.
		buf, oob := make([]byte, 16), make([]byte, unix.CmsgSpace(4))
		_, oobn, _, _, err := unix.Recvmsg(3, buf, oob, 0)
		if err != nil {
			return nil, err
		}
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil || len(msgs) != 1 {
			return nil, fmt.Errorf("control message: %v", err)
		}
		fds, err := unix.ParseUnixRights(&msgs[0])
		if err != nil || len(fds) != 1 {
			return nil, fmt.Errorf("no descriptor received: %v", err)
		}
		return res, pingOn(fds[0], 2, nil)
	case "exec-before":
		// Connect, ask once, then run another program that keeps the
		// connection (no close-on-exec) and asks again.
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
		if err != nil {
			return nil, err
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: os.Getenv(auditHelperSock)}); err != nil {
			return nil, err
		}
		if err := pingOn(fd, 1, nil); err != nil {
			return nil, err
		}
		target := os.Getenv(auditHelperTarget)
		var env []string
		for _, kv := range os.Environ() {
			if !strings.HasPrefix(kv, auditHelperEnv+"=") { // the first of two would win
				env = append(env, kv)
			}
		}
		env = append(env, auditHelperEnv+"=exec-after", auditHelperFD+"="+strconv.Itoa(fd))
		return nil, syscall.Exec(target, []string{target}, env)
	case "exec-after":
		fd, err := strconv.Atoi(os.Getenv(auditHelperFD))
		if err != nil {
			return nil, err
		}
		return res, pingOn(fd, 2, nil)
	case "forge":
		// Unprivileged: claim to be init, or root, or both.
		fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
		if err != nil {
			return nil, err
		}
		if err := unix.Connect(fd, &unix.SockaddrUnix{Name: os.Getenv(auditHelperSock)}); err != nil {
			return nil, err
		}
		me := unix.Ucred{Pid: int32(os.Getpid()), Uid: uint32(os.Getuid()), Gid: uint32(os.Getgid())}
		for i, forged := range []unix.Ucred{
			{Pid: 1, Uid: 0, Gid: 0},
			{Pid: me.Pid, Uid: 0, Gid: 0},
			{Pid: 1, Uid: me.Uid, Gid: me.Gid},
			{Pid: me.Pid, Uid: me.Uid, Gid: 0},
		} {
			err := pingOn(fd, uint64(10+i), &forged)
			if err == nil {
				return nil, fmt.Errorf("the kernel let uid %d send credentials %+v", me.Uid, forged)
			}
			res.Errors = append(res.Errors, err.Error())
		}
		// Its own credentials, stated explicitly, are fine.
		return res, pingOn(fd, 1, &me)
	}
	return nil, fmt.Errorf("unknown mode %q", mode)
}

// pingOn sends a ping request with id on the connected descriptor fd,
// with explicit credentials if cred is not nil, and checks the reply.
func pingOn(fd int, id uint64, cred *unix.Ucred) error {
	b, err := (&wire.Request{Version: wire.ProtocolVersion, Id: id,
		Ops: []*wire.Op{{Op: &wire.Op_Ping{Ping: &wire.Ping{Payload: []byte("who am I")}}}}}).MarshalVT()
	if err != nil {
		return err
	}
	var oob []byte
	if cred != nil {
		oob = unix.UnixCredentials(cred)
	}
	if err := unix.Sendmsg(fd, b, oob, nil, 0); err != nil {
		return fmt.Errorf("sendmsg: %w", err)
	}
	buf := make([]byte, 1<<16)
	n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
	if err != nil {
		return fmt.Errorf("recvmsg: %w", err)
	}
	rep := new(wire.Reply)
	if err := rep.UnmarshalVT(buf[:n]); err != nil {
		return err
	}
	if rep.Id != id || rep.Status != wire.Status_STATUS_OK || len(rep.Results) != 1 || rep.Results[0].Status != wire.Status_STATUS_OK {
		return fmt.Errorf("reply %d: %v %q", rep.Id, rep.Status, rep.Message)
	}
	return nil
}

// runHelper runs the test binary at bin as a helper in mode, as cred if
// not nil, with extra descriptors from 3 on, and returns what it printed.
func runHelper(t *testing.T, bin, mode string, cred *syscall.Credential, files []*os.File, env ...string) *helperResult {
	t.Helper()
	cmd := exec.Command(bin)
	cmd.Env = append(append(os.Environ(), auditHelperEnv+"="+mode), env...)
	cmd.ExtraFiles = files
	if cred != nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	}
	out, err := cmd.Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			t.Fatalf("helper %s: %v: %s", mode, err, ee.Stderr)
		}
		t.Fatalf("helper %s: %v", mode, err)
	}
	var res helperResult
	if err := json.Unmarshal(out, &res); err != nil || res.PID == 0 {
		t.Fatalf("helper %s printed %q: %v", mode, out, err)
	}
	return &res
}

// recordsOf returns the request records of the log at path that pid sent.
func recordsOf(t *testing.T, path string, pid int) []*audit.Record {
	t.Helper()
	var out []*audit.Record
	for _, r := range requests(newAuditReader(t, path).read()) {
		if r.Caller.PID == int32(pid) {
			out = append(out, r)
		}
	}
	return out
}

// A connection root opened and passed (SCM_RIGHTS) to an unprivileged
// process: its request is recorded as that process's, not root's.
func TestAuditIdentityPassedSocket(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	logPath := d.sock + ".audit.log"
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: d.sock}); err != nil {
		t.Fatal(err)
	}
	if err := pingOn(fd, 1, nil); err != nil {
		t.Fatal(err)
	}
	pair, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	mine, theirs := os.NewFile(uintptr(pair[0]), "pair"), os.NewFile(uintptr(pair[1]), "pair")
	defer mine.Close()
	if err := unix.Sendmsg(pair[0], []byte("fd"), unix.UnixRights(fd), nil, 0); err != nil {
		t.Fatal(err)
	}
	child := runHelper(t, binary(t), "recvfd", nobody, []*os.File{theirs})
	theirs.Close()

	recs := requests(newAuditReader(t, logPath).read())
	var root, other *audit.Record
	for _, r := range recs {
		if r.Caller.PID == int32(child.PID) {
			other = r
		}
	}
	if other == nil {
		t.Fatalf("no record of the child, pid %d", child.PID)
	}
	for _, r := range recs {
		if r.Conn == other.Conn && r != other {
			if root != nil {
				t.Fatalf("more records on the connection: %s", audit.AppendLine(nil, r))
			}
			root = r
		}
	}
	if root == nil || root.Request != 1 || other.Request != 2 {
		t.Fatalf("want requests 1 and 2 on one connection: %v then %s", root, audit.AppendLine(nil, other))
	}
	if c := root.Caller; c.PID != int32(os.Getpid()) || c.UID != 0 || c.GID != 0 || c.Exe != selfExe(t) {
		t.Errorf("root's request recorded as %+v", c)
	}
	if c := other.Caller; c.UID != nobody.Uid || c.GID != nobody.Gid || c.Exe != binary(t) || c.Cgroup == "" || c.Exited {
		t.Errorf("the request of uid %d (pid %d, %s) recorded as %+v", nobody.Uid, child.PID, binary(t), c)
	}
}

// A client that connects and then runs another program, which keeps the
// connection: the record of each request names the program that sent it.
func TestAuditIdentityExec(t *testing.T) {
	d := startDaemon(t)
	logPath := d.sock + ".audit.log"
	self, err := os.ReadFile(binary(t))
	if err != nil {
		t.Fatal(err)
	}
	target := filepath.Join(t.TempDir(), "kw-exec-target")
	if err := os.WriteFile(target, self, 0o755); err != nil {
		t.Fatal(err)
	}
	child := runHelper(t, binary(t), "exec-before", nil, nil, auditHelperSock+"="+d.sock, auditHelperTarget+"="+target)
	recs := recordsOf(t, logPath, child.PID)
	if len(recs) != 2 {
		t.Fatalf("%d records of pid %d, want 2", len(recs), child.PID)
	}
	before, after := recs[0], recs[1]
	if before.Conn != after.Conn || before.Request != 1 || after.Request != 2 {
		t.Fatalf("conn %d request %d, then conn %d request %d: want one connection, requests 1 and 2", before.Conn, before.Request, after.Conn, after.Request)
	}
	if before.Caller.Exe != binary(t) {
		t.Errorf("before exec: exe %q, want %q", before.Caller.Exe, binary(t))
	}
	if after.Caller.Exe != target {
		t.Errorf("after exec: exe %q, want %q", after.Caller.Exe, target)
	}
}

// An unprivileged process cannot claim another identity: the kernel
// refuses its forged SCM_CREDENTIALS (EPERM), so the daemon never sees
// them; what it records is the process's own.
func TestAuditIdentityForged(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	logPath := d.sock + ".audit.log"
	child := runHelper(t, binary(t), "forge", nobody, nil, auditHelperSock+"="+d.sock)
	if len(child.Errors) != 4 {
		t.Fatalf("forged credentials: %q", child.Errors)
	}
	for _, e := range child.Errors {
		if e != "sendmsg: "+unix.EPERM.Error() {
			t.Errorf("forged credentials: %s, want EPERM", e)
		}
	}
	all := requests(newAuditReader(t, logPath).read())
	for _, r := range all {
		if r.Caller.PID == 1 || r.Request >= 10 {
			t.Errorf("a record of a forged request: %s", audit.AppendLine(nil, r))
		}
	}
	recs := recordsOf(t, logPath, child.PID)
	if len(recs) != 1 {
		t.Fatalf("%d records of pid %d, want 1", len(recs), child.PID)
	}
	if c := recs[0].Caller; c.UID != nobody.Uid || c.GID != nobody.Gid || c.Exe != binary(t) || recs[0].Request != 1 || recs[0].Status != "OK" {
		t.Errorf("the unprivileged request recorded as %s", audit.AppendLine(nil, recs[0]))
	}
	// Nothing else on its connection.
	for _, r := range all {
		if r.Conn == recs[0].Conn && r.Seq != recs[0].Seq {
			t.Errorf("another record on the forger's connection: %s", audit.AppendLine(nil, r))
		}
	}
}

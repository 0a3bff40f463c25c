package e2e_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/audit"
)

// A process that made a user and pid namespace of its own may name
// another process of that namespace in SCM_CREDENTIALS, and the kernel
// passes the claim on. The audit record must not present it as the
// kernel's word: it marks the identity claimed, says that it comes from
// other namespaces, and names the process that opened the connection
// (docs/audit.md, "Who asked").

// nsHelperEnv makes the test binary act as one of the processes below.
const nsHelperEnv = "KEYWARDEN_E2E_NS_HELPER"

// nsResult is what the helpers print: pids as the daemon sees them.
type nsResult struct {
	Outer int    `json:"outer"` // the unprivileged process that made the namespaces
	Inner int    `json:"inner"` // pid 1 of the new pid namespace: it connects and sends
	Child int    `json:"child"` // pid 2, named as the sender
	Error string `json:"error,omitempty"`
}

func init() {
	mode := os.Getenv(nsHelperEnv)
	if mode == "" {
		return
	}
	var res nsResult
	var err error
	switch mode {
	case "outer":
		res, err = nsOuter()
	case "inner":
		res, err = nsInner()
	case "idle":
		// Say who we are (the /proc mounted is the daemon's, so
		// /proc/self is our pid there), then wait for stdin to close.
		self, _ := os.Readlink("/proc/self")
		fmt.Println(self)
		bufio.NewReader(os.Stdin).ReadString('\n')
		os.Exit(0)
	default:
		err = fmt.Errorf("unknown mode %q", mode)
	}
	if err != nil {
		res.Error = err.Error()
	}
	json.NewEncoder(os.Stdout).Encode(res)
	os.Exit(0)
}

// nsOuter runs unprivileged and starts nsInner in a new user and pid
// namespace, where it is root and pid 1.
func nsOuter() (nsResult, error) {
	self, err := os.Executable()
	if err != nil {
		return nsResult{}, err
	}
	cmd := exec.Command(self)
	cmd.Env = append(os.Environ(), nsHelperEnv+"=inner")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getuid(), Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: os.Getgid(), Size: 1}}}
	cmd.Stderr = os.Stderr
	out, err := cmd.Output()
	if err != nil {
		return nsResult{}, fmt.Errorf("the process in new namespaces: %v", err)
	}
	var res nsResult
	if err := json.Unmarshal(out, &res); err != nil {
		return nsResult{}, fmt.Errorf("the process in new namespaces printed %q", out)
	}
	res.Outer = os.Getpid()
	if res.Error != "" {
		return res, errors.New(res.Error)
	}
	return res, nil
}

// nsInner, pid 1 of its namespace, starts pid 2, connects to the daemon
// and sends a ping naming pid 2 as the sender, then one as itself.
func nsInner() (nsResult, error) {
	var res nsResult
	if os.Getpid() != 1 {
		return res, fmt.Errorf("pid %d, not 1: no new pid namespace", os.Getpid())
	}
	self, _ := os.Readlink("/proc/self")
	res.Inner, _ = strconv.Atoi(self)
	child := exec.Command("/proc/self/exe")
	child.Env = append(os.Environ(), nsHelperEnv+"=idle")
	stdin, _ := child.StdinPipe()
	stdout, _ := child.StdoutPipe()
	if err := child.Start(); err != nil {
		return res, err
	}
	defer child.Wait()
	defer stdin.Close()
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		return res, fmt.Errorf("pid 2: %v", err)
	}
	res.Child, _ = strconv.Atoi(strings.TrimSpace(line))
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err != nil {
		return res, err
	}
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: os.Getenv(auditHelperSock)}); err != nil {
		return res, err
	}
	// Root of this namespace: uid 0 here is the outer process's uid.
	claim := unix.Ucred{Pid: int32(child.Process.Pid), Uid: 0, Gid: 0}
	if err := pingOn(fd, 1, &claim); err != nil {
		return res, fmt.Errorf("naming pid %d: %v", claim.Pid, err)
	}
	return res, pingOn(fd, 2, nil)
}

func TestAuditIdentityClaimedInNamespace(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	logPath := d.sock + ".audit.log"
	cmd := exec.Command(binary(t))
	cmd.Env = append(os.Environ(), nsHelperEnv+"=outer", auditHelperSock+"="+d.sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	var res nsResult
	if jerr := json.Unmarshal(out, &res); err != nil || jerr != nil || res.Error != "" {
		if strings.Contains(res.Error, "operation not permitted") || strings.Contains(res.Error, "permission denied") {
			t.Skipf("unprivileged user namespaces are not allowed here: %s", res.Error)
		}
		t.Fatalf("helper: %v %v %q %s", err, jerr, out, stderr.String())
	}
	if res.Inner == 0 || res.Child == 0 || res.Inner == res.Child {
		t.Fatalf("helper: %+v", res)
	}

	var claimed, own *audit.Record
	var lines [][]byte
	for _, r := range requests(newAuditReader(t, logPath).read()) {
		switch {
		case r.Caller.PID == int32(res.Child) && r.Request == 1:
			claimed = r
		case r.Caller.PID == int32(res.Inner) && r.Request == 2:
			own = r
		}
		lines = append(lines, audit.AppendLine(nil, r))
	}
	if claimed == nil || own == nil {
		t.Fatalf("no records of pids %d and %d:\n%s", res.Child, res.Inner, bytes.Join(lines, nil))
	}
	// The claim: pid 2 of the namespace, as the daemon sees it. The uid is
	// still the kernel's: the only one the namespace maps.
	c := claimed.Caller
	want := audit.Peer{PID: int32(res.Inner), UID: nobody.Uid, GID: nobody.Gid, Exe: binary(t)}
	if c.UID != nobody.Uid || c.GID != nobody.Gid || !c.Claimed || !c.OtherUserNS || !c.OtherPIDNS || c.Peer != want {
		t.Errorf("the claimed identity is recorded as %s\nwant claimed, other namespaces, peer %+v", audit.AppendLine(nil, claimed), want)
	}
	if s := claimed.Text(); !strings.Contains(s, " claimed ") || !strings.Contains(s, fmt.Sprintf("peer.pid=%d", res.Inner)) {
		t.Errorf("audit tail shows it as %q", s)
	}
	// The sender as itself, the process that connected: its own pid, from
	// another namespace, so still not the kernel's word; no peer to name.
	if c := own.Caller; !c.Claimed || !c.OtherUserNS || !c.OtherPIDNS || !c.Peer.IsZero() || c.UID != nobody.Uid {
		t.Errorf("the sender's own request is recorded as %s", audit.AppendLine(nil, own))
	}
	// The ordinary case adds nothing: a client in the daemon's namespaces
	// that sends on the connection it opened.
	d.runCLI(t, nobody, nil, "status")
	d.runCLI(t, nil, nil, "status")
	n := 0
	for _, r := range requests(newAuditReader(t, logPath).read()) {
		if r.Caller.PID == int32(res.Child) || r.Caller.PID == int32(res.Inner) {
			continue
		}
		n++
		line := audit.AppendLine(nil, r)
		for _, f := range []string{`"claimed"`, `"other_userns"`, `"other_pidns"`, `"peer"`} {
			if bytes.Contains(line, []byte(f)) {
				t.Errorf("an ordinary request's record has %s: %s", f, line)
			}
		}
	}
	if n < 2 {
		t.Fatalf("%d records of ordinary requests, want 2 or more", n)
	}
}

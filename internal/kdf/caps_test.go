package kdf

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// capSets reads a process's capability sets from /proc/PID/status.
func capSets(pid int) (map[string]uint64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return nil, err
	}
	m := map[string]uint64{}
	for _, l := range strings.Split(string(b), "\n") {
		if k, v, ok := strings.Cut(l, ":"); ok && strings.HasPrefix(k, "Cap") {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 16, 64)
			m[k] = n
		}
	}
	return m, nil
}

// TestWorkerDropsCapabilities: a worker started, as a daemon run by an
// ordinary user with ambient capabilities starts it (the shipped unit's
// AmbientCapabilities=), holds no capability by the time it waits for its
// request.
func TestWorkerDropsCapabilities(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to start a process as another uid with ambient capabilities")
	}
	const capSyslog = 34
	// A copy of the test binary that uid 65534 may execute.
	dir, err := os.MkdirTemp("", "keywarden-kdf-caps-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "keywarden")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, WorkerArg)
	cmd.Env = []string{}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}, AmbientCaps: []uintptr{capSyslog}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); cmd.Wait() }()
	var caps map[string]uint64
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		if caps, err = capSets(cmd.Process.Pid); err != nil {
			t.Fatal(err)
		}
		if caps["CapPrm"] == 0 && caps["CapEff"] == 0 && caps["CapAmb"] == 0 {
			return
		}
	}
	t.Fatalf("the worker still holds capabilities: %x", caps)
}

// TestWorkerWithFileCapabilitiesServes: a worker whose binary carries
// file capabilities (setcap, e.g. CAP_IPC_LOCK for an unbounded locked
// arena) gets them back at every exec, so executing itself again cannot
// drop them: it must still serve, not execute itself forever. With its
// input closed it exits at once.
func TestWorkerWithFileCapabilitiesServes(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to set file capabilities and start a process as another uid")
	}
	setcap, err := exec.LookPath("setcap")
	if err != nil {
		t.Skip("no setcap")
	}
	dir, err := os.MkdirTemp("", "keywarden-kdf-filecaps-")
	if err != nil {
		t.Fatal(err)
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(self)
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "keywarden")
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command(setcap, "cap_ipc_lock=p", bin).CombinedOutput(); err != nil {
		t.Skipf("setcap: %v: %s", err, out)
	}
	cmd := exec.Command(bin, WorkerArg)
	cmd.Env = []string{}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	stdin.Close()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("the worker never read its input: it kept executing itself")
	}
}

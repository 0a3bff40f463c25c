package audit

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// startSleeper starts a child that waits, and a pidfd for it. The pidfd
// stands in for the one SCM_PIDFD attaches to a message: opened on a
// child that cannot have been reaped yet, it names exactly that child.
func startSleeper(t *testing.T, exe string) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command(exe, "1000")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Skipf("no pidfds here: %v", err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, fd
}

func sleepPath(t *testing.T) string {
	p, err := exec.LookPath("sleep")
	if err != nil {
		t.Skip("no sleep(1)")
	}
	p, _ = filepath.EvalSymlinks(p)
	return p
}

func TestResolverLiveCaller(t *testing.T) {
	exe := sleepPath(t)
	cmd, fd := startSleeper(t, exe)
	r := NewResolver()
	c := Caller{PID: int32(cmd.Process.Pid)}
	r.Fill(&c, fd)
	if c.Exited || c.Unverified || c.Exe != exe || c.ExeError != "" {
		t.Fatalf("caller %+v, want exe %s", c, exe)
	}
	own, _ := os.ReadFile("/proc/self/cgroup")
	if strings.Contains(string(own), "0::") && !strings.HasPrefix(c.Cgroup, "/") {
		t.Fatalf("cgroup %q", c.Cgroup)
	}
	// Again, from the caches: the same answer.
	c2 := Caller{PID: c.PID}
	r.Fill(&c2, fd)
	if c2 != c {
		t.Fatalf("second lookup %+v, first %+v", c2, c)
	}
	// Without a pidfd: read, but marked unverified.
	c3 := Caller{PID: c.PID}
	r.Fill(&c3, -1)
	if !c3.Unverified || c3.Exe != exe {
		t.Fatalf("without pidfd: %+v", c3)
	}
}

// TestResolverExitedCaller: a caller that exits before the lookup, reaped
// or not, is recorded as exited, with nothing read.
func TestResolverExitedCaller(t *testing.T) {
	exe := sleepPath(t)
	for _, reap := range []bool{false, true} {
		cmd, fd := startSleeper(t, exe)
		cmd.Process.Kill()
		if reap {
			cmd.Wait()
		} else {
			// A zombie: wait until it has died without reaping it.
			waitFor(t, "the child to die", func() bool {
				b, _ := os.ReadFile("/proc/" + strconv.Itoa(cmd.Process.Pid) + "/stat")
				return strings.Contains(string(b), ") Z ")
			})
		}
		c := Caller{PID: int32(cmd.Process.Pid)}
		NewResolver().Fill(&c, fd)
		if !c.Exited || c.Exe != "" || c.Cgroup != "" {
			t.Fatalf("reaped %v: caller %+v", reap, c)
		}
	}
}

// TestResolverPIDReuse makes a second process take the pid of a first
// one that exited, and checks that the lookup, given the first one's
// pidfd, does not attribute the second one's executable to it.
func TestResolverPIDReuse(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to steer pid allocation (ns_last_pid)")
	}
	sleep := sleepPath(t)
	other, err := exec.LookPath("cat")
	if err != nil {
		t.Skip("no cat(1)")
	}
	other, _ = filepath.EvalSymlinks(other)
	for attempt := range 20 {
		first, fd := startSleeper(t, sleep)
		pid := first.Process.Pid
		first.Process.Kill()
		first.Wait()
		// Ask the kernel to hand out pid next; other processes of the
		// machine may get in the way, hence the attempts.
		if err := os.WriteFile("/proc/sys/kernel/ns_last_pid", []byte(strconv.Itoa(pid-1)), 0); err != nil {
			t.Skipf("cannot steer pid allocation: %v", err)
		}
		second := exec.Command(other)
		stdin, _ := second.StdinPipe()
		if err := second.Start(); err != nil {
			t.Fatal(err)
		}
		reused := second.Process.Pid == pid
		if reused {
			// The pid now names cat; a lookup by pid alone would say so.
			c := Caller{PID: int32(pid)}
			NewResolver().Fill(&c, -1)
			if c.Exe != other {
				t.Fatalf("by pid alone: %+v", c)
			}
			c = Caller{PID: int32(pid)}
			NewResolver().Fill(&c, fd)
			if !c.Exited || c.Exe != "" {
				t.Fatalf("pid %d reused by %s, but the first caller's lookup says %+v", pid, other, c)
			}
		}
		stdin.Close()
		second.Wait()
		if reused {
			t.Logf("pid %d reused on attempt %d", pid, attempt+1)
			return
		}
	}
	t.Skip("could not get a pid reused in 20 attempts")
}

func TestResolverOwnProcess(t *testing.T) {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		t.Skip(err)
	}
	defer unix.Close(fd)
	exe, _ := os.Executable()
	exe, _ = filepath.EvalSymlinks(exe)
	c := Caller{PID: int32(os.Getpid())}
	NewResolver().Fill(&c, fd)
	if c.Exe != exe || c.Exited {
		t.Fatalf("%+v, want %s", c, exe)
	}
	c = Caller{}
	NewResolver().Fill(&c, fd)
	if c.ExeError == "" {
		t.Fatal("pid 0 accepted")
	}
}

func BenchmarkResolver(b *testing.B) {
	fd, err := unix.PidfdOpen(os.Getpid(), 0)
	if err != nil {
		b.Skip(err)
	}
	defer unix.Close(fd)
	r := NewResolver()
	pid := int32(os.Getpid())
	b.Run("pidfd", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c := Caller{PID: pid}
			r.Fill(&c, fd)
		}
	})
	b.Run("pid-only", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			c := Caller{PID: pid}
			r.Fill(&c, -1)
		}
	})
}

// startInNamespaces is startSleeper for a child in new namespaces
// (flags), mapped to uid and gid 65534 outside.
func startInNamespaces(t *testing.T, exe string, flags uintptr) (*exec.Cmd, int) {
	t.Helper()
	cmd := exec.Command(exe, "1000")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: flags,
		UidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 65534, Size: 1}},
		GidMappings: []syscall.SysProcIDMap{{ContainerID: 0, HostID: 65534, Size: 1}}}
	if err := cmd.Start(); err != nil {
		t.Skipf("cannot start a process in new namespaces here: %v", err)
	}
	fd, err := unix.PidfdOpen(cmd.Process.Pid, 0)
	if err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		t.Skipf("no pidfds here: %v", err)
	}
	t.Cleanup(func() {
		unix.Close(fd)
		cmd.Process.Kill()
		cmd.Wait()
	})
	return cmd, fd
}

// The resolver says when a caller lives in another user or pid namespace
// than the daemon, and says nothing for one in the daemon's own; and
// nothing of one that has gone.
func TestResolverNamespaces(t *testing.T) {
	exe := sleepPath(t)
	r := NewResolver()
	if r.self.user == "" || r.self.pid == "" {
		t.Skip("cannot read this process's namespaces")
	}
	cmd, fd := startSleeper(t, exe)
	c := Caller{PID: int32(cmd.Process.Pid)}
	r.Fill(&c, fd)
	r.FillNamespaces(&c, fd)
	if c.OtherUserNS || c.OtherPIDNS {
		t.Fatalf("a child in the same namespaces: %+v", c)
	}
	for _, tc := range []struct {
		name          string
		flags         uintptr
		userNS, pidNS bool
	}{
		{"user", syscall.CLONE_NEWUSER, true, false},
		{"user+pid", syscall.CLONE_NEWUSER | syscall.CLONE_NEWPID, true, true},
	} {
		cmd, fd := startInNamespaces(t, exe, tc.flags)
		pid := int32(cmd.Process.Pid)
		c := Caller{PID: pid}
		r.Fill(&c, fd)
		r.FillNamespaces(&c, fd)
		if c.Exited || c.OtherUserNS != tc.userNS || c.OtherPIDNS != tc.pidNS {
			t.Errorf("%s: %+v, want other user namespace %v, other pid namespace %v", tc.name, c, tc.userNS, tc.pidNS)
		}
		c = Caller{PID: pid}
		r.FillNamespaces(&c, -1)
		if c.OtherUserNS != tc.userNS || c.OtherPIDNS != tc.pidNS {
			t.Errorf("%s, without pidfd: %+v", tc.name, c)
		}
		// What a daemon that may not read the links relies on: the
		// uid_map and the depth of the pid namespace.
		buf := make([]byte, 4096)
		m, err := r.readSmall(pid, "uid_map", buf)
		if err != nil || (string(m) != r.self.uidMap) != tc.userNS {
			t.Errorf("%s: uid_map %q (%v), the daemon's %q", tc.name, m, err, r.self.uidMap)
		}
		if d := r.pidDepth(pid, buf); d == 0 || (d != r.self.pidDepth) != tc.pidNS {
			t.Errorf("%s: pid namespace depth %d, the daemon's %d", tc.name, d, r.self.pidDepth)
		}
		// Gone: nothing is kept.
		cmd.Process.Kill()
		cmd.Wait()
		c = Caller{PID: pid}
		r.FillNamespaces(&c, fd)
		if c.OtherUserNS || c.OtherPIDNS {
			t.Errorf("%s, after it exited: %+v", tc.name, c)
		}
	}
}

// FuzzNSpidDepth: the NSpid line of any status file is read without
// panic, as the count of its fields.
func FuzzNSpidDepth(f *testing.F) {
	f.Add([]byte("Name:\tsleep\nUmask:\t0022\nState:\tS (sleeping)\nNSpid:\t25021\t2\nNSpgid:\t25015\t1\n"))
	f.Add([]byte("Name:\tNSpid:\\n\nNSpid:\t7\n"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, b []byte) {
		n := nspidDepth(b)
		if n < 0 || n > len(b) {
			t.Fatalf("depth %d of %q", n, b)
		}
		if !bytes.Contains(b, []byte("NSpid:")) && n != 0 {
			t.Fatalf("depth %d without an NSpid line: %q", n, b)
		}
	})
}

func TestNSpidDepth(t *testing.T) {
	for in, want := range map[string]int{
		"Name:\tsleep\nNSpid:\t25021\t2\nNSpgid:\t1\n": 2,
		"Name:\tsleep\nNSpid:\t25021\n":                1,
		"Name:\tNSpid:\t1\t2\t3\nNSpid:\t9\n":          1, // only a line that begins with it
		"Name:\tsleep\n":                               0,
	} {
		if got := nspidDepth([]byte(in)); got != want {
			t.Errorf("%q: %d, want %d", in, got, want)
		}
	}
}

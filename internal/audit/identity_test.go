package audit

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
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

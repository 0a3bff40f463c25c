package e2e_test

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

	"github.com/keywarden/keywarden"
)

func serveCmd(t *testing.T, args ...string) (*exec.Cmd, *syncBuffer) {
	cmd := exec.Command(binary(t), append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	log := &syncBuffer{}
	cmd.Stderr = log
	return cmd, log
}

// The first log line says the daemon keeps keys in memory only.
func TestDevModeSaysSo(t *testing.T) {
	d := startDaemon(t)
	first, _, _ := strings.Cut(d.log.String(), "\n")
	if !strings.Contains(first, "development mode") || !strings.Contains(first, "memory only") {
		t.Fatalf("first log line: %q", first)
	}
}

// A second daemon on a live socket refuses to start and leaves the first
// alone.
func TestSecondDaemonRefuses(t *testing.T) {
	d := startDaemon(t)
	cmd, log := serveCmd(t, "--dev", "--socket", d.sock)
	err := cmd.Run()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(log.String(), "another keywarden daemon") {
		t.Fatalf("second daemon: %v\n%s", err, log)
	}
	d.healthy(t)
}

// A second daemon on a state directory in use says so first, with the
// pid of the daemon that has it, and leaves the first alone.
func TestSecondDaemonOnStateDir(t *testing.T) {
	requireRoot(t)
	sock, state, _ := persistentSetup(t)
	d := startPersistent(t, sock, state)
	cmd, log := serveCmd(t, "--state", state, "--socket", filepath.Join(filepath.Dir(sock), "second.sock"))
	err := cmd.Run()
	want := fmt.Sprintf("the state directory %s is in use by another keywarden daemon (pid %d)", state, d.cmd.Process.Pid)
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(log.String(), want) {
		t.Fatalf("second daemon: %v, want %q in\n%s", err, want, log)
	}
	if strings.Contains(log.String(), "audit log") {
		t.Errorf("the refusal blames the audit log:\n%s", log)
	}
	d.healthy(t)
}

// A socket left by a daemon that was killed is replaced.
func TestStaleSocketReplaced(t *testing.T) {
	d := startDaemon(t)
	d.cmd.Process.Kill()
	<-d.done
	d.cmd.ProcessState = &os.ProcessState{} // stop() has nothing left to do
	if _, err := os.Stat(d.sock); err != nil {
		t.Fatalf("a killed daemon should leave its socket behind: %v", err)
	}
	d2 := startDaemonAt(t, d.sock)
	d2.healthy(t)
}

// SIGTERM and SIGINT stop the daemon cleanly: exit 0, socket removed,
// clients told.
func TestCleanShutdown(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGTERM, syscall.SIGINT} {
		t.Run(sig.String(), func(t *testing.T) {
			d := startDaemon(t)
			c := d.client(t)
			k := generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256})
			s, err := k.NewMAC(ctx)
			if err != nil {
				t.Fatal(err)
			}
			s.Write([]byte("half-way"))
			d.cmd.Process.Signal(sig)
			select {
			case err := <-d.done:
				if err != nil {
					t.Fatalf("exit: %v\n%s", err, d.log)
				}
			case <-time.After(15 * time.Second):
				t.Fatal("daemon did not stop")
			}
			d.cmd.ProcessState = &os.ProcessState{}
			if _, err := os.Stat(d.sock); !os.IsNotExist(err) {
				t.Fatalf("socket still there: %v", err)
			}
			if _, err := s.Sum(); err == nil {
				t.Fatal("a session survived the daemon")
			}
			if !strings.Contains(d.log.String(), "every key has been wiped") {
				t.Fatalf("log:\n%s", d.log)
			}
		})
	}
}

// Many connections opened and closed in a row leak no descriptors.
func TestNoDescriptorLeak(t *testing.T) {
	d := startDaemon(t)
	count := func() int {
		ents, err := os.ReadDir("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/fd")
		if err != nil {
			t.Skipf("cannot read the daemon's descriptors: %v", err)
		}
		return len(ents)
	}
	d.healthy(t)
	before := count()
	for range 200 {
		c, err := keywarden.Dial(ctx, d.sock)
		if err != nil {
			t.Fatal(err)
		}
		c.Ping(ctx, nil)
		c.Close()
	}
	// Closing is asynchronous on the daemon's side.
	deadline := time.Now().Add(5 * time.Second)
	for count() > before && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if after := count(); after > before {
		t.Fatalf("descriptors: %d before, %d after 200 connections", before, after)
	}
}

package e2e_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/secmem"
)

// TestHardening checks what the daemon does to itself at start: no core
// dumps, not dumpable, memory locked (as root), key memory where the
// kernel hides it best.
func TestHardening(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	generate(t, c, keywarden.KeySpec{Type: keywarden.Ed25519})
	st, err := c.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	m := st.Memory
	if m.Dumpable {
		t.Error("the daemon is dumpable")
	}
	if m.RuntimeSecret != secmem.RuntimeSecret {
		t.Errorf("runtime/secret %v, the build says %v", m.RuntimeSecret, secmem.RuntimeSecret)
	}
	if want := map[bool]string{true: "memfd_secret", false: "mlock"}[secmem.SecretAvailable()]; m.Backing != want {
		t.Errorf("backing %q, want %q", m.Backing, want)
	}
	if m.Allocations == 0 || m.LockedBytes == 0 || m.InUseBytes == 0 {
		t.Errorf("memory status %+v after making a key", m)
	}
	if os.Geteuid() == 0 && !m.Mlockall {
		t.Error("a root daemon did not lock its memory")
	}
	limits, err := os.ReadFile("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/limits")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(limits), "\n") {
		if strings.HasPrefix(line, "Max core file size") {
			if f := strings.Fields(line); f[4] != "0" || f[5] != "0" {
				t.Errorf("core file size limit: %q", line)
			}
		}
	}
	// The CLI shows it too.
	r := d.runCLI(t, nil, nil, "status")
	if !strings.Contains(r.stdout, "key memory:   "+m.Backing) || !strings.Contains(r.stdout, "dumpable no") {
		t.Errorf("status output:\n%s", r.stdout)
	}
}

// startDaemonAs starts the daemon as cred, in a directory cred owns, with
// RLIMIT_MEMLOCK set to memlock when it is not 0.
func startDaemonAs(t *testing.T, cred *syscall.Credential, memlock uint64, flags ...string) *daemon {
	t.Helper()
	dir := filepath.Join(openDir(t), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chown(dir, int(cred.Uid), int(cred.Gid))
	sock := filepath.Join(dir, "kw.sock")
	d := &daemon{t: t, sock: sock, log: &syncBuffer{}, done: make(chan error, 1), uid: cred.Uid}
	args := append([]string{"serve", "--dev", "--socket", sock, "--log-level", "debug", "--socket-mode", "0666"}, flags...)
	d.cmd = exec.Command(binary(t), args...)
	d.cmd.Env = append(os.Environ(), mainEnv+"=1")
	d.cmd.Stderr = d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	if memlock != 0 {
		// The child inherits this process's limits at fork.
		var old unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_MEMLOCK, &old)
		unix.Setrlimit(unix.RLIMIT_MEMLOCK, &unix.Rlimit{Cur: memlock, Max: old.Max})
		defer unix.Setrlimit(unix.RLIMIT_MEMLOCK, &old)
	}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(d.stop)
	d.waitReady()
	return d
}

// When the locked-memory limit is reached, making a key gives
// RESOURCE_EXHAUSTED and the daemon serves on; destroying keys makes room.
func TestLockedMemoryExhaustion(t *testing.T) {
	requireRoot(t) // to run the daemon as an unprivileged user, without CAP_IPC_LOCK
	d := startDaemonAs(t, nobody, 512<<10)
	c := d.client(t)
	st, _ := c.Status(ctx)
	if st.Memory.LimitBytes != 512<<10 || st.Memory.Mlockall {
		t.Fatalf("memory status under a 512 KiB limit: %+v", st.Memory)
	}
	var keys []*keywarden.Key
	raw := make([]byte, 1024) // HMAC keys of 1 KiB: 1536-byte slots
	var err error
	for i := 0; i < 2000; i++ {
		var k *keywarden.Key
		k, err = c.Import(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA512, Name: fmt.Sprintf("k%d", i)}, keywarden.FormatRaw, raw)
		if err != nil {
			break
		}
		keys = append(keys, k)
	}
	if !errors.Is(err, keywarden.ErrResourceExhausted) {
		t.Fatalf("after %d keys: %v, want ErrResourceExhausted", len(keys), err)
	}
	if len(keys) < 10 {
		t.Fatalf("only %d keys fit", len(keys))
	}
	t.Logf("%d keys of 1 KiB fit in a 512 KiB locked-memory limit", len(keys))
	// The keys made still work, and the daemon serves.
	if _, err := keys[0].MAC(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
	d.healthy(t)
	for _, k := range keys[:len(keys)/2] {
		if err := k.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA512, Name: "again"}, keywarden.FormatRaw, raw); err != nil {
		t.Fatalf("after freeing: %v", err)
	}
}

// ptraceChildEnv makes the test binary try to read the daemon whose pid it
// names, as another process of the daemon's own uid would.
const ptraceChildEnv = "KEYWARDEN_E2E_PTRACE"

func init() {
	v := os.Getenv(ptraceChildEnv)
	if v == "" {
		return
	}
	pid, _ := strconv.Atoi(v)
	out := map[string]string{}
	runtime.LockOSThread()
	if err := unix.PtraceAttach(pid); err != nil {
		out["ptrace"] = err.Error()
	} else {
		out["ptrace"] = "attached"
		unix.PtraceDetach(pid)
	}
	if f, err := os.Open("/proc/" + v + "/mem"); err != nil {
		out["mem"] = err.Error()
	} else {
		out["mem"] = "opened"
		f.Close()
	}
	if _, err := os.ReadFile("/proc/" + v + "/environ"); err != nil {
		out["environ"] = err.Error()
	} else {
		out["environ"] = "read"
	}
	json.NewEncoder(os.Stdout).Encode(out)
	os.Exit(0)
}

// A process of the daemon's own uid (not root) can neither ptrace it nor
// open its memory.
func TestNoPtraceBySameUser(t *testing.T) {
	requireRoot(t)
	d := startDaemonAs(t, nobody, 0)
	cmd := exec.Command(binary(t))
	cmd.Env = append(os.Environ(), ptraceChildEnv+"="+strconv.Itoa(d.cmd.Process.Pid))
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody}
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	var got map[string]string
	json.Unmarshal(out, &got)
	if got["ptrace"] == "attached" || got["mem"] == "opened" || got["environ"] == "read" {
		t.Fatalf("a same-uid process reached the daemon: %v", got)
	}
	t.Logf("same uid, not root: ptrace %q, /proc/PID/mem %q", got["ptrace"], got["mem"])
}

// The daemon refuses to run under a tracer.
func TestRefusesToRunTraced(t *testing.T) {
	runtime.LockOSThread() // ptrace requests come from the tracing thread
	defer runtime.UnlockOSThread()
	sock := filepath.Join(openDir(t), "kw.sock")
	cmd := exec.Command(binary(t), "serve", "--dev", "--socket", sock)
	cmd.Env = append(os.Environ(), mainEnv+"=1")
	log := &syncBuffer{}
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Ptrace: true}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	pid := cmd.Process.Pid
	deadline := time.Now().Add(20 * time.Second)
	var ws unix.WaitStatus
	for {
		if time.Now().After(deadline) {
			unix.Kill(pid, unix.SIGKILL)
			t.Fatalf("the traced daemon kept running\n%s", log)
		}
		if _, err := unix.Wait4(pid, &ws, unix.WALL, nil); err != nil {
			t.Fatal(err)
		}
		if ws.Exited() || ws.Signaled() {
			break
		}
		// Pass on every signal (the Go runtime uses several); swallow the
		// stop at exec.
		sig := ws.StopSignal()
		if sig == unix.SIGTRAP {
			sig = 0
		}
		unix.PtraceCont(pid, int(sig))
	}
	// The process is reaped already; Wait (which then fails) still waits
	// until its stderr has been copied into log.
	cmd.Wait()
	if !ws.Exited() || ws.ExitStatus() == 0 || !strings.Contains(log.String(), "being traced") {
		t.Fatalf("exit %v (%d)\n%s", ws, ws.ExitStatus(), log)
	}
}

// Signing with keys held in the arena works across cache expiry and
// garbage collections: the standard library takes weak pointers to key
// memory and must only ever see copies on the Go heap.
func TestSigningFromTheArena(t *testing.T) {
	d := startDaemon(t, "--key-cache-idle", "20ms")
	c := d.client(t)
	for _, typ := range []keywarden.KeyType{keywarden.Ed25519, keywarden.ECDSAP256, keywarden.ECDSAP384, keywarden.RSA2048} {
		k := generate(t, c, keywarden.KeySpec{Type: typ})
		for i := range 6 {
			if _, err := k.SignMessageContext(ctx, []byte("m"), nil); err != nil {
				t.Fatalf("%s, round %d: %v", typ, i, err)
			}
			time.Sleep(60 * time.Millisecond) // the expanded key is dropped and collected
		}
	}
	d.healthy(t)
}

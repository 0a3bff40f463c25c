package e2e_test

import (
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/kdf"
)

// The daemon under test starts its own binary, this test binary, as its
// Argon2id worker: catch that before testscript or the tests run.
func init() {
	if kdf.IsWorker(os.Args) {
		os.Exit(kdf.WorkerMain())
	}
}

// small are Argon2id parameters that take a few milliseconds.
var small = keywarden.Argon2Params{Time: 1, MemoryKiB: 8 << 10, Threads: 1}

// slowParams take minutes with little memory: a deadline or the watchdog
// ends them.
var slowParams = keywarden.Argon2Params{Time: 1 << 20, MemoryKiB: 1 << 10, Threads: 1}

// procChildren returns the children of pid: all of them, the zombies,
// and the live KDF workers.
func procChildren(pid int) (all, zombies, workers []int) {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		b, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		f := strings.Fields(s[i+1:])
		if len(f) < 2 {
			continue
		}
		if ppid, _ := strconv.Atoi(f[1]); ppid != pid {
			continue
		}
		child, _ := strconv.Atoi(strings.Fields(s)[0])
		all = append(all, child)
		if f[0] == "Z" {
			zombies = append(zombies, child)
			continue
		}
		if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", child)); string(cmd) == "keywarden\x00kdf-worker\x00" {
			workers = append(workers, child)
		}
	}
	return all, zombies, workers
}

// noChildren checks that the daemon has no zombie (and, once its work is
// done, no child at all), as ps would show.
func (d *daemon) noChildren(t *testing.T) {
	t.Helper()
	var all, zombies []int
	for i := 0; i < 100; i++ {
		if all, zombies, _ = procChildren(d.cmd.Process.Pid); len(all) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("daemon children %v, zombies %v\n%s", all, zombies, d.log)
}

// workersStarted counts the workers the daemon logged.
func (d *daemon) workersStarted() int { return strings.Count(d.log.String(), "kdf: worker started") }

func TestPassphraseKey(t *testing.T) {
	d := startDaemon(t)
	defer d.noChildren(t)
	c := d.client(t)
	pw, salt := []byte("correct horse battery staple"), []byte("disk-0001")

	k, err := c.DeriveFromPassphrase(ctx, keywarden.KeySpec{Name: "disk", Type: keywarden.AES256GCM, Exportable: true}, pw, salt, small)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := k.Export(ctx, keywarden.FormatRaw)
	if err != nil {
		t.Fatal(err)
	}
	if want := argon2.IDKey(pw, salt, small.Time, small.MemoryKiB, small.Threads, 32); !bytes.Equal(raw, want) {
		t.Fatalf("key %x, want Argon2id %x", raw, want)
	}
	rec := k.PassphraseKDF()
	if rec == nil || rec.Algorithm != "argon2id" || rec.Version != 19 || rec.Params != small || !bytes.Equal(rec.Salt, salt) {
		t.Fatalf("kdf record %+v", rec)
	}
	ct, err := k.Encrypt(ctx, []byte("data"), nil)
	if err != nil {
		t.Fatal(err)
	}

	// Another connection opens it by name and sees how it was derived;
	// deriving again with the same passphrase gives the same key.
	c2 := d.client(t)
	k2, err := c2.Open(ctx, "disk")
	if err != nil {
		t.Fatal(err)
	}
	if rec2 := k2.PassphraseKDF(); rec2 == nil || rec2.Params != small {
		t.Fatalf("reopened: %+v %v", rec2, err)
	}
	again, err := c2.DeriveFromPassphrase(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, pw, salt, small)
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := again.Decrypt(ctx, ct, nil); err != nil || string(pt) != "data" {
		t.Fatalf("same passphrase, other key: %v", err)
	}
	// Not exportable unless asked for.
	if _, err := again.Export(ctx, keywarden.FormatRaw); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("export of a non-exportable derived key: %v", err)
	}
	// Defaults, and an HMAC key of 64 bytes.
	h, err := c.DeriveFromPassphrase(ctx, keywarden.KeySpec{Name: "mac", Type: keywarden.HMACSHA512, Exportable: true}, pw, salt, keywarden.Argon2Params{})
	if err != nil {
		t.Fatal(err)
	}
	if rec := h.PassphraseKDF(); rec == nil || rec.Params != (keywarden.Argon2Params{Time: 3, MemoryKiB: 65536, Threads: 4}) {
		t.Fatalf("defaults: %+v", rec)
	}
	if raw, _ := h.Export(ctx, keywarden.FormatRaw); len(raw) != 64 {
		t.Fatalf("HMAC-SHA512 key of %d bytes", len(raw))
	}
	// Keys made otherwise have no record.
	g, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	if rec := g.PassphraseKDF(); rec != nil {
		t.Fatalf("generated key: %+v %v", rec, err)
	}

	// Refusals, all before any worker starts.
	before := d.workersStarted()
	for name, tc := range map[string]struct {
		spec   keywarden.KeySpec
		salt   []byte
		params keywarden.Argon2Params
		want   error
	}{
		"name taken":     {keywarden.KeySpec{Name: "disk", Type: keywarden.AES256GCM}, salt, small, keywarden.ErrAlreadyExists},
		"asymmetric":     {keywarden.KeySpec{Name: "x", Type: keywarden.Ed25519}, salt, small, keywarden.ErrInvalidArgument},
		"short salt":     {keywarden.KeySpec{Name: "x", Type: keywarden.AES256GCM}, []byte("salt"), small, keywarden.ErrInvalidArgument},
		"bad usage":      {keywarden.KeySpec{Name: "x", Type: keywarden.AES256GCM, Usage: keywarden.UsageSign}, salt, small, keywarden.ErrInvalidArgument},
		"memory too big": {keywarden.KeySpec{Name: "x", Type: keywarden.AES256GCM}, salt, keywarden.Argon2Params{Time: 1, MemoryKiB: 1 << 30, Threads: 1}, keywarden.ErrInvalidArgument},
	} {
		if _, err := c.DeriveFromPassphrase(ctx, tc.spec, pw, tc.salt, tc.params); !errors.Is(err, tc.want) {
			t.Errorf("%s: %v, want %v", name, err, tc.want)
		}
	}
	if _, err := c.DeriveFromPassphrase(ctx, keywarden.KeySpec{Name: "y", Type: keywarden.AES256GCM}, nil, salt, small); !errors.Is(err, keywarden.ErrInvalidArgument) {
		t.Errorf("empty passphrase: %v", err)
	}
	if n := d.workersStarted(); n != before {
		t.Errorf("%d workers started for refused requests", n-before)
	}
	if strings.Contains(d.log.String(), string(pw)) {
		t.Error("the passphrase reached the daemon's log")
	}
}

// TestPassphraseKeyOtherUser: the derived key belongs to the caller.
func TestPassphraseKeyOtherUser(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	defer d.noChildren(t)
	r := d.runCLI(t, nobody, []byte("secret words\n"), "key", "derive-passphrase", "--name", "mine", "--salt", "nobody-salt",
		"--memory", "8192", "--time", "1", "--threads", "1", "--passphrase-file", "-", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"owner_uid": 65534`) || !strings.Contains(r.stdout, `"salt_hex": "6e6f626f64792d73616c74"`) {
		t.Fatalf("%v", r)
	}
	// Root does not see it as its own key.
	if _, err := d.client(t).Open(ctx, "mine"); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("root opened nobody's key: %v", err)
	}
}

func TestPasswordHashVerify(t *testing.T) {
	d := startDaemon(t)
	defer d.noChildren(t)
	c := d.client(t)
	phc, err := c.HashPassword(ctx, []byte("hunter2"), small)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(phc, "$argon2id$v=19$m=8192,t=1,p=1$") || len(strings.Split(phc, "$")) != 6 {
		t.Fatalf("hash %q", phc)
	}
	if other, _ := c.HashPassword(ctx, []byte("hunter2"), small); other == phc {
		t.Fatal("two hashes of one password are equal: the salt is not random")
	}
	if err := c.VerifyPassword(ctx, []byte("hunter2"), phc); err != nil {
		t.Fatal(err)
	}
	if err := c.VerifyPassword(ctx, []byte("hunter3"), phc); !errors.Is(err, keywarden.ErrVerification) {
		t.Fatalf("wrong password: %v", err)
	}
	// The daemon's log reaches the test through a pipe: wait for the lines
	// of the four derivations above before counting.
	for deadline := time.Now().Add(5 * time.Second); d.workersStarted() < 4 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	before := d.workersStarted()
	for _, bad := range []string{"", "$argon2i$v=19$m=8192,t=1,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc",
		"$argon2id$v=19$m=4194304,t=1,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc", // over the maximum
		strings.Replace(phc, "t=1", "t=0", 1), phc + "$"} {
		if err := c.VerifyPassword(ctx, []byte("hunter2"), bad); !errors.Is(err, keywarden.ErrInvalidArgument) {
			t.Errorf("%q: %v", bad, err)
		}
	}
	if _, err := c.HashPassword(ctx, []byte("x"), keywarden.Argon2Params{Time: 1, MemoryKiB: 16, Threads: 4}); !errors.Is(err, keywarden.ErrInvalidArgument) {
		t.Errorf("memory below 8 KiB per lane: %v", err)
	}
	time.Sleep(200 * time.Millisecond) // for any line still in the pipe
	if n := d.workersStarted(); n != before {
		t.Errorf("%d workers started for refused requests", n-before)
	}
}

// TestArgon2ToolInterop: hashes made by the reference argon2 tool
// verify in keywarden and hashes made by keywarden are byte for byte
// what the tool makes from the same salt, both through the CLI.
func TestArgon2ToolInterop(t *testing.T) {
	tool, err := exec.LookPath("argon2")
	if err != nil {
		t.Skip("the reference argon2 tool is not installed (Debian package argon2; scripts/test.sh installs it)")
	}
	d := startDaemon(t)
	defer d.noChildren(t)
	reference := func(password, salt string, p keywarden.Argon2Params) string {
		t.Helper()
		cmd := exec.Command(tool, salt, "-id", "-t", fmt.Sprint(p.Time), "-k", fmt.Sprint(p.MemoryKiB), "-p", fmt.Sprint(p.Threads), "-e")
		cmd.Stdin = strings.NewReader(password)
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("argon2: %v", err)
		}
		return strings.TrimSpace(string(out))
	}
	for _, p := range []keywarden.Argon2Params{small, {Time: 3, MemoryKiB: 4096, Threads: 4}, {Time: 2, MemoryKiB: 1024, Threads: 2}} {
		flags := []string{"--time", fmt.Sprint(p.Time), "--memory", fmt.Sprint(p.MemoryKiB), "--threads", fmt.Sprint(p.Threads)}
		pw := "pass word " + fmt.Sprint(p.Time)

		// The tool hashes; keywarden verifies.
		phc := reference(pw, "reference-salt", p)
		if r := d.runCLI(t, nil, []byte(pw), "password", "verify", "--hash", phc, "--passphrase-file", "-"); r.code != 0 {
			t.Fatalf("keywarden does not verify the tool's %s: %v", phc, r)
		}
		if r := d.runCLI(t, nil, []byte(pw+"!"), "password", "verify", "--hash", phc, "--passphrase-file", "-"); r.code != 3 {
			t.Fatalf("wrong password: %v", r)
		}

		// keywarden hashes; the tool, given the same salt, writes the same
		// string. (A salt with a zero byte cannot be an argument: hash
		// again.)
		for tries := 0; ; tries++ {
			r := d.runCLI(t, nil, []byte(pw), append([]string{"password", "hash", "--passphrase-file", "-"}, flags...)...)
			if r.code != 0 {
				t.Fatal(r)
			}
			ours := strings.TrimSpace(r.stdout)
			fields := strings.Split(ours, "$")
			salt, err := base64.RawStdEncoding.DecodeString(fields[4])
			if err != nil {
				t.Fatal(err)
			}
			if bytes.IndexByte(salt, 0) >= 0 && tries < 20 {
				continue
			}
			if theirs := reference(pw, string(salt), p); theirs != ours {
				t.Fatalf("keywarden %s\nargon2    %s", ours, theirs)
			}
			break
		}
	}
}

// TestKDFWatchdog: a worker stopped with SIGSTOP is killed within about
// one watchdog period, the client gets UNAVAILABLE, and the daemon
// serves on with no child left.
func TestKDFWatchdog(t *testing.T) {
	const period = 400 * time.Millisecond
	d := startDaemon(t, "--kdf-watchdog", period.String(), "--kdf-deadline", "1m")
	c := d.client(t)
	errc := make(chan error, 1)
	go func() {
		_, err := c.HashPassword(ctx, []byte("pw"), slowParams)
		errc <- err
	}()
	worker := waitWorker(t, d)
	time.Sleep(period) // answering challenges
	stopped := time.Now()
	if err := syscall.Kill(worker, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	var err error
	select {
	case err = <-errc:
	case <-time.After(10 * time.Second):
		t.Fatal("a stopped worker was not detected")
	}
	took := time.Since(stopped)
	if !errors.Is(err, keywarden.ErrUnavailable) || !strings.Contains(err.Error(), "stopped responding") {
		t.Fatalf("got %v", err)
	}
	if took > period+300*time.Millisecond {
		t.Fatalf("detected %v after SIGSTOP; the period is %v", took, period)
	}
	t.Logf("stopped worker killed after %v: %v", took.Round(time.Millisecond), err)
	d.healthy(t)
	d.noChildren(t)
	if _, err := c.HashPassword(ctx, []byte("pw"), small); err != nil {
		t.Fatal(err)
	}
}

// waitWorker returns the pid of the daemon's first live worker.
func waitWorker(t *testing.T, d *daemon) int {
	t.Helper()
	for i := 0; i < 500; i++ {
		if _, _, w := procChildren(d.cmd.Process.Pid); len(w) > 0 {
			return w[0]
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("no worker started\n%s", d.log)
	return 0
}

func TestKDFDeadline(t *testing.T) {
	d := startDaemon(t, "--kdf-deadline", "500ms")
	c := d.client(t)
	start := time.Now()
	_, err := c.DeriveFromPassphrase(ctx, keywarden.KeySpec{Name: "never", Type: keywarden.AES256GCM}, []byte("pw"), []byte("saltsalt"), slowParams)
	if !errors.Is(err, keywarden.ErrUnavailable) || !strings.Contains(err.Error(), "timed out") {
		t.Fatalf("got %v", err)
	}
	if took := time.Since(start); took > 3*time.Second {
		t.Fatalf("took %v with a 500ms deadline", took)
	}
	if _, err := c.Open(ctx, "never"); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("a key was made: %v", err)
	}
	d.noChildren(t)
	d.healthy(t)
}

// TestKDFBudget: 20 concurrent derivations under a budget that fits two
// run at most two at a time, as the kernel sees the daemon's children,
// and all complete.
func TestKDFBudget(t *testing.T) {
	p := keywarden.Argon2Params{Time: 2, MemoryKiB: 8 << 10, Threads: 1}
	cost := uint64(p.MemoryKiB) + kdf.WorkerOverheadKiB
	d := startDaemon(t, "--kdf-memory-budget", fmt.Sprint(2*cost+cost/2), "--kdf-max-memory", fmt.Sprint(p.MemoryKiB))
	c := d.client(t)
	var maxSeen atomic.Int32
	stop := make(chan struct{})
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, _, w := procChildren(d.cmd.Process.Pid); int32(len(w)) > maxSeen.Load() {
				maxSeen.Store(int32(len(w)))
			}
			time.Sleep(time.Millisecond)
		}
	}()
	var wg sync.WaitGroup
	var failed atomic.Int32
	start := time.Now()
	for i := 0; i < 20; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			pw := make([]byte, 8)
			rand.Read(pw)
			phc, err := c.HashPassword(ctx, pw, p)
			if err == nil {
				err = c.VerifyPassword(ctx, pw, phc)
			}
			if err != nil {
				failed.Add(1)
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	close(stop)
	<-watched
	t.Logf("40 derivations in %v; at most %d workers alive at once", time.Since(start).Round(time.Millisecond), maxSeen.Load())
	if failed.Load() > 0 {
		t.Fatalf("%d failed", failed.Load())
	}
	if m := maxSeen.Load(); m > 2 || m < 1 {
		t.Fatalf("%d workers at once under a budget for 2", m)
	}
	if n := d.workersStarted(); n != 40 {
		t.Fatalf("%d workers started, want 40", n)
	}
	d.noChildren(t)
}

// TestKDFQueue: with the budget taken and the queue full, a derivation
// is refused at once with RESOURCE_EXHAUSTED.
func TestKDFQueue(t *testing.T) {
	d := startDaemon(t, "--kdf-memory-budget", fmt.Sprint(kdf.WorkerOverheadKiB+1024), "--kdf-max-memory", "1024",
		"--kdf-queue", "1", "--kdf-deadline", "1s")
	c := d.client(t)
	type res struct {
		err  error
		took time.Duration
	}
	results := make(chan res, 4)
	for i := 0; i < 4; i++ {
		go func() {
			start := time.Now()
			_, err := c.HashPassword(ctx, []byte("pw"), slowParams)
			results <- res{err, time.Since(start)}
		}()
		time.Sleep(30 * time.Millisecond)
	}
	exhausted, timedOut := 0, 0
	for i := 0; i < 4; i++ {
		r := <-results
		switch {
		case errors.Is(r.err, keywarden.ErrResourceExhausted):
			exhausted++
			if r.took > 500*time.Millisecond {
				t.Errorf("refused only after %v", r.took)
			}
		case errors.Is(r.err, keywarden.ErrUnavailable):
			timedOut++
		default:
			t.Errorf("unexpected %v", r.err)
		}
	}
	if exhausted != 2 || timedOut != 2 {
		t.Fatalf("%d refused for the queue, %d timed out; want 2 and 2", exhausted, timedOut)
	}
	d.noChildren(t)
}

package audit

import (
	"crypto/ed25519"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The crash test runs this test binary as a child that appends until it
// is killed.
const crashChildEnv = "KEYWARDEN_AUDIT_CRASH_CHILD"

func TestMain(m *testing.M) {
	if path := os.Getenv(crashChildEnv); path != "" {
		crashChild(path)
		return
	}
	os.Exit(m.Run())
}

// crashChild appends large records from four goroutines, rotating often,
// until it is killed.
func crashChild(path string) {
	k, err := DeriveKeys(testSecret)
	if err != nil {
		os.Exit(3)
	}
	l, err := Open(Options{Path: path, Keys: k, CheckpointEvery: 7, RotateBytes: 256 << 10})
	if err != nil {
		os.Stderr.WriteString(err.Error())
		os.Exit(2)
	}
	pad := strings.Repeat("p", 9000) // records span pages: a kill can tear one
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				r := request(g<<20 | i)
				r.Msg = pad
				if err := l.Append(r); err != nil {
					os.Exit(4)
				}
			}
		}()
	}
	wg.Wait()
}

// TestCrash kills a writing child at random moments; each time, the
// surviving log verifies, and a reopened log continues the chain.
func TestCrash(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.log")
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	torn := 0
	for round := range 6 {
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path)
		cmd.Stderr = os.Stderr
		before := fileSizeOf(path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		waitFor(t, "the child to write", func() bool { return fileSizeOf(path) > before+64<<10 })
		t.Logf("round %d: child wrote 64 KiB in %v", round, time.Since(t0))
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if st, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || st.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child exited on its own: %v", round, cmd.ProcessState)
		}

		// The prefix that survived verifies as it is.
		rep := verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}})
		mustIntact(t, rep)
		if rep.TornBytes > 0 {
			torn++
		}
		// A reopened log cuts a torn tail (and says so), and continues.
		l := openLog(t, Options{Path: path, Keys: testKeys(t)})
		appendN(t, l, 2)
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
		mustIntact(t, verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)},
			Keys: []*Keys{testKeys(t)}, RequireClosed: true}))
	}
	if got := countOps(t, path, OpAuditRecovered); got != torn {
		t.Fatalf("%d torn tails seen, %d recorded", torn, got)
	}
	t.Logf("%d of 6 kills tore a record", torn)
}

func fileSizeOf(path string) int64 {
	files, _ := LogFiles(path)
	var n int64
	for _, f := range files {
		if st, err := os.Stat(f); err == nil {
			n += st.Size()
		}
	}
	return n
}

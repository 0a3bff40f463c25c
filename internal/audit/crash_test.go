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
const (
	crashChildEnv = "KEYWARDEN_AUDIT_CRASH_CHILD"
	crashSyncEnv  = "KEYWARDEN_AUDIT_CRASH_SYNC"
)

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
	mode, _ := ParseSyncMode(os.Getenv(crashSyncEnv))
	l, err := Open(Options{Path: path, Keys: k, CheckpointEvery: 7, RotateBytes: 256 << 10, Sync: mode})
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
// surviving log verifies, and a reopened log continues the chain. Rounds
// alternate between the sync modes: with SyncAlways the file the child
// leaves is extended ahead of its records.
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
	torn, extended := 0, 0
	for round := range 6 {
		mode := []SyncMode{SyncGrouped, SyncAlways}[round%2]
		cmd := exec.Command(exe, "-test.run=^$")
		cmd.Env = append(os.Environ(), crashChildEnv+"="+path, crashSyncEnv+"="+mode.String())
		cmd.Stderr = os.Stderr
		before := recordBytes(t, path)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		waitFor(t, "the child to write", func() bool { return recordBytes(t, path) > before+64<<10 })
		t.Logf("round %d (%v): child wrote 64 KiB in %v", round, mode, time.Since(t0))
		time.Sleep(time.Duration(rand.IntN(20)) * time.Millisecond)
		cmd.Process.Signal(syscall.SIGKILL)
		cmd.Wait()
		if st, ok := cmd.ProcessState.Sys().(syscall.WaitStatus); !ok || st.Signal() != syscall.SIGKILL {
			t.Fatalf("round %d: child exited on its own: %v", round, cmd.ProcessState)
		}

		if st, err := os.Stat(path); err == nil && st.Size() > contentSize(t, path) {
			extended++ // SyncAlways, unless the kill came just after a rotation
		}
		// The prefix that survived verifies as it is.
		rep := verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, Keys: []*Keys{testKeys(t)}})
		mustIntact(t, rep)
		if rep.TornBytes > 0 {
			torn++
		}
		// A reopened log cuts a torn tail (and says so), and continues.
		l := openLog(t, Options{Path: path, Keys: testKeys(t), Sync: mode})
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
	t.Logf("%d of 6 kills tore a record; %d left a file extended ahead of its records", torn, extended)
}

// recordBytes is the size of the records in the log at path's files.
func recordBytes(t testing.TB, path string) int64 {
	files, _ := LogFiles(path)
	var n int64
	for _, f := range files {
		if _, err := os.Stat(f); err == nil {
			n += contentSize(t, f)
		}
	}
	return n
}

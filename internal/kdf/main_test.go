package kdf

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// helperEnv makes the test binary run a helper instead of the tests (see
// runHelper). It is read only here, in the test binary.
const helperEnv = "KEYWARDEN_KDF_TEST_HELPER"

// TestMain lets the test binary be the worker: the supervisor under test
// starts /proc/self/exe in worker mode, which is this binary.
func TestMain(m *testing.M) {
	if IsWorker(os.Args) {
		os.Exit(WorkerMain())
	}
	if len(os.Args) == 3 && os.Args[1] == WorkerArg {
		os.Exit(runFakeWorker(os.Args[2]))
	}
	if h := os.Getenv(helperEnv); h != "" {
		os.Exit(runHelper(h))
	}
	os.Exit(m.Run())
}

// runHelper runs one of the helper processes some tests need.
func runHelper(name string) int {
	switch name {
	case "harden":
		// Report what hardenWorker achieves, in a process of its own.
		hardenWorker()
		d, _ := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
		var rl unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_CORE, &rl)
		adj, _ := os.ReadFile("/proc/self/oom_score_adj")
		fmt.Printf("dumpable=%d core=%d oom_score_adj=%s\n", d, rl.Cur, strings.TrimSpace(string(adj)))
		return 0
	case "pdeathsig":
		// A supervisor whose worker runs long; the test kills this
		// process and checks the worker dies with it.
		s, err := New(Config{Cgroup: "off", onStart: func(pid int) { fmt.Printf("worker %d\n", pid) }})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		s.Derive(context.Background(), Params{Time: 1 << 20, MemoryKiB: 64, Threads: 1}, []byte("pw"), []byte("saltsalt"), 32)
		return 1
	case "v2layout":
		// A supervisor in the non-root v2 cgroup the test placed this
		// process in: it must move itself to a leaf and start its worker
		// in a cell beside it.
		root := os.Getenv("KEYWARDEN_KDF_TEST_CGROUP_ROOT")
		var workerCgroup string
		s, err := New(Config{CgroupRoot: root, v2Unlimited: true, onStart: func(pid int) {
			b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cgroup", pid))
			workerCgroup = unifiedPath(string(b))
		}})
		if err != nil {
			fmt.Println(err)
			return 1
		}
		if s.cg == nil {
			fmt.Println("no cgroup")
			return 1
		}
		b, _ := os.ReadFile("/proc/self/cgroup")
		self := unifiedPath(string(b))
		_, err = s.Derive(context.Background(), Params{Time: 1, MemoryKiB: 64, Threads: 1}, []byte("pw"), []byte("saltsalt"), 32)
		parentGone := false
		s.Close()
		if _, serr := os.Stat(s.cg.parent); os.IsNotExist(serr) {
			parentGone = true
		}
		fmt.Printf("self=%s worker=%s err=%v parent_removed=%v\n", self, workerCgroup, err, parentGone)
		return 0
	}
	fmt.Fprintf(os.Stderr, "unknown helper %q\n", name)
	return 2
}

// runFakeWorker runs a worker that misbehaves as name says; tests start
// it with the arguments "keywarden", WorkerArg, name.
func runFakeWorker(name string) int {
	switch name {
	case "mute":
		// It takes its request and computes, but answers no challenge.
		os.Stdout.Write(magic[:])
		if readMagic(os.Stdin) != nil {
			return exitAbandoned
		}
		if _, _, _, err := readFrame(os.Stdin, nil, maxFrame); err != nil {
			return exitAbandoned
		}
		go io.Copy(io.Discard, os.Stdin)
		for n := 0; ; n++ {
			spin = n
		}
	}
	fmt.Fprintf(os.Stderr, "unknown fake worker %q\n", name)
	return 2
}

// spin is written by the mute worker's loop.
var spin int

// unifiedPath returns the cgroup v2 path from /proc/PID/cgroup text.
func unifiedPath(s string) string {
	for _, l := range strings.Split(s, "\n") {
		if p, ok := strings.CutPrefix(l, "0::"); ok {
			return p
		}
	}
	return ""
}

// children returns the pids of this process's children and which of
// them are zombies.
func children(t testing.TB) (all, zombies []int) {
	t.Helper()
	me := os.Getpid()
	ents, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range ents {
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
		if ppid, _ := strconv.Atoi(f[1]); ppid != me {
			continue
		}
		pid, _ := strconv.Atoi(strings.Fields(s)[0])
		all = append(all, pid)
		if f[0] == "Z" {
			zombies = append(zombies, pid)
		}
	}
	return all, zombies
}

// noZombies fails if this process has a zombie child, after giving
// exiting children a moment.
func noZombies(t testing.TB) {
	t.Helper()
	var z []int
	for i := 0; i < 50; i++ {
		if _, z = children(t); len(z) == 0 {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Errorf("zombie children: %v", z)
}

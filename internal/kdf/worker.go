package kdf

import (
	"bytes"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"io"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/argon2"
	"golang.org/x/sys/unix"
)

// WorkerArg is the argument that selects worker mode: the daemon starts
// its own binary as "keywarden kdf-worker" (argv[0] "keywarden", argv[1]
// WorkerArg) with an empty environment.
const WorkerArg = "kdf-worker"

// IsWorker reports whether args (os.Args) select worker mode. A program
// that can be a KDF worker checks it first thing in main (or, for a test
// binary, in an init function) and then calls WorkerMain.
func IsWorker(args []string) bool { return len(args) == 2 && args[1] == WorkerArg }

// Worker exit statuses (the daemon logs them; docs/kdf.md).
const (
	exitServed    = 0 // the result (or an error frame) was written
	exitFailed    = 1 // the request was refused or failed; an error frame says why
	exitMisuse    = 2 // started from a terminal, not by the daemon
	exitRefused   = 3 // a second request arrived: refused, nothing computed for it
	exitAbandoned = 4 // the daemon went away or broke the protocol
)

// served makes a process serve at most one request, whatever calls it.
var served atomic.Bool

// WorkerMain runs worker mode on the process's stdin and stdout and
// returns the exit status. It never returns to serve a second request:
// a process is a worker for exactly one request.
func WorkerMain() int {
	hardenWorker()
	if _, err := unix.IoctlGetTermios(0, unix.TCGETS); err == nil {
		fmt.Fprintln(os.Stderr, "keywarden: kdf-worker is started by the daemon, one request on stdin; it is not for interactive use")
		return exitMisuse
	}
	return serveWorker(os.Stdin, os.Stdout, os.Exit)
}

// hardenWorker makes the worker as hard to read as the daemon: no core
// dumps and no ptrace by its own uid (PR_SET_DUMPABLE 0 and RLIMIT_CORE
// 0; execve made it dumpable again), and first in line for the kernel's
// OOM killer, so that memory pressure kills a worker before the daemon.
// A crash prints no goroutine stacks (their argument words could hold
// bytes of the passphrase).
func hardenWorker() {
	dropCapabilities()
	unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0)
	unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{})
	if f, err := os.OpenFile("/proc/self/oom_score_adj", os.O_WRONLY, 0); err == nil {
		f.WriteString("1000")
		f.Close()
	}
	debug.SetTraceback("none")
}

// dropCapabilities ends a worker's capabilities. A daemon run as an
// ordinary user with capabilities from its service manager
// (AmbientCapabilities=: CAP_SYS_PTRACE, CAP_SYSLOG, CAP_AUDIT_WRITE in the
// shipped unit) passes them, as ambient capabilities, to the programs it
// starts; a worker needs none. Capabilities belong to each thread and the
// runtime's threads are already running, so the worker clears the
// ambient set of one thread and executes itself again from it: the new
// image starts with no capabilities at all. A worker of root keeps root's
// (executing again would give them back); so does one whose exec fails,
// which then runs as before. Only an ambient set is dropped this way:
// capabilities from the binary's own file capabilities (setcap) come
// back at every exec, and executing again for them would never end.
func dropCapabilities() {
	if os.Geteuid() == 0 || !holdsAmbient() {
		return
	}
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		runtime.UnlockOSThread()
		return
	}
	unix.Exec("/proc/self/exe", os.Args, os.Environ())
	runtime.UnlockOSThread()
}

// holdsAmbient reports whether this process has any ambient capability.
func holdsAmbient() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, ok := strings.Cut(line, ":")
		if !ok || k != "CapAmb" {
			continue
		}
		if n, err := strconv.ParseUint(strings.TrimSpace(v), 16, 64); err == nil && n != 0 {
			return true
		}
	}
	return false
}

// frameWriter writes whole frames, one write each, under one lock: the
// watchdog's answers and the result share it and never interleave.
type frameWriter struct {
	mu   sync.Mutex
	w    io.Writer
	done bool // the result or an error was written: nothing follows
	buf  []byte
}

// write writes a frame; last marks the final frame. It wipes its buffer.
func (fw *frameWriter) write(typ byte, payload []byte, last bool) error {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	if fw.done {
		return nil
	}
	fw.done = last
	fw.buf = appendFrame(fw.buf[:0], typ, payload)
	_, err := fw.w.Write(fw.buf)
	clear(fw.buf)
	return err
}

// finished reports whether the last frame was written.
func (fw *frameWriter) finished() bool {
	fw.mu.Lock()
	defer fw.mu.Unlock()
	return fw.done
}

func (fw *frameWriter) fail(format string, args ...any) {
	msg := fmt.Sprintf(format, args...)
	if len(msg) > maxErrorLen {
		msg = msg[:maxErrorLen]
	}
	fw.write(frameError, []byte(msg), true)
}

// serveWorker serves one request read from in and writes to out. exit
// ends the process from the watchdog goroutine (os.Exit, or a stand-in
// in tests).
func serveWorker(in io.Reader, out io.Writer, exit func(int)) int {
	fw := &frameWriter{w: out}
	if !served.CompareAndSwap(false, true) {
		fw.w.Write(magic[:])
		fw.fail("a worker serves one request")
		return exitRefused
	}
	if _, err := out.Write(magic[:]); err != nil {
		return exitAbandoned
	}
	if err := readMagic(in); err != nil {
		return exitAbandoned
	}
	typ, payload, buf, err := readFrame(in, nil, maxFrame)
	defer clear(buf) // the passphrase
	if err != nil {
		return exitAbandoned
	}
	if typ != frameRequest {
		fw.fail("expected a request")
		return exitFailed
	}
	req, err := decodeRequest(payload)
	if err != nil {
		fw.fail("bad request: %v", err)
		return exitFailed
	}
	go answerChallenges(in, fw, req.seed, exit)
	if err := selfTest(); err != nil {
		fw.fail("%v", err)
		return exitFailed
	}
	res := compute(&req)
	clear(req.password)
	b := appendResult(nil, &res)
	clear(res.out)
	err = fw.write(frameResult, b, true)
	clear(b)
	if err != nil {
		return exitAbandoned
	}
	return exitServed
}

// answerChallenges answers the daemon's watchdog challenges while the
// main goroutine computes, each answer chained on the previous one. A
// second request is refused and ends the process; so does the end of
// stdin (the daemon no longer wants the result) or any other frame.
func answerChallenges(in io.Reader, fw *frameWriter, seed [challengeLen]byte, exit func(int)) {
	prev := seed
	var buf []byte
	for {
		typ, payload, nb, err := readFrame(in, buf, maxFrame)
		buf = nb
		switch {
		case err != nil && fw.finished():
			// The daemon closed stdin after reading the result: the main
			// goroutine exits with its own status.
			clear(buf)
			return
		case err != nil:
			clear(buf)
			exit(exitAbandoned)
			return
		case typ == frameRequest:
			clear(buf)
			fw.fail("a worker serves one request")
			exit(exitRefused)
			return
		case typ != frameChallenge || len(payload) != challengeLen:
			fw.fail("expected a challenge")
			exit(exitAbandoned)
			return
		}
		prev = chain(&prev, payload)
		if err := fw.write(frameAnswer, prev[:], false); err != nil {
			exit(exitAbandoned)
			return
		}
	}
}

// compute runs Argon2id for r.
func compute(r *request) result {
	keyLen := r.keyLen
	switch r.op {
	case opVerify:
		keyLen = uint32(len(r.expected))
	case opMeasure:
		keyLen = DefaultHashLen
	}
	start := time.Now()
	out := argon2.IDKey(r.password, r.salt, r.params.Time, r.params.MemoryKiB, r.params.Threads, keyLen)
	res := result{elapsed: time.Since(start), maxRSSKiB: maxRSS()}
	switch r.op {
	case opDerive:
		res.out = out
	case opVerify:
		match := subtle.ConstantTimeCompare(out, r.expected)
		clear(out)
		res.out = []byte{byte(match)}
	default:
		clear(out)
	}
	return res
}

// maxRSS returns the worker's peak resident set in KiB: VmHWM of its own
// address space. (getrusage's ru_maxrss would not do: it keeps the peak of
// the address space before execve, which a child started with vfork
// shares with the daemon.)
func maxRSS() uint64 {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmHWM:"); ok {
			n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	return 0
}

// selfTestVector is a known answer of the reference implementation (the
// x/crypto test vectors, checked against the argon2 tool): Argon2id,
// password "password", salt "somesalt", t=1, m=64 KiB, p=1, 24 bytes.
var selfTestVector, _ = hex.DecodeString("655ad15eac652dc59f7170a7332bf49b8469be1fdb9c28bb")

// selfTest checks the Argon2id implementation against a known answer
// before the worker serves; it costs well under a millisecond.
func selfTest() error {
	got := argon2.IDKey([]byte("password"), []byte("somesalt"), 1, 64, 1, uint32(len(selfTestVector)))
	if !bytes.Equal(got, selfTestVector) {
		return fmt.Errorf("argon2id self-test failed")
	}
	return nil
}

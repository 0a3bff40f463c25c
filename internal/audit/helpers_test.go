package audit

import (
	"bytes"
	"crypto/ed25519"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// testSecret is the audit secret of the tests.
var testSecret = bytes.Repeat([]byte{0x42}, 32)

func testKeys(t testing.TB) *Keys {
	t.Helper()
	k, err := DeriveKeys(testSecret)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func testPub(t testing.TB) ed25519.PublicKey { return testKeys(t).PublicKey() }

func openLog(t testing.TB, o Options) *Log {
	t.Helper()
	if o.Path == "" {
		o.Path = filepath.Join(t.TempDir(), "audit.log")
	}
	l, err := Open(o)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// request is a typical request record.
func request(i int) *Record {
	r := &Record{Kind: KindRequest, Op: "encrypt", Alg: "aes256-gcm", KeyVersion: 1, Status: "OK",
		Caller: Caller{PID: 4242, UID: 1000, GID: 1000, Exe: "/usr/bin/app", Cgroup: "/user.slice/user-1000.slice"},
		Conn:   7, Request: uint64(i)}
	r.Key[0], r.Key[15] = byte(i), 0xee
	return r
}

func appendN(t testing.TB, l *Log, n int) {
	t.Helper()
	for i := range n {
		if err := l.Append(request(i)); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
}

// logFiles returns the files of the log at path, rotated ones first.
func logFiles(t testing.TB, path string) []string {
	t.Helper()
	m, err := LogFiles(path)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func verifyPath(t testing.TB, path string, o VerifyOptions) *Report {
	t.Helper()
	rep, err := VerifyFiles(logFiles(t, path), o)
	if err != nil {
		t.Fatal(err)
	}
	return rep
}

func mustIntact(t testing.TB, rep *Report) {
	t.Helper()
	if !rep.Intact {
		t.Fatalf("log not intact: %v", rep.Problem)
	}
}

func mustBroken(t testing.TB, rep *Report, reason string) *Problem {
	t.Helper()
	if rep.Intact {
		t.Fatalf("tampering not detected (want %q)", reason)
	}
	if !strings.Contains(rep.Problem.Reason, reason) {
		t.Fatalf("problem %q, want one about %q", rep.Problem, reason)
	}
	return rep.Problem
}

func readLines(t testing.TB, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(b, []byte{'\n'})
	if len(lines[len(lines)-1]) == 0 {
		lines = lines[:len(lines)-1]
	}
	return lines
}

func writeLines(t testing.TB, path string, lines [][]byte) {
	t.Helper()
	if err := os.WriteFile(path, bytes.Join(lines, nil), 0o600); err != nil {
		t.Fatal(err)
	}
}

func dump(t testing.TB, path string) {
	t.Helper()
	for i, l := range readLines(t, path) {
		fmt.Fprintf(os.Stderr, "%d: %s", i+1, l)
	}
}

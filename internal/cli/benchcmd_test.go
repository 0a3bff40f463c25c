package cli

import (
	"bytes"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/bench"
)

// bench --create takes the sockets of several running daemons in
// --socket, comma-separated, and spreads its clients over them in turn.
func TestBenchCreateSockets(t *testing.T) {
	got, err := createSockets(" a.sock, b.sock,,c.sock ")
	if want := []string{"a.sock", "b.sock", "c.sock"}; err != nil || !slices.Equal(got, want) {
		t.Fatalf("createSockets: %q, %v; want %q", got, err, want)
	}
	for _, bad := range []string{",", " , ", "a.sock,b.sock,a.sock"} {
		if got, err := createSockets(bad); !errors.As(err, new(*usageError)) {
			t.Errorf("createSockets(%q): %q, %v; want a usage error", bad, got, err)
		}
	}
	if got, want := bench.ClientSockets([]string{"a", "b", "c"}, 7), []string{"a", "b", "c", "a", "b", "c", "a"}; !slices.Equal(got, want) {
		t.Fatalf("7 clients over 3 daemons: %q, want %q", got, want)
	}
	if got, want := bench.ClientSockets([]string{"a", "b", "c"}, 2), []string{"a", "b"}; !slices.Equal(got, want) {
		t.Fatalf("2 clients over 3 daemons: %q, want %q", got, want)
	}

	run := func(args ...string) (string, error) {
		var out, errb bytes.Buffer
		e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
		err := runBench(e, append([]string{"--duration", "10ms", "--runs", "1", "--clients", "2"}, args...))
		return errb.String(), err
	}
	for _, args := range [][]string{
		{"--create", "--socket", "a.sock", "--etcd-endpoints", "http://127.0.0.1:2379"},
		{"--create", "--socket", "a.sock", "--dir", t.TempDir()},
		{"--create", "--socket", "a.sock,a.sock"},
		{"--startup", "--socket", "a.sock"},
	} {
		if _, err := run(args...); !errors.As(err, new(*usageError)) {
			t.Errorf("bench %q: %v; want a usage error", args, err)
		}
	}
	// The clients dial the sockets given, and no private daemon is
	// started: the second socket, which does not exist, fails the run.
	dir := t.TempDir()
	missing := filepath.Join(dir, "b.sock")
	if _, err := run("--create", "--socket", filepath.Join(dir, "a.sock")+","+missing); err == nil || !strings.Contains(err.Error(), dir) {
		t.Fatalf("bench --create on daemons that do not exist: %v; want the socket's dial error", err)
	}
}

// bench --pkcs11 --clients N measures the module with N threads; it is
// not taken for the scaling bench, which --clients alone starts.
func TestBenchPKCS11Clients(t *testing.T) {
	dir := t.TempDir()
	host := filepath.Join(dir, "no-such-host")
	var out, errb bytes.Buffer
	e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	err := runBench(e, []string{"--pkcs11", "--clients", "1", "--runs", "1", "--duration", "10ms",
		"--pkcs11-host", host, "--pkcs11-module", filepath.Join(dir, "no-such-module.so")})
	if err == nil || !strings.Contains(err.Error(), "no-such-") {
		t.Fatalf("bench --pkcs11 --clients 1 with no host or module: %v (output %q); want the PKCS #11 bench's error naming them", err, out.String())
	}
}

// bench --modes takes only the modes bench measures, and is refused by
// the scaling and ssh-agent benches, which have modes of their own.
func TestBenchModes(t *testing.T) {
	for _, args := range [][]string{
		{"--modes", "batched,sideways"},
		{"--modes", "batched", "--clients", "1,2"},
		{"--modes", "batched", "--ssh-agent"},
	} {
		var out, errb bytes.Buffer
		e := &env{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
		if err := runBench(e, append([]string{"--duration", "10ms"}, args...)); !errors.As(err, new(*usageError)) {
			t.Errorf("bench %q: %v; want a usage error", args, err)
		}
	}
}

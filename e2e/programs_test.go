package e2e_test

import (
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden"
)

// runCLIFrom runs the keywarden command from the executable at path.
func (d *daemon) runCLIFrom(t *testing.T, path string, stdin []byte, args ...string) cliResult {
	t.Helper()
	return d.runProgram(t, path, nil, stdin, args...)
}

// A key restricted to the keywarden command works from it and is refused
// to this test process (a Go client), which the refusal and its audit
// record name; the owner lifts the restriction from any program.
func TestAllowedPrograms(t *testing.T) {
	requireRoot(t) // the daemon reads the callers' /proc/PID/exe
	logPath := filepath.Join(t.TempDir(), "audit.log")
	d := startDaemon(t, "--audit-log", logPath)
	c := d.client(t)
	ctx := context.Background()
	cli := binary(t)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	if self, err = filepath.EvalSymlinks(self); err != nil {
		t.Fatal(err)
	}
	hm := generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "tagger"})
	msg := []byte("message")
	if _, err := hm.MAC(ctx, msg); err != nil {
		t.Fatalf("mac before the restriction: %v", err)
	}

	r := d.runCLI(t, nil, nil, "key", "set", "tagger", "--allow-exe", cli, "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"allowed_programs": [`) || !strings.Contains(r.stdout, cli) {
		t.Fatalf("key set --allow-exe: %s", r)
	}
	if r := d.runCLI(t, nil, msg, "mac", "--key", "tagger"); r.code != 0 || len(r.stdout) != 32 {
		t.Fatalf("mac from the allowed program: %s", r)
	}
	al := newAuditReader(t, logPath)
	al.read()
	_, err = hm.MAC(ctx, msg)
	if !errors.Is(err, keywarden.ErrPermissionDenied) {
		t.Fatalf("mac from a program not allowed: %v", err)
	}
	want := fmt.Sprintf("key tagger may be used only by %s; this request came from %s", cli, self)
	if !strings.Contains(err.Error(), want) {
		t.Fatalf("refusal %q does not say %q", err, want)
	}
	found := false
	for _, rec := range requests(al.read()) {
		if rec.Op == "mac" && rec.Status == "PERMISSION_DENIED" {
			found = true
			if rec.Caller.Exe != self || !strings.Contains(rec.Msg, self) || !strings.Contains(rec.Msg, cli) {
				t.Errorf("audit record of the refusal: exe %q, msg %q", rec.Caller.Exe, rec.Msg)
			}
		}
	}
	if !found {
		t.Fatal("no audit record of the refusal")
	}

	// Every use is checked, a streaming session's steps included, and
	// a key opened anew is no different.
	again, err := c.Open(ctx, "tagger")
	if err != nil {
		t.Fatalf("open of a restricted key (opening is not using): %v", err)
	}
	if _, err := again.MAC(ctx, msg); !errors.Is(err, keywarden.ErrPermissionDenied) {
		t.Fatalf("mac through a new handle: %v", err)
	}
	if _, err := again.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, keywarden.DeriveParams{Info: []byte("x")}); !errors.Is(err, keywarden.ErrPermissionDenied) {
		t.Fatalf("derive from a program not allowed: %v", err)
	}

	// The owner lifts it, from any program.
	if r := d.runCLI(t, nil, nil, "key", "set", "tagger", "--allow-exe", ""); r.code != 0 {
		t.Fatalf("key set --allow-exe '': %s", r)
	}
	if _, err := hm.MAC(ctx, msg); err != nil {
		t.Fatalf("mac once the restriction is lifted: %v", err)
	}
}

// A restriction by hash refuses the program at the listed path once the
// file there is replaced by another.
func TestAllowedProgramByHash(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, "--audit-log", "off")
	c := d.client(t)
	generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "tagger"})
	dir := openDir(t)
	tool := filepath.Join(dir, "tool")
	b, err := os.ReadFile(binary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(tool, b, 0o755); err != nil {
		t.Fatal(err)
	}
	r := d.runCLI(t, nil, nil, "key", "set", "tagger", "--allow-exe", tool+"@sha256")
	sum := sha256.Sum256(b)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("%s@sha256:%x", tool, sum)) {
		t.Fatalf("key set --allow-exe PATH@sha256: %s", r)
	}
	msg := []byte("message")
	if r := d.runCLIFrom(t, tool, msg, "mac", "--key", "tagger"); r.code != 0 {
		t.Fatalf("mac from the program whose hash is listed: %s", r)
	}
	// Another binary at the same path: a copy with one more byte (an ELF
	// file runs the same with bytes after its end).
	other := filepath.Join(dir, "tool.new")
	if err := os.WriteFile(other, append(b, 0), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(other, tool); err != nil {
		t.Fatal(err)
	}
	r = d.runCLIFrom(t, tool, msg, "mac", "--key", "tagger")
	if r.code == 0 || !strings.Contains(r.stderr, "may be used only by") || !strings.Contains(r.stderr, "SHA-256") {
		t.Fatalf("mac from a replaced file at the listed path: %s", r)
	}
}

// A restricted key's material cannot be copied into a key that any
// program may use: not by unwrapping a blob of it made before the
// restriction, nor one made since by the allowed program; and a key
// derived from it by the allowed program is restricted too.
func TestAllowedProgramsCopies(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t, "--audit-log", "off")
	c := d.client(t)
	ctx := context.Background()
	cli := binary(t)
	secret := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "secret", Wrappable: true})
	kek := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
	generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "parent", Usage: keywarden.UsageDerive})
	old, err := kek.Wrap(ctx, secret, keywarden.WrapKeywarden, nil)
	if err != nil {
		t.Fatal(err)
	}
	oldKW, err := kek.Wrap(ctx, secret, keywarden.WrapKW, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"secret", "parent"} {
		if r := d.runCLI(t, nil, nil, "key", "set", name, "--allow-exe", cli); r.code != 0 {
			t.Fatalf("key set %s --allow-exe: %s", name, r)
		}
	}
	// Wrapping it out is a use of it: refused to this process.
	if _, err := kek.Wrap(ctx, secret, keywarden.WrapKeywarden, nil); !errors.Is(err, keywarden.ErrPermissionDenied) {
		t.Fatalf("wrap of a restricted key from a program not allowed: %v", err)
	}
	// Unwrapping a blob made before the restriction makes a copy that any
	// program could use: refused, in either format.
	if _, err := kek.Unwrap(ctx, old, keywarden.WrapKeywarden, keywarden.KeySpec{Name: "escaped"}, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("unwrap of a restricted key's old blob: %v", err)
	}
	if _, err := kek.Unwrap(ctx, oldKW, keywarden.WrapKW, keywarden.KeySpec{Name: "escaped", Type: keywarden.AES256GCM, Usage: keywarden.UsageEncrypt | keywarden.UsageDecrypt}, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("unwrap of a restricted key's old bare blob: %v", err)
	}
	// The allowed program wraps it; the copy unwrapped here is refused
	// the same way.
	r := d.runCLI(t, nil, nil, "key", "wrap", "secret", "--with", "kek")
	if r.code != 0 {
		t.Fatalf("key wrap from the allowed program: %s", r)
	}
	if _, err := kek.Unwrap(ctx, []byte(r.stdout), keywarden.WrapKeywarden, keywarden.KeySpec{Name: "escaped"}, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("unwrap of a blob the allowed program made: %v", err)
	}
	// Derived by the allowed program, the child inherits the restriction.
	if r := d.runCLI(t, nil, nil, "derive", "--key", "parent", "--name", "child", "--type", "aes256-gcm", "--info", "child"); r.code != 0 {
		t.Fatalf("derive from the allowed program: %s", r)
	}
	child, err := c.Open(ctx, "child")
	if err != nil {
		t.Fatal(err)
	}
	if ps := child.Info().Lifecycle.AllowedPrograms; len(ps) != 1 || ps[0].Path != cli {
		t.Fatalf("derived key's programs: %v", ps)
	}
	if _, err := child.Encrypt(ctx, []byte("x"), nil); !errors.Is(err, keywarden.ErrPermissionDenied) {
		t.Fatalf("derived key used from a program not allowed: %v", err)
	}
	r = d.runCLI(t, nil, nil, "key", "info", "child", "--json")
	var info struct {
		Lifecycle struct {
			AllowedPrograms []string `json:"allowed_programs"`
		} `json:"lifecycle"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || len(info.Lifecycle.AllowedPrograms) != 1 {
		t.Fatalf("key info --json of the derived key: %v %s", err, r)
	}
}

package e2e_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestExitCodes pins the CLI's exit statuses, which scripts depend on.
func TestExitCodes(t *testing.T) {
	d := startDaemon(t)
	run := func(stdin string, args ...string) cliResult { return d.runCLI(t, nil, []byte(stdin), args...) }
	mustGen := func(args ...string) {
		if r := run("", append([]string{"key", "generate"}, args...)...); r.code != 0 {
			t.Fatalf("generate: %s", r)
		}
	}
	mustGen("--type", "ed25519", "--name", "ed")
	mustGen("--type", "hmac-sha512", "--name", "mac")
	sig := run("message", "sign", "--key", "ed")
	tag := run("message", "mac", "--key", "mac")
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "sig"), []byte(sig.stdout), 0o600)
	os.WriteFile(filepath.Join(dir, "tag"), []byte(tag.stdout), 0o600)

	for _, tc := range []struct {
		name  string
		stdin string
		args  []string
		code  int
	}{
		{"success", "message", []string{"verify", "--key", "ed", "--signature", filepath.Join(dir, "sig")}, 0},
		{"mac verifies", "message", []string{"mac", "--key", "mac", "--verify", filepath.Join(dir, "tag")}, 0},
		{"signature does not verify", "other", []string{"verify", "--key", "ed", "--signature", filepath.Join(dir, "sig")}, 3},
		{"mac does not verify", "other", []string{"mac", "--key", "mac", "--verify", filepath.Join(dir, "tag")}, 3},
		{"refused", "", []string{"key", "export", "ed"}, 1},
		{"not found", "", []string{"key", "info", "nope"}, 1},
		{"wrong usage", "x", []string{"encrypt", "--key", "ed"}, 1},
		{"unknown command", "", []string{"nope"}, 2},
		{"missing flag", "", []string{"sign"}, 2},
		{"unknown flag", "", []string{"key", "list", "--nope"}, 2},
		{"bad type", "", []string{"key", "generate", "--type", "des", "--name", "x"}, 2},
		{"no arguments", "", nil, 2},
		{"help", "", []string{"help"}, 0},
		{"version", "", []string{"version"}, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := run(tc.stdin, tc.args...)
			if r.code != tc.code {
				t.Fatalf("exit %d, want %d\n%s", r.code, tc.code, r)
			}
			if r.code != 0 && tc.name != "no arguments" {
				lines := strings.Split(strings.TrimSpace(r.stderr), "\n")
				if !strings.HasPrefix(lines[0], "keywarden: ") {
					t.Fatalf("error line %q", lines[0])
				}
				if len(lines) > 1 && !(r.code == 2 && len(lines) == 2 && strings.HasPrefix(lines[1], "usage: ")) {
					t.Fatalf("more than one error line: %q", r.stderr)
				}
			}
		})
	}
	// Daemon down: exit 1.
	d.stop()
	if r := run("", "key", "list"); r.code != 1 || !strings.Contains(r.stderr, "no keywarden daemon") {
		t.Fatalf("daemon down: %s", r)
	}
}

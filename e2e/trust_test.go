package e2e_test

import (
	"crypto/rand"
	"encoding/json"
	"strings"
	"testing"
)

// TestAdminTrustsAnotherUsersKey: trusting a wrapping key is the
// administrators' to do, whoever owns the key; its owner cannot trust it,
// and an administrator who may see the key changes nothing else of it.
func TestAdminTrustsAnotherUsersKey(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	kek := make([]byte, 32)
	rand.Read(kek)
	r := d.runCLI(t, nobody, kek, "key", "import", "--type", "aes256-gcm", "--name", "kek", "--usage", "wrap,unwrap", "--json")
	if r.code != 0 {
		t.Fatalf("import: %v", r)
	}
	var info struct{ ID string }
	if err := json.Unmarshal([]byte(r.stdout), &info); err != nil || info.ID == "" {
		t.Fatalf("import --json: %v: %s", err, r.stdout)
	}
	if r := d.runCLI(t, nobody, nil, "key", "generate", "--type", "aes256-gcm", "--name", "data", "--wrappable"); r.code != 0 {
		t.Fatalf("generate: %v", r)
	}
	// An imported key is not trusted to wrap, and its owner cannot change
	// that.
	if r := d.runCLI(t, nobody, nil, "key", "wrap", "data", "--with", "kek"); r.code == 0 || !strings.Contains(r.stderr, "trusted") {
		t.Fatalf("wrap under an untrusted imported key: %v", r)
	}
	if r := d.runCLI(t, nobody, nil, "key", "lifecycle", "kek", "--trusted"); r.code == 0 || !strings.Contains(r.stderr, "administrator") {
		t.Fatalf("the owner trusted its own imported key: %v", r)
	}
	// The owner lets the administrator see the key; the administrator
	// trusts it without owning it ...
	if r := d.runCLI(t, nobody, nil, "key", "share", "kek", "--uid", "0", "--usage", "wrap"); r.code != 0 {
		t.Fatalf("share: %v", r)
	}
	if r := d.runCLI(t, nil, nil, "key", "lifecycle", "id:"+info.ID, "--trusted"); r.code != 0 {
		t.Fatalf("an administrator could not trust another user's key: %v", r)
	}
	// ... but may change nothing else of it.
	if r := d.runCLI(t, nil, nil, "key", "lifecycle", "65534:kek", "--trusted", "--rotate-after", "1h"); r.code == 0 {
		t.Fatalf("an administrator changed another user's key's rotation: %v", r)
	}
	if r := d.runCLI(t, nobody, nil, "key", "wrap", "data", "--with", "kek"); r.code != 0 || len(r.stdout) == 0 {
		t.Fatalf("wrap under the trusted key: %v", r)
	}
}

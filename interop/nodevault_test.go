package interop

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
)

// nodeVault is a directory with testdata/nodevault's program and the
// node-vault release its package-lock.json pins, installed once with
// npm ci for the package's tests; "" with the reason when Node or npm is
// missing or the npm registry cannot be reached (KEYWARDEN_INTEROP=require
// makes that a failure).
var nodeVault = sync.OnceValues(func() (string, error) {
	for _, p := range []string{"node", "npm"} {
		if _, err := exec.LookPath(p); err != nil {
			return "", err
		}
	}
	dir, err := os.MkdirTemp("", "keywarden-node-vault-")
	if err != nil {
		return "", err
	}
	nodeVaultDir = dir
	for _, f := range []string{"package.json", "package-lock.json", "transit.js"} {
		b, err := os.ReadFile(filepath.Join("testdata", "nodevault", f))
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dir, f), b, 0o644); err != nil {
			return "", err
		}
	}
	cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--ignore-scripts")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", &npmError{err: err, out: string(out)}
	}
	return dir, nil
})

// nodeVaultDir is the directory nodeVault made, removed by TestMain.
var nodeVaultDir string

type npmError struct {
	err error
	out string
}

func (e *npmError) Error() string { return "npm ci: " + e.err.Error() + "\n" + e.out }

// runNodeVault runs testdata/nodevault/transit.js with args.
func runNodeVault(t *testing.T, args ...string) {
	t.Helper()
	dir, err := nodeVault()
	if err != nil {
		if os.Getenv("KEYWARDEN_INTEROP") == "require" {
			t.Fatalf("node-vault: %v (apt-get install nodejs npm)", err)
		}
		t.Skipf("node-vault: %v", err)
	}
	cmd := exec.Command("node", append([]string{"transit.js"}, args...)...)
	cmd.Dir = dir
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "node-vault: all passed") {
		t.Fatalf("node-vault: %v\n%s", err, out)
	}
}

// TestNodeVault runs the transit paths with node-vault (npm) over the Unix
// socket: keys, encrypt and decrypt single and batch, rotation, rewrap,
// min_decryption_version, a tampered ciphertext, data keys, sign and verify
// for each key type and marshaling (checked with Node's own crypto), HMAC,
// hash, random, errors, deletion.
func TestNodeVault(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	runNodeVault(t, "unix", d.transit)
}

// TestNodeVaultOverMTLS runs the node-vault program over mutual TLS, with
// the client certificate given to node-vault's requestOptions.
func TestNodeVaultOverMTLS(t *testing.T) {
	t.Parallel()
	f := makeMTLS(t)
	_, addr := startMTLSDaemon(t, f)
	runNodeVault(t, "https", "https://"+addr, f.ca, f.clientCert, f.clientKey)
	// Without the client certificate, the same program fails at the
	// handshake.
	dir, _ := nodeVault()
	cmd := exec.Command("node", "transit.js", "https", "https://"+addr, f.ca, "/dev/null", "/dev/null")
	cmd.Dir = dir
	if out, err := cmd.CombinedOutput(); err == nil || strings.Contains(string(out), "all passed") {
		t.Fatalf("node-vault without a client certificate: %v\n%s", err, out)
	}
}

package interop

import (
	"os"
	"os/exec"
	"strings"
	"testing"
)

// python is Debian's Python, which has python3-hvac (scripts/test.sh
// installs it); KEYWARDEN_INTEROP=require makes its absence a failure.
func python(t *testing.T) string {
	t.Helper()
	for _, p := range []string{"/usr/bin/python3"} {
		if err := exec.Command(p, "-c", "import hvac, requests_unixsocket, cryptography").Run(); err == nil {
			return p
		}
	}
	if os.Getenv("KEYWARDEN_INTEROP") == "require" {
		t.Fatal("no /usr/bin/python3 with hvac, requests_unixsocket and cryptography (apt-get install python3-hvac python3-requests-unixsocket python3-cryptography)")
	}
	t.Skip("no Python with hvac")
	return ""
}

// runHvac runs testdata/hvac_transit.py with args.
func runHvac(t *testing.T, args ...string) {
	t.Helper()
	py := python(t)
	out, err := exec.Command(py, append([]string{"testdata/hvac_transit.py"}, args...)...).CombinedOutput()
	if err != nil || !strings.Contains(string(out), "hvac: all passed") {
		t.Fatalf("hvac: %v\n%s", err, out)
	}
}

// TestHvac runs the transit paths with Python's hvac over the Unix socket.
func TestHvac(t *testing.T) {
	d := startDaemon(t)
	runHvac(t, "unix", d.transit)
}

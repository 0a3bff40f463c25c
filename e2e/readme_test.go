package e2e_test

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestReadmeTour runs the README's tour of the CLI as written, one command
// after another in one shell, against a real daemon that keeps its keys
// (started and initialized as the quick start says). A command whose
// comment says "exit N" must exit N; every other must succeed. The only
// liberties taken: the daemon's default state directory is the test's own,
// and its ssh-agent socket (serve --ssh-agent, as the tour says) is beside
// its socket.
func TestReadmeTour(t *testing.T) {
	requireRoot(t)
	if testing.Short() {
		t.Skip("runs Argon2id at the default costs")
	}
	for _, tool := range []string{"bash", "openssl", "timeout", "ssh-keygen", "ssh-add"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("no %s", tool)
		}
	}
	readme, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	lines, err := tourLines(readme)
	if err != nil {
		t.Fatal(err)
	}

	work := t.TempDir()
	sock, state, _ := persistentSetup(t)
	d := launch(t, sock, []string{"--state", state, // the default Argon2id costs
		"--ssh-agent", filepath.Join(filepath.Dir(sock), "ssh-agent.sock")})
	bin := filepath.Dir(binary(t))
	// What the tour's commands read: a release, an image, a file, a
	// password, the master passphrases, a peer's X25519 public key.
	for name, size := range map[string]int{"release.tar": 3 << 20, "big.iso": 1 << 20, "file": 4096, "msg": 1000, "db.dump": 5 << 20} {
		b := make([]byte, size)
		rand.Read(b)
		if err := os.WriteFile(filepath.Join(work, name), b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	for name, text := range map[string]string{"pw.txt": "a user's password\n", "pass.txt": "the master passphrase, long enough\n",
		"new-pass.txt": "the next master passphrase, long enough\n"} {
		os.WriteFile(filepath.Join(work, name), []byte(text), 0o600)
	}
	peer := exec.Command("sh", "-c", "openssl genpkey -algorithm x25519 | openssl pkey -pubout > peer.pub.pem")
	peer.Dir = work
	if out, err := peer.CombinedOutput(); err != nil {
		t.Fatalf("peer key: %v\n%s", err, out)
	}

	var script strings.Builder
	script.WriteString(`set -u
tour_check() {
	want=$1; line=$2
	eval "$line"; got=$?
	if [ "$got" != "$want" ]; then
		echo "TOUR FAILED: exit $got, want $want: $line" >&2
		exit 1
	fi
}
keywarden init --passphrase-file pass.txt >/dev/null   # the quick start's init
`)
	exitRe := regexp.MustCompile(`#.*\bexit (\d+)\b`)
	for _, l := range lines {
		want := 0
		if m := exitRe.FindStringSubmatch(l); m != nil {
			want, _ = strconv.Atoi(m[1])
		}
		l = strings.ReplaceAll(l, "/var/lib/keywarden", state)
		fmt.Fprintf(&script, "echo %s >&2\ntour_check %d %s\n", shellQuote("$ "+l), want, shellQuote(l))
	}
	script.WriteString("wait\n")

	cmd := exec.Command("bash", "-c", script.String())
	cmd.Dir = work
	cmd.Env = append(os.Environ(), mainEnv+"=1", "PATH="+bin+":"+os.Getenv("PATH"), "KEYWARDEN_SOCKET="+sock)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	done := make(chan error, 1)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- cmd.Wait() }()
	select {
	case err = <-done:
	case <-time.After(5 * time.Minute):
		cmd.Process.Kill()
		err = <-done
		t.Errorf("the tour did not end within 5 minutes")
	}
	if err != nil {
		t.Fatalf("the README's tour: %v\n%s", err, out.String())
	}
	t.Logf("the README's tour ran %d commands", len(lines))
	d.healthy(t)
}

// tourLines returns the commands of the README's tour: the lines of the
// first sh block after "## A tour of the CLI", without comment-only lines.
func tourLines(readme []byte) ([]string, error) {
	_, rest, ok := bytes.Cut(readme, []byte("\n## A tour of the CLI\n"))
	if !ok {
		return nil, fmt.Errorf("no tour in the README")
	}
	_, rest, ok = bytes.Cut(rest, []byte("\n```sh\n"))
	if !ok {
		return nil, fmt.Errorf("no sh block in the tour")
	}
	block, _, ok := bytes.Cut(rest, []byte("\n```\n"))
	if !ok {
		return nil, fmt.Errorf("the tour's sh block does not end")
	}
	var lines []string
	sc := bufio.NewScanner(bytes.NewReader(block))
	for sc.Scan() {
		l := strings.TrimSpace(sc.Text())
		if l == "" || strings.HasPrefix(l, "#") {
			continue
		}
		lines = append(lines, l)
	}
	return lines, sc.Err()
}

// shellQuote quotes s for bash.
func shellQuote(s string) string {
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

package doctor

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// fakeProc makes a /proc with the files a test names.
func fakeProc(t *testing.T, files map[string]string) string {
	t.Helper()
	root := t.TempDir()
	for p, v := range files {
		full := filepath.Join(root, p)
		os.MkdirAll(filepath.Dir(full), 0o755)
		if err := os.WriteFile(full, []byte(v), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return root + "/"
}

func TestPtraceScope(t *testing.T) {
	for _, tc := range []struct {
		files map[string]string
		want  Level
	}{
		{map[string]string{"sys/kernel/yama/ptrace_scope": "0\n"}, Warn},
		{map[string]string{"sys/kernel/yama/ptrace_scope": "1\n"}, OK},
		{map[string]string{"sys/kernel/yama/ptrace_scope": "3\n"}, OK},
		{map[string]string{}, Warn},
	} {
		c := checkPtrace(Config{ProcRoot: fakeProc(t, tc.files)})
		if c.Level != tc.want || (c.Level != OK && c.Fix == "") {
			t.Errorf("%v: %+v", tc.files, c)
		}
	}
}

func TestStateDir(t *testing.T) {
	uid := os.Geteuid()
	dir := filepath.Join(t.TempDir(), "state")
	if c := checkStateDir(Config{StateDir: dir, DaemonUID: uid}); c.Level != Warn {
		t.Errorf("missing: %+v", c)
	}
	os.Mkdir(dir, 0o750)
	os.Chmod(dir, 0o750)
	if c := checkStateDir(Config{StateDir: dir, DaemonUID: uid}); c.Level != Fail || !strings.Contains(c.Fix, "chmod 0700") {
		t.Errorf("0750: %+v", c)
	}
	os.Chmod(dir, 0o700)
	if c := checkStateDir(Config{StateDir: dir, DaemonUID: uid}); c.Level != OK {
		t.Errorf("0700: %+v", c)
	}
	if os.Geteuid() == 0 {
		// Another user's directory: the daemon would refuse it.
		os.Chown(dir, 12345, 12345)
		if c := checkStateDir(Config{StateDir: dir, DaemonUID: 0}); c.Level != Fail || !strings.Contains(c.Detail, "uid 12345") {
			t.Errorf("another user's: %+v", c)
		}
	}
	link := filepath.Join(t.TempDir(), "link")
	os.Symlink(dir, link)
	if c := checkStateDir(Config{StateDir: link, DaemonUID: uid}); c.Level != Fail {
		t.Errorf("a symbolic link: %+v", c)
	}
}

// A socket directory others may write to fails: another user could put a
// socket of theirs at the daemon's path.
func TestSocketDir(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "run")
	os.Mkdir(dir, 0o777)
	os.Chmod(dir, 0o777)
	c := checkSocket(Config{SocketPath: filepath.Join(dir, "kw.sock"), DaemonUID: os.Geteuid()})
	if c.Level != Fail || !strings.Contains(c.Fix, "chmod go-w") {
		t.Errorf("a world-writable socket directory: %+v", c)
	}
	os.Chmod(dir, 0o755)
	c = checkSocket(Config{SocketPath: filepath.Join(dir, "kw.sock"), DaemonUID: os.Geteuid()})
	if c.Level != Warn || !strings.Contains(c.Detail, "does not exist") {
		t.Errorf("no socket: %+v", c)
	}
	os.WriteFile(filepath.Join(dir, "kw.sock"), nil, 0o600)
	if c := checkSocket(Config{SocketPath: filepath.Join(dir, "kw.sock"), DaemonUID: os.Geteuid()}); c.Level != Fail {
		t.Errorf("a regular file at the socket path: %+v", c)
	}
}

func TestClock(t *testing.T) {
	c := checkClock(Config{Now: func() time.Time { return time.Date(1970, 1, 1, 0, 0, 0, 0, time.UTC) }})
	if c.Level != Fail {
		t.Errorf("1970: %+v", c)
	}
}

func TestRunAndFailed(t *testing.T) {
	cs := Run(Config{StateDir: t.TempDir(), SocketPath: filepath.Join(t.TempDir(), "kw.sock"), DaemonUID: os.Geteuid(),
		Daemon: &Daemon{Backing: "mlock", Dumpable: true}})
	if len(cs) != 11 {
		t.Fatalf("%d checks", len(cs))
	}
	if !Failed(cs) {
		t.Errorf("a dumpable daemon did not fail: %+v", cs)
	}
	for _, c := range cs {
		if c.Level != OK && c.Level != Warn && c.Level != Fail {
			t.Errorf("check %q: level %q", c.Name, c.Level)
		}
		if c.Level != OK && c.Fix == "" && c.Name != "audit disk space" {
			t.Errorf("check %q: %s without a fix", c.Name, c.Level)
		}
	}
}

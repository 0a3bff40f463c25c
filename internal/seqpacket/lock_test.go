package seqpacket

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The lock file beside a socket is the listener's own: one made by
// another uid (who could hold its lock, or watch it) or a link (whose
// target the listener would create or lock) is refused.
func TestListenRefusesLockOfAnotherUser(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to make a file of another uid")
	}
	path := filepath.Join(t.TempDir(), "kw.sock")
	if err := os.WriteFile(path+".lock", nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chmod(path+".lock", 0o666)
	os.Chown(path+".lock", 3001, 3001)
	l, err := Listen(path, 0o600)
	if err == nil {
		l.Close()
		t.Fatal("Listen took a lock file of another uid")
	}
	if !strings.Contains(err.Error(), "lock file "+path+".lock belongs to uid 3001") {
		t.Errorf("error %q does not say what was found", err)
	}
}

func TestListenRefusesLinkedLock(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "kw.sock")
	target := filepath.Join(dir, "created-through-the-link")
	if err := os.Symlink(target, path+".lock"); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(path, 0o600)
	if err == nil {
		l.Close()
		t.Fatal("Listen followed a link at the lock file's path")
	}
	if !strings.Contains(err.Error(), "is a symbolic link") {
		t.Errorf("error %q does not say what was found", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("the link's target was created: %v", err)
	}
}

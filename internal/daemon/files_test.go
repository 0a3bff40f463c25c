package daemon

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const otherUID = 3001

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make files of another uid")
	}
}

// checkDir's decisions on directories made as another user would make
// them.
func TestCheckDir(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	mk := func(name string, mode os.FileMode, uid int) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		os.Chown(p, uid, uid)
		return p
	}
	link := func(name, target string, uid int) string {
		p := filepath.Join(base, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		os.Lchown(p, uid, uid)
		return p
	}
	own := mk("own", 0o700, 0)
	shared := mk("shared", 0o777|os.ModeSticky, 0)
	for _, tc := range []struct {
		name   string
		dir    string
		sticky bool
		want   string // "" for accepted
	}{
		{"own", own, false, ""},
		{"own, sticky allowed", own, true, ""},
		{"another user's", mk("theirs", 0o755, otherUID), true, "belongs to uid 3001"},
		{"group-writable", mk("group", 0o770, 0), true, "is writable by others (mode 0770)"},
		{"world-writable", mk("world", 0o777, 0), true, "is writable by others (mode 0777)"},
		{"sticky, where allowed", shared, true, ""},
		{"sticky, where not", shared, false, "is writable by others (mode 1777)"},
		{"a link by another user", link("theirlink", own, otherUID), true, "is a symbolic link made by uid 3001"},
		{"a link of root's to an own directory", link("rootlink", own, 0), false, ""},
		{"a link of root's to another user's", link("rootlink2", filepath.Join(base, "theirs"), 0), false, "belongs to uid 3001"},
		{"not a directory", link("file", "/dev/null", 0), false, "is not a directory"},
	} {
		err := checkDir("test directory", tc.dir, tc.sticky)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: %v, want an error with %q", tc.name, err, tc.want)
		}
	}
}

// The audit log's lock is never created or locked through a link, nor
// taken from another user.
func TestAuditLockRefusesLinksAndOthersFiles(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "created-through-the-link")
	path := filepath.Join(dir, "audit.log")
	os.Symlink(target, path+".lock")
	if f, err := lockAuditLog(path); err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
		if f != nil {
			f.Close()
		}
		t.Errorf("lock through a link: %v", err)
	}
	if _, err := os.Lstat(target); !os.IsNotExist(err) {
		t.Errorf("the link's target was created: %v", err)
	}

	requireRoot(t)
	os.Remove(path + ".lock")
	os.WriteFile(path+".lock", nil, 0o666)
	os.Chown(path+".lock", otherUID, otherUID)
	if f, err := lockAuditLog(path); err == nil || !strings.Contains(err.Error(), "belongs to uid 3001") {
		if f != nil {
			f.Close()
		}
		t.Errorf("lock file of another uid: %v", err)
	}
}

// The audit log's directory is refused if others may write to it, even
// sticky.
func TestAuditLogDirectoryNotShared(t *testing.T) {
	dir := t.TempDir()
	os.Chmod(dir, 0o777|os.ModeSticky)
	f, err := lockAuditLog(filepath.Join(dir, "audit.log"))
	if err == nil {
		f.Close()
		t.Fatal("an audit log directory others may write to was taken")
	}
	if !strings.Contains(err.Error(), "audit log directory "+dir+" is writable by others (mode 1777)") {
		t.Errorf("error %q does not say what was found", err)
	}
}

// The state directory: the daemon's or root's, and no one else's to write.
func TestStateDirectoryOfAnotherUser(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "state")
	os.Mkdir(dir, 0o700)
	os.Chown(dir, otherUID, otherUID)
	if err := prepareStateDir(dir); err == nil || !strings.Contains(err.Error(), "state directory "+dir+" belongs to uid 3001") {
		t.Errorf("state directory of another uid: %v", err)
	}
}

package keywarden

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Whom a client trusts, and how it says so.
func TestTrustDecisions(t *testing.T) {
	for _, tc := range []struct {
		t       trust
		trusted []uint32
		refused []uint32
		says    string
	}{
		{trust{self: 1000}, []uint32{0, 1000}, []uint32{1001, 65534}, "root or you (uid 1000)"},
		{trust{self: 0}, []uint32{0}, []uint32{1000}, "root"},
		{trust{self: 1000, named: 1001, fromEnv: true}, []uint32{0, 1000, 1001}, []uint32{1002},
			"root, you (uid 1000) or uid 1001 ($KEYWARDEN_DAEMON_UID)"},
		{trust{self: 0, named: 1001}, []uint32{0, 1001}, []uint32{1000}, "root or uid 1001 (DialOptions.DaemonUID)"},
		{trust{self: 1000, vouched: 999}, []uint32{0, 1000, 999}, []uint32{1001}, "root or you (uid 1000)"},
	} {
		for _, uid := range tc.trusted {
			if !tc.t.trusts(uid) {
				t.Errorf("%+v does not trust uid %d", tc.t, uid)
			}
		}
		for _, uid := range tc.refused {
			if tc.t.trusts(uid) {
				t.Errorf("%+v trusts uid %d", tc.t, uid)
			}
		}
		if got := tc.t.String(); got != tc.says {
			t.Errorf("%+v says %q, want %q", tc.t, got, tc.says)
		}
	}
}

func TestDaemonUIDFromEnvAndOptions(t *testing.T) {
	t.Setenv(DaemonUIDEnv, "1234")
	tr, err := newTrust(nil)
	if err != nil || tr.named != 1234 || !tr.fromEnv {
		t.Errorf("from $%s: %+v, %v", DaemonUIDEnv, tr, err)
	}
	if tr, err = newTrust(&DialOptions{DaemonUID: 77}); err != nil || tr.named != 77 || tr.fromEnv {
		t.Errorf("DialOptions wins over the environment: %+v, %v", tr, err)
	}
	t.Setenv(DaemonUIDEnv, "keywarden")
	if _, err := newTrust(nil); err == nil || !strings.Contains(err.Error(), `$KEYWARDEN_DAEMON_UID is "keywarden", not a uid`) {
		t.Errorf("a name in $%s: %v", DaemonUIDEnv, err)
	}
}

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make directories of other uids")
	}
}

// The socket's directory, made by whom and writable by whom: what a
// client of uid 1000 accepts before it connects.
func TestCheckSocketDirectory(t *testing.T) {
	requireRoot(t)
	base := t.TempDir()
	os.Chmod(base, 0o755)
	mk := func(name string, mode os.FileMode, uid int) string {
		p := filepath.Join(base, name)
		if err := os.Mkdir(p, 0o700); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, mode)
		os.Chown(p, uid, uid)
		return filepath.Join(p, "kw.sock")
	}
	link := func(name, target string, uid int) string {
		p := filepath.Join(base, name)
		if err := os.Symlink(target, p); err != nil {
			t.Fatal(err)
		}
		os.Lchown(p, uid, uid)
		return filepath.Join(p, "kw.sock")
	}
	mine := mk("mine", 0o700, 1000)
	for _, tc := range []struct {
		name   string
		socket string
		named  uint32
		want   string // "" for accepted
	}{
		{"mine", mine, 0, ""},
		{"root's", mk("roots", 0o755, 0), 0, ""},
		{"root's, sticky and shared, as /tmp", mk("tmp", 0o777|os.ModeSticky, 0), 0, ""},
		{"another user's", mk("theirs", 0o755, 1001), 0,
			"the socket's directory " + base + "/theirs belongs to uid 1001, not to root or you (uid 1000)"},
		{"another user's, trusted by name", filepath.Join(base, "theirs", "kw.sock"), 1001, ""},
		{"mine, but writable by others", mk("open", 0o777, 1000), 0, "is writable by others (mode 0777)"},
		{"mine, but group-writable", mk("group", 0o770, 1000), 0, "is writable by others (mode 0770)"},
		{"a link of another user's to mine", link("theirlink", filepath.Dir(mine), 1001), 0,
			"is a symbolic link made by uid 1001, not to root or you (uid 1000)"},
		{"a link of mine to another user's", link("mylink", filepath.Join(base, "theirs"), 1000), 0, "belongs to uid 1001"},
		{"a link of mine to mine", link("mylink2", filepath.Dir(mine), 1000), 0, ""},
		{"missing: connect reports it", filepath.Join(base, "none", "kw.sock"), 0, ""},
	} {
		tr := &trust{self: 1000, named: tc.named}
		err := tr.checkDir(tc.socket)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.want != "":
			var ue *UntrustedSocketError
			if err == nil || !strings.Contains(err.Error(), tc.want) || !errors.As(err, &ue) || !errors.Is(err, ErrUntrustedSocket) {
				t.Errorf("%s: %v, want an UntrustedSocketError with %q", tc.name, err, tc.want)
			}
		}
	}
}

// A directory that root gave a uid (every directory above it root's and
// closed to others, as /run/keywarden under systemd's RuntimeDirectory=)
// vouches for that uid; nothing under a directory others may write to,
// such as /tmp, does.
func TestRootVouchesForDirectoryOwner(t *testing.T) {
	requireRoot(t)
	if fi, err := os.Lstat("/run"); err != nil || !fi.IsDir() || fi.Mode().Perm()&0o022 != 0 {
		t.Skip("no /run closed to others here")
	}
	// A directory root made directly in /run and gave a system account.
	dir, err := os.MkdirTemp("/run", "keywarden-vouch-")
	if err != nil {
		t.Skip(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	os.Chmod(dir, 0o755)
	const system, person = 990, 1001
	os.Chown(dir, system, system)
	sock := filepath.Join(dir, "keywarden.sock")

	tr := &trust{self: 1000}
	if err := tr.checkDir(sock); err != nil || tr.vouched != system || !tr.trusts(system) {
		t.Fatalf("a directory root gave uid %d in /run: %v, vouched for %d", system, err, tr.vouched)
	}
	for _, bad := range []string{
		"/run/../run/" + filepath.Base(dir) + "/keywarden.sock", // not clean
		filepath.Base(dir) + "/keywarden.sock",                  // relative
	} {
		if vouched(bad) {
			t.Errorf("%s is vouched for", bad)
		}
	}
	// A person's directory, even in /run: a home is as closed as this.
	os.Chown(dir, person, person)
	if vouched(sock) {
		t.Errorf("a directory of uid %d (a person's) is vouched for", person)
	}
	os.Chown(dir, system, system)
	// Deeper than /run: root did not necessarily make it.
	sub := filepath.Join(dir, "sub")
	os.Mkdir(sub, 0o755)
	os.Chown(sub, system, system)
	if vouched(filepath.Join(sub, "keywarden.sock")) {
		t.Error("a directory below /run's own is vouched for")
	}
	// The same layout under a directory others may write to.
	tmp := t.TempDir()
	os.Chmod(tmp, 0o755)
	d := filepath.Join(tmp, "keywarden")
	os.Mkdir(d, 0o755)
	os.Chown(d, system, system)
	tr = &trust{self: 1000}
	if err := tr.checkDir(filepath.Join(d, "keywarden.sock")); err == nil || tr.vouched != 0 {
		t.Errorf("a directory of uid %d under %s was vouched for", system, os.TempDir())
	}
	// Writable by its group: not vouched.
	os.Chmod(dir, 0o775)
	if vouched(sock) {
		t.Error("a group-writable directory is vouched for")
	}
}

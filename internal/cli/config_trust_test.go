package cli

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The config file names the daemon's administrators: a directory above
// it that another user owns lets them move the whole subtree aside and
// put theirs in its place, however well kept the file and its own
// directory are. Every directory up to / is checked.
func TestReadConfigFileRefusesForeignAncestor(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another uid")
	}
	top := t.TempDir()
	os.Chmod(top, 0o755)
	theirs := filepath.Join(top, "theirs")
	sub := filepath.Join(theirs, "etc")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(sub, "keywarden.conf")
	if err := os.WriteFile(conf, []byte("log-level = \"info\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := readConfigFile(conf); err != nil {
		t.Fatalf("a file in directories of this user: %v", err)
	}
	if err := os.Chown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := readConfigFile(conf); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Fatalf("a directory of uid 65534 above the config file: %v; want refused", err)
	}
}

// A symbolic link in a directory another user owns, to a file that would
// pass every check on its own (a root-owned config elsewhere, say an old
// one naming them an administrator), is refused too: the directories on
// the path as given are checked, not only those it resolves to.
func TestReadConfigFileRefusesLinkInForeignDirectory(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to give a directory to another uid")
	}
	top := t.TempDir()
	os.Chmod(top, 0o755)
	good := filepath.Join(top, "good")
	if err := os.Mkdir(good, 0o755); err != nil {
		t.Fatal(err)
	}
	old := filepath.Join(good, "old.conf")
	if err := os.WriteFile(old, []byte("admin = [65534]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(top, "theirs")
	if err := os.Mkdir(theirs, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(theirs, "keywarden.conf")
	if err := os.Symlink(old, link); err != nil {
		t.Fatal(err)
	}
	if _, err := readConfigFile(link); err != nil {
		t.Fatalf("a link in a directory of this user: %v", err)
	}
	if err := os.Chown(theirs, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	if _, err := readConfigFile(link); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
		t.Fatalf("a link in a directory of uid 65534: %v; want refused", err)
	}
}

package audit

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// The log's files are opened without following links, and only if they
// are this process's or root's: whoever else could create files in the
// log's directory could otherwise make the daemon write into a file of
// theirs, or through a link into any file the daemon may write.

// otherUID owns files "someone else" made; chown needs root.
const otherUID = 3001

func requireRoot(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to make files of another uid")
	}
}

func TestOpenRefusesLinkedLog(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "victim")
	if err := os.WriteFile(target, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "audit.log")
	if err := os.Symlink(target, path); err != nil {
		t.Fatal(err)
	}
	l, err := Open(Options{Path: path})
	if err == nil {
		l.Close()
		t.Fatal("Open followed a symbolic link at the log's path")
	}
	if !strings.Contains(err.Error(), "is a symbolic link") {
		t.Errorf("error %q does not say what was found", err)
	}
	if b, _ := os.ReadFile(target); len(b) != 0 {
		t.Errorf("the link's target holds %d bytes now", len(b))
	}
}

func TestOpenRefusesLogOfAnotherUser(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := os.WriteFile(path, nil, 0o666); err != nil {
		t.Fatal(err)
	}
	os.Chown(path, otherUID, otherUID)
	l, err := Open(Options{Path: path})
	if err == nil {
		l.Close()
		t.Fatal("Open took a log file of another uid")
	}
	if !strings.Contains(err.Error(), "belongs to uid 3001") {
		t.Errorf("error %q does not say what was found", err)
	}
}

func TestOpenRefusesFIFO(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	if err := mkfifo(path); err != nil {
		t.Skip(err)
	}
	l, err := Open(Options{Path: path})
	if err == nil {
		l.Close()
		t.Fatal("Open took a FIFO for the log")
	}
	if !strings.Contains(err.Error(), "not a regular file") {
		t.Errorf("error %q does not say what was found", err)
	}
}

// PATH.tmp, through which the public-key file is replaced, is never
// followed: a link there is removed and the file it points at untouched.
func TestPublishPublicKeyIgnoresLinkedTmp(t *testing.T) {
	dir := t.TempDir()
	target := filepath.Join(dir, "victim")
	if err := os.WriteFile(target, []byte("keep me\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "audit.pub")
	if err := os.Symlink(target, path+".tmp"); err != nil {
		t.Fatal(err)
	}
	pub := testPub(t)
	if err := PublishPublicKeys(path, pub); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(target); string(b) != "keep me\n" {
		t.Errorf("the file PATH.tmp pointed at now holds %q", b)
	}
	b, err := os.ReadFile(path)
	if err != nil || !strings.Contains(string(b), hex.EncodeToString(pub)) {
		t.Errorf("public-key file: %q, %v", b, err)
	}
	if fi, err := os.Lstat(path); err != nil || !fi.Mode().IsRegular() {
		t.Errorf("the public-key file is not a regular file: %v", err)
	}
}

// A public-key file someone else made (listing a key of theirs, which
// verifiers would then trust) is refused, not extended.
func TestPublishPublicKeyRefusesFileOfAnotherUser(t *testing.T) {
	requireRoot(t)
	path := filepath.Join(t.TempDir(), "audit.pub")
	theirs := hex.EncodeToString(make([]byte, 32))
	if err := os.WriteFile(path, []byte(theirs+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	os.Chown(path, otherUID, otherUID)
	err := PublishPublicKeys(path, testPub(t))
	if err == nil || !strings.Contains(err.Error(), "belongs to uid 3001") {
		t.Fatalf("PublishPublicKey over another uid's file: %v", err)
	}
	if b, _ := os.ReadFile(path); string(b) != theirs+"\n" {
		t.Errorf("the file now holds %q", b)
	}
}

// A link at the public-key file's own path is not read through.
func TestPublishPublicKeyRefusesLinkedFile(t *testing.T) {
	dir := t.TempDir()
	theirs := filepath.Join(dir, "theirs.pub")
	if err := os.WriteFile(theirs, []byte(hex.EncodeToString(make([]byte, 32))+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "audit.pub")
	os.Symlink(theirs, path)
	if err := PublishPublicKeys(path, testPub(t)); err == nil || !strings.Contains(err.Error(), "is a symbolic link") {
		t.Fatalf("PublishPublicKey through a link: %v", err)
	}
}

func mkfifo(path string) error { return unix.Mkfifo(path, 0o600) }

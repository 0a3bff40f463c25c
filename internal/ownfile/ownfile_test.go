package ownfile

import (
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

func TestOpen(t *testing.T) {
	dir := t.TempDir()
	mine := filepath.Join(dir, "mine")
	if err := os.WriteFile(mine, []byte("x"), 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	os.Symlink(mine, link)
	fifo := filepath.Join(dir, "fifo")
	if err := unix.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	theirs := filepath.Join(dir, "theirs")
	os.WriteFile(theirs, []byte("x"), 0o600)
	chowned := os.Geteuid() == 0 && os.Chown(theirs, 3001, 3001) == nil

	f, err := OpenFile("test file", mine, os.O_RDONLY, 0, "")
	if err != nil {
		t.Fatalf("own regular file: %v", err)
	}
	f.Close()
	for _, tc := range []struct {
		path, want string
		flags      int
	}{
		{link, "test file " + link + " is a symbolic link", os.O_RDONLY},
		{fifo, "is not a regular file", os.O_RDONLY | unix.O_NONBLOCK},
		{filepath.Join(dir, "none"), "no such file", os.O_RDONLY},
	} {
		if _, err := Open("test file", tc.path, tc.flags, 0, ""); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: %v, want %q", tc.path, err, tc.want)
		}
	}
	if _, err := os.Lstat(link); err != nil {
		t.Fatal(err)
	}
	if chowned {
		_, err := Open("test file", theirs, os.O_RDONLY, 0, ", or else")
		if err == nil || !strings.Contains(err.Error(), "belongs to uid 3001") || !strings.HasSuffix(err.Error(), ", or else") {
			t.Errorf("another user's file: %v", err)
		}
	}
	// O_EXCL keeps its error for the caller to test.
	if _, err := Open("test file", mine, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600, ""); !os.IsExist(unwrapAll(err)) {
		t.Errorf("O_EXCL on an existing file: %v", err)
	}
}

func unwrapAll(err error) error {
	for {
		u, ok := err.(interface{ Unwrap() error })
		if !ok {
			return err
		}
		err = u.Unwrap()
	}
}

func TestModeBitsAndOwner(t *testing.T) {
	if got := ModeBits(fs.ModeSticky | fs.ModeSetgid | 0o755); got != 0o3755 {
		t.Errorf("ModeBits = %o", got)
	}
	fi, err := os.Stat(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if Owner(fi) != uint32(fi.Sys().(*syscall.Stat_t).Uid) {
		t.Error("Owner")
	}
}

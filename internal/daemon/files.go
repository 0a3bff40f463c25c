package daemon

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/ownfile"
)

// The daemon's files live beside its socket and in its state directory.
// Where another user may create files (a directory they own or may write
// to), they could make the daemon write through a symbolic link of theirs
// or into a file of theirs, or pre-empt a name the daemon needs. So the
// daemon checks each directory before it creates anything there, and opens
// each file it keeps without following a symbolic link, refusing one that
// belongs to anyone but its own uid or root.

// ownerOK reports whether a file of uid may be trusted by this process:
// its own uid's, or root's.
func ownerOK(uid uint32) bool { return uid == 0 || int(uid) == os.Geteuid() }

// checkDir refuses a directory that another user could tamper with: one
// that belongs to a uid other than the daemon's or root, a symbolic link
// that does, or one that others may write to. sticky allows a directory
// that others may write to but whose sticky bit keeps them from removing
// or renaming the daemon's files, as in /tmp.
func checkDir(what, dir string, sticky bool) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if uid := ownfile.Owner(fi); !ownerOK(uid) {
			return fmt.Errorf("%s %s is a symbolic link made by uid %d, not by this user (uid %d) or root: another user may have made it; remove it",
				what, dir, uid, os.Geteuid())
		}
		if fi, err = os.Stat(dir); err != nil {
			return fmt.Errorf("%s: %w", what, err)
		}
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s %s is not a directory", what, dir)
	}
	if uid := ownfile.Owner(fi); !ownerOK(uid) {
		return fmt.Errorf("%s %s belongs to uid %d, not to this user (uid %d) or root: another user may have made it; remove it, or choose another directory",
			what, dir, uid, os.Geteuid())
	}
	if m := fi.Mode(); m.Perm()&0o022 != 0 && !(sticky && m&fs.ModeSticky != 0) {
		return fmt.Errorf("%s %s is writable by others (mode %04o): they could put files there for the daemon to use; fix its permissions (chmod go-w %s) or choose another directory",
			what, dir, ownfile.ModeBits(m), dir)
	}
	return nil
}

// openOwn opens the file at path with flags, never through a symbolic
// link, and refuses anything but a regular file of the daemon's uid or
// root.
func openOwn(what, path string, flags int, perm uint32) (*os.File, error) {
	return ownfile.OpenFile(what, path, flags, perm, "")
}

// errLocked is lockOwn's error when another process holds the lock.
type errLocked struct{ pid string }

func (e *errLocked) Error() string { return "locked by pid " + e.pid }

// lockOwn opens path (the daemon's own file, created if need be), takes an
// exclusive lock on it without waiting, and writes this process's pid in
// it, so that the next daemon refused the lock can say who holds it. When
// another process holds it, the error is an *errLocked with that pid.
func lockOwn(what, path string) (*os.File, error) {
	f, err := openOwn(what, path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, err
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		defer f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			b := make([]byte, 16)
			n, _ := f.ReadAt(b, 0)
			pid := strings.TrimSpace(string(b[:n]))
			if _, perr := strconv.Atoi(pid); perr != nil {
				pid = "unknown"
			}
			return nil, &errLocked{pid: pid}
		}
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if err := f.Truncate(0); err == nil {
		f.WriteAt([]byte(strconv.Itoa(os.Getpid())+"\n"), 0)
	}
	return f, nil
}

// Package ownfile opens and checks the files and directories that a
// process of keywarden (the daemon, or a client checking the daemon's
// socket) must not take from another user: opened never through a
// symbolic link, and only if they belong to the expected uid or root.
//
// It owns nothing but these checks and their error messages; it never
// reads or writes the files' contents, but for ReadTrusted, which reads
// the files whose contents decide whom the daemon trusts (certificate
// authorities) from the descriptor it checked.
package ownfile

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"syscall"

	"golang.org/x/sys/unix"
)

// Open opens the file at path with flags, never through a symbolic link,
// and refuses anything but a regular file owned by this process's
// effective uid or root: where others can create files, they could
// otherwise have the caller write through a link of theirs or into a
// file of theirs. what names the file in errors ("lock file"); hint, if
// not empty, is added to the ownership error (", or choose ...").
func Open(what, path string, flags int, perm uint32, hint string) (int, error) {
	fd, err := unix.Open(path, flags|unix.O_NOFOLLOW|unix.O_CLOEXEC, perm)
	if errors.Is(err, unix.ELOOP) {
		return -1, fmt.Errorf("%s %s is a symbolic link: another user may have put it there; refusing to follow it (remove it)", what, path)
	}
	if err != nil {
		return -1, fmt.Errorf("%s %s: %w", what, path, err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("%s %s: %w", what, path, err)
	}
	switch {
	case st.Mode&unix.S_IFMT != unix.S_IFREG:
		err = fmt.Errorf("%s %s is not a regular file; remove it", what, path)
	case st.Uid != 0 && int(st.Uid) != os.Geteuid():
		err = fmt.Errorf("%s %s belongs to uid %d, not to this user (uid %d) or root: another user may have made it; remove it%s",
			what, path, st.Uid, os.Geteuid(), hint)
	}
	if err != nil {
		unix.Close(fd)
		return -1, err
	}
	return fd, nil
}

// ReadTrusted reads the file at path (followed through symbolic links,
// which system certificate stores use) if it is a regular file owned by
// root or this process's effective uid that neither group nor others may
// write: a file whose contents decide whom the daemon trusts. The bytes
// come from the descriptor checked, never from a second open. what names
// it in errors ("client CA file"); consequence says what a writer could do
// ("they could ...").
func ReadTrusted(what, path, consequence string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if uid := Owner(fi); uid != 0 && int(uid) != os.Geteuid() {
		return nil, fmt.Errorf("%s %s belongs to uid %d, neither root nor this user (uid %d): %s; refusing it",
			what, path, uid, os.Geteuid(), consequence)
	}
	if m := fi.Mode(); !m.IsRegular() || m.Perm()&0o022 != 0 {
		return nil, fmt.Errorf("%s %s is not a regular file, or is writable by group or others (mode %04o): %s; chmod go-w %s",
			what, path, m.Perm(), consequence, path)
	}
	const max = 16 << 20
	b, err := io.ReadAll(io.LimitReader(f, max+1))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if len(b) > max {
		return nil, fmt.Errorf("%s %s is larger than %d bytes", what, path, max)
	}
	return b, nil
}

// OpenFile is Open returning an *os.File.
func OpenFile(what, path string, flags int, perm uint32, hint string) (*os.File, error) {
	fd, err := Open(what, path, flags, perm, hint)
	if err != nil {
		return nil, err
	}
	return os.NewFile(uintptr(fd), path), nil
}

// Owner returns the uid that owns fi's file (all ones if unknown).
func Owner(fi fs.FileInfo) uint32 {
	if st, ok := fi.Sys().(*syscall.Stat_t); ok {
		return st.Uid
	}
	return ^uint32(0)
}

// ModeBits returns m's permission bits as chmod(1) writes them, with the
// setuid, setgid and sticky bits.
func ModeBits(m fs.FileMode) uint32 {
	u := uint32(m.Perm())
	if m&fs.ModeSetuid != 0 {
		u |= 0o4000
	}
	if m&fs.ModeSetgid != 0 {
		u |= 0o2000
	}
	if m&fs.ModeSticky != 0 {
		u |= 0o1000
	}
	return u
}

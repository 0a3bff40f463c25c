package unixsock

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Listen makes the socket with its mode, replaces a stale one, and never
// takes the place of another file or of a socket someone listens on;
// PeerIdentity is the process that connected.
func TestListen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "s.sock")
	l, err := Listen("test socket", path, 0o640, Options{PassCred: true})
	if err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Perm() != 0o640 {
		t.Fatalf("socket mode %v, %v; want 0640", fi.Mode().Perm(), err)
	}
	// Who connects is who the kernel says.
	done := make(chan error, 1)
	go func() {
		c, err := net.Dial("unix", path)
		if err == nil {
			defer c.Close()
			b := make([]byte, 1)
			c.Read(b)
		}
		done <- err
	}()
	uc, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	id, err := PeerIdentity(uc)
	if err != nil || id.PID != int32(os.Getpid()) || id.UID != uint32(os.Getuid()) {
		t.Fatalf("peer %+v, %v; want pid %d uid %d", id, err, os.Getpid(), os.Getuid())
	}
	if id.Pidfd >= 0 {
		defer closeFD(id.Pidfd)
	}
	uc.Close()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	// Someone listens: refused.
	if _, err := Listen("test socket", path, 0o600, Options{}); err == nil || !strings.Contains(err.Error(), "another process listens") {
		t.Fatalf("a live socket replaced: %v", err)
	}
	// A stale socket (nobody listens) is replaced.
	l.SetUnlinkOnClose(false)
	l.Close()
	l2, err := Listen("test socket", path, 0o600, Options{UnlinkOnClose: true})
	if err != nil {
		t.Fatalf("a stale socket not replaced: %v", err)
	}
	l2.Close()
	if _, err := os.Lstat(path); !os.IsNotExist(err) {
		t.Fatalf("UnlinkOnClose left the socket: %v", err)
	}
	// Another file is never replaced.
	other := filepath.Join(dir, "file")
	os.WriteFile(other, []byte("keep"), 0o600)
	if _, err := Listen("test socket", other, 0o600, Options{}); err == nil || !strings.Contains(err.Error(), "not a socket") {
		t.Fatalf("a file replaced by a socket: %v", err)
	}
	if b, _ := os.ReadFile(other); string(b) != "keep" {
		t.Fatal("the file was changed")
	}
}

func closeFD(fd int) { os.NewFile(uintptr(fd), "pidfd").Close() }

func TestRateLog(t *testing.T) {
	now := time.Unix(1000, 0)
	r := &RateLog{Interval: time.Second, Now: func() time.Time { return now }}
	if ok, held := r.Allow(); !ok || held != 0 {
		t.Fatalf("first: %v %d", ok, held)
	}
	for range 100 {
		if ok, _ := r.Allow(); ok {
			t.Fatal("a second line within the interval")
		}
		now = now.Add(time.Millisecond)
	}
	now = now.Add(time.Second)
	if ok, held := r.Allow(); !ok || held != 100 {
		t.Fatalf("after the interval: %v %d, want true 100", ok, held)
	}
}

// WriterPID reads the pid of the credentials, closes the descriptors
// that came with them, and allocates nothing.
func TestWriterPID(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	creds := unix.UnixCredentials(&unix.Ucred{Pid: 4242, Uid: 1, Gid: 2})
	if got := WriterPID(creds); got != 4242 {
		t.Fatalf("pid %d, want 4242", got)
	}
	dup, err := unix.Dup(int(w.Fd()))
	if err != nil {
		t.Fatal(err)
	}
	oob := append(unix.UnixRights(dup), creds...)
	if got := WriterPID(oob); got != 4242 {
		t.Fatalf("pid %d with descriptors, want 4242", got)
	}
	if _, err := unix.FcntlInt(uintptr(dup), unix.F_GETFD, 0); err != unix.EBADF {
		t.Fatalf("a passed descriptor left open: %v", err)
	}
	for _, b := range [][]byte{nil, creds[:10], {0xff, 0xff, 0, 0, 0, 0, 0, 0}} {
		if got := WriterPID(b); got != 0 {
			t.Errorf("WriterPID(%x) = %d, want 0", b, got)
		}
	}
	if a := testing.AllocsPerRun(100, func() { WriterPID(creds) }); a != 0 {
		t.Errorf("%v allocations", a)
	}
}

package seqpacket

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// A listener made from a socket another process also holds (systemd's,
// under socket activation) serves it, and closing it leaves the socket
// working for that process: no shutdown(2), no removal of its file.
func TestFileListenerLeavesSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	if err := unix.Listen(fd, 16); err != nil {
		t.Fatal(err)
	}
	// The daemon's copy; fd stays the "service manager's".
	dup, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	l, err := FileListener(dup, path)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED); v != 1 {
		t.Errorf("SO_PASSCRED not set on the passed socket")
	}
	c, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatal(err)
	}
	sc, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	sc.Close()
	c.Close()

	accepted := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		accepted <- err
	}()
	time.Sleep(50 * time.Millisecond) // Accept blocks in the kernel
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-accepted:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Accept")
	}
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("the socket file was removed: %v", err)
	}
	// The next daemon gets the socket, still listening, from its holder.
	c2, err := Dial(context.Background(), path)
	if err != nil {
		t.Fatalf("the socket no longer accepts connections: %v", err)
	}
	defer c2.Close()
	nfd, _, err := unix.Accept4(fd, unix.SOCK_CLOEXEC)
	if err != nil {
		t.Fatalf("accept on the holder's socket: %v", err)
	}
	unix.Close(nfd)
	// A stream socket is no main socket.
	sfd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	defer unix.Close(sfd)
	if _, err := FileListener(sfd, path); err == nil {
		t.Error("FileListener took a stream socket")
	}
}

package seqpacket

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func listen(t *testing.T) *Listener {
	t.Helper()
	l, err := Listen(filepath.Join(t.TempDir(), "s.sock"), 0o600)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

func pair(t *testing.T) (client, server *Conn) {
	t.Helper()
	l := listen(t)
	ch := make(chan *Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			t.Error(err)
		}
		ch <- c
	}()
	client, err := Dial(context.Background(), l.Path())
	if err != nil {
		t.Fatal(err)
	}
	server = <-ch
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestMessagesKeepBoundariesAndCredentials(t *testing.T) {
	client, server := pair(t)
	pidfd, err := server.EnableCredentials()
	if err != nil {
		t.Fatal(err)
	}
	msgs := [][]byte{[]byte("one"), bytes.Repeat([]byte{7}, 200<<10), []byte("three")}
	for _, m := range msgs {
		if err := client.Send(m); err != nil {
			t.Fatal(err)
		}
	}
	buf := make([]byte, 256<<10)
	oob := make([]byte, OOBSize)
	for _, want := range msgs {
		m, err := server.RecvMsg(buf, oob)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(buf[:m.N], want) {
			t.Fatalf("got %d bytes, want %d", m.N, len(want))
		}
		if !m.HasCred || m.Cred.PID != int32(os.Getpid()) || m.Cred.UID != uint32(os.Getuid()) || m.Cred.GID != uint32(os.Getgid()) {
			t.Fatalf("credentials %+v (has %v), want pid %d uid %d", m.Cred, m.HasCred, os.Getpid(), os.Getuid())
		}
		if pidfd != (m.Cred.Pidfd >= 0) {
			t.Fatalf("pidfd enabled %v but message pidfd %d", pidfd, m.Cred.Pidfd)
		}
		if m.Cred.Pidfd >= 0 {
			// The pidfd must name this very process.
			if err := unix.PidfdSendSignal(m.Cred.Pidfd, 0, nil, 0); err != nil {
				t.Fatalf("pidfd_send_signal(0): %v", err)
			}
			unix.Close(m.Cred.Pidfd)
		}
	}
	// And a reply back, received without credentials.
	if err := server.Send([]byte("reply")); err != nil {
		t.Fatal(err)
	}
	n, err := client.Recv(buf)
	if err != nil || string(buf[:n]) != "reply" {
		t.Fatalf("Recv = %q, %v", buf[:n], err)
	}
}

func TestTruncationReportsRealLength(t *testing.T) {
	client, server := pair(t)
	client.Send(bytes.Repeat([]byte{1}, 1000))
	client.Send([]byte("next"))
	buf := make([]byte, 10)
	n, err := server.Recv(buf)
	if err != nil || n != 1000 {
		t.Fatalf("Recv = %d, %v; want 1000 (truncated)", n, err)
	}
	n, err = server.Recv(buf)
	if err != nil || string(buf[:n]) != "next" {
		t.Fatalf("the message after a truncated one: %q, %v", buf[:n], err)
	}
}

func TestPassedDescriptorsAreClosed(t *testing.T) {
	client, server := pair(t)
	server.EnableCredentials()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	rights := unix.UnixRights(int(r.Fd()), int(w.Fd()))
	if err := unix.Sendmsg(client.fd, []byte("x"), rights, nil, 0); err != nil {
		t.Fatal(err)
	}
	before := openFDs(t)
	buf := make([]byte, 16)
	m, err := server.RecvMsg(buf, make([]byte, OOBSize))
	if err != nil {
		t.Fatal(err)
	}
	if m.Cred.Pidfd >= 0 {
		unix.Close(m.Cred.Pidfd)
	}
	// The first is the receiver's to close; the others are closed.
	if m.FD < 0 {
		t.Fatal("the first passed descriptor was not kept")
	}
	unix.Close(m.FD)
	if after := openFDs(t); after != before {
		t.Fatalf("open descriptors went from %d to %d: passed descriptors leaked", before, after)
	}
}

func openFDs(t *testing.T) int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

func TestPeerClosedAndCloseWakesReceiver(t *testing.T) {
	client, server := pair(t)
	done := make(chan error, 1)
	go func() {
		_, err := server.Recv(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	client.Close()
	if err := <-done; !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("Recv after peer close: %v, want ErrPeerClosed", err)
	}
	// Close of our own side wakes a blocked receiver too.
	c2, s2 := pair(t)
	_ = c2
	go func() {
		_, err := s2.Recv(make([]byte, 10))
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	s2.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Recv returned no error after Close")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Recv")
	}
	if err := s2.Send([]byte("x")); !errors.Is(err, ErrClosed) {
		t.Fatalf("Send after Close: %v, want ErrClosed", err)
	}
}

func TestCloseWakesAccept(t *testing.T) {
	l := listen(t)
	done := make(chan error, 1)
	go func() {
		_, err := l.Accept()
		done <- err
	}()
	time.Sleep(20 * time.Millisecond)
	l.Close()
	select {
	case err := <-done:
		if !errors.Is(err, ErrClosed) {
			t.Fatalf("Accept after Close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not wake a blocked Accept")
	}
	if _, err := os.Stat(l.Path()); !os.IsNotExist(err) {
		t.Fatalf("socket file still there after Close: %v", err)
	}
}

func TestListenRefusesLiveAndReplacesStale(t *testing.T) {
	l := listen(t)
	if _, err := Listen(l.Path(), 0o600); !errors.Is(err, ErrInUse) {
		t.Fatalf("second Listen on a live path: %v, want ErrInUse", err)
	}

	// A stale socket: bound, never listened on, its owner gone.
	dir := t.TempDir()
	path := filepath.Join(dir, "stale.sock")
	fd, _ := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET, 0)
	if err := unix.Bind(fd, &unix.SockaddrUnix{Name: path}); err != nil {
		t.Fatal(err)
	}
	unix.Close(fd)
	l2, err := Listen(path, 0o600)
	if err != nil {
		t.Fatalf("Listen over a stale socket: %v", err)
	}
	l2.Close()

	// Not a socket: left alone.
	file := filepath.Join(dir, "file")
	os.WriteFile(file, []byte("precious"), 0o600)
	if _, err := Listen(file, 0o600); err == nil {
		t.Fatal("Listen replaced a regular file")
	}
	if b, _ := os.ReadFile(file); string(b) != "precious" {
		t.Fatal("regular file was modified")
	}
}

func TestListenSetsMode(t *testing.T) {
	path := filepath.Join(t.TempDir(), "m.sock")
	l, err := Listen(path, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o666 {
		t.Fatalf("mode %v, want 0666", fi.Mode().Perm())
	}
}

func TestDialErrors(t *testing.T) {
	_, err := Dial(context.Background(), filepath.Join(t.TempDir(), "none.sock"))
	var de *DialError
	if !errors.As(err, &de) || !errors.Is(err, unix.ENOENT) {
		t.Fatalf("Dial of a missing socket: %v", err)
	}
}

func TestRecvTimeout(t *testing.T) {
	client, _ := pair(t)
	client.SetRecvTimeout(10 * time.Millisecond)
	if _, err := client.Recv(make([]byte, 4)); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Recv with nothing to read: %v, want ErrTimeout", err)
	}
}

func TestMaxMessage(t *testing.T) {
	client, _ := pair(t)
	if m := client.MaxMessage(); m < 256<<10 {
		t.Logf("send buffer allows only %d-byte messages (net.core.wmem_max too small)", m)
	}
}

// TestTryRecvMsg: it returns a queued message with its credentials, and
// ErrWouldBlock at once when none is queued; ErrPeerClosed once the peer
// has gone.
func TestTryRecvMsg(t *testing.T) {
	client, server := pair(t)
	if _, err := server.EnableCredentials(); err != nil {
		t.Fatal(err)
	}
	buf, oob := make([]byte, 64), make([]byte, OOBSize)
	if _, err := server.TryRecvMsg(buf, oob); !errors.Is(err, ErrWouldBlock) {
		t.Fatalf("nothing queued: %v", err)
	}
	if err := client.Send([]byte("one")); err != nil {
		t.Fatal(err)
	}
	m, err := server.TryRecvMsg(buf, oob)
	if err != nil || string(buf[:m.N]) != "one" || !m.HasCred || m.Cred.PID != int32(os.Getpid()) {
		t.Fatalf("queued message: %+v %q %v", m, buf[:m.N], err)
	}
	if m.Cred.Pidfd >= 0 {
		unix.Close(m.Cred.Pidfd)
	}
	client.Close()
	if _, err := server.TryRecvMsg(buf, oob); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("after the peer closed: %v", err)
	}
}

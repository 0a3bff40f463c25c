package systemd

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// listen makes a NOTIFY_SOCKET for a test and returns what it receives.
func listen(t *testing.T) (string, <-chan string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	ch := make(chan string, 64)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, err := c.Read(buf)
			if err != nil {
				return
			}
			ch <- string(buf[:n])
		}
	}()
	return path, ch
}

func recv(t *testing.T, ch <-chan string) string {
	t.Helper()
	select {
	case m := <-ch:
		return m
	case <-time.After(5 * time.Second):
		t.Fatal("no notification")
	}
	return ""
}

func TestNotifier(t *testing.T) {
	path, ch := listen(t)
	t.Setenv("NOTIFY_SOCKET", path)
	t.Setenv("WATCHDOG_USEC", "500000")
	t.Setenv("WATCHDOG_PID", "")
	n, err := NewNotifier()
	if err != nil || n == nil {
		t.Fatalf("NewNotifier: %v, %v", n, err)
	}
	defer n.Close()
	// The variables are consumed: the daemon's children never see them.
	for _, v := range []string{"NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"} {
		if _, ok := os.LookupEnv(v); ok {
			t.Errorf("%s still set", v)
		}
	}
	if got := n.Watchdog(); got != 500*time.Millisecond {
		t.Errorf("watchdog %v, want 500ms", got)
	}
	n.Ready("sealed, waiting for unseal")
	if m := recv(t, ch); m != "READY=1\nSTATUS=sealed, waiting for unseal" {
		t.Errorf("ready: %q", m)
	}
	n.Status("sealed, waiting for unseal") // unchanged: not sent
	n.Status("serving 3 keys")
	if m := recv(t, ch); m != "STATUS=serving 3 keys" {
		t.Errorf("status: %q", m)
	}
	n.Ping()
	if m := recv(t, ch); m != "WATCHDOG=1" {
		t.Errorf("watchdog: %q", m)
	}
	n.Reloading()
	if m := recv(t, ch); !strings.HasPrefix(m, "RELOADING=1\nMONOTONIC_USEC=") {
		t.Errorf("reloading: %q", m)
	}
	n.Stopping()
	if m := recv(t, ch); !strings.HasPrefix(m, "STOPPING=1") {
		t.Errorf("stopping: %q", m)
	}
}

// A watchdog meant for another process (WATCHDOG_PID) is not ours.
func TestWatchdogOtherPID(t *testing.T) {
	if d := watchdogInterval("1000000", "1", 2); d != 0 {
		t.Errorf("watchdog for pid 1 taken by pid 2: %v", d)
	}
	if d := watchdogInterval("1000000", "2", 2); d != time.Second {
		t.Errorf("own watchdog: %v", d)
	}
	if d := watchdogInterval("junk", "", 2); d != 0 {
		t.Errorf("bad WATCHDOG_USEC: %v", d)
	}
}

// Without NOTIFY_SOCKET nothing is sent and nothing fails.
func TestNoNotifySocket(t *testing.T) {
	t.Setenv("NOTIFY_SOCKET", "")
	os.Unsetenv("NOTIFY_SOCKET")
	n, err := NewNotifier()
	if n != nil || err != nil {
		t.Fatalf("NewNotifier without NOTIFY_SOCKET: %v, %v", n, err)
	}
	if err := n.Ready("x"); err != nil {
		t.Error(err)
	}
	if err := n.Stopping(); err != nil {
		t.Error(err)
	}
}

// An abstract NOTIFY_SOCKET (@name) is reached too.
func TestAbstractNotifySocket(t *testing.T) {
	name := "keywarden-test-" + strings.ReplaceAll(t.Name(), "/", "-") + time.Now().Format("150405.000000000")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "@" + name, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	t.Setenv("NOTIFY_SOCKET", "@"+name)
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()
	n.Ready("up")
	buf := make([]byte, 256)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	k, err := c.Read(buf)
	if err != nil || string(buf[:k]) != "READY=1\nSTATUS=up" {
		t.Fatalf("got %q, %v", buf[:k], err)
	}
}

// A NOTIFY_SOCKET whose reader never reads (a hung or hostile receiver)
// fills up; the daemon's notifications must then fail in bounded time,
// not block it: Stopping() is sent on the way to wiping the keys, and
// Reloading() from the loop that handles signals.
func TestNotifyFullReceiverDoesNotBlock(t *testing.T) {
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close() // never read
	t.Setenv("NOTIFY_SOCKET", path)
	n, err := NewNotifier()
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		for i := 0; i < 10000; i++ {
			if n.Send("STATUS=filling the receiver's queue "+strings.Repeat("x", 512)) != nil {
				break
			}
		}
		n.Stopping()
	}()
	select {
	case <-done:
		n.Close()
	case <-time.After(10 * time.Second):
		// Not n.Close(): the blocked send holds its lock.
		t.Fatal("a notification to a receiver that does not read blocked")
	}
}

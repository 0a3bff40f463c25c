package e2e_test

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
)

// Idle connections (docs/performance.md, "Connections"): a connection
// that has been idle for a second holds no thread and no receive buffer
// in the daemon, so thousands of them cost little memory. The bound is the
// documented one, 32 KiB of resident memory per idle connection, against
// the daemon's own before they were opened.

const (
	idleConns        = 2000
	idleRSSPerConn   = 32 << 10
	idleThreadsBound = 256 + 64 // the daemon's blocking receivers, and its own
)

// procStatus reads fields of /proc/PID/status, in bytes for those in kB.
func procStatus(t *testing.T, pid int) map[string]int64 {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatalf("the daemon is gone: %v", err)
	}
	out := map[string]int64{}
	for line := range strings.Lines(string(b)) {
		name, rest, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		if len(f) == 0 {
			continue
		}
		n, err := strconv.ParseInt(f[0], 10, 64)
		if err != nil {
			continue
		}
		if len(f) > 1 && f[1] == "kB" {
			n <<= 10
		}
		out[name] = n
	}
	return out
}

func TestIdleConnectionsMemory(t *testing.T) {
	d := startDaemon(t, "--max-connections", strconv.Itoa(idleConns+100), "--max-connections-per-uid", strconv.Itoa(idleConns+100))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pid := d.cmd.Process.Pid

	// The daemon's memory with a few connections that did some work, so
	// that what a first request allocates once is counted before.
	warm := make([]*keywarden.Client, 8)
	for i := range warm {
		c, err := d.dial(ctx)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if err := c.Ping(ctx, make([]byte, 100<<10)); err != nil {
			t.Fatal(err)
		}
		warm[i] = c
	}
	time.Sleep(2500 * time.Millisecond) // the warm connections park
	before := procStatus(t, pid)

	clients := make([]*keywarden.Client, 0, idleConns)
	defer func() {
		for _, c := range clients {
			c.Close()
		}
	}()
	for i := range idleConns {
		c, err := d.dial(ctx)
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		clients = append(clients, c)
		// Some send a large request: its buffer must not stay with the
		// connection once it is idle.
		if i%10 == 0 {
			if err := c.Ping(ctx, make([]byte, 200<<10)); err != nil {
				t.Fatalf("connection %d: %v", i, err)
			}
		}
	}
	// A connection parks after a second without a request.
	time.Sleep(2500 * time.Millisecond)
	after := procStatus(t, pid)
	per := (after["VmRSS"] - before["VmRSS"]) / idleConns
	t.Logf("daemon: RSS %d MiB before, %d MiB with %d idle connections (%d bytes each); %d threads, peak RSS %d MiB",
		before["VmRSS"]>>20, after["VmRSS"]>>20, idleConns, per, after["Threads"], after["VmHWM"]>>20)
	if per > idleRSSPerConn {
		t.Errorf("an idle connection costs %d bytes of resident memory, over the documented %d", per, idleRSSPerConn)
	}
	if after["Threads"] > idleThreadsBound {
		t.Errorf("the daemon has %d threads for %d idle connections: idle connections hold threads", after["Threads"], idleConns)
	}

	// Every parked connection still answers, a large request included.
	for i, c := range clients {
		payload := []byte(nil)
		if i%100 == 0 {
			payload = make([]byte, 200<<10)
		}
		if err := c.Ping(ctx, payload); err != nil {
			t.Fatalf("idle connection %d: %v", i, err)
		}
	}
}

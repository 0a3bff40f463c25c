package e2e_test

import (
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// delayProxy forwards the module's connections to the daemon at daemon,
// holding each of the daemon's writes for delay: a daemon slow to answer.
func delayProxy(t *testing.T, path, daemon string, delay time.Duration) {
	t.Helper()
	l, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	forward := func(dst, src net.Conn, delay time.Duration) {
		buf := make([]byte, 1<<20)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				time.Sleep(delay)
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		dst.Close()
		src.Close()
	}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("unix", daemon)
			if err != nil {
				c.Close()
				continue
			}
			go forward(d, c, 0)
			go forward(c, d, delay)
		}
	}()
}

// pollRounds runs keywarden-p11bench's HMAC for a moment under strace and
// returns how many times the module polled its socket for a reply (runs
// of receives that do not wait, MSG_DONTWAIT) and how many operations it
// did.
func pollRounds(t *testing.T, e *p11Env) (rounds, ops int) {
	t.Helper()
	strace := needTool(t, "strace")
	trace := filepath.Join(t.TempDir(), "trace")
	out, code := e.run(t, nil, strace, "-f", "-qq", "-e", "trace=recvfrom", "-o", trace,
		p11BenchHost(t), e.mod, "any", "0.5", "1", "hmac-sha256-256B")
	if code != 0 {
		t.Fatalf("keywarden-p11bench: %s", out)
	}
	for _, l := range strings.Split(out, "\n") {
		if f := strings.Fields(l); len(f) == 2 && f[0] == "hmac-sha256-256B" {
			var rate float64
			if _, err := fmt.Sscan(strings.TrimSuffix(f[1], "/s"), &rate); err == nil {
				ops = int(rate * 0.5)
			}
		}
	}
	b, err := os.ReadFile(trace)
	if err != nil {
		t.Fatal(err)
	}
	polling := false
	for _, l := range strings.Split(string(b), "\n") {
		if !strings.Contains(l, "recvfrom(") {
			continue
		}
		p := strings.Contains(l, "MSG_DONTWAIT")
		if p && !polling {
			rounds++
		}
		polling = p
	}
	return rounds, ops
}

// The module polls its socket for a reply before it sleeps while the
// daemon answers quickly, and stops polling for a daemon slow to answer:
// its waits for replies then cost no processor.
func TestPKCS11ModulePollsOnlyForQuickReplies(t *testing.T) {
	e := p11Daemon(t)
	rounds, ops := pollRounds(t, e)
	t.Logf("daemon: %d operations, %d rounds of polling", ops, rounds)
	if rounds == 0 {
		t.Errorf("the module never polled for a reply")
	}

	proxy := filepath.Join(e.dir, "slow.sock")
	delayProxy(t, proxy, e.sock, 2*time.Millisecond)
	e.extraEnv = append(e.extraEnv, "KEYWARDEN_PKCS11_SOCKET="+proxy)
	rounds, ops = pollRounds(t, e)
	t.Logf("a daemon 2 ms slow: %d operations, %d rounds of polling", ops, rounds)
	if ops < 20 {
		t.Fatalf("%d operations in half a second: too few to tell", ops)
	}
	// The first receive of the connection polls (it knows no wait yet);
	// after it, every wait is long.
	if rounds > 2 {
		t.Errorf("%d rounds of polling for %d replies that each took 2 ms", rounds, ops)
	}
}

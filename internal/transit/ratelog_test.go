package transit

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/server"
)

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// A uid over its connection limit may connect as often as it likes: each
// connection is refused, and the daemon's log gets one line for them per
// interval, not one each.
func TestRefusedConnectionsLogRateLimited(t *testing.T) {
	dir := t.TempDir()
	alog, err := audit.Open(audit.Options{Path: filepath.Join(dir, "audit.log"), Sync: audit.SyncGrouped})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Audit: alog, Limits: server.Limits{MaxConnections: 1, MaxConnectionsPerUID: 1}})
	if err != nil {
		t.Fatal(err)
	}
	var logs syncBuffer
	f, err := New(Config{Server: srv, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); srv.Shutdown(context.Background()); alog.Close() })
	sock := filepath.Join(dir, "transit.sock")
	l, err := Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	go f.Serve(l)
	held, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	io.WriteString(held, "POST /v1/transit/random HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	held.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := held.Read(make([]byte, 1)); err != nil {
		t.Fatal(err)
	}
	const tries = 50
	for range tries {
		c, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, c); err != nil { // closed by the daemon
			t.Fatalf("a connection past the limit: %v", err)
		}
		c.Close()
	}
	if n := strings.Count(logs.String(), "connection refused"); n < 1 || n > 5 {
		t.Fatalf("%d refusals gave %d log lines:\n%s", tries, n, logs.String())
	}
}

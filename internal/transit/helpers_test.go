package transit

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/server"
)

// testFront is a Front over an in-memory core with an audit log, serving
// a socket in a temporary directory.
type testFront struct {
	*Front
	srv      *server.Server
	log      *audit.Log
	logPath  string
	sockPath string
	client   *http.Client
}

func newTestFront(t testing.TB, cfg Config) *testFront {
	t.Helper()
	dir := t.TempDir()
	tf := &testFront{logPath: filepath.Join(dir, "audit.log"), sockPath: filepath.Join(dir, "transit.sock")}
	var err error
	if tf.log, err = audit.Open(audit.Options{Path: tf.logPath, Sync: audit.SyncGrouped}); err != nil {
		t.Fatal(err)
	}
	if tf.srv, err = server.New(server.Config{Audit: tf.log}); err != nil {
		t.Fatal(err)
	}
	cfg.Server = tf.srv
	if tf.Front, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(tf.sockPath, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	go tf.Serve(l)
	tf.client = unixClient(tf.sockPath)
	t.Cleanup(func() {
		tf.client.CloseIdleConnections()
		tf.Close()
		tf.srv.Shutdown(context.Background())
		tf.log.Close()
	})
	return tf
}

func unixClient(path string) *http.Client {
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}
}

// call makes a request of the transit API and returns its status and
// decoded body (nil if none).
func (tf *testFront) call(t testing.TB, method, path string, body any) (int, map[string]any) {
	t.Helper()
	var rd io.Reader
	switch b := body.(type) {
	case nil:
	case string:
		rd = strings.NewReader(b)
	default:
		j, err := json.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		rd = bytes.NewReader(j)
	}
	req, err := http.NewRequest(method, "http://keywarden/v1/transit/"+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("X-Vault-Token", "ignored")
	resp, err := tf.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if len(b) == 0 {
		return resp.StatusCode, nil
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatalf("%s %s: %d, not JSON: %q", method, path, resp.StatusCode, b)
	}
	return resp.StatusCode, m
}

// ok makes a request that must succeed and returns its data.
func (tf *testFront) ok(t testing.TB, method, path string, body any) map[string]any {
	t.Helper()
	code, m := tf.call(t, method, path, body)
	if code != 200 && code != 204 {
		t.Fatalf("%s %s: %d %v", method, path, code, m)
	}
	d, _ := m["data"].(map[string]any)
	return d
}

// fails makes a request that must fail with code and returns its
// errors.
func (tf *testFront) fails(t testing.TB, code int, method, path string, body any) string {
	t.Helper()
	got, m := tf.call(t, method, path, body)
	if got != code {
		t.Fatalf("%s %s: %d %v, want %d", method, path, got, m, code)
	}
	errs, ok := m["errors"].([]any)
	if !ok {
		t.Fatalf("%s %s: no errors in %v", method, path, m)
	}
	return fmt.Sprint(errs...)
}

// records reads the request records of the audit log.
func (tf *testFront) records(t testing.TB) []*audit.Record {
	t.Helper()
	b, err := os.ReadFile(tf.logPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []*audit.Record
	for line := range bytes.Lines(b) {
		if len(bytes.Trim(line, "\x00\n")) == 0 {
			break
		}
		r, err := audit.ParseRecord(line)
		if err != nil {
			t.Fatalf("%v in %q", err, line)
		}
		if r.Kind == audit.KindRequest {
			out = append(out, r)
		}
	}
	return out
}

// mustRefusal fails the test unless the log holds a refusal by the front
// of op with status whose message holds want, by this process.
func (tf *testFront) mustRefusal(t testing.TB, op, status, want string) {
	t.Helper()
	var got []string
	for _, r := range tf.records(t) {
		if r.Front == FrontName && r.Op == op && r.Status == status && strings.Contains(r.Msg, want) {
			if r.Caller.PID != int32(os.Getpid()) || r.Caller.UID != uint32(os.Getuid()) {
				t.Errorf("refusal recorded for pid %d uid %d", r.Caller.PID, r.Caller.UID)
			}
			return
		}
		got = append(got, r.Op+" "+r.Status+" "+r.Msg)
	}
	t.Fatalf("no %s %s refusal %q in the audit log:\n%s", op, status, want, strings.Join(got, "\n"))
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func str(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

package transit

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Each malformed request is a clear 4xx, recorded in the audit log as the
// front's refusal, and does not disturb the next request.
func TestBadInput(t *testing.T) {
	tf := newTestFront(t, Config{MaxBody: 4096, MaxBatch: 8})
	tf.ok(t, "POST", "keys/k", nil)
	cases := []struct {
		method, path string
		body         any
		code         int
		op, status   string
		msg          string
	}{
		{"POST", "encrypt/k", `{"plaintext": `, 400, "encrypt", "INVALID_ARGUMENT", "failed to parse JSON input"},
		{"POST", "encrypt/k", `[1,2]`, 400, "encrypt", "INVALID_ARGUMENT", "failed to parse JSON input"},
		{"POST", "encrypt/k", `{"a":1} {"b":2}`, 400, "encrypt", "INVALID_ARGUMENT", "data after the JSON object"},
		{"POST", "encrypt/k", map[string]any{"plaintext": "%%%"}, 400, "encrypt", "INVALID_ARGUMENT", "plaintext: not valid base64"},
		{"POST", "decrypt/k", map[string]any{"ciphertext": "v1:abc"}, 400, "decrypt", "INVALID_ARGUMENT", "no vault prefix"},
		{"POST", "decrypt/k", map[string]any{"ciphertext": "vault:v0:abc="}, 400, "decrypt", "INVALID_ARGUMENT", "invalid version"},
		{"POST", "encrypt/k", map[string]any{"batch_input": make([]any, 9)}, 400, "encrypt", "RESOURCE_EXHAUSTED", "batch_input of 9 items: at most 8"},
		{"POST", "encrypt/k", map[string]any{"batch_input": "x"}, 400, "encrypt", "INVALID_ARGUMENT", "batch_input: want a list"},
		{"POST", "encrypt/k", map[string]any{"plaintext": strings.Repeat("A", 5000)}, 413, "encrypt", "RESOURCE_EXHAUSTED", "request body over 4096 bytes"},
		{"POST", "keys/c", map[string]any{"convergent_encryption": true, "derived": true}, 400, "generate", "UNIMPLEMENTED", "not offered"},
		{"POST", "keys/c", map[string]any{"type": "chacha20-poly1305"}, 400, "generate", "UNIMPLEMENTED", "not offered"},
		{"POST", "keys/bad%20name", nil, 400, "generate", "INVALID_ARGUMENT", "invalid key name"},
		{"GET", "no/such/path", nil, 404, "request", "NOT_FOUND", "unsupported path"},
		{"PATCH", "keys/k", nil, 405, "request", "UNIMPLEMENTED", "unsupported operation PATCH"},
		{"POST", "sign/k/sha1", map[string]any{"input": b64("x")}, 400, "sign", "UNIMPLEMENTED", "hash algorithm \"sha1\""},
	}
	for _, c := range cases {
		if c.code == 413 {
			tf.client.CloseIdleConnections()
		}
		msg := tf.fails(t, c.code, c.method, c.path, c.body)
		if !strings.Contains(msg, c.msg) {
			t.Errorf("%s %s: %q, want %q", c.method, c.path, msg, c.msg)
		}
		tf.mustRefusal(t, c.op, c.status, c.msg)
		// The next request is served as usual.
		if d := tf.ok(t, "POST", "encrypt/k", map[string]any{"plaintext": b64("still here")}); str(d, "ciphertext") == "" {
			t.Fatalf("after %s %s: %v", c.method, c.path, d)
		}
	}
}

// rawExchange sends raw bytes on a new connection and returns what comes
// back until the server closes it or a second passes.
func rawExchange(t *testing.T, path, req string) string {
	t.Helper()
	c, err := net.Dial("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, req); err != nil {
		t.Fatal(err)
	}
	c.SetReadDeadline(time.Now().Add(time.Second))
	b, _ := io.ReadAll(c)
	return string(b)
}

// A request with both Transfer-Encoding and Content-Length, or with two
// Content-Lengths, is refused and its connection closed: the request
// hidden in its body is never served.
func TestSmuggling(t *testing.T) {
	tf := newTestFront(t, Config{})
	smuggled := "POST /v1/transit/keys/smuggled HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n"
	for _, tc := range []struct{ name, req, want string }{
		{"CL.TE", "POST /v1/transit/hash HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + smuggled, "411 Length Required"},
		{"TE.CL", "POST /v1/transit/hash HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 70\r\n\r\n0\r\n\r\n" + smuggled, "411 Length Required"},
		// Go's server answers an unknown transfer coding itself, 501, and closes.
		{"TE obfuscated", "POST /v1/transit/hash HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n" + smuggled, "501 Not Implemented"},
		{"CL.CL", "POST /v1/transit/hash HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 70\r\n\r\n{}" + smuggled, "400 Bad Request"},
	} {
		got := rawExchange(t, tf.sockPath, tc.req)
		if !strings.HasPrefix(got, "HTTP/1.1 "+tc.want) {
			t.Errorf("%s: answered %q", tc.name, got)
		}
		if n := strings.Count(got, "HTTP/1.1 "); n != 1 {
			t.Errorf("%s: %d responses: %q", tc.name, n, got)
		}
	}
	tf.fails(t, 404, "GET", "keys/smuggled", nil)
	tf.mustRefusal(t, "hash", "INVALID_ARGUMENT", "Transfer-Encoding is not accepted")
}

// A client that sends its header too slowly, or stays idle too long, loses
// its connection; others are served meanwhile.
func TestSlowAndIdleClients(t *testing.T) {
	tf := newTestFront(t, Config{ReadHeaderTimeout: 300 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	slow, err := net.Dial("unix", tf.sockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	io.WriteString(slow, "POST /v1/transit/hash HTTP/1.1\r\nHost: x\r\n")
	start := time.Now()
	tf.ok(t, "POST", "hash", map[string]any{"input": b64("x")})
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Errorf("another client waited %v", d)
	}
	slow.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, _ := io.ReadAll(slow)
	if time.Since(start) > 3*time.Second {
		t.Errorf("the slow client was not cut off: %q", b)
	}

	// Idle.
	c, err := net.Dial("unix", tf.sockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "POST /v1/transit/random HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("%v %v", resp, err)
	}
	io.Copy(io.Discard, resp.Body)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	idle := time.Now()
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection: %v", err)
	}
	if d := time.Since(idle); d > 3*time.Second {
		t.Errorf("the idle connection closed after %v", d)
	}
}

// Another uid reaches none of the first uid's keys over HTTP: its key
// names are its own, and the first uid's ciphertexts do not decrypt.
func TestOtherUID(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	tf := newTestFront(t, Config{})
	dir := filepath.Dir(tf.sockPath)
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	tf.ok(t, "POST", "keys/mine", map[string]any{"exportable": true})
	ct := str(tf.ok(t, "POST", "encrypt/mine", map[string]any{"plaintext": b64("root's")}), "ciphertext")
	as := func(method, path, body string) string {
		cmd := exec.Command(curl, "-s", "-w", " %{http_code}", "--unix-socket", tf.sockPath, "-X", method, "http://x/v1/transit/"+path, "-d", body)
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl: %v", err)
		}
		return strings.ReplaceAll(string(out), "\n", "")
	}
	for _, tc := range []struct{ method, path, body, want string }{
		{"POST", "decrypt/mine", `{"ciphertext":"` + ct + `"}`, "encryption key not found\"]} 400"},
		{"GET", "keys/mine", ``, "{\"errors\":[]} 404"},
		{"GET", "export/encryption-key/mine", ``, "encryption key not found\"]} 400"},
		{"POST", "keys/mine/rotate", `{}`, "encryption key not found\"]} 400"},
		{"DELETE", "keys/mine", ``, "encryption key not found\"]} 400"},
	} {
		if got := as(tc.method, tc.path, tc.body); !strings.HasSuffix(strings.TrimSpace(got), tc.want) {
			t.Errorf("uid 65534 %s %s: %q, want %q", tc.method, tc.path, got, tc.want)
		}
	}
	// Its own key of the same name is another key.
	as("POST", "keys/mine", `{}`)
	if got := as("POST", "decrypt/mine", `{"ciphertext":"`+ct+`"}`); !strings.HasSuffix(strings.TrimSpace(got), " 400") {
		t.Errorf("uid 65534 decrypted root's ciphertext with its own key: %q", got)
	}
	var seen bool
	for _, r := range tf.records(t) {
		if r.Caller.UID == 65534 && r.Front == FrontName {
			seen = true
			if r.Op == "decrypt" && r.Status == "OK" {
				t.Errorf("uid 65534 decrypted: %+v", r)
			}
		}
	}
	if !seen {
		t.Error("no record of uid 65534's requests")
	}
	if p := str(tf.ok(t, "POST", "decrypt/mine", map[string]any{"ciphertext": ct}), "plaintext"); p != b64("root's") {
		t.Fatal("the owner's key changed")
	}
}

// A connection passed to another process keeps the identity of the one
// that connected: every request on it is recorded for that process, and
// HTTP keep-alive keeps one session per connection.
func TestPassedConnectionKeepsIdentity(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("no python3")
	}
	tf := newTestFront(t, Config{})
	c, err := net.Dial("unix", tf.sockPath)
	if err != nil {
		t.Fatal(err)
	}
	f, err := c.(*net.UnixConn).File()
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	// Two requests on the connection: the first refused by the front (an
	// unknown path), the second by the core (no such key).
	script := `
import socket
s = socket.socket(fileno=3)
for path in (b"nope", b"decrypt/none"):
    s.sendall(b"POST /v1/transit/" + path + b" HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    got = b""
    while b"errors" not in got:
        got += s.recv(4096)
print("ok")
`
	cmd := exec.Command(py, "-c", script)
	cmd.ExtraFiles = []*os.File{f}
	cmd.Stdin = strings.NewReader("")
	out, err := cmd.CombinedOutput()
	if err != nil || strings.TrimSpace(string(out)) != "ok" {
		t.Fatalf("python: %v %s", err, out)
	}
	recs := tf.records(t)
	var n int
	var conn uint64
	for _, r := range recs {
		if r.Front != FrontName {
			continue
		}
		n++
		if r.Caller.PID != int32(os.Getpid()) {
			t.Errorf("recorded for pid %d (%s), not the process that connected (%d)", r.Caller.PID, r.Caller.Exe, os.Getpid())
		}
		if conn != 0 && r.Conn != conn {
			t.Errorf("two sessions for one connection")
		}
		conn = r.Conn
	}
	if n != 2 {
		t.Fatal(fmt.Sprint("want 2 records: ", recs))
	}
}

// A body of 4 MiB made of empty objects decodes into some thirty times
// its size (a map for each): one client, on each of its connections, could
// make the daemon hold gigabytes. A body with more JSON values than any
// request the API takes is refused before it is decoded.
func TestJSONAmplificationRefused(t *testing.T) {
	tf := newTestFront(t, Config{})
	var b strings.Builder
	b.WriteString(`{"batch_input":[`)
	for b.Len() < DefaultMaxBody-16 {
		b.WriteString(`{},`)
	}
	b.WriteString(`{}]}`)
	body := b.String()
	var m0, m1 runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&m0)
	code, _ := tf.call(t, "POST", "encrypt/k", body)
	runtime.ReadMemStats(&m1)
	if code != 400 {
		t.Fatalf("status %d", code)
	}
	if n := m1.TotalAlloc - m0.TotalAlloc; n > 40<<20 {
		t.Fatalf("a request of %d bytes made the daemon allocate %d MiB", len(body), n>>20)
	}
	// A batch of the largest size the API takes still decodes.
	items := make([]string, DefaultMaxBatch)
	for i := range items {
		items[i] = `{"plaintext":"eA==","associated_data":"","reference":{"id":[1,2,3],"n":"x"}}`
	}
	if code, m := tf.call(t, "POST", "encrypt/k", `{"batch_input":[`+strings.Join(items, ",")+`]}`); code != 200 {
		t.Fatalf("a full batch: %d %v", code, m)
	}
}

// Bodies being read hold memory before any request reaches the core: a
// uid that starts many requests and sends their bodies slowly (on many
// connections, or as HTTP/2 streams of one) holds at most its share, and
// a request past it is refused at once, before its body is read.
func TestBodiesHeldPerUIDBounded(t *testing.T) {
	tf := newTestFront(t, Config{})
	share := max(int64(DefaultMaxBody), int64(tf.srv.Limits().MaxRequestBytesPerUID))
	start := func() net.Conn {
		c, err := net.Dial("unix", tf.sockPath)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "POST /v1/transit/hash HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n{", DefaultMaxBody)
		return c
	}
	for range share / DefaultMaxBody {
		start()
	}
	time.Sleep(200 * time.Millisecond) // their handlers are reading
	c := start()
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatalf("a request past the uid's share of bodies is read on: %v", err)
	}
	if resp.StatusCode != http.StatusTooManyRequests {
		t.Fatalf("status %d", resp.StatusCode)
	}
	// A request without a body is served meanwhile.
	tf.ok(t, "POST", "hash", nil)
}

// Make _transit-wrapping before the front does, as a key that leaves the
// daemon (exportable), then have imports wrapped under it: the blobs would
// then open outside, and the "never exportable" imported keys with them.
// The front uses only a wrapping key it made: RSA-4096, generated, only
// unwrapping, neither exportable nor wrappable.
func TestWrappingKeyMadeByTheCallerRefused(t *testing.T) {
	tf := newTestFront(t, Config{})
	tf.ok(t, "POST", "keys/"+wrappingKeyName, map[string]any{"type": "rsa-2048", "exportable": true})
	if code, m := tf.call(t, "GET", "wrapping_key", nil); code == 200 {
		t.Fatalf("the caller's own exportable key is given as the wrapping key: %v", m)
	}
	tf.mustRefusal(t, "public-key", "POLICY_VIOLATION", "not a wrapping key the daemon made")
	if code, _ := tf.call(t, "POST", "keys/byok/import", map[string]any{"ciphertext": b64("blob")}); code == 200 || code == 204 {
		t.Fatal("imported under the caller's own key")
	}
}

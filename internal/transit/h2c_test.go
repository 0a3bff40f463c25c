package transit

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/server"
)

// h2cClient speaks only HTTP/2 with prior knowledge to the Unix socket at
// path, as Go's client does with Protocols set to unencrypted HTTP/2.
func h2cClient(path string) *http.Client {
	var p http.Protocols
	p.SetUnencryptedHTTP2(true)
	return &http.Client{Timeout: 60 * time.Second, Transport: &http.Transport{
		Protocols: &p,
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, "unix", path)
		}}}
}

// The Unix socket serves HTTP/2 in cleartext to a client that starts with
// its preface (h2c with prior knowledge): many streams on one connection,
// each with the identity the kernel gave the connection.
func TestH2CUnixSocket(t *testing.T) {
	tf := newTestFront(t, Config{})
	tf.client = h2cClient(tf.sockPath)
	tf.ok(t, "POST", "keys/h2", map[string]any{"type": "aes256-gcm96"})
	var wg sync.WaitGroup
	errs := make(chan error, 32)
	for i := range 32 {
		wg.Go(func() {
			body := fmt.Sprintf(`{"plaintext":%q}`, b64(fmt.Sprint("stream ", i)))
			resp, err := tf.client.Post("http://keywarden/v1/transit/encrypt/h2", "application/json", strings.NewReader(body))
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			if resp.ProtoMajor != 2 || resp.StatusCode != 200 || !bytes.Contains(b, []byte("vault:v1:")) {
				errs <- fmt.Errorf("%s %d %s", resp.Proto, resp.StatusCode, b)
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	conns := map[uint64]bool{}
	n := 0
	for _, r := range tf.records(t) {
		if r.Op == "encrypt" && r.Status == "OK" {
			n++
			conns[r.Conn] = true
			if r.Front != FrontName || r.Caller.PID != int32(os.Getpid()) || r.Caller.UID != uint32(os.Getuid()) {
				t.Errorf("a stream recorded as %s pid %d uid %d", r.Front, r.Caller.PID, r.Caller.UID)
			}
		}
	}
	if n != 32 || len(conns) != 1 {
		t.Errorf("%d encryptions recorded on %d connections, want 32 on one", n, len(conns))
	}

	// A body without a length, over the cap, is refused as over HTTP/1.1.
	pr, pw := io.Pipe()
	go func() {
		pw.Write([]byte(`{"plaintext":"`))
		chunk := bytes.Repeat([]byte("A"), 64<<10)
		for range (DefaultMaxBody >> 16) + 2 {
			if _, err := pw.Write(chunk); err != nil {
				return
			}
		}
		pw.Write([]byte(`"}`))
		pw.Close()
	}()
	req, _ := http.NewRequest("POST", "http://keywarden/v1/transit/encrypt/h2", pr)
	resp, err := tf.client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	pr.Close()
	if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusRequestEntityTooLarge {
		t.Errorf("a stream's body over the cap: %s %d", resp.Proto, resp.StatusCode)
	}
	tf.mustRefusal(t, "encrypt", "RESOURCE_EXHAUSTED", "request body over")
}

// The HTTP/2 streams of one connection on the Unix socket are bounded by
// its session's requests in flight, as over TLS.
func TestH2CStreamsBounded(t *testing.T) {
	tf := newTestFront(t, Config{IdleTimeout: 300 * time.Millisecond})
	c, err := net.Dial("unix", tf.sockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	var h [9]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatalf("no HTTP/2 answer to the preface: %v", err)
	}
	n := int(h[0])<<16 | int(h[1])<<8 | int(h[2])
	if h[3] != 4 || n%6 != 0 {
		t.Fatalf("the server's first frame is of type %d, %d bytes", h[3], n)
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(c, payload); err != nil {
		t.Fatal(err)
	}
	max := uint32(0)
	for i := 0; i < n; i += 6 {
		if binary.BigEndian.Uint16(payload[i:]) == 3 { // SETTINGS_MAX_CONCURRENT_STREAMS
			max = binary.BigEndian.Uint32(payload[i+2:])
		}
	}
	if max == 0 || int(max) > tf.srv.Limits().MaxInFlight {
		t.Fatalf("streams per connection: %d (want at most %d)", max, tf.srv.Limits().MaxInFlight)
	}
	// A connection that opens no stream is closed once idle.
	start := time.Now()
	io.Copy(io.Discard, c)
	if d := time.Since(start); d > 4*time.Second {
		t.Errorf("an idle HTTP/2 connection was kept %v", d)
	}
}

// curl speaks HTTP/2 with prior knowledge to the Unix socket; as another
// uid, over HTTP/2 as over HTTP/1.1, it reaches none of the first uid's
// keys.
func TestH2CCurl(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	tf := newTestFront(t, Config{})
	dir := filepath.Dir(tf.sockPath)
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	run := func(uid uint32, method, path, body string) string {
		t.Helper()
		cmd := exec.Command(curl, "-s", "--http2-prior-knowledge", "-w", " %{http_version} %{http_code}", "--unix-socket", tf.sockPath,
			"-X", method, "-H", "X-Vault-Token: ignored", "http://keywarden/v1/transit/"+path, "-d", body)
		if uid != uint32(os.Getuid()) {
			cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uid, Gid: uid}}
		}
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("curl %s %s: %v", method, path, err)
		}
		return strings.TrimSpace(string(out))
	}
	me := uint32(os.Getuid())
	if got := run(me, "POST", "keys/curl2", `{"type":"aes256-gcm96"}`); !strings.HasSuffix(got, " 2 200") {
		t.Fatalf("create over HTTP/2: %q", got)
	}
	got := run(me, "POST", "encrypt/curl2", `{"plaintext":"`+b64("over h2c")+`"}`)
	if !strings.HasSuffix(got, " 2 200") {
		t.Fatalf("encrypt over HTTP/2: %q", got)
	}
	ct := str(decodeData(t, strings.TrimSuffix(got, " 2 200")), "ciphertext")
	got = run(me, "POST", "decrypt/curl2", `{"ciphertext":"`+ct+`"}`)
	if !strings.HasSuffix(got, " 2 200") || str(decodeData(t, strings.TrimSuffix(got, " 2 200")), "plaintext") != b64("over h2c") {
		t.Fatalf("decrypt over HTTP/2: %q", got)
	}
	if os.Getuid() != 0 {
		return
	}
	for _, path := range []string{"decrypt/curl2", "keys/curl2/rotate"} {
		if got := run(65534, "POST", path, `{"ciphertext":"`+ct+`"}`); !strings.HasSuffix(got, " 2 400") || !strings.Contains(got, "encryption key not found") {
			t.Errorf("uid 65534 over HTTP/2, %s: %q", path, got)
		}
	}
	for _, r := range tf.records(t) {
		if r.Caller.UID == 65534 && r.Status == "OK" && r.Op != "open" {
			t.Errorf("uid 65534: %s %s", r.Op, r.Status)
		}
	}
}

// decodeData is the data of a JSON reply.
func decodeData(t *testing.T, s string) map[string]any {
	t.Helper()
	var m struct {
		Data map[string]any `json:"data"`
	}
	if err := json.Unmarshal([]byte(s), &m); err != nil {
		t.Fatalf("%q: %v", s, err)
	}
	return m.Data
}

// An HTTP/2 connection's session ends with it: with room for one
// connection, a second one is served once the first has closed.
func TestH2CSessionEndsWithConnection(t *testing.T) {
	dir := t.TempDir()
	alog, err := audit.Open(audit.Options{Path: filepath.Join(dir, "audit.log"), Sync: audit.SyncGrouped})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Audit: alog, Limits: server.Limits{MaxConnections: 1, MaxConnectionsPerUID: 1}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Server: srv})
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
	for i := range 3 {
		c := h2cClient(sock)
		var resp *http.Response
		for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			resp, err = c.Post("http://keywarden/v1/transit/random/8", "application/json", nil)
			if err == nil || time.Now().After(deadline) {
				break
			}
		}
		if err != nil {
			t.Fatalf("connection %d: %v", i, err)
		}
		resp.Body.Close()
		if resp.ProtoMajor != 2 || resp.StatusCode != 200 {
			t.Fatalf("connection %d: %s %d", i, resp.Proto, resp.StatusCode)
		}
		c.CloseIdleConnections()
	}
}

package kmsv2

import (
	"context"
	"encoding/binary"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

type testPlugin struct {
	*Plugin
	srv     *server.Server
	logPath string
	sock    string
}

func newTestPlugin(t *testing.T) *testPlugin {
	t.Helper()
	return newTestPluginWith(t, Config{})
}

// newTestPluginWith is newTestPlugin with cfg's settings (its server and
// key are the test's).
func newTestPluginWith(t *testing.T, cfg Config) *testPlugin {
	t.Helper()
	dir := t.TempDir()
	tp := &testPlugin{logPath: filepath.Join(dir, "audit.log"), sock: filepath.Join(dir, "kms.sock")}
	alog, err := audit.Open(audit.Options{Path: tp.logPath, Sync: audit.SyncGrouped})
	if err != nil {
		t.Fatal(err)
	}
	if tp.srv, err = server.New(server.Config{Audit: alog}); err != nil {
		t.Fatal(err)
	}
	cfg.Server, cfg.Key = tp.srv, "kek"
	if tp.Plugin, err = New(cfg); err != nil {
		t.Fatal(err)
	}
	l, err := Listen(tp.sock, 0o666)
	if err != nil {
		t.Fatal(err)
	}
	go tp.Serve(l)
	t.Cleanup(func() {
		tp.Close()
		tp.srv.Shutdown(context.Background())
		alog.Close()
	})
	return tp
}

// kmsClient is the k8s.io/kms v2 client of a plugin socket, as the API
// server dials it.
func kmsClient(t testing.TB, sock string) kmsapi.KeyManagementServiceClient {
	t.Helper()
	cc, err := grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cc.Close() })
	return kmsapi.NewKeyManagementServiceClient(cc)
}

// ownerDo runs op as this process's uid, on a session of its own.
func (tp *testPlugin) ownerDo(t *testing.T, op func(h uint32) *wire.Op) *wire.Result {
	t.Helper()
	id := server.Identity{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Pidfd: -1}
	ss, err := tp.srv.NewSession(context.Background(), "test", id)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	do := func(o *wire.Op) *wire.Result {
		rep, err := ss.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: 1, Ops: []*wire.Op{o}})
		if err != nil || rep.Status != wire.Status_STATUS_OK || rep.Results[0].Status != wire.Status_STATUS_OK {
			t.Fatalf("%v: %v %v", o, err, rep)
		}
		return rep.Results[0]
	}
	var h uint32
	if op != nil {
		h = do(&wire.Op{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Name{Name: &wire.NameRef{Name: "kek"}}}}}).GetKey().GetHandle()
		return do(op(h))
	}
	return do(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Name: "kek", Type: wire.KeyType_KEY_TYPE_AES256_GCM}}}})
}

func TestKMSv2(t *testing.T) {
	tp := newTestPlugin(t)
	c := kmsClient(t, tp.sock)
	ctx := context.Background()

	st, err := c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st.Healthz == "ok" || st.Version != "v2" {
		t.Fatalf("status without a key: %v %v", st, err)
	}
	tp.ownerDo(t, nil)
	st, err = c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st.Healthz != "ok" || st.Version != "v2" || !strings.HasSuffix(st.KeyId, ":v1") {
		t.Fatalf("status: %v %v", st, err)
	}
	seed := []byte("0123456789abcdef0123456789abcdef")
	e1, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed, Uid: "req-1"})
	if err != nil || e1.KeyId != st.KeyId {
		t.Fatalf("encrypt: %v %v", e1, err)
	}
	d, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e1.Ciphertext, KeyId: e1.KeyId, Uid: "req-2"})
	if err != nil || string(d.Plaintext) != string(seed) {
		t.Fatalf("decrypt: %v %v", d, err)
	}

	// Rotation changes key_id; the old ciphertext still decrypts.
	tp.ownerDo(t, func(h uint32) *wire.Op { return &wire.Op{Op: &wire.Op_Rotate{Rotate: &wire.Rotate{Handle: h}}} })
	st2, err := c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st2.Healthz != "ok" || !strings.HasSuffix(st2.KeyId, ":v2") || st2.KeyId == st.KeyId {
		t.Fatalf("status after rotation: %v %v", st2, err)
	}
	e2, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed})
	if err != nil || e2.KeyId != st2.KeyId {
		t.Fatalf("encrypt after rotation: %v %v", e2, err)
	}
	if d, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e1.Ciphertext, KeyId: e1.KeyId}); err != nil || string(d.Plaintext) != string(seed) {
		t.Fatalf("decrypt of the version 1 ciphertext: %v %v", d, err)
	}
	// Tampered, or named for another key: refused.
	bad := append([]byte(nil), e2.Ciphertext...)
	bad[len(bad)-1] ^= 1
	if _, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: bad, KeyId: e2.KeyId}); err == nil {
		t.Error("a tampered ciphertext decrypted")
	}
	if _, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e2.Ciphertext, KeyId: "keywarden:00:v1"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("another key's key_id: %v", err)
	}
	// A key_id the size of a message is not copied into the refusal and
	// its audit record.
	long := strings.Repeat("k", 60<<10)
	if _, err := c.Decrypt(ctx, &kmsapi.DecryptRequest{Ciphertext: e2.Ciphertext, KeyId: long}); status.Code(err) != codes.InvalidArgument || len(status.Convert(err).Message()) > 256 {
		t.Errorf("a long key_id: %d bytes of message", len(status.Convert(err).Message()))
	}
	if b, _ := os.ReadFile(tp.logPath); strings.Contains(string(b), long[:1024]) {
		t.Error("the audit log holds the long key_id")
	}
	if _, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("empty plaintext: %v", err)
	}

	// A sealed daemon is unhealthy and encrypts nothing.
	tp.srv.SealAll()
	if st, err := c.Status(ctx, &kmsapi.StatusRequest{}); err != nil || st.Healthz == "ok" {
		t.Errorf("status sealed: %v %v", st, err)
	}
	if _, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed}); err == nil {
		t.Error("a sealed daemon encrypted")
	}
}

// Another uid's API server reaches none of this uid's key: the key is
// looked up among the connecting process's own keys, as the kernel names
// its uid.
func TestKMSv2OtherUID(t *testing.T) {
	if os.Getenv("KMS_HELPER_SOCK") != "" {
		return
	}
	if os.Getuid() != 0 {
		t.Skip("needs root to run a client as another uid")
	}
	tp := newTestPlugin(t)
	tp.ownerDo(t, nil)
	dir := filepath.Dir(tp.sock)
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	// The test binary, where the other uid may run it.
	bin := filepath.Join(dir, "kmsv2.test")
	b, err := os.ReadFile(os.Args[0])
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(bin, b, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(bin, "-test.run=^TestKMSv2Helper$", "-test.count=1")
	cmd.Env = append(os.Environ(), "KMS_HELPER_SOCK="+tp.sock)
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "helper: refused") {
		t.Fatalf("helper as uid 65534: %v\n%s", err, out)
	}
}

// TestKMSv2Helper is TestKMSv2OtherUID's client, run as another uid.
func TestKMSv2Helper(t *testing.T) {
	sock := os.Getenv("KMS_HELPER_SOCK")
	if sock == "" {
		t.Skip("run by TestKMSv2OtherUID")
	}
	c := kmsClient(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := c.Status(ctx, &kmsapi.StatusRequest{})
	if err != nil || st.Healthz == "ok" {
		t.Fatalf("status as another uid: %v %v", st, err)
	}
	if _, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: []byte("x")}); status.Code(err) != codes.NotFound {
		t.Fatalf("encrypt as another uid: %v", err)
	}
	println("helper: refused")
}

// Each gRPC call of a connection is a stream with its message held while
// it runs: the streams of one connection are bounded as its session's
// requests in flight are, and the server says so in its first SETTINGS
// (without it, grpc-go takes any number).
func TestStreamsPerConnectionBounded(t *testing.T) {
	tp := newTestPlugin(t)
	c, err := net.Dial("unix", tp.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	// The client preface and an empty SETTINGS frame.
	if _, err := c.Write(append([]byte("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"), 0, 0, 0, 4, 0, 0, 0, 0, 0)); err != nil {
		t.Fatal(err)
	}
	var h [9]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		t.Fatal(err)
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
	if max == 0 || int(max) > tp.srv.Limits().MaxInFlight {
		t.Fatalf("streams per connection: %d (want at most %d)", max, tp.srv.Limits().MaxInFlight)
	}
}

// A key destroyed and made again while calls are in flight is opened
// again once for all the calls that found their handle stale: every call
// succeeds, and every handle the plugin opened is closed or is the one in
// use, none left open on the connection's session until it ends.
func TestKMSv2ReopenLeavesNoHandle(t *testing.T) {
	tp := newTestPlugin(t)
	c := kmsClient(t, tp.sock)
	ctx := context.Background()
	tp.ownerDo(t, nil)
	seed := []byte("0123456789abcdef0123456789abcdef")
	if _, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed}); err != nil {
		t.Fatal(err)
	}
	const rounds = 3
	for range rounds {
		tp.ownerDo(t, func(h uint32) *wire.Op { return &wire.Op{Op: &wire.Op_Destroy{Destroy: &wire.Destroy{Handle: h}}} })
		tp.ownerDo(t, nil)
		// Two calls both find the handle stale before either opens the
		// key again.
		var met sync.WaitGroup
		met.Add(2)
		testHookStale = func() { met.Done(); met.Wait() }
		var wg sync.WaitGroup
		for range 2 {
			wg.Go(func() {
				if _, err := c.Encrypt(ctx, &kmsapi.EncryptRequest{Plaintext: seed}); err != nil {
					t.Error(err)
				}
			})
		}
		wg.Wait()
		testHookStale = nil
	}
	opened, closed := 0, 0
	b, err := os.ReadFile(tp.logPath)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.Lines(string(b)) {
		if strings.Trim(line, "\x00\n") == "" {
			break
		}
		r, err := audit.ParseRecord([]byte(line))
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind != audit.KindRequest || r.Front != FrontName || r.Status != "OK" {
			continue
		}
		switch r.Op {
		case "open":
			opened++
		case "close":
			closed++
		}
	}
	if opened != rounds+1 || opened-closed != 1 {
		t.Fatalf("the plugin opened %d handles and closed %d: %d left open, want 1 of %d opened", opened, closed, opened-closed, rounds+1)
	}
}

// A client that stops reading loses its connection once a write to it
// has waited the write timeout: the write fails, and gRPC closes the
// connection with its calls, session and queued replies, rather than
// holding them for as long as the client likes.
func TestKMSv2WritesToAClientThatNeverReads(t *testing.T) {
	tp := newTestPluginWith(t, Config{WriteTimeout: 200 * time.Millisecond})
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: filepath.Join(t.TempDir(), "s"), Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	client, err := net.Dial("unix", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	sc, err := l.AcceptUnix()
	if err != nil {
		t.Fatal(err)
	}
	nc, _, err := (&peerCreds{p: tp.Plugin}).ServerHandshake(sc)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	done := make(chan error, 1)
	go func() {
		buf := make([]byte, 64<<10)
		for {
			if _, err := nc.Write(buf); err != nil {
				done <- err
				return
			}
		}
	}()
	select {
	case err := <-done:
		if ne, ok := err.(net.Error); !ok || !ne.Timeout() {
			t.Fatalf("the write failed with %v, want a timeout", err)
		}
	case <-time.After(10 * time.Second):
		sc.Close()
		t.Fatal("a write to a client that does not read waited 10 s")
	}
}

// syncBuffer is a log destination safe for concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  strings.Builder
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

// Connections the core refuses (over the connection limit) may be made as
// often as a peer likes: the daemon's log gets one line for them per
// interval, not one each.
func TestKMSv2RefusedConnectionsLogRateLimited(t *testing.T) {
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
	p, err := New(Config{Server: srv, Key: "kek", Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "kms.sock")
	l, err := Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	go p.Serve(l)
	t.Cleanup(func() { p.Close(); srv.Shutdown(context.Background()); alog.Close() })
	c := kmsClient(t, sock)
	if _, err := c.Status(context.Background(), &kmsapi.StatusRequest{}); err != nil {
		t.Fatal(err)
	}
	const tries = 30
	for range tries {
		raw, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		raw.SetReadDeadline(time.Now().Add(10 * time.Second))
		if _, err := io.Copy(io.Discard, raw); err != nil {
			t.Fatalf("a connection past the limit: %v", err)
		}
		raw.Close()
	}
	if n := strings.Count(logs.String(), "connection refused by the core"); n < 1 || n > 5 {
		t.Fatalf("%d refusals gave %d log lines:\n%s", tries, n, logs.String())
	}
}

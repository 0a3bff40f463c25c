package transit

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/server"
)

// testPKI is a CA with the certificates of a TLS test.
type testPKI struct {
	ca     *x509.Certificate
	caKey  *ecdsa.PrivateKey
	pool   *x509.CertPool
	server tls.Certificate
}

func newTestPKI(t testing.TB) *testPKI {
	t.Helper()
	p := &testPKI{}
	p.ca, p.caKey = makeCA(t, "test CA")
	p.pool = x509.NewCertPool()
	p.pool.AddCert(p.ca)
	p.server = p.issue(t, p.ca, p.caKey, &x509.Certificate{Subject: pkix.Name{CommonName: "keywarden"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)}, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, time.Hour)
	return p
}

func makeCA(t testing.TB, name string) (*x509.Certificate, *ecdsa.PrivateKey) {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, k
}

// issue signs tmpl with ca, valid for validity from now (negative: it
// expired that long ago).
func (p *testPKI) issue(t testing.TB, ca *x509.Certificate, caKey *ecdsa.PrivateKey, tmpl *x509.Certificate, validity time.Duration) tls.Certificate {
	t.Helper()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl.SerialNumber, _ = rand.Int(rand.Reader, big.NewInt(1<<62))
	if validity > 0 {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(validity)
	} else {
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(2*validity), time.Now().Add(validity)
	}
	if tmpl.ExtKeyUsage == nil {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: k}
}

func (p *testPKI) client(spiffe string, validity time.Duration, t testing.TB) tls.Certificate {
	u, _ := url.Parse(spiffe)
	return p.issue(t, p.ca, p.caKey, &x509.Certificate{Subject: pkix.Name{CommonName: "client"}, URIs: []*url.URL{u}}, validity)
}

func tlsClient(p *testPKI, cert tls.Certificate) *http.Client {
	return &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{ForceAttemptHTTP2: true,
		TLSClientConfig: &tls.Config{RootCAs: p.pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}}}
}

// Over TCP, only a client whose certificate the client CA signed, still
// valid, and that the mapping names is served, as its principal's uid;
// any other is refused at the handshake.
func TestMutualTLS(t *testing.T) {
	tf := newTestFront(t, Config{})
	p := newTestPKI(t)
	pr, err := ParsePrincipals(strings.NewReader("# test\nuri:spiffe://example.org/app 4242\ncn:legacy 4243:100\n"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go tf.ServeTLS(l, TLSConfig{Certificate: p.server, ClientCAs: p.pool, Principals: pr})
	base := "https://" + l.Addr().String() + "/v1/transit/"
	post := func(c *http.Client, path, body string) (*http.Response, map[string]any, error) {
		resp, err := c.Post(base+path, "application/json", strings.NewReader(body))
		if err != nil {
			return nil, nil, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		json.Unmarshal(b, &m)
		return resp, m, nil
	}

	good := tlsClient(p, p.client("spiffe://example.org/app", time.Hour, t))
	resp, m, err := post(good, "encrypt/remote", `{"plaintext":"`+b64("over mTLS")+`"}`)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("mapped client: %v %v", err, m)
	}
	if resp.ProtoMajor != 2 {
		t.Errorf("served over HTTP/%d", resp.ProtoMajor)
	}
	ct := m["data"].(map[string]any)["ciphertext"].(string)
	if _, m, _ := post(good, "decrypt/remote", `{"ciphertext":"`+ct+`"}`); m["data"].(map[string]any)["plaintext"] != b64("over mTLS") {
		t.Fatalf("decrypt: %v", m)
	}
	// The key is uid 4242's: not the local root's.
	tf.fails(t, 404, "GET", "keys/remote", nil)
	var recorded bool
	for _, r := range tf.records(t) {
		if r.Op == "encrypt" && r.Front == FrontName && r.Caller.Principal == "uri:spiffe://example.org/app" {
			recorded = true
			if r.Caller.UID != 4242 || r.Caller.PID != 0 {
				t.Errorf("recorded as uid %d pid %d", r.Caller.UID, r.Caller.PID)
			}
		}
	}
	if !recorded {
		t.Error("no record names the principal")
	}

	otherCA, otherKey := makeCA(t, "other CA")
	for name, cert := range map[string]tls.Certificate{
		"unmapped":       p.client("spiffe://example.org/intruder", time.Hour, t),
		"expired":        p.client("spiffe://example.org/app", -time.Minute, t),
		"other CA":       p.issue(t, otherCA, otherKey, &x509.Certificate{URIs: []*url.URL{{Scheme: "spiffe", Host: "example.org", Path: "/app"}}}, time.Hour),
		"self-signed":    selfSigned(t),
		"no cert at all": {},
	} {
		c := tlsClient(p, cert)
		if cert.Certificate == nil {
			c.Transport.(*http.Transport).TLSClientConfig.Certificates = nil
		}
		resp, _, err := post(c, "encrypt/remote", `{"plaintext":"eA=="}`)
		if err == nil {
			t.Errorf("%s: served, %d", name, resp.StatusCode)
		}
	}
	// The certificate a CA signed but the mapping does not name is an
	// audit event.
	if b, _ := os.ReadFile(tf.logPath); !strings.Contains(string(b), `"op":"transit-connection"`) || !strings.Contains(string(b), "maps to no principal") {
		t.Error("no audit event for the unmapped certificate")
	}
	// Plain HTTP on the TLS port is no API.
	resp2, err := http.Post("http://"+l.Addr().String()+"/v1/transit/hash", "application/json", bytes.NewReader([]byte(`{"input":"eA=="}`)))
	if err == nil {
		b, _ := io.ReadAll(resp2.Body)
		resp2.Body.Close()
		if resp2.StatusCode != 400 || strings.Contains(string(b), "sum") {
			t.Errorf("plain HTTP: %d %q", resp2.StatusCode, b)
		}
	}
}

func selfSigned(t testing.TB) tls.Certificate {
	ca, k := makeCA(t, "spiffe://example.org/app")
	return tls.Certificate{Certificate: [][]byte{ca.Raw}, PrivateKey: k}
}

func TestParsePrincipals(t *testing.T) {
	for _, bad := range []string{"", "uri:x", "uri:x 0", "uri:x 5:0", "uri:x 0:5", "uri:x 65534", "uri:x 5:65534", "uri:x 4294967295", "host:x 5", "uri:x 5\nuri:x 6", "uri:x abc", "uri:x 5:g"} {
		if _, err := ParsePrincipals(strings.NewReader(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
	p, err := ParsePrincipals(strings.NewReader("cn:legacy client 77\nemail:a@b.example 78:9\n"))
	if err != nil {
		t.Fatal(err)
	}
	if pr, ok := p.Lookup(&x509.Certificate{Subject: pkix.Name{CommonName: "legacy client"}}); !ok || pr.UID != 77 || pr.GID != 77 {
		t.Errorf("cn: %v %v", pr, ok)
	}
	if pr, ok := p.Lookup(&x509.Certificate{EmailAddresses: []string{"a@b.example"}}); !ok || pr.UID != 78 || pr.GID != 9 {
		t.Errorf("email: %v %v", pr, ok)
	}
}

// A certificate's common name is its identity only when it has no
// subject alternative name: a CA that checks the names it certifies
// (SANs) may copy the subject from the request, so a client with a
// certificate for an unmapped name must not act as whichever principal its
// CN names. And a certificate whose names map to two different principals
// is refused rather than taken as the first.
func TestPrincipalLookupAttacks(t *testing.T) {
	p, err := ParsePrincipals(strings.NewReader(
		"cn:legacy client 77\ndns:batch.example.org 78\nuri:spiffe://example.org/a 79\nemail:ops@example.org 79\n"))
	if err != nil {
		t.Fatal(err)
	}
	spiffe, _ := url.Parse("spiffe://example.org/a")
	other, _ := url.Parse("spiffe://example.org/unmapped")
	for name, c := range map[string]*x509.Certificate{
		"CN behind an unmapped DNS SAN": {Subject: pkix.Name{CommonName: "legacy client"}, DNSNames: []string{"evil.example.org"}},
		"CN behind an unmapped URI SAN": {Subject: pkix.Name{CommonName: "legacy client"}, URIs: []*url.URL{other}},
		"CN behind an IP SAN":           {Subject: pkix.Name{CommonName: "legacy client"}, IPAddresses: []net.IP{net.IPv4(10, 0, 0, 1)}},
		"two principals":                {DNSNames: []string{"batch.example.org"}, URIs: []*url.URL{spiffe}},
	} {
		if pr, ok := p.Lookup(c); ok {
			t.Errorf("%s: acts as %s (uid %d)", name, pr.Name, pr.UID)
		}
	}
	// With a SAN, the CN is not looked at, even where it names another.
	if pr, ok := p.Lookup(&x509.Certificate{Subject: pkix.Name{CommonName: "legacy client"}, DNSNames: []string{"batch.example.org"}}); !ok || pr.UID != 78 {
		t.Errorf("a DNS SAN and a CN: %v %v", pr, ok)
	}
	// Names of one principal's uid agree: the first names it.
	if pr, ok := p.Lookup(&x509.Certificate{URIs: []*url.URL{spiffe}, EmailAddresses: []string{"ops@example.org"}}); !ok || pr.UID != 79 {
		t.Errorf("two names of uid 79: %v %v", pr, ok)
	}
	if pr, ok := p.Lookup(&x509.Certificate{Subject: pkix.Name{CommonName: "legacy client"}}); !ok || pr.UID != 77 {
		t.Errorf("a certificate with only a CN: %v %v", pr, ok)
	}
}

// The HTTP/2 streams of one connection are bounded as its session's
// requests in flight are (docs/transit.md, "Limits"), and the server says
// so in its first SETTINGS; Go's default would be 250 streams, each
// holding its request while it runs.
func TestHTTP2StreamsBounded(t *testing.T) {
	tf := newTestFront(t, Config{})
	p := newTestPKI(t)
	pr, err := ParsePrincipals(strings.NewReader("uri:spiffe://example.org/app 4242\n"))
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go tf.ServeTLS(l, TLSConfig{Certificate: p.server, ClientCAs: p.pool, Principals: pr})
	c, err := tls.Dial("tcp", l.Addr().String(), &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13, NextProtos: []string{"h2"},
		Certificates: []tls.Certificate{p.client("spiffe://example.org/app", time.Hour, t)}, ServerName: "127.0.0.1"})
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
	if max == 0 || int(max) > tf.srv.Limits().MaxInFlight {
		t.Fatalf("streams per connection: %d (want at most %d)", max, tf.srv.Limits().MaxInFlight)
	}
}

// Network peers need no certificate to open TCP connections, and each
// costs the daemon a descriptor and memory until its handshake times out:
// the TCP connections open at once are bounded (by the daemon's connection
// limit), so that peers on the network cannot take the descriptors the
// daemon's local sockets and store need. Past the bound, a connection
// waits in the kernel's queue until one closes.
func TestTCPConnectionsBounded(t *testing.T) {
	dir := t.TempDir()
	alog, err := audit.Open(audit.Options{Path: filepath.Join(dir, "audit.log"), Sync: audit.SyncGrouped})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Audit: alog, Limits: server.Limits{MaxConnections: 4}})
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Server: srv})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); srv.Shutdown(context.Background()); alog.Close() })
	p := newTestPKI(t)
	pr, _ := ParsePrincipals(strings.NewReader("uri:spiffe://example.org/app 4242\n"))
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go f.ServeTLS(l, TLSConfig{Certificate: p.server, ClientCAs: p.pool, Principals: pr})
	var idle []net.Conn
	for range srv.Limits().MaxConnections {
		c, err := net.Dial("tcp", l.Addr().String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		idle = append(idle, c)
	}
	time.Sleep(100 * time.Millisecond)
	cfg := &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{p.client("spiffe://example.org/app", time.Hour, t)}}
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	tc := tls.Client(c, cfg)
	tc.SetDeadline(time.Now().Add(time.Second))
	if err := tc.Handshake(); err == nil {
		t.Fatalf("a connection past %d idle ones was served", len(idle))
	}
	c.Close()
	idle[0].Close()
	c2, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", l.Addr().String(), cfg)
	if err != nil {
		t.Fatalf("once one closed: %v", err)
	}
	c2.Close()
}

// One network address holds at most MaxConnsPerAddr TCP connections at
// once, handshakes included: past it, its connections are closed at
// accept (one audit event per interval says so), while other addresses
// are served.
func TestTCPConnectionsPerAddrBounded(t *testing.T) {
	dir := t.TempDir()
	logPath := filepath.Join(dir, "audit.log")
	alog, err := audit.Open(audit.Options{Path: logPath, Sync: audit.SyncGrouped})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{Audit: alog})
	if err != nil {
		t.Fatal(err)
	}
	f, err := New(Config{Server: srv, MaxConnsPerAddr: 3})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close(); srv.Shutdown(context.Background()); alog.Close() })
	p := newTestPKI(t)
	pr, _ := ParsePrincipals(strings.NewReader("uri:spiffe://example.org/app 4242\n"))
	l, err := net.Listen("tcp", "0.0.0.0:0")
	if err != nil {
		t.Fatal(err)
	}
	go f.ServeTLS(l, TLSConfig{Certificate: p.server, ClientCAs: p.pool, Principals: pr})
	port := l.Addr().(*net.TCPAddr).Port
	cfg := &tls.Config{RootCAs: p.pool, MinVersion: tls.VersionTLS13, ServerName: "127.0.0.1",
		Certificates: []tls.Certificate{p.client("spiffe://example.org/app", time.Hour, t)}}
	dial := func(from string) (*tls.Conn, error) {
		d := &net.Dialer{Timeout: 5 * time.Second, LocalAddr: &net.TCPAddr{IP: net.ParseIP(from)}}
		c, err := tls.DialWithDialer(d, "tcp", fmt.Sprintf("127.0.0.1:%d", port), cfg)
		if err != nil {
			return nil, err
		}
		// A TLS 1.3 client learns of a refusal when it reads.
		if _, err := io.WriteString(c, "GET /v1/transit/keys?list=true HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			c.Close()
			return nil, err
		}
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		if _, err := c.Read(make([]byte, 1)); err != nil {
			c.Close()
			return nil, err
		}
		c.SetReadDeadline(time.Time{})
		return c, nil
	}
	var held []*tls.Conn
	for range 3 {
		c, err := dial("127.0.0.1")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		held = append(held, c)
	}
	if c, err := dial("127.0.0.1"); err == nil {
		c.Close()
		t.Fatal("a fourth connection from one address was served")
	}
	c, err := dial("127.0.0.2")
	if err != nil {
		t.Fatalf("another address: %v", err)
	}
	c.Close()
	held[0].Close()
	var again *tls.Conn
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		if again, err = dial("127.0.0.1"); err == nil || time.Now().After(deadline) {
			break
		}
	}
	if err != nil {
		t.Fatalf("once one closed: %v", err)
	}
	again.Close()
	b, _ := os.ReadFile(logPath)
	if !strings.Contains(string(b), `"op":"transit-connection"`) || !strings.Contains(string(b), "TCP connection from 127.0.0.1 refused") {
		t.Errorf("no audit event for the refused connection:\n%s", b)
	}
}

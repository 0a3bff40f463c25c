package interop

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	vault "github.com/hashicorp/vault/api"
)

// mtlsFiles are the PEM files of a mutual TLS test: a CA, the daemon's
// certificate for 127.0.0.1, and a client certificate with a SPIFFE ID.
type mtlsFiles struct {
	ca, serverCert, serverKey, clientCert, clientKey, principals string
}

func writePEM(t testing.TB, path, typ string, der []byte) {
	t.Helper()
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
}

func makeMTLS(t testing.TB) mtlsFiles {
	t.Helper()
	dir := t.TempDir()
	f := mtlsFiles{ca: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server.key"),
		clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client.key"), principals: filepath.Join(dir, "principals")}
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "interop CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	writePEM(t, f.ca, "CERTIFICATE", caDER)
	issue := func(tmpl *x509.Certificate, certPath, keyPath string) {
		k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		tmpl.SerialNumber, _ = rand.Int(rand.Reader, big.NewInt(1<<62))
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Minute), time.Now().Add(time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			t.Fatal(err)
		}
		writePEM(t, certPath, "CERTIFICATE", der)
		kd, _ := x509.MarshalPKCS8PrivateKey(k)
		writePEM(t, keyPath, "PRIVATE KEY", kd)
	}
	issue(&x509.Certificate{Subject: pkix.Name{CommonName: "keywarden"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, f.serverCert, f.serverKey)
	u, _ := url.Parse("spiffe://example.org/interop")
	issue(&x509.Certificate{Subject: pkix.Name{CommonName: "interop client"}, URIs: []*url.URL{u},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, f.clientCert, f.clientKey)
	if err := os.WriteFile(f.principals, []byte("uri:spiffe://example.org/interop 4242\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return f
}

// freePort returns a TCP address on 127.0.0.1 that was free a moment ago.
func freePort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startMTLSDaemon starts a daemon with a TCP listener with mutual TLS
// besides its Unix socket, and returns it with the listener's address.
func startMTLSDaemon(t testing.TB, f mtlsFiles) (*daemon, string) {
	t.Helper()
	addr := freePort(t)
	d := startDaemon(t, "--http", "tcp:"+addr, "--http-tls-cert", f.serverCert, "--http-tls-key", f.serverKey,
		"--http-client-ca", f.ca, "--http-principals", f.principals)
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
			return d, addr
		}
		if time.Now().After(deadline) {
			t.Fatalf("no TCP listener: %v", err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestVaultAPIOverMTLS: the Vault Go api client with a client
// certificate, over TLS to 127.0.0.1; without one it is refused.
func TestVaultAPIOverMTLS(t *testing.T) {
	f := makeMTLS(t)
	d, addr := startMTLSDaemon(t, f)
	cfg := vault.DefaultConfig()
	cfg.Address = "https://" + addr
	cfg.MaxRetries = 0
	if err := cfg.ConfigureTLS(&vault.TLSConfig{CACert: f.ca, ClientCert: f.clientCert, ClientKey: f.clientKey}); err != nil {
		t.Fatal(err)
	}
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	write(t, c, "keys/remote", map[string]any{"type": "ed25519"})
	sig := sget(write(t, c, "sign/remote", map[string]any{"input": b64("remote")}), "signature")
	if v := write(t, c, "verify/remote", map[string]any{"input": b64("remote"), "signature": sig})["valid"]; v != true {
		t.Fatalf("verify: %v", v)
	}
	ct := sget(write(t, c, "encrypt/remote-aes", map[string]any{"plaintext": b64("remote")}), "ciphertext")
	if p := sget(write(t, c, "decrypt/remote-aes", map[string]any{"ciphertext": ct}), "plaintext"); p != b64("remote") {
		t.Fatalf("decrypt %q", p)
	}
	// The keys are the principal's uid's, not the local root's.
	local := vaultClient(t, d)
	if s, err := local.Logical().Read("transit/keys/remote"); err != nil || s != nil {
		t.Errorf("root reads the principal's key: %v %v", s, err)
	}
	audit, _ := os.ReadFile(d.auditLog)
	if !strings.Contains(string(audit), `"principal":"uri:spiffe://example.org/interop"`) {
		t.Error("no audit record names the principal")
	}

	// Without a client certificate: refused at the handshake.
	cfg2 := vault.DefaultConfig()
	cfg2.Address = "https://" + addr
	cfg2.MaxRetries = 0
	if err := cfg2.ConfigureTLS(&vault.TLSConfig{CACert: f.ca}); err != nil {
		t.Fatal(err)
	}
	c2, _ := vault.NewClient(cfg2)
	if _, err := c2.Logical().Write("transit/encrypt/remote-aes", map[string]any{"plaintext": b64("x")}); err == nil ||
		strings.Contains(err.Error(), "Code:") {
		t.Errorf("a client without a certificate: %v", err)
	}
}

// TestHvacOverMTLS runs the hvac program over mutual TLS.
func TestHvacOverMTLS(t *testing.T) {
	python(t)
	f := makeMTLS(t)
	_, addr := startMTLSDaemon(t, f)
	runHvac(t, "https", "https://"+addr, f.ca, f.clientCert, f.clientKey)
}

// TestCurlHTTP2OverMTLS: curl negotiates HTTP/2 (ALPN h2) over mutual TLS
// with a client certificate, and HTTP/2 with prior knowledge (h2c) on the
// Unix socket.
func TestCurlHTTP2OverMTLS(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		t.Skip("no curl")
	}
	f := makeMTLS(t)
	d, addr := startMTLSDaemon(t, f)
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(curl, append([]string{"-s", "-w", " %{http_version} %{http_code}", "-H", "X-Vault-Token: ignored"}, args...)...).Output()
		if err != nil {
			t.Fatalf("curl %v: %v", args, err)
		}
		return strings.TrimSpace(string(out))
	}
	tls := []string{"--http2", "--cacert", f.ca, "--cert", f.clientCert, "--key", f.clientKey}
	if got := run(append(tls, "-X", "POST", "https://"+addr+"/v1/transit/keys/h2", "-d", `{"type":"ed25519"}`)...); !strings.HasSuffix(got, " 2 200") {
		t.Fatalf("create over HTTP/2 and TLS: %q", got)
	}
	if got := run(append(tls, "-X", "POST", "https://"+addr+"/v1/transit/sign/h2", "-d", `{"input":"`+b64("h2")+`"}`)...); !strings.HasSuffix(got, " 2 200") || !strings.Contains(got, "vault:v1:") {
		t.Fatalf("sign over HTTP/2 and TLS: %q", got)
	}
	// Without the client certificate: no HTTP at all.
	if out, err := exec.Command(curl, "-s", "--http2", "--cacert", f.ca, "https://"+addr+"/v1/transit/keys/h2").CombinedOutput(); err == nil {
		t.Fatalf("curl without a client certificate: %q", out)
	}
	if got := run("--http2-prior-knowledge", "--unix-socket", d.transit, "-X", "POST", "http://keywarden/v1/transit/hash", "-d", `{"input":"`+b64("abc")+`","format":"hex"}`); !strings.HasSuffix(got, " 2 200") ||
		!strings.Contains(got, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad") {
		t.Fatalf("hash over h2c on the Unix socket: %q", got)
	}
}

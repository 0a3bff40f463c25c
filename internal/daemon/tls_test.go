package daemon

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A certificate never acts as an administrator of the daemon: an
// administrator has no per-uid limits and takes the connections kept for
// administrators, which a remote client must not. A principals file that
// maps one to the daemon's own uid or an --admin uid stops the daemon.
func TestPrincipalNeverAdmin(t *testing.T) {
	cfg, write := tlsFiles(t)
	cfg.Admins = []uint32{4300}
	cfg.HTTPPrincipals = write("ok", []byte("uri:spiffe://example.org/app 4242\n"))
	if _, err := loadTLS(cfg); err != nil {
		t.Fatalf("an ordinary uid: %v", err)
	}
	for _, uid := range []int{4300, os.Getuid()} {
		if uid == 0 {
			continue // refused as root already
		}
		cfg.HTTPPrincipals = write("admin", []byte(fmt.Sprintf("uri:spiffe://example.org/app 4242\ndns:ops.example.org %d\n", uid)))
		if _, err := loadTLS(cfg); err == nil || !strings.Contains(err.Error(), "administrator") {
			t.Errorf("a principal mapped to administrator uid %d: %v", uid, err)
		}
	}
}

// The client CA decides whose certificates are mapped to uids: a CA file
// that another user could write is refused, as the principals file is.
func TestClientCAWritableByOthersRefused(t *testing.T) {
	cfg, write := tlsFiles(t)
	cfg.HTTPPrincipals = write("principals", []byte("uri:spiffe://example.org/app 4242\n"))
	if _, err := loadTLS(cfg); err != nil {
		t.Fatalf("a CA file only its owner writes: %v", err)
	}
	for _, mode := range []os.FileMode{0o666, 0o620} {
		os.Chmod(cfg.HTTPClientCA, mode)
		if _, err := loadTLS(cfg); err == nil || !strings.Contains(err.Error(), "writable by group or others") {
			t.Errorf("a CA file of mode %04o: %v", mode, err)
		}
	}
	os.Chmod(cfg.HTTPClientCA, 0o644)
	if os.Geteuid() == 0 {
		os.Chown(cfg.HTTPClientCA, 65534, 65534)
		if _, err := loadTLS(cfg); err == nil || !strings.Contains(err.Error(), "belongs to uid 65534") {
			t.Errorf("a CA file of another user: %v", err)
		}
	}
}

// tlsFiles writes a self-signed CA that is also the server's certificate,
// its key and the client CA file, and returns the configuration naming
// them and a function that writes more files beside them.
func tlsFiles(t *testing.T) (Config, func(name string, b []byte) string) {
	t.Helper()
	dir := t.TempDir()
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(k)
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	return Config{
		HTTPTLSCert:  write("cert.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
		HTTPTLSKey:   write("key.pem", pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder})),
		HTTPClientCA: write("ca.pem", pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})),
	}, write
}

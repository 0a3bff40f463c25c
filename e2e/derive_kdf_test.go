package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha512"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden"
)

// x963 is ANSI X9.63's KDF, written from SEC 1 section 3.6.1.
func x963(z, shared []byte, n int) []byte {
	var out []byte
	for c := byte(1); len(out) < n; c++ {
		h := sha512.New384()
		h.Write(z)
		h.Write([]byte{0, 0, 0, c})
		h.Write(shared)
		out = h.Sum(out)
	}
	return out[:n]
}

// Derive's raw and X9.63 functions through the client library and the
// CLI: a P-384 key's raw secret into AES-256 is its last 32 bytes (as
// PKCS #11 truncates), X9.63 under SHA-384 is the hand KDF's; an HMAC
// parent, a key longer than the secret and an unknown function are
// refused; the audit log records the derivations without their bytes.
func TestDeriveRawAndX963(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "audit.log")
	d := startDaemon(t, "--audit-log", logPath)
	c := d.client(t)
	ctx := context.Background()
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.ECDHP384, Name: "dh", Exportable: true})
	peer, _ := ecdh.P384().GenerateKey(rand.Reader)
	z, err := peer.ECDH(k.Public().(*ecdh.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	raw := func(kdf keywarden.DeriveKDF, typ keywarden.KeyType, h keywarden.DeriveParams) ([]byte, error) {
		h.Peer, h.KDF = peer.PublicKey().Bytes(), kdf
		child, err := k.Derive(ctx, keywarden.KeySpec{Type: typ, Exportable: true, Ephemeral: true}, h)
		if err != nil {
			return nil, err
		}
		return child.Export(ctx, keywarden.FormatRaw)
	}
	got, err := raw(keywarden.KDFNone, keywarden.AES256GCM, keywarden.DeriveParams{})
	if err != nil || !bytes.Equal(got, z[16:]) {
		t.Fatalf("raw derive into AES-256: %v, not the secret's last 32 bytes", err)
	}
	got, err = raw(keywarden.KDFX963, keywarden.HMACSHA512, keywarden.DeriveParams{Hash: crypto.SHA384, Info: []byte("shared")})
	if err != nil || !bytes.Equal(got, x963(z, []byte("shared"), 64)) {
		t.Fatalf("X9.63 derive: %v, not the hand KDF's", err)
	}
	if _, err := raw(keywarden.KDFNone, keywarden.HMACSHA512, keywarden.DeriveParams{}); !errors.Is(err, keywarden.ErrInvalidArgument) {
		t.Fatalf("a raw key longer than the secret: %v", err)
	}
	if _, err := raw("hkdf2", keywarden.AES256GCM, keywarden.DeriveParams{}); !errors.Is(err, keywarden.ErrInvalidArgument) {
		t.Fatalf("an unknown function: %v", err)
	}
	mac := generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Usage: keywarden.UsageDerive})
	if _, err := mac.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM}, keywarden.DeriveParams{KDF: keywarden.KDFNone}); !errors.Is(err, keywarden.ErrInvalidArgument) ||
		!strings.Contains(err.Error(), "take an X25519 or ECDH key") {
		t.Fatalf("raw derive from an HMAC key: %v", err)
	}

	// The CLI's --kdf.
	peerDER, _ := x509.MarshalPKIXPublicKey(peer.PublicKey())
	peerFile := filepath.Join(t.TempDir(), "peer.pem")
	os.WriteFile(peerFile, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: peerDER}), 0o644)
	if r := d.runCLI(t, nil, nil, "derive", "--key", "dh", "--peer", peerFile, "--name", "raw", "--type", "hmac-sha384",
		"--kdf", "none", "--exportable"); r.code != 0 {
		t.Fatalf("derive --kdf none: %s", r)
	}
	r := d.runCLI(t, nil, nil, "key", "export", "raw", "--format", "raw")
	if r.code != 0 || !bytes.Equal([]byte(r.stdout), z) {
		t.Fatalf("export of the raw child: %s", r)
	}
	if r := d.runCLI(t, nil, nil, "derive", "--key", "dh", "--peer", peerFile, "--name", "x", "--kdf", "sha1"); r.code != 2 ||
		!strings.Contains(r.stderr, "--kdf is hkdf, none or x963") {
		t.Fatalf("derive --kdf sha1: %s", r)
	}
	if r := d.runCLI(t, nil, nil, "derive", "--key", "dh", "--peer", peerFile, "--name", "x", "--kdf", "x963"); r.code == 0 ||
		!strings.Contains(r.stderr, "SHA-256, SHA-384 or SHA-512") {
		t.Fatalf("derive --kdf x963 without --hash: %s", r)
	}
	b, _ := os.ReadFile(logPath)
	log := string(b)
	if !strings.Contains(log, `"derive"`) || strings.Contains(log, hex.EncodeToString(z)) || bytes.Contains([]byte(log), z[16:]) {
		t.Fatal("the audit log lacks the derivations or holds the secret")
	}
}

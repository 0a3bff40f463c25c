package e2e_test

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// ecdhPeer makes a P-256 key pair with openssl in dir: peer.pem (private)
// and peer.der (public, SPKI DER, as pkcs11-tool -i reads it).
func ecdhPeer(t *testing.T, e *p11Env, openssl string) {
	t.Helper()
	for _, args := range [][]string{
		{"genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", "peer.pem"},
		{"pkey", "-in", "peer.pem", "-pubout", "-outform", "DER", "-out", "peer.der"},
	} {
		if out, code := e.run(t, nil, openssl, args...); code != 0 {
			t.Fatalf("openssl %s: %s", args[0], out)
		}
	}
}

// pkcs11-tool --derive with CKM_ECDH1_DERIVE (CKD_NULL) on an ECDH P-256
// key of the daemon's: the derived secret is the one openssl computes
// from the peer's private key and the daemon's public key, whether the
// peer's point goes raw or DER-wrapped (--derive-pass-der).
func TestPKCS11ToolECDHDerive(t *testing.T) {
	e := p11Daemon(t, "ecdh-p256 dh1 --exportable --wrappable")
	openssl := needTool(t, "openssl")
	ecdhPeer(t, e, openssl)
	objs := e.tool(t, "-O")
	id := idOf(t, objs, "dh1")
	e.tool(t, "--read-object", "--type", "pubkey", "--id", id, "-o", "dh1.der")
	if out, code := e.run(t, nil, openssl, "pkey", "-pubin", "-inform", "DER", "-in", "dh1.der", "-out", "dh1.pem"); code != 0 {
		t.Fatalf("openssl pkey: %s", out)
	}
	if out, code := e.run(t, nil, openssl, "pkeyutl", "-derive", "-inkey", "peer.pem", "-peerkey", "dh1.pem", "-out", "want"); code != 0 {
		t.Fatalf("openssl pkeyutl -derive: %s", out)
	}
	want, err := os.ReadFile(filepath.Join(e.dir, "want"))
	if err != nil || len(want) != 32 {
		t.Fatalf("openssl's secret: %d bytes (%v)", len(want), err)
	}
	if out := e.tool(t, "-M"); !strings.Contains(out, "ECDH1-DERIVE") {
		t.Fatalf("ECDH1-DERIVE is not listed:\n%s", out)
	}
	for i, extra := range [][]string{nil, {"--derive-pass-der"}} {
		outFile := "secret" + string(rune('0'+i))
		args := append([]string{"--login", "--pin", "any", "--derive", "--mechanism", "ECDH1-DERIVE", "--id", id,
			"-i", "peer.der", "-o", outFile}, extra...)
		e.tool(t, args...)
		got, err := os.ReadFile(filepath.Join(e.dir, outFile))
		if err != nil || !bytes.Equal(got, want) {
			t.Fatalf("pkcs11-tool --derive %v: %d bytes, not openssl's secret (%v)", extra, len(got), err)
		}
	}
}

// The same with a non-exportable ECDH key: pkcs11-tool asks for an
// exportable secret, which a child of a non-exportable key never is, so
// the derivation is refused (CKR_TEMPLATE_INCONSISTENT), nothing of the
// secret is written, and the daemon serves on.
func TestPKCS11ToolECDHDeriveNonExportable(t *testing.T) {
	e := p11Daemon(t, "ecdh-p256 dh1")
	openssl := needTool(t, "openssl")
	ecdhPeer(t, e, openssl)
	id := idOf(t, e.tool(t, "-O"), "dh1")
	e.tool(t, "--read-object", "--type", "pubkey", "--id", id, "-o", "dh1.der")
	e.run(t, nil, openssl, "pkey", "-pubin", "-inform", "DER", "-in", "dh1.der", "-out", "dh1.pem")
	if out, code := e.run(t, nil, openssl, "pkeyutl", "-derive", "-inkey", "peer.pem", "-peerkey", "dh1.pem", "-out", "want"); code != 0 {
		t.Fatalf("openssl pkeyutl -derive: %s", out)
	}
	want, _ := os.ReadFile(filepath.Join(e.dir, "want"))
	out, code := e.run(t, nil, needTool(t, "pkcs11-tool"), "--module", e.mod, "--login", "--pin", "any", "--derive",
		"--mechanism", "ECDH1-DERIVE", "--id", id, "-i", "peer.der", "-o", "secret")
	if code == 0 {
		t.Fatalf("pkcs11-tool derived from a non-exportable key:\n%s", out)
	}
	if !strings.Contains(out, "CKR_TEMPLATE_INCONSISTENT") {
		t.Fatalf("pkcs11-tool --derive failed otherwise than refused:\n%s", out)
	}
	if got, _ := os.ReadFile(filepath.Join(e.dir, "secret")); len(got) != 0 {
		t.Fatalf("%d bytes written", len(got))
	}
	if len(want) == 32 && strings.Contains(out, string(want)) {
		t.Fatal("the secret is in pkcs11-tool's output")
	}
	// The daemon is well and serves the same key.
	if !strings.Contains(e.tool(t, "-O"), "dh1") {
		t.Fatal("the key is gone after the refusal")
	}
	if r := e.d.runCLI(t, nil, nil, "key", "list"); r.code != 0 || !strings.Contains(r.stdout, "dh1") {
		t.Fatalf("key list after the refusal: %s", r)
	}
}

// CKM_ECDH1_DERIVE through the module from a C program: X9.63 with
// SHA-256 and shared data, and CKD_NULL with the point in an OCTET
// STRING, give what Go computes from the peer's side; what must be
// refused is, in the module (a bad parameter) or the daemon (SHA-1).
func TestPKCS11ECDHDeriveX963(t *testing.T) {
	e := p11Daemon(t, "ecdh-p256 dh1 --exportable")
	id := idOf(t, e.tool(t, "-O"), "dh1")
	e.tool(t, "--read-object", "--type", "pubkey", "--id", id, "-o", "dh1.der")
	der, err := os.ReadFile(filepath.Join(e.dir, "dh1.der"))
	if err != nil {
		t.Fatal(err)
	}
	pub, err := x509.ParsePKIXPublicKey(der)
	if err != nil {
		t.Fatal(err)
	}
	mine, err := pub.(*ecdsa.PublicKey).ECDH()
	if err != nil {
		t.Fatal(err)
	}
	peer, _ := ecdh.P256().GenerateKey(rand.Reader)
	z, err := peer.ECDH(mine)
	if err != nil {
		t.Fatal(err)
	}
	out := e.clientRun(t, "ecdh", hex.EncodeToString(peer.PublicKey().Bytes()))
	var kdf []byte
	for c := byte(1); len(kdf) < 32; c++ {
		h := sha256.New()
		h.Write(z)
		h.Write([]byte{0, 0, 0, c})
		h.Write([]byte("shared"))
		kdf = h.Sum(kdf)
	}
	for _, want := range []string{"x963: " + hex.EncodeToString(kdf[:32]) + "\n", "raw: " + hex.EncodeToString(z) + "\n"} {
		if !strings.Contains(out, want) {
			t.Fatalf("want %q in:\n%s", want, out)
		}
	}
}

// X25519 keys through pkcs11-tool: the daemon's shows as an
// EC_MONTGOMERY key pair (-O) with curve25519's OID and its public value
// (openssl finds the daemon's public key in it), and one is made with
// --keypairgen --key-type EC:curve25519. pkcs11-tool 0.23's --derive
// reads only EC peers, so a C program derives: CKM_ECDH1_DERIVE
// (CKD_NULL) with the daemon's X25519 key and an X25519 peer of
// openssl's gives the secret openssl pkeyutl -derive computes from the
// peer's side, the peer's value raw and in an OCTET STRING.
func TestPKCS11X25519(t *testing.T) {
	e := p11Daemon(t, "x25519 xdh --exportable")
	openssl := needTool(t, "openssl")
	for _, args := range [][]string{
		{"genpkey", "-algorithm", "X25519", "-out", "peer.pem"},
		{"pkey", "-in", "peer.pem", "-pubout", "-outform", "DER", "-out", "peer.der"},
	} {
		if out, code := e.run(t, nil, openssl, args...); code != 0 {
			t.Fatalf("openssl %s: %s", args[0], out)
		}
	}
	peerDER, err := os.ReadFile(filepath.Join(e.dir, "peer.der"))
	if err != nil || len(peerDER) != 44 {
		t.Fatalf("the peer's public key: %d bytes (%v)", len(peerDER), err)
	}
	objs := e.tool(t, "-O", "--login", "--pin", "any")
	for _, want := range []string{"Private Key Object; EC_MONTGOMERY", "Public Key Object; EC_MONTGOMERY", "EC_PARAMS:  06032b656e (OID 1.3.101.110)"} {
		if !strings.Contains(objs, want) {
			t.Fatalf("pkcs11-tool -O does not show %q:\n%s", want, objs)
		}
	}
	out := e.tool(t, "--login", "--pin", "any", "--keypairgen", "--key-type", "EC:curve25519", "--label", "made")
	if !strings.Contains(out, "Private Key Object; EC_MONTGOMERY") || !strings.Contains(out, "Usage:      derive") {
		t.Fatalf("pkcs11-tool --keypairgen --key-type EC:curve25519:\n%s", out)
	}

	out = e.clientRun(t, "x25519", hex.EncodeToString(peerDER[12:]))
	point := lineValue(t, out, "point: ")
	spki, _ := hex.DecodeString("302a300506032b656e032100" + point)
	if err := os.WriteFile(filepath.Join(e.dir, "xdh.der"), spki, 0o644); err != nil {
		t.Fatal(err)
	}
	if out, code := e.run(t, nil, openssl, "pkeyutl", "-derive", "-inkey", "peer.pem", "-peerkey", "xdh.der",
		"-peerform", "DER", "-out", "want"); code != 0 {
		t.Fatalf("openssl pkeyutl -derive: %s", out)
	}
	want, err := os.ReadFile(filepath.Join(e.dir, "want"))
	if err != nil || len(want) != 32 {
		t.Fatalf("openssl's secret: %d bytes (%v)", len(want), err)
	}
	for _, p := range []string{"secret: ", "secret (DER): "} {
		if got := lineValue(t, out, p); got != hex.EncodeToString(want) {
			t.Fatalf("%sthe module's secret %s, openssl's %x", p, got, want)
		}
	}
}

// lineValue is what follows prefix on its line of out.
func lineValue(t *testing.T, out, prefix string) string {
	t.Helper()
	for _, l := range strings.Split(out, "\n") {
		if v, ok := strings.CutPrefix(l, prefix); ok {
			return v
		}
	}
	t.Fatalf("no %q in:\n%s", prefix, out)
	return ""
}

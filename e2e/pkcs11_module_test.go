package e2e_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/sha3"
	"crypto/x509"
	"encoding/hex"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/wrap"
)

// What the module forwards that p11-kit's own client does not (Ed25519,
// SHA-3, AES and RSA-AES key wrap), and its slots: one per daemon socket.

// edPublicKey returns the Ed25519 public key of the object labelled label
// in out (pkcs11-tool -O): its CKA_EC_POINT, an OCTET STRING of 32 bytes.
func edPublicKey(t *testing.T, out, label string) ed25519.PublicKey {
	t.Helper()
	m := regexp.MustCompile(`EC_POINT:\s+0420([0-9a-f]{64})\n\s+EC_PARAMS:[^\n]*\n\s+label:\s+` + regexp.QuoteMeta(label) + `\n`).FindStringSubmatch(out)
	if m == nil {
		t.Fatalf("no Ed25519 public key %q in:\n%s", label, out)
	}
	b, _ := hex.DecodeString(m[1])
	return ed25519.PublicKey(b)
}

// Ed25519 keys, the daemon's and one pkcs11-tool makes, sign with
// CKM_EDDSA; the signatures verify with pkcs11-tool and with Go's
// ed25519 over the public key the token shows.
func TestPKCS11Ed25519(t *testing.T) {
	e := p11Daemon(t, "ed25519 ed1")
	e.tool(t, "--login", "--pin", "any", "--keypairgen", "--key-type", "EC:edwards25519", "--label", "made-ed")
	if r := e.d.runCLI(t, nil, nil, "key", "info", "made-ed"); !strings.Contains(r.stdout, "type:        ed25519") {
		t.Fatalf("made-ed is not an Ed25519 key of the daemon:\n%s", r.stdout)
	}
	objs := e.tool(t, "-O")
	msg := []byte("signed with Ed25519 through PKCS #11")
	os.WriteFile(filepath.Join(e.dir, "data"), msg, 0o644)
	for _, label := range []string{"ed1", "made-ed"} {
		t.Run(label, func(t *testing.T) {
			id := idOf(t, objs, label)
			sig := filepath.Join(e.dir, label+".sig")
			e.tool(t, "--login", "--pin", "any", "--sign", "--mechanism", "EDDSA", "--id", id, "-i", "data", "-o", sig)
			out := e.tool(t, "--verify", "--mechanism", "EDDSA", "--id", id, "-i", "data", "--signature-file", sig)
			if !strings.Contains(out, "Signature is valid") {
				t.Fatalf("pkcs11-tool --verify: %s", out)
			}
			s, _ := os.ReadFile(sig)
			pub := edPublicKey(t, objs, label)
			if !ed25519.Verify(pub, msg, s) {
				t.Fatalf("the signature (%d bytes) does not verify with the token's public key", len(s))
			}
			// A changed message does not verify.
			os.WriteFile(filepath.Join(e.dir, "bad"), append([]byte("x"), msg...), 0o644)
			out, code := e.run(t, nil, needTool(t, "pkcs11-tool"), "--module", e.mod, "--verify", "--mechanism", "EDDSA",
				"--id", id, "-i", "bad", "--signature-file", sig)
			if code == 0 && strings.Contains(out, "Signature is valid") {
				t.Fatalf("a changed message verified: %s", out)
			}
		})
	}
	// Ed25519ph and contexts are not offered: asked for, they are
	// refused, never replaced by pure Ed25519; a parameter asking for
	// pure Ed25519 signs.
	e.clientRun(t, "edparams")
}

// SHA-3 digests computed by the daemon through the module.
func TestPKCS11SHA3Digest(t *testing.T) {
	e := p11Daemon(t)
	data := bytes.Repeat([]byte("sha-3 through the module "), 500)
	os.WriteFile(filepath.Join(e.dir, "data"), data, 0o644)
	for mech, want := range map[string][]byte{
		"SHA3-256": func() []byte { h := sha3.Sum256(data); return h[:] }(),
		"SHA3-512": func() []byte { h := sha3.Sum512(data); return h[:] }(),
	} {
		out := filepath.Join(e.dir, mech)
		e.tool(t, "--hash", "--mechanism", mech, "-i", "data", "-o", out)
		got, _ := os.ReadFile(out)
		if !bytes.Equal(got, want) {
			t.Fatalf("%s: %x, want %x", mech, got, want)
		}
	}
}

// CKM_AES_KEY_WRAP: a wrappable key leaves wrapped under a key whose
// usage is wrapping and comes back with C_UnwrapKey; a key that is not
// wrappable, or a wrapping key without the usage, is refused.
func TestPKCS11AESKeyWrap(t *testing.T) {
	e := p11Daemon(t, "aes256-gcm kek --usage wrap,unwrap", "aes256-gcm data1 --wrappable", "aes256-gcm fixed",
		"aes256-gcm notkek --usage encrypt,decrypt")
	objs := e.tool(t, "-O", "--login", "--pin", "any")
	kek, data1 := idOf(t, objs, "kek"), idOf(t, objs, "data1")
	wrapped := filepath.Join(e.dir, "wrapped")
	e.tool(t, "--login", "--pin", "any", "--wrap", "--mechanism", "AES-KEY-WRAP", "--id", kek, "--application-id", data1, "-o", wrapped)
	if b, _ := os.ReadFile(wrapped); len(b) != 40 {
		t.Fatalf("a wrapped AES-256 key of %d bytes (RFC 3394: 40)", len(b))
	}
	out := e.tool(t, "--login", "--pin", "any", "--unwrap", "--mechanism", "AES-KEY-WRAP", "--id", kek, "-i", wrapped,
		"--key-type", "AES:", "--application-label", "came-back")
	if !strings.Contains(out, "Key unwrapped") {
		t.Fatalf("pkcs11-tool --unwrap: %s", out)
	}
	if r := e.d.runCLI(t, nil, nil, "key", "info", "came-back"); r.code != 0 || !strings.Contains(r.stdout, "aes256-gcm") {
		t.Fatalf("the unwrapped key is not among the daemon's keys:\n%s", r)
	}
	// Refused: a key that may not leave wrapped, and wrapping under a key
	// without the wrap usage.
	for _, c := range []struct{ what, wrapping, target string }{
		{"a key that is not wrappable", kek, idOf(t, objs, "fixed")},
		{"a wrapping key without the usage", idOf(t, objs, "notkek"), data1},
	} {
		bad := filepath.Join(e.dir, "bad-wrap")
		os.Remove(bad)
		out, code := e.run(t, nil, needTool(t, "pkcs11-tool"), "--module", e.mod, "--login", "--pin", "any", "--wrap",
			"--mechanism", "AES-KEY-WRAP", "--id", c.wrapping, "--application-id", c.target, "-o", bad)
		if b, _ := os.ReadFile(bad); code == 0 || len(b) > 0 {
			t.Fatalf("%s was wrapped (exit %d):\n%s", c.what, code, out)
		}
	}
}

// KEYWARDEN_PKCS11_SOCKET lists two daemons' sockets: two slots, each
// the caller's view of its daemon; a handle of one slot is refused in a
// session of the other.
func TestPKCS11Slots(t *testing.T) {
	a := p11Daemon(t, "ecdsa-p256 only-a")
	b := p11Daemon(t, "ecdsa-p256 only-b")
	a.sock = a.sock + ":" + b.sock
	out := a.tool(t, "-L")
	if !strings.Contains(out, "Slot 0 (0x0)") || !strings.Contains(out, "Slot 1 (0x1)") || strings.Count(out, "token label        : keywarden") != 2 {
		t.Fatalf("pkcs11-tool -L: not two slots with a token:\n%s", out)
	}
	for slot, c := range []struct{ has, hasNot string }{{"only-a", "only-b"}, {"only-b", "only-a"}} {
		out := a.tool(t, "--slot-index", []string{"0", "1"}[slot], "-O", "--login", "--pin", "any")
		if !strings.Contains(out, c.has) || strings.Contains(out, c.hasNot) {
			t.Fatalf("slot %d's objects:\n%s", slot, out)
		}
	}
	a.clientRun(t, "slots")
	// A slot whose daemon is gone shows no token; the other works on.
	b.d.stop()
	out = a.tool(t, "-L")
	if strings.Count(out, "token label        : keywarden") != 1 {
		t.Fatalf("pkcs11-tool -L with one daemon stopped:\n%s", out)
	}
	a.tool(t, "--slot-index", "0", "-O")
}

// CKM_RSA_AES_KEY_WRAP: an Ed25519 key wrapped under an RSA public key and
// unwrapped with its private key is the same key (what one signs the
// other's public key verifies) and stays sensitive whatever the template
// asks; a blob
// made outside the daemon (RSA-OAEP SHA-256 of an AES key, RFC 5649 of an
// HMAC key under it, as cloud KMS imports do) unwraps to a key that
// computes the same HMAC as the key it carried; an AES-256 key under
// RSA-3072 (a weaker key), AES-128 asked for wrapping, OAEP with SHA-1, a
// key that is not wrappable, and the wrong kinds of wrapping and
// unwrapping keys are refused.
func TestPKCS11RSAAESKeyWrap(t *testing.T) {
	e := p11Daemon(t, "rsa-3072 kek-rsa --usage wrap,unwrap", "ed25519 ed-w --wrappable", "ed25519 ed-fixed",
		"aes256-gcm data1 --wrappable")
	objs := e.tool(t, "-O")
	der := filepath.Join(e.dir, "kek.der")
	e.tool(t, "--read-object", "--type", "pubkey", "--id", idOf(t, objs, "kek-rsa"), "-o", der)
	b, _ := os.ReadFile(der)
	k, err := x509.ParsePKIXPublicKey(b)
	if err != nil {
		t.Fatal(err)
	}
	hmacKey := bytes.Repeat([]byte{0x5a}, 32)
	ek := bytes.Repeat([]byte{0x17}, 32)
	enc, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, k.(*rsa.PublicKey), ek, nil)
	if err != nil {
		t.Fatal(err)
	}
	kwp, err := wrap.WrapKWP(ek, hmacKey)
	if err != nil {
		t.Fatal(err)
	}
	blob := filepath.Join(e.dir, "blob")
	os.WriteFile(blob, append(enc, kwp...), 0o644)
	out := e.clientRun(t, "rsaaes", blob)
	m := hmac.New(sha256.New, hmacKey)
	m.Write([]byte("abc"))
	if want := "tag: " + hex.EncodeToString(m.Sum(nil)); !strings.Contains(out, want+"\n") {
		t.Fatalf("the unwrapped key's HMAC is not the carried key's (want %s):\n%s", want, out)
	}
}

// CKM_HKDF_DERIVE: an HMAC key derived from one imported with a known
// value is RFC 5869's HKDF of it (its HMAC of "abc" is the one Go computes
// from HKDF-SHA-256 of the known key) and is sensitive as its parent,
// neither always sensitive nor never extractable (it is derived);
// and the refusals hold: a child asked exportable or wrappable (more than
// its parent), no derive usage, a private key asked for, an AES parent,
// extract only, a salt key, SHA-1, ECB.
func TestPKCS11HKDFDerive(t *testing.T) {
	e := p11Daemon(t)
	out := e.clientRun(t, "hkdf")
	child, err := hkdf.Key(sha256.New, bytes.Repeat([]byte{0x5a}, 32), []byte("salt"), "info", 32)
	if err != nil {
		t.Fatal(err)
	}
	m := hmac.New(sha256.New, child)
	m.Write([]byte("abc"))
	if want := "tag: " + hex.EncodeToString(m.Sum(nil)); !strings.Contains(out, want+"\n") {
		t.Fatalf("the derived key is not HKDF's (want %s):\n%s", want, out)
	}
}

// C_CopyObject cannot relax a key's sticky attributes nor add a usage:
// no object may be copied (CKA_COPYABLE false; the daemon has no copy of
// a key), so a copy asking a sensitive key to be exportable and
// wrappable is CKR_ACTION_PROHIBITED, as are a copy asking a usage more
// and a plain copy, and the key stays as it was.
func TestPKCS11CopyObjectRelaxesNothing(t *testing.T) {
	e := p11Daemon(t, "aes256-gcm aes1")
	out := e.clientRun(t, "copy")
	if !strings.Contains(out, "copy asking exportable and wrappable: rv 0x1b\n") {
		t.Fatalf("C_CopyObject is not CKR_ACTION_PROHIBITED:\n%s", out)
	}
}

// A refused call of an operation ends it, as PKCS #11 has it (only a
// length query and CKR_BUFFER_TOO_SMALL keep it): for encryption,
// decryption, signing, verification and digests, with the C_*Init sent
// at once and deferred, a call with bad arguments or data too long for
// the daemon (both refused by the module, which then ends the daemon's
// operation), a C_*Update too long or with bad arguments, a C_*Init with
// a NULL mechanism (PKCS #11 3.0), a wrong signature and junk to decrypt:
// after each the next call is CKR_OPERATION_NOT_INITIALIZED and a new
// C_*Init succeeds.
func TestPKCS11RefusedCallEndsTheOperation(t *testing.T) {
	e := p11Daemon(t)
	e.clientRun(t, "opfail")
}

// A program whose module sends a call longer than the daemon takes
// (p11-kit's own client, p11-kit-client.so, which sends what it is
// given): the daemon answers it with CKR_DATA_LEN_RANGE, ending the
// operation, and the connection and its session go on. keywarden's
// module answers the same without sending the call.
func TestPKCS11FrameTooLong(t *testing.T) {
	e := p11Daemon(t)
	client := needTool(t, "/usr/lib/x86_64-linux-gnu/pkcs11/p11-kit-client.so")
	e.extraEnv = append(e.extraEnv, "P11_KIT_SERVER_ADDRESS=unix:path="+e.sock)
	e.clientRun(t, "bigcall")
	out, code := e.run(t, nil, p11Client(t), client, "bigcall")
	if code != 0 {
		t.Fatalf("p11client bigcall with p11-kit's client: exit %d\n%s", code, out)
	}
	if log, _ := os.ReadFile(e.logPath); !strings.Contains(string(log), `"msg":"C_Digest of `) {
		log := string(log)
		t.Errorf("the daemon's refusal of the call too long is not in the audit log:\n%s", log)
	}
}

// A call longer than the daemon's PKCS #11 front takes (a body of 1 MiB:
// an HKDF info, ECDH shared data, a GCM AAD, data to digest or sign) is refused by the
// module before it is sent, with CKR_MECHANISM_PARAM_INVALID or
// CKR_DATA_LEN_RANGE, which ends the operation it was a call of; the
// connection stays, and the other session and the same one go on working.
func TestPKCS11CallTooLong(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1", "ecdh-p256 dh1")
	e.clientRun(t, "toolong")
}

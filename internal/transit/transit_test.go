package transit

import (
	"crypto"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"math/big"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/wrap"
)

func TestEncryptRotateRewrap(t *testing.T) {
	tf := newTestFront(t, Config{})
	d := tf.ok(t, "POST", "keys/app", map[string]any{"type": "aes256-gcm96"})
	if d["type"] != "aes256-gcm96" || d["latest_version"] != 1.0 {
		t.Fatalf("created %v", d)
	}
	aad := b64("row 7")
	c1 := str(tf.ok(t, "POST", "encrypt/app", map[string]any{"plaintext": b64("secret one"), "associated_data": aad}), "ciphertext")
	if !strings.HasPrefix(c1, "vault:v1:") {
		t.Fatalf("ciphertext %q", c1)
	}
	if p := str(tf.ok(t, "POST", "decrypt/app", map[string]any{"ciphertext": c1, "associated_data": aad}), "plaintext"); p != b64("secret one") {
		t.Fatalf("decrypted %q", p)
	}
	// Other associated data does not decrypt.
	tf.fails(t, 400, "POST", "decrypt/app", map[string]any{"ciphertext": c1, "associated_data": b64("row 8")})

	tf.ok(t, "POST", "keys/app/rotate", nil)
	if d := tf.ok(t, "GET", "keys/app", nil); d["latest_version"] != 2.0 || len(d["keys"].(map[string]any)) != 2 {
		t.Fatalf("after rotate: %v", d)
	}
	// Batch: new ciphertexts name version 2; the old one still decrypts.
	br := tf.ok(t, "POST", "encrypt/app", map[string]any{"batch_input": []any{
		map[string]any{"plaintext": b64("a"), "reference": "r1"}, map[string]any{"plaintext": b64("b")}}})["batch_results"].([]any)
	c2 := str(br[0].(map[string]any), "ciphertext")
	if !strings.HasPrefix(c2, "vault:v2:") || br[0].(map[string]any)["reference"] != "r1" || len(br) != 2 {
		t.Fatalf("batch %v", br)
	}
	out := tf.ok(t, "POST", "decrypt/app", map[string]any{"batch_input": []any{
		map[string]any{"ciphertext": c1, "associated_data": aad}, map[string]any{"ciphertext": c2}, map[string]any{"ciphertext": "vault:v1:!!"}}})["batch_results"].([]any)
	if str(out[0].(map[string]any), "plaintext") != b64("secret one") || str(out[1].(map[string]any), "plaintext") != b64("a") || str(out[2].(map[string]any), "error") == "" {
		t.Fatalf("batch decrypt %v", out)
	}
	tf.mustRefusal(t, "decrypt", "INVALID_ARGUMENT", "batch_input[2]: invalid ciphertext: not valid base64")

	// Rewrap moves the old ciphertext to version 2, never showing it.
	rw := str(tf.ok(t, "POST", "rewrap/app", map[string]any{"ciphertext": c1, "associated_data": aad}), "ciphertext")
	if !strings.HasPrefix(rw, "vault:v2:") {
		t.Fatalf("rewrapped %q", rw)
	}
	// min_decryption_version retires version 1.
	tf.ok(t, "POST", "keys/app/config", map[string]any{"min_decryption_version": 2})
	tf.fails(t, 400, "POST", "decrypt/app", map[string]any{"ciphertext": c1, "associated_data": aad})
	if p := str(tf.ok(t, "POST", "decrypt/app", map[string]any{"ciphertext": rw, "associated_data": aad}), "plaintext"); p != b64("secret one") {
		t.Fatalf("rewrapped decrypted %q", p)
	}
	if d := tf.ok(t, "POST", "keys/app/trim", map[string]any{"min_available_version": 2}); d["min_available_version"] != 2.0 {
		t.Fatalf("trimmed %v", d)
	}
	// A key_version other than the newest is not offered.
	tf.fails(t, 400, "POST", "encrypt/app", map[string]any{"plaintext": b64("x"), "key_version": 1})
	// Deleting needs deletion_allowed (a development-mode core allows it
	// from the start; turn it off to see the refusal).
	tf.ok(t, "POST", "keys/app/config", map[string]any{"deletion_allowed": false})
	tf.fails(t, 400, "DELETE", "keys/app", nil)
	tf.ok(t, "POST", "keys/app/config", map[string]any{"deletion_allowed": true})
	tf.ok(t, "DELETE", "keys/app", nil)
	tf.fails(t, 404, "GET", "keys/app", nil)
	tf.fails(t, 400, "POST", "decrypt/app", map[string]any{"ciphertext": rw})
}

// A transit ciphertext is transit's own form: an AES-256-GCM key's
// ciphertext made elsewhere (nonce || ciphertext || tag) decrypts here
// once the key is imported (BYOK), and the other way round.
func TestImportAndCiphertextForm(t *testing.T) {
	tf := newTestFront(t, Config{})
	pemKey := str(tf.ok(t, "GET", "wrapping_key", nil), "public_key")
	blk, _ := pem.Decode([]byte(pemKey))
	if blk == nil {
		t.Fatalf("wrapping key %q", pemKey)
	}
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if pub.(*rsa.PublicKey).N.BitLen() != 4096 {
		t.Fatal("the wrapping key is not RSA-4096")
	}
	// The same key again.
	if again := str(tf.ok(t, "GET", "wrapping_key", nil), "public_key"); again != pemKey {
		t.Fatal("a second wrapping key")
	}
	k := make([]byte, 32)
	rand.Read(k)
	blob, err := wrap.WrapRSAKWP(pub.(*rsa.PublicKey), crypto.SHA256, k)
	if err != nil {
		t.Fatal(err)
	}
	tf.fails(t, 400, "POST", "keys/byok/import", map[string]any{"ciphertext": base64.StdEncoding.EncodeToString(blob), "exportable": true})
	tf.ok(t, "POST", "keys/byok/import", map[string]any{"ciphertext": base64.StdEncoding.EncodeToString(blob), "type": "aes256-gcm96"})
	if d := tf.ok(t, "GET", "keys/byok", nil); d["imported_key"] != true || d["exportable"] != false {
		t.Fatalf("imported %v", d)
	}
	// Made elsewhere, as transit does.
	blkc, _ := aes.NewCipher(k)
	gcm, _ := cipher.NewGCM(blkc)
	nonce := make([]byte, 12)
	rand.Read(nonce)
	ct := gcm.Seal(append([]byte(nil), nonce...), nonce, []byte("made elsewhere"), []byte("ctx"))
	p := str(tf.ok(t, "POST", "decrypt/byok", map[string]any{"ciphertext": "vault:v1:" + base64.StdEncoding.EncodeToString(ct), "associated_data": b64("ctx")}), "plaintext")
	if p != b64("made elsewhere") {
		t.Fatalf("decrypted %q", p)
	}
	// Made here, opened elsewhere.
	c := str(tf.ok(t, "POST", "encrypt/byok", map[string]any{"plaintext": b64("made here")}), "ciphertext")
	raw, _ := base64.StdEncoding.DecodeString(strings.TrimPrefix(c, "vault:v1:"))
	pt, err := gcm.Open(nil, raw[:12], raw[12:], nil)
	if err != nil || string(pt) != "made here" {
		t.Fatalf("opened elsewhere: %q %v", pt, err)
	}
	// A blob under another wrapping key is refused.
	other, _ := rsa.GenerateKey(rand.Reader, 2048)
	bad, _ := wrap.WrapRSAKWP(&other.PublicKey, crypto.SHA256, k)
	tf.fails(t, 400, "POST", "keys/bad/import", map[string]any{"ciphertext": base64.StdEncoding.EncodeToString(bad)})
}

// Every signing key type signs and verifies with both marshalings (RSA
// with both paddings), and the signatures verify with the standard
// library against the public key transit gives.
func TestSignVerifyEveryType(t *testing.T) {
	tf := newTestFront(t, Config{})
	msg := []byte("sign me")
	for _, typ := range []string{"ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-2048"} {
		d := tf.ok(t, "POST", "keys/s-"+typ, map[string]any{"type": typ})
		pubStr := str(d["keys"].(map[string]any)["1"].(map[string]any), "public_key")
		var pub crypto.PublicKey
		if typ == "ed25519" {
			b, _ := base64.StdEncoding.DecodeString(pubStr)
			pub = ed25519.PublicKey(b)
		} else {
			blk, _ := pem.Decode([]byte(pubStr))
			var err error
			if pub, err = x509.ParsePKIXPublicKey(blk.Bytes); err != nil {
				t.Fatal(err)
			}
		}
		algs := []string{""}
		if strings.HasPrefix(typ, "rsa") {
			algs = []string{"pss", "pkcs1v15"}
		}
		for _, alg := range algs {
			for _, m := range []string{"asn1", "jws"} {
				name := fmt.Sprintf("%s/%s/%s", typ, alg, m)
				body := map[string]any{"input": base64.StdEncoding.EncodeToString(msg), "marshaling_algorithm": m, "signature_algorithm": alg}
				sig := str(tf.ok(t, "POST", "sign/s-"+typ+"/sha2-256", body), "signature")
				if !strings.HasPrefix(sig, "vault:v1:") {
					t.Fatalf("%s: signature %q", name, sig)
				}
				enc := base64.StdEncoding
				if m == "jws" {
					enc = base64.RawURLEncoding
				}
				raw, err := enc.DecodeString(strings.TrimPrefix(sig, "vault:v1:"))
				if err != nil {
					t.Fatalf("%s: %v", name, err)
				}
				if !stdVerify(pub, alg, m, msg, raw) {
					t.Errorf("%s: the standard library does not verify the signature", name)
				}
				body["signature"] = sig
				if v := tf.ok(t, "POST", "verify/s-"+typ+"/sha2-256", body)["valid"]; v != true {
					t.Errorf("%s: verify says %v", name, v)
				}
				body["input"] = b64("other")
				if v := tf.ok(t, "POST", "verify/s-"+typ+"/sha2-256", body)["valid"]; v != false {
					t.Errorf("%s: verify of another input says %v", name, v)
				}
			}
		}
		// Batch.
		br := tf.ok(t, "POST", "sign/s-"+typ, map[string]any{"batch_input": []any{map[string]any{"input": b64("x")}, map[string]any{"input": b64("y")}}})["batch_results"].([]any)
		vb := []any{}
		for i, in := range []string{"x", "y"} {
			vb = append(vb, map[string]any{"input": b64(in), "signature": str(br[i].(map[string]any), "signature")})
		}
		vb = append(vb, map[string]any{"input": b64("z"), "signature": str(br[0].(map[string]any), "signature")})
		vr := tf.ok(t, "POST", "verify/s-"+typ, map[string]any{"batch_input": vb})["batch_results"].([]any)
		if vr[0].(map[string]any)["valid"] != true || vr[1].(map[string]any)["valid"] != true || vr[2].(map[string]any)["valid"] != false {
			t.Errorf("%s: batch verify %v", typ, vr)
		}
	}
}

func stdVerify(pub crypto.PublicKey, alg, marshaling string, msg, sig []byte) bool {
	h := sha256.Sum256(msg)
	switch k := pub.(type) {
	case ed25519.PublicKey:
		return ed25519.Verify(k, msg, sig)
	case *ecdsa.PublicKey:
		if marshaling == "jws" {
			n := len(sig) / 2
			return ecdsa.Verify(k, h[:], new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:]))
		}
		return ecdsa.VerifyASN1(k, h[:], sig)
	case *rsa.PublicKey:
		if alg == "pkcs1v15" {
			return rsa.VerifyPKCS1v15(k, crypto.SHA256, h[:], sig) == nil
		}
		return rsa.VerifyPSS(k, crypto.SHA256, h[:], sig, nil) == nil
	}
	return false
}

func TestHMACHashRandomDatakeyExport(t *testing.T) {
	tf := newTestFront(t, Config{})
	tf.ok(t, "POST", "keys/mac", map[string]any{"type": "hmac", "exportable": true})
	d := tf.ok(t, "POST", "hmac/mac", map[string]any{"input": b64("data")})
	tag := str(d, "hmac")
	exp := tf.ok(t, "GET", "export/hmac-key/mac", nil)
	kb, _ := base64.StdEncoding.DecodeString(str(exp["keys"].(map[string]any), "1"))
	if len(kb) != 32 {
		t.Fatalf("exported %v", exp)
	}
	if v := tf.ok(t, "POST", "verify/mac", map[string]any{"input": b64("data"), "hmac": tag})["valid"]; v != true {
		t.Fatalf("hmac verify %v", v)
	}
	if v := tf.ok(t, "POST", "verify/mac", map[string]any{"input": b64("datA"), "hmac": tag})["valid"]; v != false {
		t.Fatalf("hmac verify of other data %v", v)
	}
	tf.fails(t, 400, "POST", "hmac/mac/sha2-512", map[string]any{"input": b64("data")})

	sum := sha256.Sum256([]byte("data"))
	if s := str(tf.ok(t, "POST", "hash", map[string]any{"input": b64("data")}), "sum"); s != hex.EncodeToString(sum[:]) {
		t.Fatalf("hash %q", s)
	}
	if s := str(tf.ok(t, "POST", "hash/sha2-256", map[string]any{"input": b64("data"), "format": "base64"}), "sum"); s != base64.StdEncoding.EncodeToString(sum[:]) {
		t.Fatalf("hash %q", s)
	}
	r := str(tf.ok(t, "POST", "random/24", map[string]any{"format": "hex"}), "random_bytes")
	if len(r) != 48 {
		t.Fatalf("random %q", r)
	}
	tf.fails(t, 400, "POST", "random/0", nil)

	tf.ok(t, "POST", "keys/dk", nil)
	dk := tf.ok(t, "POST", "datakey/plaintext/dk", map[string]any{"bits": 512})
	plain, _ := base64.StdEncoding.DecodeString(str(dk, "plaintext"))
	if len(plain) != 64 {
		t.Fatalf("data key %v", dk)
	}
	if p := str(tf.ok(t, "POST", "decrypt/dk", map[string]any{"ciphertext": str(dk, "ciphertext")}), "plaintext"); p != str(dk, "plaintext") {
		t.Fatal("the wrapped data key does not decrypt to it")
	}
	if w := tf.ok(t, "POST", "datakey/wrapped/dk", nil); w["plaintext"] != nil || str(w, "ciphertext") == "" {
		t.Fatalf("wrapped data key %v", w)
	}
	// Export only of exportable keys.
	tf.fails(t, 400, "GET", "export/encryption-key/dk", nil)
	tf.ok(t, "POST", "keys/ed", map[string]any{"type": "ed25519", "exportable": true})
	ek := tf.ok(t, "GET", "export/signing-key/ed", nil)
	priv, _ := base64.StdEncoding.DecodeString(str(ek["keys"].(map[string]any), "1"))
	if len(priv) != ed25519.PrivateKeySize {
		t.Fatalf("exported %d bytes", len(priv))
	}
	sig := ed25519.Sign(priv, []byte("m"))
	if v := tf.ok(t, "POST", "verify/ed", map[string]any{"input": b64("m"), "signature": "vault:v1:" + base64.StdEncoding.EncodeToString(sig)})["valid"]; v != true {
		t.Fatal("a signature of the exported key does not verify")
	}
	names := tf.ok(t, "LIST", "keys", nil)["keys"].([]any)
	if len(names) != 3 {
		t.Fatalf("listed %v", names)
	}
}

// A key deleted and made again on another connection is the new key on a
// connection that kept the old one open: its handle is opened again.
func TestKeyRemadeElsewhere(t *testing.T) {
	tf := newTestFront(t, Config{})
	tf.ok(t, "POST", "keys/k", nil)
	ct := str(tf.ok(t, "POST", "encrypt/k", map[string]any{"plaintext": b64("old key")}), "ciphertext")
	other := &testFront{Front: tf.Front, srv: tf.srv, logPath: tf.logPath, sockPath: tf.sockPath, client: unixClient(tf.sockPath)}
	defer other.client.CloseIdleConnections()
	other.ok(t, "DELETE", "keys/k", nil)
	other.ok(t, "POST", "keys/k", nil)
	// The first connection, still open, encrypts under the new key, and
	// no longer decrypts what the old one made.
	ct2 := str(tf.ok(t, "POST", "encrypt/k", map[string]any{"plaintext": b64("new key")}), "ciphertext")
	if p := str(other.ok(t, "POST", "decrypt/k", map[string]any{"ciphertext": ct2}), "plaintext"); p != b64("new key") {
		t.Fatalf("decrypted %q", p)
	}
	tf.fails(t, 400, "POST", "decrypt/k", map[string]any{"ciphertext": ct})
}

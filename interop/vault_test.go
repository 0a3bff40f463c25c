package interop

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"strings"
	"testing"

	vault "github.com/hashicorp/vault/api"
)

// vaultClient is the Vault Go api client of the daemon's transit socket,
// as VAULT_ADDR=unix://PATH makes it.
func vaultClient(t testing.TB, d *daemon) *vault.Client {
	t.Helper()
	cfg := vault.DefaultConfig()
	if err := cfg.Error; err != nil {
		t.Fatal(err)
	}
	cfg.Address = "unix://" + d.transit
	cfg.MaxRetries = 0
	c, err := vault.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("accepted-and-ignored")
	return c
}

func write(t testing.TB, c *vault.Client, path string, data map[string]any) map[string]any {
	t.Helper()
	s, err := c.Logical().Write("transit/"+path, data)
	if err != nil {
		t.Fatalf("write %s: %v", path, err)
	}
	if s == nil {
		return nil
	}
	return s.Data
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }

func sget(m map[string]any, k string) string {
	s, _ := m[k].(string)
	return s
}

// TestVaultAPI runs the transit paths with the Vault Go api client over
// the Unix socket.
func TestVaultAPI(t *testing.T) {
	d := startDaemon(t)
	c := vaultClient(t, d)

	// Create, encrypt and decrypt, single and batch.
	write(t, c, "keys/orders", map[string]any{"type": "aes256-gcm96"})
	ct1 := sget(write(t, c, "encrypt/orders", map[string]any{"plaintext": b64("card 4111"), "associated_data": b64("order 1")}), "ciphertext")
	if !strings.HasPrefix(ct1, "vault:v1:") {
		t.Fatalf("ciphertext %q", ct1)
	}
	if p := sget(write(t, c, "decrypt/orders", map[string]any{"ciphertext": ct1, "associated_data": b64("order 1")}), "plaintext"); p != b64("card 4111") {
		t.Fatalf("decrypted %q", p)
	}
	batch := []any{}
	for i := range 50 {
		batch = append(batch, map[string]any{"plaintext": b64(fmt.Sprint("item ", i))})
	}
	res := write(t, c, "encrypt/orders", map[string]any{"batch_input": batch})["batch_results"].([]any)
	if len(res) != 50 {
		t.Fatalf("%d batch results", len(res))
	}

	// Rotate; the old ciphertexts still decrypt; rewrap; then retire v1.
	write(t, c, "keys/orders/rotate", nil)
	s, err := c.Logical().Read("transit/keys/orders")
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := s.Data["latest_version"].(json.Number).Int64(); v != 2 {
		t.Fatalf("latest_version %v", s.Data["latest_version"])
	}
	dec := []any{}
	for _, r := range res {
		dec = append(dec, map[string]any{"ciphertext": r.(map[string]any)["ciphertext"]})
	}
	out := write(t, c, "decrypt/orders", map[string]any{"batch_input": dec})["batch_results"].([]any)
	for i, r := range out {
		if sget(r.(map[string]any), "plaintext") != b64(fmt.Sprint("item ", i)) {
			t.Fatalf("batch decrypt %d: %v", i, r)
		}
	}
	ct2 := sget(write(t, c, "rewrap/orders", map[string]any{"ciphertext": ct1, "associated_data": b64("order 1")}), "ciphertext")
	if !strings.HasPrefix(ct2, "vault:v2:") {
		t.Fatalf("rewrapped %q", ct2)
	}
	write(t, c, "keys/orders/config", map[string]any{"min_decryption_version": 2})
	_, err = c.Logical().Write("transit/decrypt/orders", map[string]any{"ciphertext": ct1, "associated_data": b64("order 1")})
	var re *vault.ResponseError
	if !errors.As(err, &re) || re.StatusCode != 400 {
		t.Fatalf("decrypting a retired version: %v", err)
	}
	if p := sget(write(t, c, "decrypt/orders", map[string]any{"ciphertext": ct2, "associated_data": b64("order 1")}), "plaintext"); p != b64("card 4111") {
		t.Fatalf("decrypted %q", p)
	}

	// Data keys.
	dk := write(t, c, "datakey/plaintext/orders", map[string]any{"bits": 256})
	if p := sget(write(t, c, "decrypt/orders", map[string]any{"ciphertext": dk["ciphertext"]}), "plaintext"); p != sget(dk, "plaintext") || p == "" {
		t.Fatal("the data key does not decrypt to itself")
	}

	// Sign and verify with every key type and marshaling.
	for _, typ := range []string{"ed25519", "ecdsa-p256", "ecdsa-p384", "rsa-2048", "rsa-3072", "rsa-4096"} {
		write(t, c, "keys/sig-"+typ, map[string]any{"type": typ})
		algs := []string{""}
		if strings.HasPrefix(typ, "rsa") {
			algs = []string{"pss", "pkcs1v15"}
		}
		for _, alg := range algs {
			for _, m := range []string{"asn1", "jws"} {
				body := map[string]any{"input": b64("release v1.2"), "marshaling_algorithm": m}
				if alg != "" {
					body["signature_algorithm"] = alg
				}
				sig := sget(write(t, c, "sign/sig-"+typ+"/sha2-256", body), "signature")
				body["signature"] = sig
				if v := write(t, c, "verify/sig-"+typ+"/sha2-256", body)["valid"]; v != true {
					t.Errorf("%s %s %s: valid = %v", typ, alg, m, v)
				}
				body["input"] = b64("release v1.3")
				if v := write(t, c, "verify/sig-"+typ+"/sha2-256", body)["valid"]; v != false {
					t.Errorf("%s %s %s: another input valid = %v", typ, alg, m, v)
				}
			}
		}
	}

	// HMAC, hash, random.
	write(t, c, "keys/mac", map[string]any{"type": "hmac"})
	tag := sget(write(t, c, "hmac/mac", map[string]any{"input": b64("msg")}), "hmac")
	if v := write(t, c, "verify/mac", map[string]any{"input": b64("msg"), "hmac": tag})["valid"]; v != true {
		t.Errorf("hmac verify: %v", v)
	}
	sum := sha256.Sum256([]byte("msg"))
	if h := sget(write(t, c, "hash/sha2-256", map[string]any{"input": b64("msg")}), "sum"); h != hex.EncodeToString(sum[:]) {
		t.Errorf("hash %q", h)
	}
	if r := sget(write(t, c, "random/32", map[string]any{}), "random_bytes"); len(r) != 44 {
		t.Errorf("random %q", r)
	}

	// BYOK: the key wrapped under the wrapping key (RSA-OAEP SHA-256 of
	// an AES-256 key, then RFC 5649 under it), as Vault's documentation
	// has clients do.
	ws, err := c.Logical().Read("transit/wrapping_key")
	if err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode([]byte(sget(ws.Data, "public_key")))
	pub, err := x509.ParsePKIXPublicKey(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	target := make([]byte, 32)
	rand.Read(target)
	blob := byokWrap(t, pub.(*rsa.PublicKey), target)
	write(t, c, "keys/imported/import", map[string]any{"ciphertext": base64.StdEncoding.EncodeToString(blob), "hash_function": "SHA256", "type": "aes256-gcm96"})
	ct := sget(write(t, c, "encrypt/imported", map[string]any{"plaintext": b64("byok")}), "ciphertext")
	if !openWith(target, ct, "byok") {
		t.Error("the imported key is not the key wrapped")
	}

	// List and delete.
	ls, err := c.Logical().List("transit/keys")
	if err != nil || ls == nil {
		t.Fatalf("list: %v", err)
	}
	if n := len(ls.Data["keys"].([]any)); n != 9 {
		t.Errorf("listed %d keys: %v", n, ls.Data["keys"])
	}
	if _, err := c.Logical().Delete("transit/keys/orders"); err != nil {
		t.Fatal(err)
	}
	if s, err := c.Logical().Read("transit/keys/orders"); err != nil || s != nil {
		t.Errorf("read after delete: %v %v", s, err)
	}
}

// byokWrap wraps key for transit's import: RSA-OAEP (SHA-256) of a fresh
// AES-256 key, followed by key wrapped under it with RFC 5649.
func byokWrap(t testing.TB, pub *rsa.PublicKey, key []byte) []byte {
	t.Helper()
	kek := make([]byte, 32)
	rand.Read(kek)
	head, err := rsa.EncryptOAEP(sha256.New(), rand.Reader, pub, kek, nil)
	if err != nil {
		t.Fatal(err)
	}
	return append(head, kwpWrap(kek, key)...)
}

// kwpWrap is AES key wrap with padding (RFC 5649), written here from the
// RFC rather than taken from keywarden.
func kwpWrap(kek, p []byte) []byte {
	b, _ := aes.NewCipher(kek)
	var aiv [8]byte
	binary.BigEndian.PutUint32(aiv[:4], 0xA65959A6)
	binary.BigEndian.PutUint32(aiv[4:], uint32(len(p)))
	padded := append([]byte(nil), p...)
	for len(padded)%8 != 0 {
		padded = append(padded, 0)
	}
	if len(padded) == 8 {
		out := make([]byte, 16)
		b.Encrypt(out, append(aiv[:], padded...))
		return out
	}
	n := len(padded) / 8
	a := aiv
	r := make([][8]byte, n)
	for i := range n {
		copy(r[i][:], padded[8*i:])
	}
	var buf [16]byte
	for j := range 6 {
		for i := range n {
			copy(buf[:8], a[:])
			copy(buf[8:], r[i][:])
			b.Encrypt(buf[:], buf[:])
			tt := uint64(n*j + i + 1)
			binary.BigEndian.PutUint64(a[:], binary.BigEndian.Uint64(buf[:8])^tt)
			copy(r[i][:], buf[8:])
		}
	}
	out := append([]byte(nil), a[:]...)
	for i := range n {
		out = append(out, r[i][:]...)
	}
	return out
}

// openWith reports whether ct, a transit ciphertext, opens under key
// (AES-256-GCM, nonce || ciphertext || tag) to want.
func openWith(key []byte, ct, want string) bool {
	i := strings.LastIndex(ct, ":")
	raw, err := base64.StdEncoding.DecodeString(ct[i+1:])
	if err != nil || len(raw) < 12 {
		return false
	}
	b, _ := aes.NewCipher(key)
	g, _ := cipher.NewGCM(b)
	p, err := g.Open(nil, raw[:12], raw[12:], nil)
	return err == nil && string(p) == want
}

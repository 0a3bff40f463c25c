package interop

import (
	"testing"

	bao "github.com/openbao/openbao/api/v2"
)

// baoWrite writes a transit path with OpenBao's Go api client.
func baoWrite(t *testing.T, c *bao.Client, path string, data map[string]any) map[string]any {
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

// runOpenBaoClient drives the transit paths with c: keys, encryption,
// rotation, rewrap, signatures, HMAC, and an error in Vault's shape.
func runOpenBaoClient(t *testing.T, c *bao.Client) {
	baoWrite(t, c, "keys/bao", map[string]any{"type": "aes256-gcm96"})
	ct := sget(baoWrite(t, c, "encrypt/bao", map[string]any{"plaintext": b64("from openbao's client")}), "ciphertext")
	if p := sget(baoWrite(t, c, "decrypt/bao", map[string]any{"ciphertext": ct}), "plaintext"); p != b64("from openbao's client") {
		t.Fatalf("decrypt: %q", p)
	}
	baoWrite(t, c, "keys/bao/rotate", nil)
	if ct2 := sget(baoWrite(t, c, "rewrap/bao", map[string]any{"ciphertext": ct}), "ciphertext"); len(ct2) < 9 || ct2[:9] != "vault:v2:" {
		t.Fatalf("rewrap: %q", ct2)
	}
	s, err := c.Logical().Read("transit/keys/bao")
	if err != nil || s == nil || s.Data["latest_version"] == nil {
		t.Fatalf("read key: %v %v", s, err)
	}
	baoWrite(t, c, "keys/bao-sig", map[string]any{"type": "ed25519"})
	sig := sget(baoWrite(t, c, "sign/bao-sig", map[string]any{"input": b64("release")}), "signature")
	if v := baoWrite(t, c, "verify/bao-sig", map[string]any{"input": b64("release"), "signature": sig})["valid"]; v != true {
		t.Fatalf("verify: %v", v)
	}
	if v := baoWrite(t, c, "verify/bao-sig", map[string]any{"input": b64("forged"), "signature": sig})["valid"]; v != false {
		t.Fatalf("verify of a forgery: %v", v)
	}
	baoWrite(t, c, "keys/bao-mac", map[string]any{"type": "hmac"})
	mac := sget(baoWrite(t, c, "hmac/bao-mac", map[string]any{"input": b64("data")}), "hmac")
	if v := baoWrite(t, c, "verify/bao-mac", map[string]any{"input": b64("data"), "hmac": mac})["valid"]; v != true {
		t.Fatalf("hmac verify: %v", v)
	}
	_, err = c.Logical().Write("transit/decrypt/bao", map[string]any{"ciphertext": "vault:v1:bm90IGEgY2lwaGVydGV4dA=="})
	if re, ok := err.(*bao.ResponseError); !ok || re.StatusCode != 400 || len(re.Errors) == 0 {
		t.Fatalf("a bad ciphertext: %v", err)
	}
}

// TestOpenBaoAPI runs OpenBao's Go api client over the Unix socket
// (BAO_ADDR=unix://...).
func TestOpenBaoAPI(t *testing.T) {
	t.Parallel()
	d := startDaemon(t)
	cfg := bao.DefaultConfig()
	cfg.Address = "unix://" + d.transit
	cfg.MaxRetries = 0
	c, err := bao.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	c.SetToken("accepted-and-ignored")
	runOpenBaoClient(t, c)
}

// TestOpenBaoAPIOverMTLS runs OpenBao's Go api client with a client
// certificate over TLS.
func TestOpenBaoAPIOverMTLS(t *testing.T) {
	t.Parallel()
	f := makeMTLS(t)
	_, addr := startMTLSDaemon(t, f)
	cfg := bao.DefaultConfig()
	cfg.Address = "https://" + addr
	cfg.MaxRetries = 0
	if err := cfg.ConfigureTLS(&bao.TLSConfig{CACert: f.ca, ClientCert: f.clientCert, ClientKey: f.clientKey}); err != nil {
		t.Fatal(err)
	}
	c, err := bao.NewClient(cfg)
	if err != nil {
		t.Fatal(err)
	}
	runOpenBaoClient(t, c)
}

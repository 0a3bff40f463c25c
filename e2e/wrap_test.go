package e2e_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/keywarden/keywarden"
)

// The classic attacks on key wrapping (the PKCS #11 family) fail.
func TestWrapAttacks(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	secretK := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "crown-jewel", Wrappable: true})
	kek := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})

	t.Run("a wrapped blob is never decryptable as data", func(t *testing.T) {
		// No key may both wrap and decrypt...
		_, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "both", Usage: keywarden.UsageWrap | keywarden.UsageDecrypt})
		if !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Fatalf("a key with wrap and decrypt: %v", err)
		}
		// ...so the blob a wrapping key made does not decrypt under it.
		blob, err := kek.Wrap(ctx, secretK, keywarden.WrapKW, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kek.Decrypt(ctx, append([]byte("KW\x01\x00\x00\x00\x01"), blob...), nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Fatalf("decrypting a wrapped blob as data: %v", err)
		}
		// Nor can usage be widened to decrypt afterwards.
		u := keywarden.UsageWrap | keywarden.UsageDecrypt
		if _, err := kek.SetAttributes(ctx, keywarden.Attributes{Usage: &u}); err == nil {
			t.Fatal("a wrapping key gained decrypt")
		}
	})

	t.Run("unwrap never yields a more permissive key", func(t *testing.T) {
		blob, err := kek.Wrap(ctx, secretK, keywarden.WrapKeywarden, nil)
		if err != nil {
			t.Fatal(err)
		}
		k, err := kek.Unwrap(ctx, blob, keywarden.WrapKeywarden, keywarden.KeySpec{Name: "copy"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if i := k.Info(); i.Exportable || !i.Wrappable || i.Usage != secretK.Info().Usage || !i.Lifecycle.NeverExportable {
			t.Fatalf("attributes not restored exactly: %+v", i)
		}
		if _, err := k.Export(ctx, keywarden.FormatRaw); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Fatalf("export of the unwrapped copy: %v", err)
		}
		// Flipping the exportable bit in the blob is detected.
		bad := bytes.Clone(blob)
		bad[6+13] |= 1
		if _, err := kek.Unwrap(ctx, bad, keywarden.WrapKeywarden, keywarden.KeySpec{Name: "forged"}, nil); !errors.Is(err, keywarden.ErrInvalidArgument) {
			t.Fatalf("a blob with its attributes changed: %v", err)
		}
		// A standard wrap carries no attributes: its keys are never
		// exportable, whatever is asked.
		kw, _ := kek.Wrap(ctx, secretK, keywarden.WrapKWP, nil)
		_, err = kek.Unwrap(ctx, kw, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "exp", Exportable: true}, nil)
		if !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Fatalf("an exportable key from a KWP blob: %v", err)
		}
		if _, err := kek.Unwrap(ctx, kw, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kwp-copy"}, nil); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("a known key does not wrap", func(t *testing.T) {
		known := make([]byte, 32)
		rand.Read(known)
		imported, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "known", Usage: keywarden.UsageWrap}, keywarden.FormatRaw, known)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := imported.Wrap(ctx, secretK, keywarden.WrapKW, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Fatalf("wrap under an imported key: %v", err)
		}
		// Nor does a key that was ever exportable, even once switched off.
		once := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "once", Usage: keywarden.UsageWrap, Exportable: true})
		off := false
		if _, err := once.SetAttributes(ctx, keywarden.Attributes{Exportable: &off}); err != nil {
			t.Fatal(err)
		}
		if _, err := once.Wrap(ctx, secretK, keywarden.WrapKW, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Fatalf("wrap under a once-exportable key: %v", err)
		}
		// And a key not wrappable is not wrapped by anything.
		plain := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "unwrappable"})
		if _, err := kek.Wrap(ctx, plain, keywarden.WrapKW, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Fatalf("wrap of a non-wrappable key: %v", err)
		}
	})

	t.Run("no key is wrapped under a weaker one", func(t *testing.T) {
		rsa3072 := generate(t, c, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "rsa-kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
		// A 256-bit AES key under a 128-bit-strength RSA-3072 key.
		if _, err := rsa3072.Wrap(ctx, secretK, keywarden.WrapRSAAESKWP, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Fatalf("AES-256 wrapped under RSA-3072: %v", err)
		}
		// A P-256 key (128 bits) under it is fine, and unwraps.
		p256 := generate(t, c, keywarden.KeySpec{Type: keywarden.ECDSAP256, Name: "p256", Wrappable: true})
		blob, err := rsa3072.Wrap(ctx, p256, keywarden.WrapRSAAESKWP, nil)
		if err != nil {
			t.Fatal(err)
		}
		k, err := rsa3072.Unwrap(ctx, blob, keywarden.WrapRSAAESKWP, keywarden.KeySpec{Type: keywarden.ECDSAP256, Name: "p256-copy"}, nil)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(k.Info().PublicKeyDER, p256.Info().PublicKeyDER) {
			t.Fatal("unwrapped a different key")
		}
	})
}

// AES key wrap output is byte for byte OpenSSL's, and a key wrapped for
// us by OpenSSL the way cloud KMS imports describe (RSA-OAEP + KWP) comes
// in (BYOK).
func TestWrapInteropOpenSSL(t *testing.T) {
	if _, err := exec.LookPath("openssl"); err != nil {
		t.Skip("no openssl")
	}
	sock := filepath.Join(openDir(t), "kw.sock")
	d := startDaemonAt(t, sock)
	c := d.client(t)
	kekBytes, target := make([]byte, 32), make([]byte, 32)
	rand.Read(kekBytes)
	rand.Read(target)
	kek, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap}, keywarden.FormatRaw, bytes.Clone(kekBytes))
	if err != nil {
		t.Fatal(err)
	}
	// An administrator vouches for the imported key (the test runs as the
	// daemon's uid).
	yes := true
	if _, err := kek.SetLifecycle(ctx, keywarden.LifecycleChange{Trusted: &yes}); err != nil {
		t.Fatal(err)
	}
	tk, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "target", Wrappable: true}, keywarden.FormatRaw, bytes.Clone(target))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		format keywarden.WrapFormat
		cipher string
		iv     string
	}{{keywarden.WrapKW, "-id-aes256-wrap", "A6A6A6A6A6A6A6A6"}, {keywarden.WrapKWP, "-id-aes256-wrap-pad", "A65959A6"}} {
		ours, err := kek.Wrap(ctx, tk, f.format, nil)
		if err != nil {
			t.Fatal(err)
		}
		cmd := exec.Command("openssl", "enc", f.cipher, "-K", hex.EncodeToString(kekBytes), "-iv", f.iv)
		cmd.Stdin = bytes.NewReader(target)
		theirs, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl %s: %v", f.cipher, err)
		}
		if !bytes.Equal(ours, theirs) {
			t.Fatalf("%s: ours %x, openssl %x", f.cipher, ours, theirs)
		}
	}

	// BYOK: the daemon's RSA key receives an AES key wrapped by OpenSSL.
	rk := generate(t, c, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "import-key", Usage: keywarden.UsageUnwrap})
	dir := t.TempDir()
	pub, _ := rk.ExportPublic(ctx, keywarden.FormatSPKIPEM)
	os.WriteFile(filepath.Join(dir, "pub.pem"), pub, 0o600)
	eph := make([]byte, 32)
	rand.Read(eph)
	os.WriteFile(filepath.Join(dir, "eph"), eph, 0o600)
	run := func(stdin []byte, args ...string) []byte {
		cmd := exec.Command("openssl", args...)
		cmd.Stdin = bytes.NewReader(stdin)
		cmd.Dir = dir
		out, err := cmd.Output()
		if err != nil {
			t.Fatalf("openssl %v: %v", args, err)
		}
		return out
	}
	c1 := run(nil, "pkeyutl", "-encrypt", "-pubin", "-inkey", "pub.pem", "-in", "eph",
		"-pkeyopt", "rsa_padding_mode:oaep", "-pkeyopt", "rsa_oaep_md:sha256", "-pkeyopt", "rsa_mgf1_md:sha256")
	c2 := run(target, "enc", "-id-aes256-wrap-pad", "-K", hex.EncodeToString(eph), "-iv", "A65959A6")
	k, err := rk.Unwrap(ctx, append(c1, c2...), keywarden.WrapRSAAESKWP,
		keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "byok", Usage: keywarden.UsageEncrypt | keywarden.UsageDecrypt}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if k.Info().Exportable || k.Info().Lifecycle.Origin != keywarden.OriginUnwrapped {
		t.Fatalf("BYOK key: %+v", k.Info())
	}
	// It is the key OpenSSL wrapped: it opens what the standard library
	// seals under it. (Its own encryptions use a new version: "target"
	// holds the same material and its nonce budget.)
	block, _ := aes.NewCipher(target)
	gcm, _ := cipher.NewGCM(block)
	nonce := make([]byte, 12)
	rand.Read(nonce)
	ct := append(append([]byte{'K', 'W', 1, 0, 0, 0, 1}, nonce...), gcm.Seal(nil, nonce, []byte("byok"), nil)...)
	if pt, err := k.Decrypt(ctx, ct, nil); err != nil || string(pt) != "byok" {
		t.Fatalf("the BYOK key is not the one wrapped: %v", err)
	}
}

// Two daemons that share a trusted wrapping key move a key with its
// attributes and version; its ciphertexts decrypt on the other side.
func TestMoveKeyBetweenDaemons(t *testing.T) {
	a, b := startDaemon(t), startDaemon(t)
	ca, cb := a.client(t), b.client(t)
	shared := make([]byte, 32)
	rand.Read(shared)
	yes := true
	var keks []*keywarden.Key
	for _, c := range []*keywarden.Client{ca, cb} {
		k, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "transport", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap}, keywarden.FormatRaw, bytes.Clone(shared))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := k.SetLifecycle(ctx, keywarden.LifecycleChange{Trusted: &yes}); err != nil {
			t.Fatal(err)
		}
		keks = append(keks, k)
	}
	k := generate(t, ca, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "moving", Wrappable: true, Usage: keywarden.UsageEncrypt | keywarden.UsageDecrypt})
	k.Rotate(ctx)
	ct, _ := k.Encrypt(ctx, []byte("travels"), []byte("aad"))
	blob, err := keks[0].Wrap(ctx, k, keywarden.WrapKeywarden, nil)
	if err != nil {
		t.Fatal(err)
	}
	moved, err := keks[1].Unwrap(ctx, blob, keywarden.WrapKeywarden, keywarden.KeySpec{Name: "arrived"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if i := moved.Info(); i.Usage != k.Info().Usage || i.Version != 2 || i.Exportable || !i.Wrappable {
		t.Fatalf("attributes after the move: %+v", i)
	}
	if pt, err := moved.Decrypt(ctx, ct, []byte("aad")); err != nil || string(pt) != "travels" {
		t.Fatalf("decrypt on the other daemon: %v", err)
	}
	// An untrusted key on the receiving side takes no attributes from a blob.
	local := generate(t, cb, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "other", Usage: keywarden.UsageUnwrap, Exportable: true})
	if _, err := local.Unwrap(ctx, blob, keywarden.WrapKeywarden, keywarden.KeySpec{Name: "x"}, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("bound unwrap with an untrusted key: %v", err)
	}
}

// Envelope encryption: a data key comes back encrypted under a named key,
// in plain only when asked, and the encrypted form decrypts to it.
func TestDataKey(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "envelope"})
	dk, err := k.GenerateDataKey(ctx, []byte("file-7"), nil)
	if err != nil || dk.Plaintext != nil || len(dk.Ciphertext) != 7+12+32+16 {
		t.Fatalf("data key without plaintext: %v %d", err, len(dk.Ciphertext))
	}
	dk, err = k.GenerateDataKey(ctx, []byte("file-7"), &keywarden.DataKeyOptions{Length: 32, Plaintext: true})
	if err != nil || len(dk.Plaintext) != 32 {
		t.Fatal(err)
	}
	back, err := k.Decrypt(ctx, dk.Ciphertext, []byte("file-7"))
	if err != nil || !bytes.Equal(back, dk.Plaintext) {
		t.Fatalf("the encrypted data key does not decrypt to it: %v", err)
	}
	enc := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "decrypt-only", Usage: keywarden.UsageDecrypt})
	if _, err := enc.GenerateDataKey(ctx, nil, &keywarden.DataKeyOptions{Length: 32, Plaintext: true}); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("data key under a key without encrypt: %v", err)
	}
}

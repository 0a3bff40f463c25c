package e2e_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/keywarden/keywarden"
)

// The sequences of calls that the model search of internal/policy
// (model_test.go) explores, replayed against the real daemon: the
// reported attacks and their variants through copies of one key's
// material, each tried and each refused at the step that the rules stop.

func wantPolicy(t *testing.T, what string, err error) {
	t.Helper()
	if !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("%s: %v, want a policy violation", what, err)
	}
}

// ok returns v, or fails the test (by panicking, which the test reports
// with the stack) if err is not nil.
func ok[T any](v T, err error) T {
	if err != nil {
		panic(fmt.Sprintf("unexpected error: %v", err))
	}
	return v
}

// The reported attack: a wrappable wrapping key wrapped under itself,
// unwrapped with decrypt, opens every blob made under the original.
func TestCopiesSelfWrap(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	data := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "data", Wrappable: true})

	// Step 1: a wrapping key that may itself be wrapped is refused.
	_, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek-w", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap, Wrappable: true})
	wantPolicy(t, "a wrappable wrapping key", err)
	_, err = c.Generate(ctx, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "rsa-w", Usage: keywarden.UsageUnwrap, Wrappable: true})
	wantPolicy(t, "a wrappable RSA unwrapping key", err)

	// Step 2: a wrapping key is never wrapped, under itself or another.
	kek := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
	kek2 := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek2", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
	for _, f := range []keywarden.WrapFormat{keywarden.WrapKW, keywarden.WrapKWP, keywarden.WrapKeywarden} {
		_, err := kek.Wrap(ctx, kek, f, nil)
		wantPolicy(t, "a wrapping key wrapped under itself", err)
		_, err = kek2.Wrap(ctx, kek, f, nil)
		wantPolicy(t, "a wrapping key wrapped under another", err)
	}

	// Step 3: whatever blob of data exists, no key that decrypts shares
	// the wrapping key's bytes, and decrypt does not open a blob anyway.
	blob := ok(kek.Wrap(ctx, data, keywarden.WrapKeywarden, nil))
	if !bytes.HasPrefix(blob, []byte("KWW3")) {
		t.Fatalf("blob starts %q", blob[:4])
	}
	_, err = kek.Decrypt(ctx, blob, nil)
	wantPolicy(t, "decrypt with the wrapping key", err)
	for _, u := range []keywarden.Usage{keywarden.UsageWrap | keywarden.UsageEncrypt, keywarden.UsageUnwrap | keywarden.UsageDecrypt} {
		_, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "mixed", Usage: u})
		wantPolicy(t, "a key both moving keys and protecting data ("+u.String()+")", err)
	}
	if i := ok(data.Refresh(ctx)); !i.Lifecycle.WrappedOut {
		t.Fatal("a wrapped key is not marked wrapped out")
	}
	if i := kek.Info(); i.Lifecycle.WrappedOut {
		t.Fatal("the wrapping key is marked wrapped out")
	}
}

// A copy made by unwrapping a standard blob (which carries no
// attributes) is never more than the key it copies, while that key lives:
// no wider usage, no other type, not exportable.
func TestCopiesNeverWiden(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	kek := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
	encOnly := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "enc-only", Usage: keywarden.UsageEncrypt, Wrappable: true})
	mac := generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "mac", Wrappable: true})
	ct := ok(encOnly.Encrypt(ctx, []byte("the safe combination"), nil))

	blob := ok(kek.Wrap(ctx, encOnly, keywarden.WrapKWP, nil))
	_, err := kek.Unwrap(ctx, blob, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "widened", Usage: keywarden.UsageEncrypt | keywarden.UsageDecrypt}, nil)
	wantPolicy(t, "an encrypt-only key unwrapped with decrypt", err)
	_, err = kek.Unwrap(ctx, blob, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "wider", Usage: keywarden.UsageDecrypt}, nil)
	wantPolicy(t, "an encrypt-only key unwrapped as decrypt-only", err)
	// The same as the original (or narrower) is a copy, and works.
	cp := ok(kek.Unwrap(ctx, blob, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "copy", Usage: keywarden.UsageEncrypt}, nil))
	if i := cp.Info(); i.Exportable || i.Wrappable || i.Lifecycle.Origin != keywarden.OriginUnwrapped {
		t.Fatalf("copy: %+v", i)
	}
	// A copy with fewer usages bounds nothing: another copy as wide as
	// the original is still a narrowing of the original.
	if _, err := kek.Unwrap(ctx, blob, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "copy2", Usage: keywarden.UsageEncrypt, Wrappable: true}, nil); err != nil {
		t.Fatalf("a copy as wide as the original: %v", err)
	}

	// HMAC material unwrapped as an AES key (or the other way round).
	mblob := ok(kek.Wrap(ctx, mac, keywarden.WrapKW, nil))
	_, err = kek.Unwrap(ctx, mblob, keywarden.WrapKW, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "as-aes", Usage: keywarden.UsageDecrypt}, nil)
	wantPolicy(t, "HMAC material unwrapped as AES", err)
	_, err = kek.Unwrap(ctx, blob, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "as-hmac", Usage: keywarden.UsageSign}, nil)
	wantPolicy(t, "AES material unwrapped as HMAC", err)

	// A copy made by a key's owner, and the original, still work.
	if _, err := cp.Encrypt(ctx, []byte("x"), nil); err != nil {
		t.Fatal(err)
	}
	// Once every holder of the material is destroyed, the blob brings
	// the key back as its unwrapper asks: restoring a key from its blob.
	for _, k := range []*keywarden.Key{encOnly, cp} {
		if err := k.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	}
	for _, l := range ok(c.List(ctx)) {
		if l.Name == "copy2" {
			k := ok(c.OpenID(ctx, l.ID))
			if err := k.Destroy(ctx); err != nil {
				t.Fatal(err)
			}
		}
	}
	back := ok(kek.Unwrap(ctx, blob, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "restored", Usage: keywarden.UsageDecrypt}, nil))
	if pt := ok(back.Decrypt(ctx, ct, nil)); string(pt) != "the safe combination" {
		t.Fatal("restored key does not decrypt")
	}
}

// Switching exportable off is final for every copy: a blob made while a
// key was exportable gives no exportable key now, nor does anyone the
// wrapping key is shared with get an exportable or wrappable copy.
func TestCopiesExportableFinal(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	c := d.client(t)
	kek := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap,
		ACL: []keywarden.ACLEntry{{ID: nobody.Uid, Usage: keywarden.UsageUnwrap}}})
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "once-exportable", Exportable: true, Wrappable: true})
	kww := ok(kek.Wrap(ctx, k, keywarden.WrapKeywarden, nil))
	kwp := ok(kek.Wrap(ctx, k, keywarden.WrapKWP, nil))
	off := false
	if _, err := k.SetAttributes(ctx, keywarden.Attributes{Exportable: &off}); err != nil {
		t.Fatal(err)
	}
	cp := ok(kek.Unwrap(ctx, kww, keywarden.WrapKeywarden, keywarden.KeySpec{Name: "from-old-blob"}, nil))
	if cp.Info().Exportable {
		t.Fatal("an old blob gave an exportable key")
	}
	_, err := cp.Export(ctx, keywarden.FormatRaw)
	wantPolicy(t, "export of a copy from a blob made while exportable", err)
	_, err = kek.Unwrap(ctx, kwp, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "exp", Exportable: true}, nil)
	wantPolicy(t, "an exportable key from a standard blob", err)

	// Another user the wrapping key is shared with, unwrapping the same
	// blobs: a key locked in the daemon.
	run := func(stdin []byte, args ...string) cliResult { return d.runCLI(t, nobody, stdin, args...) }
	r := run(kww, "key", "unwrap", "--with", "0:kek", "--name", "mine", "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"exportable": false`) || !strings.Contains(r.stdout, `"wrappable": false`) {
		t.Fatalf("a grantee's unwrap: %s", r)
	}
	r = run(kwp, "key", "unwrap", "--with", "0:kek", "--format", "kwp", "--type", "aes256-gcm", "--name", "mine-w", "--wrappable")
	if r.code != 1 || !strings.Contains(r.stderr, "only the unwrapping key's owner may unwrap into a wrappable key") {
		t.Fatalf("a grantee asking for a wrappable key: %s", r)
	}
	r = run(kwp, "key", "unwrap", "--with", "0:kek", "--format", "kwp", "--type", "aes256-gcm", "--name", "mine-e", "--exportable")
	if r.code != 1 || !strings.Contains(r.stderr, "never exportable") {
		t.Fatalf("a grantee asking for an exportable key: %s", r)
	}
	// A bound blob's usage is only narrowed.
	r = run(kww, "key", "unwrap", "--with", "0:kek", "--name", "mine-narrow", "--usage", "encrypt")
	if r.code != 0 || !strings.Contains(r.stdout, "usage:       encrypt\n") {
		t.Fatalf("a narrowed unwrap: %s", r)
	}
}

// RSA: no key both unwraps and decrypts, so decrypt never opens the
// first half of an RSA-AES-KWP blob.
func TestCopiesRSA(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	_, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "both", Usage: keywarden.UsageUnwrap | keywarden.UsageDecrypt})
	wantPolicy(t, "an RSA key with unwrap and decrypt", err)
	_, err = c.Generate(ctx, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "both2", Usage: keywarden.UsageWrap | keywarden.UsageEncrypt})
	wantPolicy(t, "an RSA key with wrap and encrypt", err)
	kek := generate(t, c, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "rsa-kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
	x := generate(t, c, keywarden.KeySpec{Type: keywarden.X25519, Name: "x", Wrappable: true})
	blob := ok(kek.Wrap(ctx, x, keywarden.WrapRSAAESKWP, nil))
	_, err = kek.Decrypt(ctx, blob[:384], nil)
	wantPolicy(t, "RSA decrypt with the unwrapping key", err)
	// A second copy of the X25519 key is fine; as another type it is not.
	if _, err := kek.Unwrap(ctx, blob, keywarden.WrapRSAAESKWP, keywarden.KeySpec{Type: keywarden.X25519, Name: "x-copy"}, nil); err != nil {
		t.Fatal(err)
	}
	_, err = kek.Unwrap(ctx, blob, keywarden.WrapRSAAESKWP, keywarden.KeySpec{Type: keywarden.X25519, Name: "x-wider", Exportable: true}, nil)
	wantPolicy(t, "an exportable copy", err)
}

// Derivation: the same inputs give the same bytes; the copy rule holds
// for them too. A derived key is never trusted to wrap, even by an
// administrator.
func TestCopiesDerive(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	parent := generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "parent", Usage: keywarden.UsageDerive})
	p := keywarden.DeriveParams{Salt: []byte("salt"), Info: []byte("tenant-7")}
	enc := ok(parent.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "d-enc", Usage: keywarden.UsageEncrypt}, p))
	_, err := parent.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "d-both", Usage: keywarden.UsageEncrypt | keywarden.UsageDecrypt}, p)
	wantPolicy(t, "the same derivation with more usages", err)
	_, err = parent.Derive(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "d-mac", Usage: keywarden.UsageSign}, p)
	wantPolicy(t, "the same derivation as another type", err)
	again := ok(parent.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "d-enc2", Usage: keywarden.UsageEncrypt}, p))
	// Other inputs give another key, with the usages asked for.
	p2 := keywarden.DeriveParams{Salt: []byte("salt"), Info: []byte("tenant-8")}
	ok(parent.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "d8", Usage: keywarden.UsageEncrypt | keywarden.UsageDecrypt}, p2))
	// Once the narrow children are gone, the derivation is a new key.
	for _, k := range []*keywarden.Key{enc, again} {
		if err := k.Destroy(ctx); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := parent.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "d-both", Usage: keywarden.UsageEncrypt | keywarden.UsageDecrypt}, p); err != nil {
		t.Fatal(err)
	}
	// A derived wrapping key does not wrap, and cannot be trusted to.
	// (Not from p2: that material is an encrypting key already.)
	_, err = parent.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "d-kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap}, p2)
	wantPolicy(t, "a wrapping key from the bytes of an encrypting one", err)
	p3 := keywarden.DeriveParams{Salt: []byte("salt"), Info: []byte("kek")}
	kek := ok(parent.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "d-kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap}, p3))
	target := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "t", Wrappable: true})
	_, err = kek.Wrap(ctx, target, keywarden.WrapKW, nil)
	wantPolicy(t, "wrap under a derived key", err)
	on := true
	_, err = kek.SetLifecycle(ctx, keywarden.LifecycleChange{Trusted: &on})
	wantPolicy(t, "trusting a derived key", err)
}

// A blob in the first keywarden format, sealed under the wrapping key
// itself (as encryption of data is), is refused with an error that says
// so: whoever could encrypt under a wrapping key could have forged it.
func TestCopiesLegacyKWW1(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	raw := make([]byte, 32)
	rand.Read(raw)
	// An imported key an administrator (here, root) vouches for: the
	// test knows its bytes, as an HSM that shares it would.
	kek, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageUnwrap}, keywarden.FormatRaw, raw)
	if err != nil {
		t.Fatal(err)
	}
	on := true
	if _, err := kek.SetLifecycle(ctx, keywarden.LifecycleChange{Trusted: &on}); err != nil {
		t.Fatal(err)
	}
	// A KWW1 blob, forged the way an encrypt under the key would make it,
	// claiming an exportable AES key.
	attrs := []byte{1, 0, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 3, 1, 0, 0, 0, 1}
	attrs = append(attrs, make([]byte, 16+8+8+8+1)...)
	hdr := append([]byte("KWW1"), 0, byte(len(attrs)))
	hdr = append(hdr, attrs...)
	b, _ := aes.NewCipher(raw)
	g, _ := cipher.NewGCMWithRandomNonce(b)
	blob := g.Seal(hdr, nil, make([]byte, 32), bytes.Clone(hdr))
	_, err = kek.Unwrap(ctx, blob, keywarden.WrapKeywarden, keywarden.KeySpec{Name: "forged"}, nil)
	if err == nil || !strings.Contains(err.Error(), "first wrap format (KWW1)") {
		t.Fatalf("a KWW1 blob: %v", err)
	}
}

// A public half is of its private key's material: one that wraps is
// refused while the private half decrypts, whoever holds it, so no
// administrator can be asked to trust it (the private half would open
// what it wraps).
func TestCopiesPublicHalf(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	c := d.client(t)
	dec := generate(t, c, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "rsa-data", Usage: keywarden.UsageEncrypt | keywarden.UsageDecrypt,
		ACL: []keywarden.ACLEntry{{ID: nobody.Uid, Usage: keywarden.UsageDecrypt}}})
	spki := ok(dec.ExportPublic(ctx, keywarden.FormatSPKIDER))
	_, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "pub-wrap", Usage: keywarden.UsageWrap}, keywarden.FormatSPKIDER, spki)
	wantPolicy(t, "the public half, to wrap, of a key that decrypts", err)
	// As another user, who is granted decrypt on it.
	r := d.runCLI(t, nobody, spki, "key", "import", "--type", "rsa-3072", "--name", "pub", "--usage", "wrap", "--format", "spki-der")
	if r.code != 1 || !strings.Contains(r.stderr, "one role") {
		t.Fatalf("another user importing the public half to wrap: %s", r)
	}
	// To encrypt, it is a copy like any other (a narrowing of the
	// private key); to verify, which the private key does not, it is not.
	if _, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "pub-enc", Usage: keywarden.UsageEncrypt}, keywarden.FormatSPKIDER, spki); err != nil {
		t.Fatal(err)
	}
	_, err = c.Import(ctx, keywarden.KeySpec{Type: keywarden.RSA3072, Name: "pub-verify", Usage: keywarden.UsageVerify}, keywarden.FormatSPKIDER, spki)
	wantPolicy(t, "the public half, to verify, of a key that does not sign", err)
}

// A key made by unwrapping has been out of the daemon: it is marked
// wrapped out and no administrator can make it a trusted wrapping key
// (its bytes may be in other blobs, which bring them back as another
// type once it is gone).
func TestCopiesUnwrappedNeverTrusted(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	kek := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
	data := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "data", Wrappable: true})
	blob := ok(kek.Wrap(ctx, data, keywarden.WrapKW, nil))
	if err := data.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	kek2 := ok(kek.Unwrap(ctx, blob, keywarden.WrapKW, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek2", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap}, nil))
	if !kek2.Info().Lifecycle.WrappedOut {
		t.Fatal("an unwrapped key is not marked wrapped out")
	}
	on := true
	_, err := kek2.SetLifecycle(ctx, keywarden.LifecycleChange{Trusted: &on})
	wantPolicy(t, "an administrator trusting an unwrapped key", err)
	target := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "t", Wrappable: true})
	_, err = kek2.Wrap(ctx, target, keywarden.WrapKeywarden, nil)
	wantPolicy(t, "wrap under an unwrapped key", err)
}

// A private key's bytes (PKCS #8) do not come back as a secret key of
// another type, nor does a derivation reproduce the daemon's own keys.
func TestCopiesPrivateKeyKeepsItsType(t *testing.T) {
	d := startDaemon(t)
	c := d.client(t)
	kek := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageWrap | keywarden.UsageUnwrap})
	for _, typ := range []keywarden.KeyType{keywarden.X25519, keywarden.Ed25519, keywarden.ECDSAP256} {
		k := generate(t, c, keywarden.KeySpec{Type: typ, Name: "k-" + string(typ), Wrappable: true})
		blob := ok(kek.Wrap(ctx, k, keywarden.WrapKWP, nil))
		_, err := kek.Unwrap(ctx, blob, keywarden.WrapKWP, keywarden.KeySpec{Type: keywarden.HMACSHA512, Name: "as-hmac-" + string(typ), Usage: keywarden.UsageSign}, nil)
		wantPolicy(t, string(typ)+" unwrapped as an HMAC key", err)
	}
	parent := generate(t, c, keywarden.KeySpec{Type: keywarden.HMACSHA256, Name: "parent", Usage: keywarden.UsageDerive})
	_, err := parent.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "d"}, keywarden.DeriveParams{Info: []byte("keywarden KWW3 key wrap")})
	if !errors.Is(err, keywarden.ErrInvalidArgument) || !strings.Contains(err.Error(), "reserved") {
		t.Fatalf("a derivation with the daemon's own info: %v", err)
	}
}

// Bytes one user holds tell nothing to another who imports them: the copy
// rule binds an import (or a derivation) by its owner's keys only, so a
// guess that happens to be another user's key is imported like any other
// (it could be used outside the daemon anyway).
func TestCopiesNoOracleAcrossUsers(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	c := d.client(t)
	raw := make([]byte, 32)
	rand.Read(raw)
	if _, err := c.Import(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "mine", Usage: keywarden.UsageEncrypt}, keywarden.FormatRaw, raw); err != nil {
		t.Fatal(err)
	}
	guess := func(b []byte) cliResult {
		return d.runCLI(t, nobody, b, "key", "import", "--type", "aes256-gcm", "--name", fmt.Sprintf("g%x", b[:4]), "--exportable", "--format", "raw")
	}
	wrong := make([]byte, 32)
	rand.Read(wrong)
	if r, r2 := guess(raw), guess(wrong); r.code != 0 || r2.code != 0 {
		t.Fatalf("imports of another user's bytes and of others: %s / %s", r, r2)
	}
}

package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden"
)

// The raw and X9.63 derivations under attack through the client library:
// a key the caller can compute (it holds the peer's private key) stays
// locked in the daemon when its parent is, never wraps or vouches for a
// blob's attributes, and malformed or low-order peers get a typed error
// with the daemon still serving.
func TestDeriveRawAndX963Attacks(t *testing.T) {
	logPath := filepath.Join(t.TempDir(), "audit.log")
	d := startDaemon(t, "--audit-log", logPath)
	c := d.client(t)
	ctx := context.Background()
	x := generate(t, c, keywarden.KeySpec{Type: keywarden.X25519, Name: "x", Wrappable: true})
	peer, _ := ecdh.X25519().GenerateKey(rand.Reader)
	z, err := peer.ECDH(x.Public().(*ecdh.PublicKey))
	if err != nil {
		t.Fatal(err)
	}
	raw := keywarden.DeriveParams{Peer: peer.PublicKey().Bytes(), KDF: keywarden.KDFNone}
	x963 := keywarden.DeriveParams{Peer: peer.PublicKey().Bytes(), KDF: keywarden.KDFX963, Hash: crypto.SHA256}

	// A non-exportable parent gives no exportable child, nor one made so
	// afterwards.
	for _, p := range []keywarden.DeriveParams{raw, x963} {
		if _, err := x.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Exportable: true, Ephemeral: true}, p); !errors.Is(err, keywarden.ErrPolicyViolation) {
			t.Fatalf("exportable %s child of a non-exportable key: %v", p.KDF, err)
		}
	}
	child, err := x.Derive(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true}, raw)
	if err != nil {
		t.Fatal(err)
	}
	yes := true
	if _, err := child.SetAttributes(ctx, keywarden.Attributes{Exportable: &yes}); err == nil {
		t.Fatal("a raw child made exportable afterwards")
	}
	if _, err := child.Export(ctx, keywarden.FormatRaw); err == nil {
		t.Fatal("a non-exportable raw child exported")
	}

	// A derived key the caller knows neither wraps nor vouches for a
	// bound blob's attributes.
	// The raw secret again, as AES: the same bytes as the HMAC child, so
	// the copy rule refuses it.
	kekSpec := keywarden.KeySpec{Type: keywarden.AES256GCM, Usage: keywarden.UsageWrap | keywarden.UsageUnwrap, Ephemeral: true}
	if _, err := x.Derive(ctx, kekSpec, raw); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("the raw secret as an AES key beside an HMAC key of it: %v", err)
	}
	kek, err := x.Derive(ctx, kekSpec, x963)
	if err != nil {
		t.Fatal(err)
	}
	target := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Wrappable: true})
	for _, f := range []keywarden.WrapFormat{keywarden.WrapKeywarden, keywarden.WrapKW, keywarden.WrapKWP} {
		if b, err := kek.Wrap(ctx, target, f, nil); err == nil {
			t.Fatalf("a raw-derived key wrapped a key in format %d (%d bytes)", f, len(b))
		}
	}
	if _, err := kek.Unwrap(ctx, bytes.Repeat([]byte{1}, 120), keywarden.WrapKeywarden, keywarden.KeySpec{Ephemeral: true}, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("a raw-derived key opens keywarden's format: %v", err)
	}

	// X25519's low-order and non-canonical points give no key.
	for _, h := range []string{
		"0000000000000000000000000000000000000000000000000000000000000000",
		"0100000000000000000000000000000000000000000000000000000000000000",
		"e0eb7a7c3b41b8ae1656e3faf19fc46ada098deb9c32b1fd866205165f49b800",
		"5f9c95bca3508c24b1d0b1559c83ef5b04445cc4581c8e86d8224eddd09f1157",
		"ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"edffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
		"eeffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff7f",
	} {
		pt, _ := hex.DecodeString(h)
		for _, p := range []keywarden.DeriveParams{raw, x963} {
			p.Peer = pt
			if _, err := x.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, p); !errors.Is(err, keywarden.ErrInvalidArgument) {
				t.Errorf("%s derive with the low-order point %s: %v", p.KDF, h[:8], err)
			}
		}
	}

	// P-256: the identity, points off the curve, the wrong length, a
	// raw salt or hash, a compressed x with no y, shared data at the
	// daemon's limits.
	e := generate(t, c, keywarden.KeySpec{Type: keywarden.ECDHP256})
	bad := [][]byte{{0}, {4}, append([]byte{4}, make([]byte, 64)...), append([]byte{4}, bytes.Repeat([]byte{1}, 64)...),
		append([]byte{2}, bytes.Repeat([]byte{0xff}, 32)...), bytes.Repeat([]byte{4}, 66),
		{0x30, 0x80}, {0x30, 0x03, 0x30, 0x01, 0x00}}
	for _, pt := range bad {
		for _, kdf := range []keywarden.DeriveKDF{keywarden.KDFNone, keywarden.KDFX963} {
			p := keywarden.DeriveParams{Peer: pt, KDF: kdf}
			if kdf == keywarden.KDFX963 {
				p.Hash = crypto.SHA512
			}
			if _, err := e.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, p); !errors.Is(err, keywarden.ErrInvalidArgument) {
				t.Errorf("%s derive with peer %x: %v", kdf, pt, err)
			}
		}
	}
	ep, _ := ecdh.P256().GenerateKey(rand.Reader)
	for _, p := range []keywarden.DeriveParams{
		{KDF: keywarden.KDFNone, Salt: []byte("s")},
		{KDF: keywarden.KDFNone, Hash: crypto.SHA256},
		{KDF: keywarden.KDFNone, Info: []byte("i")},
		{KDF: keywarden.KDFX963, Hash: crypto.SHA3_256},
		{KDF: keywarden.KDFX963, Hash: crypto.SHA256, Salt: []byte("s")},
	} {
		p.Peer = ep.PublicKey().Bytes()
		if _, err := e.Derive(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}, p); !errors.Is(err, keywarden.ErrInvalidArgument) {
			t.Errorf("%s derive with hash %v, salt %q, info %q: %v", p.KDF, p.Hash, p.Salt, p.Info, err)
		}
	}
	big := keywarden.DeriveParams{Peer: ep.PublicKey().Bytes(), KDF: keywarden.KDFX963, Hash: crypto.SHA384, Info: bytes.Repeat([]byte{7}, 1<<20)}
	big.Info = big.Info[:200<<10]
	if _, err := e.Derive(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA512, Ephemeral: true}, big); err != nil {
		t.Errorf("X9.63 with 200 KiB of shared data: %v", err)
	}
	big.Info = bytes.Repeat([]byte{7}, 1<<20)
	if _, err := e.Derive(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA512, Ephemeral: true}, big); err != nil {
		var ke *keywarden.Error
		if !errors.As(err, &ke) {
			t.Errorf("X9.63 with 1 MiB of shared data: an untyped error: %v", err)
		}
	}
	if err := c.Ping(ctx, []byte("alive")); err != nil {
		t.Fatalf("the daemon after the malformed derivations: %v", err)
	}

	// Every derivation is in the log; the secret is not.
	b, _ := os.ReadFile(logPath)
	// Every call above that reached the daemon (the 1 MiB one is over
	// the client's message limit): 5 from the X25519 key's children, 14
	// low-order points, 16 bad P-256 points, 5 bad parameters, 200 KiB
	// of shared data.
	if n := strings.Count(string(b), `"op":"derive"`); n != 41 {
		t.Errorf("%d derivations in the audit log", n)
	}
	if strings.Contains(string(b), hex.EncodeToString(z)) || bytes.Contains(b, z) {
		t.Error("the audit log holds the shared secret")
	}
}

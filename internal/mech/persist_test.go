package mech

import (
	"bytes"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

func TestCanonicalRoundTrip(t *testing.T) {
	for _, ty := range key.Types() {
		s := key.Lookup(ty)
		if s.Family == key.FamilyRSA && s.Type != wire.KeyType_KEY_TYPE_RSA_2048 {
			continue // slow to generate, and encoded like 2048
		}
		t.Run(s.Name, func(t *testing.T) {
			k, err := Generate(s)
			if err != nil {
				t.Fatal(err)
			}
			defer k.Destroy()
			var b []byte
			if err := k.Canonical(func(c []byte) error { b = bytes.Clone(c); return nil }); err != nil {
				t.Fatal(err)
			}
			k2, err := FromCanonical(s, k.Class(), b)
			if err != nil {
				t.Fatal(err)
			}
			defer k2.Destroy()
			if !bytes.Equal(b, make([]byte, len(b))) {
				t.Error("FromCanonical left its input unwiped")
			}
			if !bytes.Equal(k.PublicDER(), k2.PublicDER()) {
				t.Error("public halves differ")
			}
			if s.Asymmetric {
				pub, err := k.Public(wire.KeyFormat_KEY_FORMAT_SPKI_DER)
				if err != nil {
					t.Fatal(err)
				}
				pk, err := Import(s, wire.KeyFormat_KEY_FORMAT_SPKI_DER, pub)
				if err != nil {
					t.Fatal(err)
				}
				var pb []byte
				pk.Canonical(func(c []byte) error { pb = bytes.Clone(c); return nil })
				pk2, err := FromCanonical(s, key.Public, pb)
				if err != nil {
					t.Fatalf("public key: %v", err)
				}
				if !bytes.Equal(pk2.PublicDER(), pub) {
					t.Error("public key changed in the round trip")
				}
				return
			}
			e1, _ := k.Export(wire.KeyFormat_KEY_FORMAT_RAW)
			e2, _ := k2.Export(wire.KeyFormat_KEY_FORMAT_RAW)
			if !bytes.Equal(e1, e2) {
				t.Error("secret bytes differ")
			}
		})
	}
}

func TestFromCanonicalRefuses(t *testing.T) {
	aes := key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM)
	ed := key.Lookup(wire.KeyType_KEY_TYPE_ED25519)
	rsa := key.Lookup(wire.KeyType_KEY_TYPE_RSA_2048)
	for name, tc := range map[string]struct {
		s *key.Spec
		c key.Class
		b []byte
	}{
		"short AES":          {aes, key.Secret, make([]byte, 31)},
		"AES as private":     {aes, key.Private, make([]byte, 32)},
		"Ed25519 as secret":  {ed, key.Secret, make([]byte, 32)},
		"short Ed25519 seed": {ed, key.Private, make([]byte, 31)},
		"garbage RSA":        {rsa, key.Private, []byte("not DER")},
		"garbage public":     {ed, key.Public, []byte("not DER")},
	} {
		if k, err := FromCanonical(tc.s, tc.c, tc.b); err == nil {
			k.Destroy()
			t.Errorf("%s: accepted", name)
		}
	}
}

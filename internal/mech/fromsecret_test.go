package mech

import (
	"bytes"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

func TestFromSecret(t *testing.T) {
	aes := key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM)
	in := bytes.Repeat([]byte{7}, 32)
	k, err := FromSecret(aes, in)
	if err != nil {
		t.Fatal(err)
	}
	defer k.Destroy()
	if !bytes.Equal(in, make([]byte, 32)) {
		t.Fatal("the input was not wiped")
	}
	out, err := k.Export(wire.KeyFormat_KEY_FORMAT_RAW)
	if err != nil || !bytes.Equal(out, bytes.Repeat([]byte{7}, 32)) {
		t.Fatalf("key bytes %x, %v", out, err)
	}
	short := bytes.Repeat([]byte{7}, 16)
	if _, err := FromSecret(aes, short); err == nil {
		t.Fatal("a 16-byte AES key accepted")
	}
	if !bytes.Equal(short, make([]byte, 16)) {
		t.Fatal("the input of a refused key was not wiped")
	}
	if _, err := FromSecret(key.Lookup(wire.KeyType_KEY_TYPE_ED25519), make([]byte, 32)); err == nil {
		t.Fatal("an asymmetric type accepted")
	}
	h, err := FromSecret(key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA512), make([]byte, 64))
	if err != nil {
		t.Fatalf("HMAC-SHA512: %v", err)
	}
	h.Destroy()
}

package keywarden

import (
	"errors"
	"slices"
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// The client's key type constants are the protocol's names, all of them.
func TestKeyTypeConstantsAreTheProtocols(t *testing.T) {
	consts := []KeyType{AES256GCM, HMACSHA256, HMACSHA384, HMACSHA512, Ed25519, ECDSAP256, ECDSAP384,
		RSA2048, RSA3072, RSA4096, X25519, ECDHP256, ECDHP384}
	if !slices.Equal(consts, KeyTypes()) {
		t.Fatalf("constants %v, protocol %v", consts, KeyTypes())
	}
	for _, kt := range consts {
		back, err := keyTypeFromWire(kt.wire())
		if !kt.Valid() || err != nil || back != kt {
			t.Errorf("%q does not survive the wire: %q, %v", kt, back, err)
		}
	}
	if KeyType("aes128-gcm").Valid() {
		t.Error("an unknown type is valid")
	}
}

// A key of a type this client does not know is an error, never a key of
// some made-up type that the client would then misuse.
func TestUnknownKeyTypeFromDaemon(t *testing.T) {
	_, err := infoFromWire(&wire.KeyInfo{Type: wire.KeyType(999), Id: make([]byte, 16)})
	if !errors.Is(err, ErrUnimplemented) {
		t.Fatalf("unknown type: %v", err)
	}
	if _, err := infoFromWire(&wire.KeyInfo{Type: wire.KeyType_KEY_TYPE_ED25519, Class: wire.KeyClass(77), Id: make([]byte, 16)}); !errors.Is(err, ErrUnimplemented) {
		t.Fatalf("unknown class: %v", err)
	}
	c := &Client{}
	if _, err := c.keyFromResult("open", &wire.Result{Value: &wire.Result_Key{Key: &wire.KeyResult{Handle: 1, Info: &wire.KeyInfo{Type: wire.KeyType(999)}}}}); !errors.Is(err, ErrUnimplemented) {
		t.Fatalf("opening a key of an unknown type: %v", err)
	}
	k := &Key{c: c, info: KeyInfo{Type: Ed25519}, typ: Ed25519}
	if _, err := k.setInfo(&wire.KeyInfo{Type: wire.KeyType(999)}); err == nil || k.Type() != Ed25519 {
		t.Fatalf("a refresh to an unknown type: %v, now %q", err, k.Type())
	}
}

package server

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/hex"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// TestAuditNamesOrigin: the record of a derivation names the new key and,
// in its message, the parent and the key derivation function, so that a
// raw ECDH secret is told from one passed through HKDF; the record of an
// unwrapping names the unwrapping key. A refusal keeps its reason.
func TestAuditNamesOrigin(t *testing.T) {
	cn, id, _ := certConn(t, 1000)
	peer, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	parent := genKey(t, cn, id, wire.KeyType_KEY_TYPE_X25519, 0)
	parentID := keyIDOf(t, cn, id, parent)
	for _, c := range []struct {
		kdf  wire.DeriveKdf
		hash wire.HashAlg
		says string
	}{
		{wire.DeriveKdf_DERIVE_KDF_UNSPECIFIED, 0, "HKDF"},
		{wire.DeriveKdf_DERIVE_KDF_NONE, 0, "the raw shared secret"},
		{wire.DeriveKdf_DERIVE_KDF_X963, wire.HashAlg_HASH_ALG_SHA256, "ANSI X9.63"},
	} {
		typ := wire.KeyType_KEY_TYPE_AES256_GCM
		if c.kdf == wire.DeriveKdf_DERIVE_KDF_NONE {
			typ = wire.KeyType_KEY_TYPE_HMAC_SHA256 // the raw secret makes one key per type
		}
		op := &wire.Op{Op: &wire.Op_Derive{Derive: &wire.Derive{Handle: parent, PeerPublicKey: peer.PublicKey().Bytes(),
			Kdf: c.kdf, Hash: c.hash, Template: &wire.KeyTemplate{Type: typ, Ephemeral: true}}}}
		rep, r := runAudited(t, cn, id, op)
		res := rep.Results[0]
		if res.Status != wire.Status_STATUS_OK {
			t.Fatalf("%v: %s", c.kdf, res.Message)
		}
		child := hex.EncodeToString(res.GetKey().GetInfo().GetId())
		if r.Op != "derive" || r.Key.String() != child {
			t.Errorf("%v: record of %s on %s, want derive of the new key %s", c.kdf, r.Op, r.Key, child)
		}
		if want := "derived from key " + parentID + " with " + c.says; r.Msg != want {
			t.Errorf("%v: msg %q, want %q", c.kdf, r.Msg, want)
		}
	}

	// A refusal keeps its reason, not an origin.
	op := &wire.Op{Op: &wire.Op_Derive{Derive: &wire.Derive{Handle: parent, PeerPublicKey: make([]byte, 32),
		Kdf: wire.DeriveKdf_DERIVE_KDF_NONE, Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}}
	if rep, r := runAudited(t, cn, id, op); rep.Results[0].Status == wire.Status_STATUS_OK || strings.Contains(r.Msg, "derived from") {
		t.Errorf("a low-order peer: %v, msg %q", rep.Results[0].Status, r.Msg)
	}

	// Unwrapping names the key that unwrapped.
	kek := genKey(t, cn, id, wire.KeyType_KEY_TYPE_AES256_GCM, uint32(wire.Usage_USAGE_WRAP|wire.Usage_USAGE_UNWRAP))
	op = &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true, Wrappable: true}}}}
	res := cn.safeDispatch(rowOf(op), op, id, 0, &arena{}, &wire.Result{}, nil)
	if res.Status != wire.Status_STATUS_OK {
		t.Fatal(res.Message)
	}
	op = &wire.Op{Op: &wire.Op_Wrap{Wrap: &wire.Wrap{Handle: kek, Target: res.GetKey().GetHandle()}}}
	wrapped := cn.safeDispatch(rowOf(op), op, id, 0, &arena{}, &wire.Result{}, nil)
	if wrapped.Status != wire.Status_STATUS_OK {
		t.Fatal(wrapped.Message)
	}
	op = &wire.Op{Op: &wire.Op_Unwrap{Unwrap: &wire.Unwrap{Handle: kek, Blob: wrapped.Data, Template: &wire.KeyTemplate{Ephemeral: true}}}}
	rep, r := runAudited(t, cn, id, op)
	if rep.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatal(rep.Results[0].Message)
	}
	if want := "unwrapped with key " + keyIDOf(t, cn, id, kek); r.Op != "unwrap" || r.Msg != want {
		t.Errorf("unwrap: record of %s, msg %q, want %q", r.Op, r.Msg, want)
	}
}

// keyIDOf is the id of the key behind h, in hex.
func keyIDOf(t *testing.T, cn *seqConn, id Identity, h uint32) string {
	t.Helper()
	o, err := cn.object(h)
	if err != nil {
		t.Fatal(err)
	}
	return hex.EncodeToString(o.ID[:])
}

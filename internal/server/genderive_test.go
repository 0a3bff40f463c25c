package server

import (
	"testing"

	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

func hmacBase(t *testing.T, c *seqpacket.Conn, id uint64, wrappable bool) uint32 {
	t.Helper()
	r := one(t, c, id, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_HMAC_SHA256, Ephemeral: true, Usage: uint32(wire.Usage_USAGE_DERIVE), Wrappable: wrappable}}}})
	if r.Status != wire.Status_STATUS_OK {
		t.Fatalf("generate: %v %s", r.Status, r.Message)
	}
	return r.GetKey().GetHandle()
}

func deriveAES(t *testing.T, c *seqpacket.Conn, id uint64, base uint32) *wire.Result {
	t.Helper()
	r := one(t, c, id, &wire.Op{Op: &wire.Op_Derive{Derive: &wire.Derive{Handle: base, Info: []byte("child"),
		Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}})
	if r.Status != wire.Status_STATUS_OK {
		t.Fatalf("derive: %v %s", r.Status, r.Message)
	}
	return r
}

// Two clones of one snapshot hold the same base key; both see the
// change, and both derive the same child after it. The child's material
// is as old as the base's (the same in every clone), so its first version
// must not encrypt with a budget of its own in each clone.
func TestDeriveAfterChangeInTwoClones(t *testing.T) {
	// The base, exported once, stands for the snapshot both clones share.
	_, c0 := pair(t, Config{})
	r := one(t, c0, 1, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_HMAC_SHA256, Ephemeral: true, Usage: uint32(wire.Usage_USAGE_DERIVE), Exportable: true}}}})
	raw := one(t, c0, 2, &wire.Op{Op: &wire.Op_Export{Export: &wire.Export{Handle: r.GetKey().GetHandle(), Format: wire.KeyFormat_KEY_FORMAT_RAW}}}).Data
	var cts [][]byte
	var children []uint32
	var conns []*seqpacket.Conn
	for i := range 2 {
		gen := genid.New(genid.Config{})
		t.Cleanup(func() { gen.Close() })
		_, c := pair(t, Config{Generation: gen})
		ir := one(t, c, 1, &wire.Op{Op: &wire.Op_Import{Import: &wire.Import{Format: wire.KeyFormat_KEY_FORMAT_RAW, Data: raw,
			Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_HMAC_SHA256, Ephemeral: true, Usage: uint32(wire.Usage_USAGE_DERIVE)}}}})
		if ir.Status != wire.Status_STATUS_OK {
			t.Fatalf("import: %v %s", ir.Status, ir.Message)
		}
		gen.Bump("test: the clone's restore")
		h := deriveAES(t, c, 2, ir.GetKey().GetHandle()).GetKey().GetHandle()
		e := one(t, c, 3, encryptOp(h, "clone"))
		if e.Status != wire.Status_STATUS_OK {
			t.Fatalf("clone %d encrypt: %v %s", i, e.Status, e.Message)
		}
		t.Logf("clone %d: child's first encryption under version %d", i, e.KeyVersion)
		cts, children, conns = append(cts, e.Data), append(children, h), append(conns, c)
	}
	// Clone 1 opens what clone 0 sealed: both encrypted under one AES key.
	d := one(t, conns[1], 9, &wire.Op{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: children[1], Ciphertext: cts[0]}}})
	if d.Status == wire.Status_STATUS_OK {
		t.Errorf("two clones encrypted after the change under the same derived AES material, each with its own budget")
	}
}

// A base key that was wrappable (CKA_EXTRACTABLE) and is switched to not
// wrappable was once extractable: a key derived from it afterwards must
// not record that its base was never extractable.
func TestDeriveFromOnceWrappableBase(t *testing.T) {
	_, c := pair(t, Config{})
	base := hmacBase(t, c, 1, true)
	off := false
	if r := one(t, c, 2, &wire.Op{Op: &wire.Op_SetAttributes{SetAttributes: &wire.SetAttributes{Handle: base, Wrappable: &off}}}); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("set wrappable off: %v %s", r.Status, r.Message)
	}
	child := deriveAES(t, c, 3, base)
	if lc := child.GetKey().GetInfo().GetLifecycle(); lc.GetBaseNeverExtractable() {
		t.Errorf("child of a base that was wrappable records base_never_extractable")
	}
	if r := one(t, c, 4, &wire.Op{Op: &wire.Op_Info{Info: &wire.Info{Handle: base}}}); !r.GetInfo().GetLifecycle().GetEverWrappable() {
		t.Errorf("a base that was wrappable: ever_wrappable not set (%v %s)", r.Status, r.Message)
	}
}

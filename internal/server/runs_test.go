package server

import (
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/wire"
)

// Runs of operations on one key give each operation its own result, as
// if executed one by one.
func TestRuns(t *testing.T) {
	_, c := pair(t, Config{})
	gen := func(id uint64, typ wire.KeyType, usage uint32) uint32 {
		send(t, c, id, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
			Type: typ, Usage: usage, Ephemeral: true}}}})
		r := recv(t, c).Results[0]
		if r.Status != wire.Status_STATUS_OK {
			t.Fatalf("generate: %v", r.Message)
		}
		return r.GetKey().Handle
	}
	aes := gen(1, wire.KeyType_KEY_TYPE_AES256_GCM, 0)
	encOnly := gen(2, wire.KeyType_KEY_TYPE_AES256_GCM, 1)
	mac := gen(3, wire.KeyType_KEY_TYPE_HMAC_SHA256, 8) // verify only
	rsa := gen(4, wire.KeyType_KEY_TYPE_RSA_2048, 0)

	enc := func(h uint32, pt string) *wire.Op {
		return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Plaintext: []byte(pt)}}}
	}
	var ops []*wire.Op
	for _, pt := range []string{"a", "bb", "ccc", "dddd"} {
		ops = append(ops, enc(aes, pt))
	}
	ops = append(ops, enc(rsa, "rsa one"), enc(rsa, "rsa two"))
	send(t, c, 10, ops...)
	rep := recv(t, c)
	for i, r := range rep.Results {
		if r.Status != wire.Status_STATUS_OK {
			t.Fatalf("encrypt %d: %v", i, r.Message)
		}
	}
	cts := rep.Results

	dec := func(h uint32, ct []byte) *wire.Op {
		return &wire.Op{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: h, Ciphertext: ct}}}
	}
	bad := append([]byte(nil), cts[1].Data...)
	bad[len(bad)-1] ^= 1
	send(t, c, 11, dec(aes, cts[0].Data), dec(aes, bad), dec(aes, cts[2].Data), dec(aes, nil),
		dec(rsa, cts[4].Data), dec(rsa, cts[5].Data), dec(encOnly, cts[3].Data), dec(encOnly, cts[3].Data))
	rep = recv(t, c)
	want := []struct {
		st wire.Status
		pt string
	}{
		{wire.Status_STATUS_OK, "a"}, {wire.Status_STATUS_INVALID_ARGUMENT, ""}, {wire.Status_STATUS_OK, "ccc"},
		{wire.Status_STATUS_INVALID_ARGUMENT, ""}, {wire.Status_STATUS_OK, "rsa one"}, {wire.Status_STATUS_OK, "rsa two"},
		{wire.Status_STATUS_POLICY_VIOLATION, ""}, {wire.Status_STATUS_POLICY_VIOLATION, ""},
	}
	for i, w := range want {
		r := rep.Results[i]
		if r.Status != w.st || string(r.Data) != w.pt {
			t.Errorf("decrypt %d: %v %q, want %v %q", i, r.Status, r.Data, w.st, w.pt)
		}
	}

	macOp := &wire.Op{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: mac, Data: []byte("x")}}}
	send(t, c, 12, macOp, macOp, macOp)
	for i, r := range recv(t, c).Results {
		if r.Status != wire.Status_STATUS_POLICY_VIOLATION {
			t.Errorf("MAC %d with a verify-only key: %v", i, r.Status)
		}
	}
	// A run on a handle that does not exist.
	send(t, c, 13, enc(999, "x"), enc(999, "y"))
	for i, r := range recv(t, c).Results {
		if r.Status != wire.Status_STATUS_NOT_FOUND {
			t.Errorf("encrypt %d with no key: %v", i, r.Status)
		}
	}
}

// TestRunKindRegions: an encryption, decryption or MAC is run with others
// only when it names no region of shared memory, as namesRegion says.
func TestRunKindRegions(t *testing.T) {
	r := &wire.Region{Length: 1}
	ops := []*wire.Op{
		{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 1}}},
		{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 1, Input: r}}},
		{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 1, Output: r}}},
		{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: 1}}},
		{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: 1, Input: r}}},
		{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: 1, Output: r}}},
		{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: 1}}},
		{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: 1, Input: r}}},
		{Op: &wire.Op_Hash{Hash: &wire.Hash{}}},
		{Op: &wire.Op_Sign{Sign: &wire.Sign{Handle: 1}}},
		{},
	}
	for i, op := range ops {
		kind, h, _, _ := runKind(op)
		want := !namesRegion(op)
		switch op.GetOp().(type) {
		case *wire.Op_Encrypt, *wire.Op_Decrypt, *wire.Op_Mac:
		default:
			want = false
		}
		if (kind != 0) != want {
			t.Errorf("op %d (%s): kind %d, want run: %v", i, opName(op), kind, want)
		}
		if kind != 0 && h != 1 {
			t.Errorf("op %d: handle %d", i, h)
		}
	}
}

// A run of encryptions with a key whose budget has room for fewer of
// them than the run holds, under refuse-when-spent: as many succeed as
// would one by one, the others are refused (the run was counted at once,
// and all of it refused).
func TestRunOfEncryptionsPastRefusedBudget(t *testing.T) {
	s := newTestServer(t, Config{})
	id := idOf(1400)
	ss := doSession(t, s, id.UID)
	gen := &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_AES256_GCM, Name: "strict", RefuseWhenSpent: true}}}}
	r := do(t, ss, id, 1, gen).Results[0]
	if r.Status != wire.Status_STATUS_OK {
		t.Fatalf("generate: %v %q", r.Status, r.Message)
	}
	h := r.GetKey().GetHandle()
	kid, _ := key.IDFromBytes(r.GetKey().GetInfo().GetId())
	o, err := s.store.Get(kid)
	if err != nil {
		t.Fatal(err)
	}
	keystore.SetFirstVersion(o, 0, time.Time{}, 0, 2) // two encryptions left

	rep := do(t, ss, id, 2, encrypt(h), encrypt(h), encrypt(h), encrypt(h))
	want := []wire.Status{wire.Status_STATUS_OK, wire.Status_STATUS_OK, wire.Status_STATUS_RESOURCE_EXHAUSTED, wire.Status_STATUS_RESOURCE_EXHAUSTED}
	for i, w := range want {
		if st := rep.Results[i].Status; st != w {
			t.Errorf("encryption %d of 4 with 2 left: %v %q, want %v", i, st, rep.Results[i].Message, w)
		}
	}
	if u := o.Newest().Used(); u != 2 {
		t.Errorf("%d encryptions counted, want 2", u)
	}
}

package server

import (
	"testing"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/wire"
)

// TestCombinedRecords: a combined request is recorded one operation at a
// time, each record that of the operation sent alone (its key, status and
// reason, the request's id), a run of alike operations included; one of
// more than maxCombinedRecords operations, or not combined, is one batch
// record.
func TestCombinedRecords(t *testing.T) {
	cn, id, _ := certConn(t, 1000)
	aes := genKey(t, cn, id, wire.KeyType_KEY_TYPE_AES256_GCM, 0)
	enc := func() *wire.Op {
		return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: aes, Plaintext: []byte("message")}}}
	}
	records := func(combined bool, ops ...*wire.Op) []*audit.Record {
		t.Helper()
		req := &wire.Request{Version: 1, Id: 7, Ops: ops, Combined: combined}
		caller := cn.s.callerOf(id)
		notes := cn.notesFor(new([]auditNote), &caller, len(ops))
		rep := cn.execute(req, id, &arena{}, notes, false)
		return cn.requestRecords(nil, req, rep, &caller, notes, req.SizeVT())
	}

	bad := &wire.Op{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: aes, Ciphertext: []byte("not a ciphertext at all, not one")}}}
	recs := records(true, enc(), enc(), enc(), bad, &wire.Op{Op: &wire.Op_Ping{Ping: &wire.Ping{}}})
	if len(recs) != 5 {
		t.Fatalf("%d records of a combined request of 5 operations", len(recs))
	}
	key := recs[0].Key
	for i, r := range recs {
		if r.Op == audit.OpBatch || r.Request != 7 || r.Caller.UID != 1000 {
			t.Fatalf("record %d: %s, request %d, uid %d", i, r.Op, r.Request, r.Caller.UID)
		}
		if i < 3 && (r.Op != "encrypt" || r.Key != key || r.Status != "OK" || r.KeyVersion == 0) {
			t.Errorf("record %d of a run: %s %v v%d %s", i, r.Op, r.Key, r.KeyVersion, r.Status)
		}
	}
	if r := recs[3]; r.Op != "decrypt" || r.Key != key || r.Status != "INVALID_ARGUMENT" || r.Msg == "" {
		t.Errorf("failed decryption recorded as %s %v %s %q", r.Op, r.Key, r.Status, r.Msg)
	}
	if r := recs[4]; r.Op != "ping" || r.Status != "OK" {
		t.Errorf("ping recorded as %s %s", r.Op, r.Status)
	}

	if recs := records(false, enc(), enc()); len(recs) != 1 || recs[0].Op != audit.OpBatch {
		t.Fatalf("a batch: %d records", len(recs))
	}
	var many []*wire.Op
	for range maxCombinedRecords + 1 {
		many = append(many, enc())
	}
	if recs := records(true, many...); len(recs) != 1 || recs[0].Op != audit.OpBatch {
		t.Fatalf("a combined request of %d operations: %d records", len(many), len(recs))
	}
}

// A run of decryptions under different versions of one key is done one at
// a time, and each record names the version its own ciphertext was made
// under: a decryption under an old version is never recorded as one
// under the newer version beside it.
func TestCombinedRecordsMixedVersions(t *testing.T) {
	cn, id, _ := certConn(t, 1000)
	aes := genKey(t, cn, id, wire.KeyType_KEY_TYPE_AES256_GCM, 0)
	run := func(combined bool, ops ...*wire.Op) (*wire.Reply, []*audit.Record) {
		t.Helper()
		req := &wire.Request{Version: 1, Id: 8, Ops: ops, Combined: combined}
		caller := cn.s.callerOf(id)
		notes := cn.notesFor(new([]auditNote), &caller, len(ops))
		rep := cn.execute(req, id, &arena{}, notes, false)
		return rep, cn.requestRecords(nil, req, rep, &caller, notes, req.SizeVT())
	}
	encrypt := func() []byte {
		t.Helper()
		rep, _ := run(false, &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: aes, Plaintext: []byte("m")}}})
		if rep.Results[0].Status != wire.Status_STATUS_OK {
			t.Fatalf("encrypt: %v %q", rep.Results[0].Status, rep.Results[0].Message)
		}
		return rep.Results[0].Data
	}
	ct1 := encrypt()
	if rep, _ := run(false, &wire.Op{Op: &wire.Op_Rotate{Rotate: &wire.Rotate{Handle: aes}}}); rep.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("rotate: %v %q", rep.Results[0].Status, rep.Results[0].Message)
	}
	ct2 := encrypt()
	dec := func(ct []byte) *wire.Op {
		return &wire.Op{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: aes, Ciphertext: ct}}}
	}
	rep, recs := run(true, dec(ct2), dec(ct1), dec(ct2))
	if len(recs) != 3 {
		t.Fatalf("%d records", len(recs))
	}
	for i, want := range []uint32{2, 1, 2} {
		if rep.Results[i].Status != wire.Status_STATUS_OK || rep.Results[i].KeyVersion != want {
			t.Fatalf("decryption %d: %v, version %d", i, rep.Results[i].Status, rep.Results[i].KeyVersion)
		}
		if recs[i].KeyVersion != want {
			t.Errorf("decryption %d under version %d recorded as under version %d", i, want, recs[i].KeyVersion)
		}
	}
}

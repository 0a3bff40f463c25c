package keywarden

import (
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// packRuns packs runs of at least two encryptions, decryptions or MACs on
// one key with the same additional data, and leaves everything else as
// it is; unpackResults gives each operation its own result back.
func TestPackRuns(t *testing.T) {
	c := &Client{limits: Limits{MaxMessageBytes: wire.DefaultMaxMessageBytes, MaxInFlight: wire.DefaultMaxInFlight,
		MaxBatchOps: wire.DefaultMaxBatchOps, PackedRuns: true}}
	k1 := &Key{c: c, handle: 1, typ: AES256GCM, info: KeyInfo{Type: AES256GCM}}
	k2 := &Key{c: c, handle: 2, typ: AES256GCM, info: KeyInfo{Type: AES256GCM}}
	b := c.NewBatch()
	b.Encrypt(k1, []byte("a"), nil)          // 0: run of 3
	b.Encrypt(k1, []byte("bb"), nil)         // 1
	b.Encrypt(k1, nil, nil)                  // 2
	b.Encrypt(k1, []byte("c"), []byte("x"))  // 3: other aad, alone
	b.Encrypt(k2, []byte("d"), nil)          // 4: other key, alone
	b.Ping(nil)                              // 5
	b.MAC(k2, []byte("m"))                   // 6: run of 2
	b.MAC(k2, []byte("n"))                   // 7
	b.Decrypt(k1, []byte("ct"), []byte("x")) // 8: run of 3
	b.Decrypt(k1, []byte("cu"), []byte("x")) // 9
	b.Decrypt(k1, []byte("cv"), []byte("x")) // 10
	ops, runs := b.packRuns(b.ops)
	if want := []int{3, 1, 1, 1, 1, 1, 3}; len(runs) != len(want) || len(ops) != len(want) {
		t.Fatalf("runs %v, want %v", runs, want)
	} else {
		for i := range want {
			if runs[i] != want[i] {
				t.Fatalf("runs %v, want %v", runs, want)
			}
		}
	}
	p := ops[0].GetPacked()
	if p == nil || p.Kind != wire.PackedKind_PACKED_KIND_ENCRYPT || p.Handle != 1 || p.Count != 3 || ops[1] != b.ops[3] || ops[3] != b.ops[5] {
		t.Fatalf("packed ops: %v", ops)
	}
	m := p.Messages
	for _, want := range []string{"a", "bb", ""} {
		got, rest, ok := wire.NextPackedMessage(m)
		if !ok || string(got) != want {
			t.Fatalf("message %q, want %q", got, want)
		}
		m = rest
	}
	if q := ops[6].GetPacked(); q == nil || q.Kind != wire.PackedKind_PACKED_KIND_DECRYPT || string(q.Aad) != "x" || q.Count != 3 {
		t.Fatalf("packed decryptions: %v", ops[6])
	}

	// The reply: entries for the runs, plain results for the rest; a run
	// whose entries are cut short gets errors, not a panic.
	entries := func(n int, st wire.Status) []byte {
		var e []byte
		for i := range n {
			e = wire.AppendPackedEntry(e, st, 1, []byte{byte('0' + i)})
		}
		return e
	}
	rep := &wire.Reply{Results: []*wire.Result{
		{Data: entries(3, 0)}, {Data: []byte("r3")}, {Status: wire.Status_STATUS_NOT_FOUND, Message: "no"}, {Data: []byte("p")},
		{Data: []byte("m")}, {Status: wire.Status_STATUS_PERMISSION_DENIED}, {Data: entries(1, wire.Status_STATUS_INVALID_ARGUMENT)},
	}}
	idx := make([]int, len(b.ops))
	for i := range idx {
		idx[i] = i
	}
	b.unpackResults(rep, idx, runs)
	for i, want := range []string{"0", "1", "2", "r3", "", "p", "m", "", "", "", ""} {
		d, err := b.res[i].Bytes()
		if string(d) != want {
			t.Fatalf("result %d: %q %v, want %q", i, d, err, want)
		}
	}
	if CodeOf(b.res[4].Err()) != CodeNotFound || CodeOf(b.res[7].Err()) != CodePermissionDenied ||
		CodeOf(b.res[8].Err()) != CodeInvalidArgument || b.res[8].Err().Error() == "" ||
		CodeOf(b.res[9].Err()) != CodeInternal || CodeOf(b.res[10].Err()) != CodeInternal {
		t.Fatalf("errors: %v %v %v %v %v", b.res[4].Err(), b.res[7].Err(), b.res[8].Err(), b.res[9].Err(), b.res[10].Err())
	}

	// Nothing to pack: the ops as they are.
	if ops, runs := b.packRuns(b.ops[3:6]); runs != nil || len(ops) != 3 {
		t.Fatalf("nothing to pack: %v %v", ops, runs)
	}
}

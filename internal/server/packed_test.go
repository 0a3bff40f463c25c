package server

import (
	"bytes"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/wire"
)

// packedOp is a Packed op of kind on handle h with the given messages.
func packedOp(kind wire.PackedKind, h uint32, msgs ...string) *wire.Op {
	var b []byte
	for _, m := range msgs {
		b = wire.AppendPackedMessage(b, []byte(m))
	}
	return &wire.Op{Op: &wire.Op_Packed{Packed: &wire.Packed{Kind: kind, Handle: h, Count: uint32(len(msgs)), Messages: b}}}
}

type packedEntry struct {
	st   wire.Status
	kv   uint32
	data []byte
}

func packedEntries(t *testing.T, r *wire.Result, n int) []packedEntry {
	t.Helper()
	if r.Status != wire.Status_STATUS_OK {
		t.Fatalf("packed result: %v %s", r.Status, r.Message)
	}
	var es []packedEntry
	b := r.Data
	for range n {
		st, kv, d, rest, ok := wire.NextPackedEntry(b)
		if !ok {
			t.Fatalf("packed result: %d entries of %d readable", len(es), n)
		}
		es = append(es, packedEntry{st, kv, d})
		b = rest
	}
	if len(b) != 0 {
		t.Fatalf("packed result: %d bytes after %d entries", len(b), n)
	}
	return es
}

// A packed run gives the results, and the audit record, of the
// operations it stands for sent one by one; failures stay per operation.
func TestPackedRuns(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(audit.Options{Path: path})
	if err != nil {
		t.Fatal(err)
	}
	_, c := pair(t, Config{Audit: l})
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
	mac := gen(3, wire.KeyType_KEY_TYPE_HMAC_SHA256, 0)

	// Encryptions and MACs, packed, between other operations.
	send(t, c, 10, ping("x"), packedOp(wire.PackedKind_PACKED_KIND_ENCRYPT, aes, "a", "bb", "", "dddd"),
		packedOp(wire.PackedKind_PACKED_KIND_MAC, mac, "m1", "m2", "m3"), ping("y"))
	rep := recv(t, c)
	if rep.Status != wire.Status_STATUS_OK || len(rep.Results) != 4 {
		t.Fatalf("reply: %v %q, %d results", rep.Status, rep.Message, len(rep.Results))
	}
	if string(rep.Results[0].Data) != "x" || string(rep.Results[3].Data) != "y" {
		t.Fatalf("pings: %q %q", rep.Results[0].Data, rep.Results[3].Data)
	}
	cts := packedEntries(t, rep.Results[1], 4)
	for i, e := range cts {
		if e.st != wire.Status_STATUS_OK || e.kv != 1 || len(e.data) != []int{1, 2, 0, 4}[i]+7+12+16 {
			t.Fatalf("encryption %d: %v, version %d, %d bytes", i, e.st, e.kv, len(e.data))
		}
	}
	tags := packedEntries(t, rep.Results[2], 3)
	// The same MACs one by one.
	send(t, c, 11, &wire.Op{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: mac, Data: []byte("m1")}}},
		&wire.Op{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: mac, Data: []byte("m2")}}},
		&wire.Op{Op: &wire.Op_Mac{Mac: &wire.Mac{Handle: mac, Data: []byte("m3")}}})
	one := recv(t, c)
	for i := range 3 {
		if !bytes.Equal(one.Results[i].Data, tags[i].data) {
			t.Fatalf("tag %d differs packed", i)
		}
	}

	// Decryptions: one tampered, and a key that may not decrypt.
	bad := slices.Clone(cts[1].data)
	bad[len(bad)-1] ^= 1
	send(t, c, 12, packedOp(wire.PackedKind_PACKED_KIND_DECRYPT, aes, string(cts[0].data), string(bad), string(cts[3].data)),
		packedOp(wire.PackedKind_PACKED_KIND_DECRYPT, encOnly, string(cts[0].data), string(cts[2].data), "x"))
	rep = recv(t, c)
	pts := packedEntries(t, rep.Results[0], 3)
	if pts[0].st != wire.Status_STATUS_OK || string(pts[0].data) != "a" || pts[1].st != wire.Status_STATUS_INVALID_ARGUMENT ||
		len(pts[1].data) == 0 || pts[2].st != wire.Status_STATUS_OK || string(pts[2].data) != "dddd" {
		t.Fatalf("decryptions: %+v", pts)
	}
	for i, e := range packedEntries(t, rep.Results[1], 3) {
		if e.st != wire.Status_STATUS_POLICY_VIOLATION || len(e.data) == 0 {
			t.Fatalf("decryption %d with an encrypt-only key: %v %q", i, e.st, e.data)
		}
	}
	// The same decryptions one by one, for the audit record.
	dec := func(h uint32, ct []byte) *wire.Op {
		return &wire.Op{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: h, Ciphertext: ct}}}
	}
	send(t, c, 13, dec(aes, cts[0].data), dec(aes, bad), dec(aes, cts[3].data), dec(encOnly, cts[0].data), dec(encOnly, cts[2].data), dec(encOnly, []byte("x")))
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_OK {
		t.Fatal(rep.Message)
	}

	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	recs := map[uint64]*audit.Record{}
	audit.Scan(bytes.NewReader(b), audit.Filter{}, func(r *audit.Record) error {
		if r.Kind == audit.KindRequest {
			recs[r.Request] = r
		}
		return nil
	})
	r10, r12, r13 := recs[10], recs[12], recs[13]
	if r10 == nil || r12 == nil || r13 == nil {
		t.Fatalf("records missing: %v %v %v", r10 != nil, r12 != nil, r13 != nil)
	}
	if len(r10.Ops) != 4 || r10.Ops[0].Op != "ping" || r10.Ops[1].Op != "encrypt" || r10.Ops[1].Count != 4 ||
		r10.Ops[2].Op != "mac" || r10.Ops[2].Count != 3 || r10.Ops[3].Op != "ping" {
		t.Fatalf("record of the packed request: %+v", r10.Ops)
	}
	if !slices.Equal(r12.Ops, r13.Ops) || r12.Status != r13.Status {
		t.Fatalf("packed decryptions recorded as\n%+v\none by one as\n%+v", r12.Ops, r13.Ops)
	}
}

// A packed run that cannot be read, or holds more operations than a
// request may, refuses the whole request.
func TestPackedMalformed(t *testing.T) {
	_, c := pair(t, Config{Limits: Limits{MaxBatchOps: 8}})
	many := make([]string, 8)
	for i, tc := range []struct {
		name string
		op   *wire.Op
		want wire.Status
	}{
		{"count above messages", func() *wire.Op {
			o := packedOp(wire.PackedKind_PACKED_KIND_MAC, 1, "a", "b", "c")
			o.GetPacked().Count = 4
			return o
		}(), wire.Status_STATUS_INVALID_ARGUMENT},
		{"count below messages", func() *wire.Op {
			o := packedOp(wire.PackedKind_PACKED_KIND_MAC, 1, "a", "b", "c", "d")
			o.GetPacked().Count = 3
			return o
		}(), wire.Status_STATUS_INVALID_ARGUMENT},
		{"no message", packedOp(wire.PackedKind_PACKED_KIND_MAC, 1), wire.Status_STATUS_INVALID_ARGUMENT},
		{"two messages", packedOp(wire.PackedKind_PACKED_KIND_MAC, 1, "a", "b"), wire.Status_STATUS_INVALID_ARGUMENT},
		{"no kind", packedOp(0, 1, "a", "b", "c"), wire.Status_STATUS_INVALID_ARGUMENT},
		{"unknown kind", packedOp(9, 1, "a", "b", "c"), wire.Status_STATUS_INVALID_ARGUMENT},
		{"length past the end", &wire.Op{Op: &wire.Op_Packed{Packed: &wire.Packed{Kind: 1, Handle: 1, Count: 3, Messages: []byte{0, 0, 5, 'a'}}}}, wire.Status_STATUS_INVALID_ARGUMENT},
		{"truncated length", &wire.Op{Op: &wire.Op_Packed{Packed: &wire.Packed{Kind: 1, Handle: 1, Count: 3, Messages: []byte{0, 0, 0x80}}}}, wire.Status_STATUS_INVALID_ARGUMENT},
		{"huge count", &wire.Op{Op: &wire.Op_Packed{Packed: &wire.Packed{Kind: 1, Handle: 1, Count: 1<<32 - 1, Messages: []byte{0}}}}, wire.Status_STATUS_RESOURCE_EXHAUSTED},
		{"over the batch limit", packedOp(wire.PackedKind_PACKED_KIND_MAC, 1, append(many, "one more")...), wire.Status_STATUS_RESOURCE_EXHAUSTED},
	} {
		send(t, c, uint64(100+i), tc.op)
		rep := recv(t, c)
		if rep.Id != uint64(100+i) || rep.Status != tc.want || len(rep.Results) != 0 {
			t.Errorf("%s: %v %q, %d results; want %v", tc.name, rep.Status, rep.Message, len(rep.Results), tc.want)
		}
	}
	// Packed runs count by their messages with the other operations.
	send(t, c, 200, ping("p"), packedOp(wire.PackedKind_PACKED_KIND_MAC, 1, many[:7]...))
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("8 operations: %v %q", rep.Status, rep.Message)
	}
	send(t, c, 201, ping("p"), ping("q"), packedOp(wire.PackedKind_PACKED_KIND_MAC, 1, many[:7]...))
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("9 operations: %v %q", rep.Status, rep.Message)
	}
}

// pack puts results back where the packed runs were; restore gives the
// request its ops back.
func TestPackingRestores(t *testing.T) {
	orig := []*wire.Op{ping("a"), packedOp(wire.PackedKind_PACKED_KIND_ENCRYPT, 1, "x", "y", "z"), ping("b"),
		packedOp(wire.PackedKind_PACKED_KIND_MAC, 2, "m", "n", "o")}
	req := &wire.Request{Ops: slices.Clone(orig)}
	var pk packing
	if err := pk.unpack(req, 100); err != nil {
		t.Fatal(err)
	}
	if len(req.Ops) != 8 || req.Ops[0] != orig[0] || req.Ops[4] != orig[2] ||
		string(req.Ops[2].GetEncrypt().GetPlaintext()) != "y" || req.Ops[2].GetEncrypt().Handle != 1 ||
		string(req.Ops[6].GetMac().GetData()) != "n" || req.Ops[6].GetMac().Handle != 2 {
		t.Fatalf("taken apart: %v", req.Ops)
	}
	rep := &wire.Reply{}
	for i := range req.Ops {
		rep.Results = append(rep.Results, &wire.Result{Data: []byte{byte(i)}, KeyVersion: uint32(i)})
	}
	rep.Results[5].Status, rep.Results[5].Message, rep.Results[5].Data = wire.Status_STATUS_NOT_FOUND, "gone", nil
	pk.pack(rep, &arena{})
	if len(rep.Results) != 4 || rep.Results[0].Data[0] != 0 || rep.Results[2].Data[0] != 4 {
		t.Fatalf("packed back: %v", rep.Results)
	}
	b := rep.Results[1].Data
	for i := 1; i <= 3; i++ {
		st, kv, d, rest, ok := wire.NextPackedEntry(b)
		if !ok || st != 0 || kv != uint32(i) || !bytes.Equal(d, []byte{byte(i)}) {
			t.Fatalf("entry %d: %v %v %d %v", i, ok, st, kv, d)
		}
		b = rest
	}
	st, _, d, _, ok := wire.NextPackedEntry(rep.Results[3].Data)
	if !ok || st != wire.Status_STATUS_NOT_FOUND || string(d) != "gone" || len(rep.Results[3].Data) > 3*wire.PackedEntryBound(4) {
		t.Fatalf("failed entry: %v %v %q", ok, st, d)
	}
	pk.restore(req)
	if !slices.Equal(req.Ops, orig) {
		t.Fatal("ops not restored")
	}
}

// A request with a run of thousands of messages leaves the connection
// holding no more than a small request's structures, so a client cannot
// make the daemon keep megabytes per connection with one request (and no
// key: the handle need not exist).
func TestPackingKeepsLittle(t *testing.T) {
	msgs := make([]string, 4096)
	for _, kind := range []wire.PackedKind{wire.PackedKind_PACKED_KIND_ENCRYPT, wire.PackedKind_PACKED_KIND_DECRYPT, wire.PackedKind_PACKED_KIND_MAC} {
		req := &wire.Request{Ops: []*wire.Op{packedOp(kind, 0, msgs...)}}
		var pk packing
		if err := pk.unpack(req, 1<<20); err != nil {
			t.Fatal(err)
		}
		if len(req.Ops) != len(msgs) {
			t.Fatalf("%v: %d ops", kind, len(req.Ops))
		}
		pk.restore(req)
		for name, c := range map[string]int{"ops": cap(pk.ops), "opv": cap(pk.opv), "encs": cap(pk.encs), "encW": cap(pk.encW),
			"decs": cap(pk.decs), "decW": cap(pk.decW), "macs": cap(pk.macs), "macW": cap(pk.macW), "spans": cap(pk.spans)} {
			if c > maxKeptPacked {
				t.Errorf("%v: %s keeps room for %d", kind, name, c)
			}
		}
		// A small run is still carved from what is kept.
		small := &wire.Request{Ops: []*wire.Op{packedOp(kind, 0, "a", "b", "c")}}
		if err := pk.unpack(small, 100); err != nil {
			t.Fatal(err)
		}
		pk.restore(small)
		if cap(pk.ops) == 0 {
			t.Errorf("%v: a small run's structures are not kept", kind)
		}
	}
}

// FuzzUnpack: taking packed runs apart never panics, never makes more
// operations than allowed, and a request it refuses is left as it was.
func FuzzUnpack(f *testing.F) {
	for _, ops := range [][]*wire.Op{
		{packedOp(wire.PackedKind_PACKED_KIND_ENCRYPT, 1, "a", "bb")},
		{ping("p"), packedOp(wire.PackedKind_PACKED_KIND_DECRYPT, 1, "ct", "cu", "cv"), packedOp(wire.PackedKind_PACKED_KIND_MAC, 2, "", "m", "n")},
	} {
		b, err := (&wire.Request{Version: 1, Id: 1, Ops: ops}).MarshalVT()
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b, uint8(16))
	}
	f.Fuzz(func(t *testing.T, msg []byte, most uint8) {
		req := new(wire.Request)
		if req.UnmarshalVT(msg) != nil {
			return
		}
		orig := slices.Clone(req.Ops)
		var pk packing
		if err := pk.unpack(req, int(most)); err != nil {
			if !slices.Equal(req.Ops, orig) {
				t.Fatal("refused request changed")
			}
			return
		}
		if len(req.Ops) > int(most) {
			t.Fatalf("%d operations, most %d", len(req.Ops), most)
		}
		rep := &wire.Reply{}
		for _, op := range req.Ops {
			if op.GetPacked() != nil {
				t.Fatal("packed op left")
			}
			rep.Results = append(rep.Results, &wire.Result{Data: []byte("r")})
		}
		pk.pack(rep, &arena{})
		if len(rep.Results) != len(orig) {
			t.Fatalf("%d results for %d ops", len(rep.Results), len(orig))
		}
		pk.restore(req)
		if !slices.Equal(req.Ops, orig) {
			t.Fatal("ops not restored")
		}
	})
}

// BenchmarkPackedEncryptBatch: what the daemon spends on a request of 512
// AES-GCM encryptions of 256 bytes, from its bytes to the reply's, sent
// one op per encryption and as one packed run.
func BenchmarkPackedEncryptBatch(b *testing.B) {
	for _, packed := range []bool{false, true} {
		name := map[bool]string{false: "ops", true: "packed"}[packed]
		b.Run(name, func(b *testing.B) {
			s := mustNew(b, Config{})
			cn := testConn(b, s, benchConn(b), 1)
			id := Identity{UID: 1, GID: 1, Pidfd: -1}
			if _, _, err := cn.dispatch(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}}, id, &arena{}, &wire.Result{}); err != nil {
				b.Fatal(err)
			}
			req := &wire.Request{Version: 1, Id: 1}
			msgs := make([]string, 512)
			for i := range msgs {
				msgs[i] = string(make([]byte, 256))
				req.Ops = append(req.Ops, &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 1, Plaintext: make([]byte, 256)}}})
			}
			if packed {
				req.Ops = []*wire.Op{packedOp(wire.PackedKind_PACKED_KIND_ENCRYPT, 1, msgs...)}
			}
			raw, _ := req.MarshalVT()
			var out []byte
			b.ReportAllocs()
			b.SetBytes(512 * 256)
			for b.Loop() {
				r := wire.RequestFromVTPool()
				if err := r.UnmarshalVTUnsafe(raw); err != nil {
					b.Fatal(err)
				}
				if err := cn.packing.unpack(r, 4096); err != nil {
					b.Fatal(err)
				}
				cn.arena.reset()
				notes := make([]auditNote, len(r.Ops))
				rep := cn.execute(r, id, &cn.arena, notes, false)
				rec := cn.requestRecord(r, rep, &audit.Caller{}, notes, len(raw))
				putRecord(rec)
				cn.packing.pack(rep, &cn.arena)
				out, _ = marshal(out, rep)
				cn.arena.wipe()
				cn.packing.restore(r)
				wire.Recycle(r)
			}
		})
	}
}

// TestPackingReusesLargeRuns: the structures of a run larger than a
// connection keeps are taken from those of an earlier large request (of
// any connection), not made anew for each.
func TestPackingReusesLargeRuns(t *testing.T) {
	if raceEnabled {
		t.Skip("the race detector makes sync.Pool drop what it is given")
	}
	msgs := make([]string, 512)
	for i := range msgs {
		msgs[i] = "message"
	}
	req := &wire.Request{Ops: []*wire.Op{packedOp(wire.PackedKind_PACKED_KIND_ENCRYPT, 1, msgs...)}}
	var pk packing
	allocs := testing.AllocsPerRun(50, func() {
		if err := pk.unpack(req, 4096); err != nil {
			t.Fatal(err)
		}
		if len(req.Ops) != len(msgs) {
			t.Fatalf("%d ops", len(req.Ops))
		}
		pk.restore(req)
	})
	if allocs >= 1 {
		t.Fatalf("%.1f allocations per request of a run of %d", allocs, len(msgs))
	}
	if pk.big != nil || cap(pk.ops) > maxKeptPacked {
		t.Fatal("the connection keeps a large run's structures")
	}
}

// BenchmarkUnpack: taking apart a request of one packed run of 512
// messages of 256 bytes, and giving it its op back, for each kind.
func BenchmarkUnpack(b *testing.B) {
	for _, kind := range []wire.PackedKind{wire.PackedKind_PACKED_KIND_ENCRYPT, wire.PackedKind_PACKED_KIND_DECRYPT, wire.PackedKind_PACKED_KIND_MAC} {
		b.Run(kind.String(), func(b *testing.B) {
			msgs := make([]string, 512)
			for i := range msgs {
				msgs[i] = string(make([]byte, 256))
			}
			req := &wire.Request{Ops: []*wire.Op{packedOp(kind, 1, msgs...)}}
			var pk packing
			b.ReportAllocs()
			for b.Loop() {
				if err := pk.unpack(req, 4096); err != nil {
					b.Fatal(err)
				}
				pk.restore(req)
			}
		})
	}
}

// TestPackedRunsAnswerAsOne: a Packed op answers the questions asked of
// a whole request (isHeavy, changesSeal) as each operation it stands for
// does, so that asking them of the request as sent (packing.sent) gives
// the answers of the request taken apart.
func TestPackedRunsAnswerAsOne(t *testing.T) {
	packedRow := rowOf(packedOp(wire.PackedKind_PACKED_KIND_MAC, 1, "a", "b", "c"))
	for _, r := range []*opRow{rowEncrypt, rowDecrypt, rowMAC} {
		if r.exec != packedRow.exec || r.store != packedRow.store || r.seal != packedRow.seal || r.apartIf != nil || packedRow.apartIf != nil {
			t.Errorf("%s: exec %v store %v seal %v, a packed run's: exec %v store %v seal %v",
				r.name, r.exec, r.store, r.seal, packedRow.exec, packedRow.store, packedRow.seal)
		}
	}
	others := [][]*wire.Op{
		{{Op: &wire.Op_Ping{Ping: &wire.Ping{}}}},
		{kdfOps()[0]},
		{{Op: &wire.Op_Seal{Seal: &wire.Seal{}}}},
	}
	for _, kind := range []wire.PackedKind{wire.PackedKind_PACKED_KIND_ENCRYPT, wire.PackedKind_PACKED_KIND_DECRYPT, wire.PackedKind_PACKED_KIND_MAC} {
		for _, other := range others {
			req := &wire.Request{Ops: append([]*wire.Op{packedOp(kind, 1, "a", "b", "c")}, other...)}
			var pk packing
			if pk.sent(req)[0] != req.Ops[0] {
				t.Fatal("sent: not the request's ops")
			}
			if err := pk.unpack(req, 64); err != nil {
				t.Fatal(err)
			}
			sent := pk.sent(req)
			if len(sent) != 1+len(other) || len(req.Ops) != 3+len(other) {
				t.Fatalf("%d ops sent, %d taken apart", len(sent), len(req.Ops))
			}
			if heavyOps(sent) != isHeavy(req) || sealOps(sent) != changesSeal(req) {
				t.Errorf("%v with %s: heavy %v, %v taken apart; seal %v, %v taken apart", kind, opName(other[0]),
					heavyOps(sent), isHeavy(req), sealOps(sent), changesSeal(req))
			}
			pk.restore(req)
		}
	}
}

// BenchmarkPackedRun: what the daemon spends on a request of one packed
// run of 512 messages of 256 bytes, from its bytes to the reply's, for
// each kind: AES-GCM encryptions, decryptions, HMAC-SHA256.
func BenchmarkPackedRun(b *testing.B) {
	for _, kind := range []wire.PackedKind{wire.PackedKind_PACKED_KIND_ENCRYPT, wire.PackedKind_PACKED_KIND_DECRYPT, wire.PackedKind_PACKED_KIND_MAC} {
		b.Run(kind.String(), func(b *testing.B) {
			s := mustNew(b, Config{})
			cn := testConn(b, s, benchConn(b), 1)
			id := Identity{UID: 1, GID: 1, Pidfd: -1}
			typ := wire.KeyType_KEY_TYPE_AES256_GCM
			if kind == wire.PackedKind_PACKED_KIND_MAC {
				typ = wire.KeyType_KEY_TYPE_HMAC_SHA256
			}
			_, full, err := cn.dispatch(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Type: typ, Ephemeral: true}}}}, id, &arena{}, &wire.Result{})
			if err != nil {
				b.Fatal(err)
			}
			h := full.GetKey().GetHandle()
			msgs := make([]string, 512)
			for i := range msgs {
				msgs[i] = string(make([]byte, 256))
				if kind == wire.PackedKind_PACKED_KIND_DECRYPT {
					data, _, err := cn.dispatch(&wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Plaintext: []byte(msgs[i])}}}, id, &arena{}, &wire.Result{})
					if err != nil {
						b.Fatal(err)
					}
					msgs[i] = string(data)
				}
			}
			req := &wire.Request{Version: 1, Id: 1, Ops: []*wire.Op{packedOp(kind, h, msgs...)}}
			raw, _ := req.MarshalVT()
			var out []byte
			notes := make([]auditNote, len(msgs))
			b.ReportAllocs()
			b.SetBytes(512 * 256)
			for b.Loop() {
				r := wire.RequestFromVTPool()
				if err := r.UnmarshalVTUnsafe(raw); err != nil {
					b.Fatal(err)
				}
				if err := cn.packing.unpack(r, 4096); err != nil {
					b.Fatal(err)
				}
				cn.arena.reset()
				clear(notes)
				rep := cn.execute(r, id, &cn.arena, notes, false)
				if rep.Results[0].Status != wire.Status_STATUS_OK {
					b.Fatal(rep.Results[0].Message)
				}
				rec := cn.requestRecord(r, rep, &audit.Caller{}, notes, len(raw))
				putRecord(rec)
				cn.packing.pack(rep, &cn.arena)
				out, _ = marshal(out, rep)
				cn.arena.wipe()
				cn.packing.restore(r)
				wire.Recycle(r)
			}
		})
	}
}

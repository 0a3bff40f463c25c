package keywarden

import (
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

// packRuns packs runs of at least two encryptions, decryptions or MACs on
// one key with the same additional data, and leaves everything else as
// it is; unpackResults gives each operation its own result back.
// Large messages are sent as they are: packing them would only copy them
// once more.
func TestPackRunsLeavesLargeMessages(t *testing.T) {
	c := &Client{limits: Limits{MaxMessageBytes: wire.DefaultMaxMessageBytes, MaxInFlight: wire.DefaultMaxInFlight,
		MaxBatchOps: wire.DefaultMaxBatchOps, PackedRuns: true}}
	k := &Key{c: c, handle: 1, typ: AES256GCM, info: KeyInfo{Type: AES256GCM}}
	b := c.NewBatch()
	for range 4 {
		b.Encrypt(k, make([]byte, maxPackedMessage+1), nil)
	}
	if ops, runs := b.packRuns(b.ops, indices(0, len(b.ops)), b.packs); runs != nil || len(ops) != 4 || cap(b.packBuf) != 0 {
		t.Fatalf("a run of large messages: %d ops, runs %v, %d bytes kept", len(ops), runs, cap(b.packBuf))
	}
}

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
	ops, runs := b.packRuns(b.ops, indices(0, len(b.ops)), b.packs)
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
	unpackResults(b.res, rep, idx, runs)
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
	if ops, runs := b.packRuns(b.ops[3:6], indices(3, 6), b.packs); runs != nil || len(ops) != 3 {
		t.Fatalf("nothing to pack: %v %v", ops, runs)
	}
}

// BenchmarkBatchCodec: what this process spends on a batch of 512
// AES-GCM encryptions of 256 bytes besides the socket: queuing them,
// encoding the requests, and decoding replies into the results, one op
// per encryption, packed, and packed on a recycled batch (the replies'
// copies out of the socket, which Recycle also saves, are not part of
// this).
func BenchmarkBatchCodec(b *testing.B) {
	for _, mode := range []string{"ops", "packed", "packed-recycled"} {
		packed, recycled := mode != "ops", mode == "packed-recycled"
		b.Run(mode, func(b *testing.B) {
			c := &Client{limits: Limits{MaxMessageBytes: wire.DefaultMaxMessageBytes, MaxInFlight: wire.DefaultMaxInFlight,
				MaxBatchOps: wire.DefaultMaxBatchOps, PackedRuns: packed}}
			k := &Key{c: c, handle: 1, typ: AES256GCM, info: KeyInfo{Type: AES256GCM}}
			pt := make([]byte, 256)
			ct := make([]byte, 256+aesGCMOverhead)
			// The daemon's replies, as it would send them for each request.
			bt := c.NewBatch()
			for range 512 {
				bt.Encrypt(k, pt, nil)
			}
			var replies [][]byte
			for _, ch := range bt.chunks() {
				n := ch.to - ch.from
				rep := &wire.Reply{Version: 1, Id: 1}
				if packed {
					var d []byte
					for range n {
						d = wire.AppendPackedEntry(d, 0, 1, ct)
					}
					rep.Results = []*wire.Result{{Data: d}}
				} else {
					for range n {
						rep.Results = append(rep.Results, &wire.Result{Data: ct, KeyVersion: 1})
					}
				}
				raw, _ := rep.MarshalVT()
				replies = append(replies, raw)
			}
			var buf []byte
			b.ReportAllocs()
			b.SetBytes(512 * 256)
			for b.Loop() {
				if recycled {
					bt.Recycle()
				} else {
					bt.Reset()
				}
				for range 512 {
					bt.Encrypt(k, pt, nil)
				}
				for j, ch := range bt.chunks() {
					ops := bt.ops[ch.from:ch.to]
					var runs []int
					if packed {
						ops, runs = bt.packRuns(ops, indices(ch.from, ch.to), bt.packs)
					}
					buf, _ = wire.AppendMarshal(buf[:0], &wire.Request{Version: 1, Id: 1, Ops: ops})
					bt.clearPackBuf()
					rep := wire.ReplyFromVTPool()
					if err := rep.UnmarshalVTUnsafe(replies[j]); err != nil {
						b.Fatal(err)
					}
					idx := make([]int, ch.to-ch.from)
					for i := range idx {
						idx[i] = ch.from + i
					}
					if runs != nil {
						unpackResults(bt.res, rep, idx, runs)
					} else {
						for j, i := range idx {
							r := bt.res[i]
							res := rep.Results[j]
							r.err = resultErr(r.op, res.Status, res.Message)
							r.data = res.GetData()
						}
					}
					for _, r := range rep.Results {
						r.Data = nil
					}
					rep.ReturnToVTPool()
				}
				if d, err := bt.res[511].Bytes(); err != nil || len(d) != len(ct) {
					b.Fatal(err)
				}
			}
		})
	}
}

// indices returns from, ..., to-1.
func indices(from, to int) []int {
	idx := make([]int, 0, to-from)
	for i := from; i < to; i++ {
		idx = append(idx, i)
	}
	return idx
}

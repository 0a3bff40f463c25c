package server

import (
	"testing"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

func BenchmarkExecuteEncryptBatch(b *testing.B) {
	s := New(Config{})
	cn := newConn(s, (*seqpacket.Conn)(nil))
	id := Identity{UID: 1, GID: 1, Pidfd: -1}
	res, _, err := cn.dispatch(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}}, id, &arena{}, &wire.Result{})
	_ = res
	if err != nil {
		b.Fatal(err)
	}
	req := &wire.Request{Version: 1, Id: 1}
	for i := 0; i < 512; i++ {
		req.Ops = append(req.Ops, &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 1, Plaintext: make([]byte, 256)}}})
	}
	raw, _ := req.MarshalVT()
	var out []byte
	b.ReportAllocs()
	b.SetBytes(512 * 256)
	for b.Loop() {
		r := new(wire.Request)
		if err := r.UnmarshalVT(raw); err != nil {
			b.Fatal(err)
		}
		cn.arena.reset()
		rep := cn.execute(r, id, &cn.arena, nil)
		out, _ = marshal(out, rep)
		cn.arena.wipe()
	}
}

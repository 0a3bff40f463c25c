package server

import (
	"testing"

	"github.com/keywarden/keywarden/internal/metrics"
	"github.com/keywarden/keywarden/internal/wire"
)

// BenchmarkMetrics measures what counting and timing a request (--metrics)
// adds to one small request and to a batch of 512, against the same
// request without metrics.
func BenchmarkMetrics(b *testing.B) {
	for _, mode := range []string{"off", "on", "off-batch512", "on-batch512"} {
		b.Run(mode, func(b *testing.B) {
			cfg := Config{}
			if mode == "on" || mode == "on-batch512" {
				cfg.Metrics = metrics.New(OpNames())
			}
			s := mustNew(b, cfg)
			cn := testConn(b, s, benchConn(b), 1)
			id := Identity{UID: 1, GID: 1, Pidfd: -1}
			if _, _, err := cn.dispatch(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}}, id, &arena{}, &wire.Result{}); err != nil {
				b.Fatal(err)
			}
			req := &wire.Request{Version: 1, Id: 1, Ops: []*wire.Op{{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 1, Plaintext: make([]byte, 256)}}}}}
			if mode == "off-batch512" || mode == "on-batch512" {
				for range 511 {
					req.Ops = append(req.Ops, req.Ops[0])
				}
			}
			b.ReportAllocs()
			for b.Loop() {
				cn.arena.reset()
				rep := cn.execute(req, id, &cn.arena, nil, false)
				if rep.Results[0].Status != wire.Status_STATUS_OK {
					b.Fatal(rep.Results[0].Message)
				}
				cn.arena.wipe()
			}
		})
	}
}

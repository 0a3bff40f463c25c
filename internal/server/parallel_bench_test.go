package server

import (
	"path/filepath"
	"sync"
	"testing"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// BenchmarkServeParallel: 16 clients, each on its own connection, each
// sending one encryption at a time, against a server with no audit log
// and with the default one.
func BenchmarkServeParallel(b *testing.B) {
	for _, mode := range []string{"off", "grouped"} {
		b.Run(mode, func(b *testing.B) {
			cfg := Config{}
			if mode != "off" {
				l, err := audit.Open(audit.Options{Path: filepath.Join(b.TempDir(), "audit.log")})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				cfg.Audit = l
			}
			const clients = 16
			s := mustNew(b, cfg)
			_ = s
			type clientConn struct{ c *seqpacket.Conn }
			var conns []*clientConn
			for range clients {
				_, c := pair(b, cfg)
				send(b, c, 1, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}})
				if rep := recv(b, c); rep.Results[0].Status != wire.Status_STATUS_OK {
					b.Fatal(rep.Results[0].Message)
				}
				conns = append(conns, &clientConn{c: c})
			}
			raw, _ := (&wire.Request{Version: 1, Id: 2, Ops: []*wire.Op{{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 1, Plaintext: make([]byte, 256)}}}}}).MarshalVT()
			b.ResetTimer()
			var wg sync.WaitGroup
			per := b.N/clients + 1
			for _, cc := range conns {
				wg.Go(func() {
					buf := make([]byte, 1<<16)
					for range per {
						if err := cc.c.Send(raw); err != nil {
							b.Error(err)
							return
						}
						if _, err := cc.c.Recv(buf); err != nil {
							b.Error(err)
							return
						}
					}
				})
			}
			wg.Wait()
		})
	}
}

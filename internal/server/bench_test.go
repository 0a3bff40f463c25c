package server

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/audit"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

func BenchmarkExecuteEncryptBatch(b *testing.B) {
	s := mustNew(b, Config{})
	cn := testConn(b, s, benchConn(b), 1)
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
		rep := cn.execute(r, id, &cn.arena, nil, false)
		out, _ = marshal(out, rep)
		cn.arena.wipe()
	}
}

// BenchmarkAuditedRequest measures what the audit adds to one small
// request served inline: reading the caller through its pidfd, the notes,
// and the append (grouped: written, not fsynced) against the same request
// unaudited.
func BenchmarkAuditedRequest(b *testing.B) {
	for _, mode := range []string{"off", "grouped", "always", "off-batch512", "grouped-batch512"} {
		b.Run(mode, func(b *testing.B) {
			mode, batch := strings.CutSuffix(mode, "-batch512")
			cfg := Config{}
			if mode != "off" {
				sync, _ := audit.ParseSyncMode(mode)
				l, err := audit.Open(audit.Options{Path: filepath.Join(b.TempDir(), "audit.log"), Sync: sync})
				if err != nil {
					b.Fatal(err)
				}
				defer l.Close()
				cfg.Audit = l
			}
			s := mustNew(b, cfg)
			cn := testConn(b, s, benchConn(b), 1)
			pidfd, err := unix.PidfdOpen(os.Getpid(), 0)
			if err != nil {
				pidfd = -1
			} else {
				defer unix.Close(pidfd)
			}
			id := Identity{PID: int32(os.Getpid()), UID: 1, GID: 1, Pidfd: pidfd}
			if _, _, err := cn.dispatch(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}}, id, &arena{}, &wire.Result{}); err != nil {
				b.Fatal(err)
			}
			req := &wire.Request{Version: 1, Id: 1, Ops: []*wire.Op{{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: 1, Plaintext: make([]byte, 256)}}}}}
			if batch {
				for range 511 {
					req.Ops = append(req.Ops, req.Ops[0])
				}
			}
			size := req.SizeVT()
			b.ReportAllocs()
			for b.Loop() {
				var caller *audit.Caller
				if s.alog != nil {
					c := s.callerOf(id)
					caller = &c
				}
				cn.arena.reset()
				notes := cn.notesFor(&cn.notes, caller, len(req.Ops))
				rep := cn.execute(req, id, &cn.arena, notes, false)
				rep = cn.record(req, rep, id, caller, notes, size)
				if rep.Results[0].Status != wire.Status_STATUS_OK {
					b.Fatal(rep.Results[0].Message)
				}
				cn.arena.wipe()
			}
		})
	}
}

// benchConn is one end of a connected pair, for a conn that is never
// served.
func benchConn(b *testing.B) *seqpacket.Conn {
	c1, c2, err := seqpacket.Pair()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c1.Close(); c2.Close() })
	return c1
}

// testConn makes a conn on c for a connection opened by uid, counted in
// s's per-uid accounts.
func testConn(tb testing.TB, s *Server, c *seqpacket.Conn, uid uint32) *seqConn {
	acct, err := s.accts.connect(uid)
	if err != nil {
		tb.Fatal(err)
	}
	return newSeqConn(s, c, acct, seqpacket.Cred{UID: uid, PID: int32(os.Getpid()), Pidfd: -1})
}

// TestArenaReusesResults: the results of a request are carved from what
// the arena kept from the last one, large or small, and are zero.
func TestArenaReusesResults(t *testing.T) {
	var a arena
	x := []byte("x")
	for _, n := range []int{3, 512} {
		if n > maxKeptResults && raceEnabled {
			continue // the race detector makes sync.Pool drop what it is given
		}
		allocs := testing.AllocsPerRun(50, func() {
			vals, ptrs := a.results(n)
			if len(vals) != n || len(ptrs) != n {
				t.Fatalf("%d results, %d pointers for %d", len(vals), len(ptrs), n)
			}
			for i := range vals {
				if vals[i].Status != 0 || vals[i].Data != nil || ptrs[i] != nil {
					t.Fatalf("result %d of %d not zero", i, n)
				}
				vals[i].Data = x
				ptrs[i] = &vals[i]
			}
			a.wipe()
		})
		if allocs >= 1 {
			t.Errorf("%.1f allocations per request of %d results", allocs, n)
		}
	}
}

// BenchmarkSessionDo: one request of one AES-GCM encryption of 256 bytes
// through Session.Do, as the fronts other than the socket's send them
// (unaudited, so that the core's own per-request cost shows).
func BenchmarkSessionDo(b *testing.B) {
	s := mustNew(b, Config{})
	id := Identity{PID: int32(os.Getpid()), UID: 1, GID: 1, Pidfd: -1}
	ss, err := s.NewSession(context.Background(), "bench", id)
	if err != nil {
		b.Fatal(err)
	}
	defer ss.Close()
	rep, err := ss.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: 1, Ops: []*wire.Op{{Op: &wire.Op_Generate{Generate: &wire.Generate{
		Template: &wire.KeyTemplate{Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}}}})
	if err != nil || rep.Results[0].Status != wire.Status_STATUS_OK {
		b.Fatal(err, rep)
	}
	h := rep.Results[0].GetKey().GetHandle()
	req := &wire.Request{Version: wire.ProtocolVersion, Id: 2, Ops: []*wire.Op{{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Plaintext: make([]byte, 256)}}}}}
	ctx := context.Background()
	b.ReportAllocs()
	for b.Loop() {
		rep, err := ss.Do(ctx, id, req)
		if err != nil || rep.Results[0].Status != wire.Status_STATUS_OK {
			b.Fatal(err, rep)
		}
	}
}

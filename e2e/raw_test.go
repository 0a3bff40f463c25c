package e2e_test

import (
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// rawConn speaks the wire protocol directly, to send what the client
// library never would.
type rawConn struct {
	t    *testing.T
	c    *seqpacket.Conn
	buf  []byte
	next uint64
}

func dialRaw(t *testing.T, sock string) *rawConn {
	t.Helper()
	c, err := seqpacket.Dial(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	c.SetRecvTimeout(10 * time.Second)
	t.Cleanup(func() { c.Close() })
	return &rawConn{t: t, c: c, buf: make([]byte, 2<<20)}
}

func (r *rawConn) send(b []byte) {
	r.t.Helper()
	if err := r.c.Send(b); err != nil {
		r.t.Fatalf("send: %v", err)
	}
}

func (r *rawConn) recv() *wire.Reply {
	r.t.Helper()
	n, err := r.c.Recv(r.buf)
	if err != nil {
		r.t.Fatalf("recv: %v", err)
	}
	rep := new(wire.Reply)
	if err := rep.UnmarshalVT(r.buf[:n]); err != nil {
		r.t.Fatalf("undecodable reply: %v", err)
	}
	return rep
}

// sendOps sends one request and returns its id.
func (r *rawConn) sendOps(ops ...*wire.Op) uint64 {
	r.t.Helper()
	r.next++
	b, err := (&wire.Request{Version: wire.ProtocolVersion, Id: r.next, Ops: ops}).MarshalVT()
	if err != nil {
		r.t.Fatal(err)
	}
	r.send(b)
	return r.next
}

// do sends one request and returns its reply.
func (r *rawConn) do(ops ...*wire.Op) *wire.Reply {
	r.t.Helper()
	id := r.sendOps(ops...)
	rep := r.recv()
	if rep.Id != id {
		r.t.Fatalf("reply id %d, want %d", rep.Id, id)
	}
	return rep
}

// one runs one operation and returns its result, failing the test if the
// whole request was refused.
func (r *rawConn) one(op *wire.Op) *wire.Result {
	r.t.Helper()
	rep := r.do(op)
	if rep.Status != wire.Status_STATUS_OK || len(rep.Results) != 1 {
		r.t.Fatalf("request refused: %v %q", rep.Status, rep.Message)
	}
	return rep.Results[0]
}

// ping checks the connection still serves.
func (r *rawConn) ping() {
	r.t.Helper()
	res := r.one(&wire.Op{Op: &wire.Op_Ping{Ping: &wire.Ping{Payload: []byte("alive")}}})
	if res.Status != wire.Status_STATUS_OK || string(res.GetData()) != "alive" {
		r.t.Fatalf("ping after error: %v %q", res.Status, res.GetData())
	}
}

func genOp(typ wire.KeyType, name string, usage uint32) *wire.Op {
	return &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: typ, Name: name, Usage: usage, Ephemeral: name == ""}}}}
}

package e2e_test

import (
	"math/rand/v2"
	"os"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/keywarden/keywarden/internal/wire"
)

// TestGarbage sends random, truncated, empty, oversized and otherwise
// malformed messages. Every one gets a reply with an error status (or, for
// a truncation that happens to be valid, a normal reply), and afterwards
// the same connection and a new one still work.
func TestGarbage(t *testing.T) {
	d := startDaemon(t)
	r := dialRaw(t, d.sock)
	rng := rand.New(rand.NewPCG(1, 2))

	expectReply := func(what string, b []byte, wantErr bool) {
		t.Helper()
		r.send(b)
		rep := r.recv()
		if rep.Version != wire.ProtocolVersion {
			t.Fatalf("%s: reply version %d", what, rep.Version)
		}
		if wantErr && rep.Status == wire.Status_STATUS_OK {
			t.Fatalf("%s: accepted", what)
		}
		for _, res := range rep.Results {
			if res.Status == wire.Status_STATUS_INTERNAL {
				t.Fatalf("%s: internal error %q", what, res.Message)
			}
		}
	}

	for i := range 200 {
		b := make([]byte, rng.IntN(2000))
		for j := range b {
			b[j] = byte(rng.UintN(256))
		}
		r.send(b)
		rep := r.recv()
		if rep.Status == wire.Status_STATUS_INTERNAL {
			t.Fatalf("random message %d: internal error", i)
		}
	}
	r.ping()

	valid, _ := (&wire.Request{Version: 1, Id: 5, Ops: []*wire.Op{
		genOp(wire.KeyType_KEY_TYPE_AES256_GCM, "", 0),
		{Op: &wire.Op_Hash{Hash: &wire.Hash{Alg: wire.HashAlg_HASH_ALG_SHA256, Data: []byte("some data to hash")}}},
	}}).MarshalVT()
	for n := 0; n < len(valid); n++ {
		r.send(valid[:n])
		rep := r.recv()
		if rep.Status == wire.Status_STATUS_INTERNAL {
			t.Fatalf("truncated to %d bytes: internal error", n)
		}
		for _, res := range rep.Results {
			if res.Status == wire.Status_STATUS_INTERNAL {
				t.Fatalf("truncated to %d bytes: internal error %q", n, res.Message)
			}
		}
	}
	r.ping()

	expectReply("empty message", nil, true)
	v2, _ := (&wire.Request{Version: 2, Id: 1, Ops: []*wire.Op{ping("x")}}).MarshalVT()
	expectReply("version 2", v2, true)
	noVersion, _ := (&wire.Request{Id: 1, Ops: []*wire.Op{ping("x")}}).MarshalVT()
	expectReply("no version", noVersion, true)
	noOps, _ := (&wire.Request{Version: 1, Id: 1}).MarshalVT()
	expectReply("no operations", noOps, true)

	// An operation this daemon does not know (an empty Op, or a field
	// number from the future) is UNIMPLEMENTED for that operation only.
	future := protowire.AppendTag(nil, 999, protowire.BytesType)
	future = protowire.AppendBytes(future, []byte{1, 2, 3})
	futureOp := protowire.AppendTag(nil, 3, protowire.BytesType)
	futureOp = protowire.AppendBytes(futureOp, future)
	req, _ := (&wire.Request{Version: 1, Id: 9, Ops: []*wire.Op{ping("before")}}).MarshalVT()
	req = append(req, futureOp...)
	r.send(req)
	rep := r.recv()
	if rep.Status != wire.Status_STATUS_OK || len(rep.Results) != 2 ||
		rep.Results[0].Status != wire.Status_STATUS_OK || rep.Results[1].Status != wire.Status_STATUS_UNIMPLEMENTED {
		t.Fatalf("unknown operation: %+v", rep)
	}
	// Unknown fields elsewhere are ignored.
	withUnknown, _ := (&wire.Request{Version: 1, Id: 10, Ops: []*wire.Op{ping("ok")}}).MarshalVT()
	withUnknown = protowire.AppendTag(withUnknown, 500, protowire.VarintType)
	withUnknown = protowire.AppendVarint(withUnknown, 42)
	r.send(withUnknown)
	if rep := r.recv(); rep.Status != wire.Status_STATUS_OK || string(rep.Results[0].Data) != "ok" {
		t.Fatalf("unknown field: %+v", rep)
	}

	// Oversized: larger than the daemon's message limit.
	huge, _ := (&wire.Request{Version: 1, Id: 11, Ops: []*wire.Op{ping(string(make([]byte, 300<<10)))}}).MarshalVT()
	if err := r.c.Send(huge); err == nil {
		rep := r.recv()
		if rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || rep.Id != 11 {
			t.Fatalf("oversized: %v id %d", rep.Status, rep.Id)
		}
	} else {
		t.Logf("the kernel refused a %d-byte message (%v); the daemon never saw it", len(huge), err)
	}
	r.ping()
	dialRaw(t, d.sock).ping()
	d.healthy(t)
}

// Descriptors attached to requests are closed by the daemon, not kept.
func TestPassedDescriptorsAreDropped(t *testing.T) {
	d := startDaemon(t)
	fds := func() int {
		ents, err := os.ReadDir("/proc/" + strconv.Itoa(d.cmd.Process.Pid) + "/fd")
		if err != nil {
			t.Skipf("cannot read the daemon's descriptors: %v", err)
		}
		return len(ents)
	}
	fd, err := unix.Socket(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := unix.Connect(fd, &unix.SockaddrUnix{Name: d.sock}); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	exchange := func(msg, rights []byte) *wire.Reply {
		t.Helper()
		if err := unix.Sendmsg(fd, msg, rights, nil, 0); err != nil {
			t.Fatal(err)
		}
		n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		rep := new(wire.Reply)
		if err := rep.UnmarshalVT(buf[:n]); err != nil {
			t.Fatal(err)
		}
		return rep
	}
	msg, _ := (&wire.Request{Version: 1, Id: 1, Ops: []*wire.Op{ping("with fds")}}).MarshalVT()
	exchange(msg, nil)
	before := fds()
	f, err := os.Open(os.DevNull)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	for range 50 {
		rights := unix.UnixRights(int(f.Fd()), int(f.Fd()), int(f.Fd()))
		if rep := exchange(msg, rights); rep.Results[0].Status != wire.Status_STATUS_OK {
			t.Fatalf("request with descriptors: %v", rep.Results[0].Status)
		}
	}
	// The daemon closes a message's pidfd just after replying; let it.
	deadline := time.Now().Add(2 * time.Second)
	for fds() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if after := fds(); after > before {
		t.Fatalf("daemon descriptors: %d before, %d after 150 passed descriptors", before, after)
	}
}

// A client that disconnects with requests in progress does not disturb
// the daemon.
func TestDisconnectMidRequest(t *testing.T) {
	d := startDaemon(t)
	for range 20 {
		r := dialRaw(t, d.sock)
		r.sendOps(genOp(wire.KeyType_KEY_TYPE_RSA_2048, "", 0))
		r.sendOps(ping("x"))
		r.c.Close()
	}
	time.Sleep(100 * time.Millisecond)
	d.healthy(t)
}

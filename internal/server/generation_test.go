package server

import (
	"context"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

func genWatch(after uint64, timeout time.Duration) *wire.Op {
	return &wire.Op{Op: &wire.Op_GenerationWatch{GenerationWatch: &wire.GenerationWatch{After: after, TimeoutMs: uint32(timeout.Milliseconds())}}}
}

func genAck(gen uint64) *wire.Op {
	return &wire.Op{Op: &wire.Op_GenerationAck{GenerationAck: &wire.GenerationAck{Generation: gen}}}
}

func genWaitWatchers(timeout time.Duration) *wire.Op {
	return &wire.Op{Op: &wire.Op_GenerationWaitWatchers{GenerationWaitWatchers: &wire.GenerationWaitWatchers{TimeoutMs: uint32(timeout.Milliseconds())}}}
}

func sendReq(t testing.TB, c *seqpacket.Conn, req *wire.Request) {
	t.Helper()
	b, err := req.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Send(b); err != nil {
		t.Fatal(err)
	}
}

// one sends one operation and returns its result.
func one(t testing.TB, c *seqpacket.Conn, id uint64, op *wire.Op) *wire.Result {
	t.Helper()
	send(t, c, id, op)
	rep := recv(t, c)
	if rep.Id != id || rep.Status != wire.Status_STATUS_OK || len(rep.Results) != 1 {
		t.Fatalf("request %d: reply %d %v %q", id, rep.Id, rep.Status, rep.Message)
	}
	return rep.Results[0]
}

// Every session begun before a change fails with GENERATION_CHANGED at
// its next step, and ends; sessions begun after it work.
func TestSessionsFailAcrossChange(t *testing.T) {
	s, c := pair(t, Config{})
	hmac := one(t, c, 1, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_HMAC_SHA256, Ephemeral: true}}}}).GetKey().GetHandle()
	open := func(id uint64, kind wire.SessionKind) uint32 {
		r := one(t, c, id, &wire.Op{Op: &wire.Op_SessionOpen{SessionOpen: &wire.SessionOpen{Kind: kind, Handle: hmac, Hash: wire.HashAlg_HASH_ALG_SHA256}}})
		if r.Status != wire.Status_STATUS_OK {
			t.Fatalf("open: %v %s", r.Status, r.Message)
		}
		return r.GetSession().GetSession()
	}
	update := func(id uint64, sid uint32) *wire.Result {
		return one(t, c, id, &wire.Op{Op: &wire.Op_SessionUpdate{SessionUpdate: &wire.SessionUpdate{Session: sid, Data: []byte("data")}}})
	}
	final := func(id uint64, sid uint32) *wire.Result {
		return one(t, c, id, &wire.Op{Op: &wire.Op_SessionFinal{SessionFinal: &wire.SessionFinal{Session: sid}}})
	}
	hash, mac := open(2, wire.SessionKind_SESSION_KIND_HASH), open(3, wire.SessionKind_SESSION_KIND_MAC)
	if r := update(4, hash); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("update before the change: %v", r.Status)
	}
	s.gen.Bump("test")
	if r := update(5, hash); r.Status != wire.Status_STATUS_GENERATION_CHANGED {
		t.Fatalf("hash update after the change: %v %q", r.Status, r.Message)
	}
	if r := final(6, mac); r.Status != wire.Status_STATUS_GENERATION_CHANGED || len(r.Data) != 0 {
		t.Fatalf("mac final after the change: %v %x", r.Status, r.Data)
	}
	// Both ended.
	if r := update(7, hash); r.Status != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("a failed session lives on: %v", r.Status)
	}
	fresh := open(8, wire.SessionKind_SESSION_KIND_MAC)
	if r := update(9, fresh); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("a session of the new generation: %v", r.Status)
	}
	if r := final(10, fresh); r.Status != wire.Status_STATUS_OK || len(r.Data) != 32 {
		t.Fatalf("final: %v %d bytes", r.Status, len(r.Data))
	}
}

// A request pinned to another generation is refused whole, before any of
// its operations runs.
func TestExpectedGeneration(t *testing.T) {
	s, c := pair(t, Config{})
	gen := func(g uint64) *uint64 { return &g }
	genKey := &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_AES256_GCM, Name: "pinned"}}}}
	sendReq(t, c, &wire.Request{Version: 1, Id: 1, ExpectedGeneration: gen(0), Ops: []*wire.Op{ping("a")}})
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_OK || string(rep.Results[0].Data) != "a" {
		t.Fatalf("current generation: %v", rep.Status)
	}
	s.gen.Bump("test")
	sendReq(t, c, &wire.Request{Version: 1, Id: 2, ExpectedGeneration: gen(0), Ops: []*wire.Op{genKey, ping("b")}})
	rep := recv(t, c)
	if rep.Id != 2 || rep.Status != wire.Status_STATUS_GENERATION_CHANGED || len(rep.Results) != 0 {
		t.Fatalf("old generation: id %d %v %q, %d results", rep.Id, rep.Status, rep.Message, len(rep.Results))
	}
	if r := one(t, c, 3, &wire.Op{Op: &wire.Op_List{List: &wire.List{}}}); len(r.GetList().GetKeys()) != 0 {
		t.Fatal("the refused request created a key")
	}
	sendReq(t, c, &wire.Request{Version: 1, Id: 4, ExpectedGeneration: gen(1), Ops: []*wire.Op{genKey}})
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_OK || rep.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("new generation: %v", rep.Status)
	}
	// A request that names none is never refused for the generation.
	s.gen.Bump("test")
	if r := one(t, c, 5, ping("c")); string(r.Data) != "c" {
		t.Fatal("unpinned request")
	}
}

// A watch waits without holding up the connection, and answers at the
// change.
func TestWatchLongPoll(t *testing.T) {
	s, c := pair(t, Config{})
	send(t, c, 1, genWatch(0, 10*time.Second))
	if r := one(t, c, 2, ping("meanwhile")); string(r.Data) != "meanwhile" {
		t.Fatal("ping while watching")
	}
	start := time.Now()
	go func() { time.Sleep(50 * time.Millisecond); s.gen.Bump("test") }()
	rep := recv(t, c)
	if rep.Id != 1 || rep.Results[0].GetGeneration().GetGeneration() != 1 {
		t.Fatalf("watch: %+v", rep)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Fatalf("the watch answered after %v", d)
	}
	info := rep.Results[0].GetGeneration()
	if info.ChangedUnixNano == 0 || len(info.ChangedBy) != 1 || info.ChangedBy[0] != "request" || info.Watchers != 1 || info.OutdatedWatchers != 1 {
		t.Fatalf("info %+v", info)
	}
	// A timeout answers with the generation unchanged.
	if r := one(t, c, 3, genWatch(1, 30*time.Millisecond)); r.GetGeneration().GetGeneration() != 1 {
		t.Fatalf("timeout: %+v", r)
	}
	// Watching a generation the daemon has not reached is an error.
	if r := one(t, c, 4, genWatch(9, time.Second)); r.Status != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("watch ahead: %v", r.Status)
	}
	if r := one(t, c, 5, genWatch(0, 2*time.Hour)); r.Status != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("a two-hour watch: %v", r.Status)
	}
}

// Closing the connection, or shutting the daemon down, ends a waiting
// watch at once.
func TestWatchEndsPromptly(t *testing.T) {
	s := mustNew(t, Config{})
	a, b, err := seqpacket.Pair()
	if err != nil {
		t.Fatal(err)
	}
	s.ServeConn(a)
	send(t, b, 1, genWatch(0, time.Hour))
	time.Sleep(20 * time.Millisecond)
	s.gen.Bump("the connection is now an outdated watcher")
	if rep := recv(t, b); rep.Id != 1 {
		t.Fatalf("reply %d", rep.Id)
	}
	send(t, b, 2, genWaitWatchers(time.Hour))
	send(t, b, 3, genWatch(1, time.Hour))
	time.Sleep(20 * time.Millisecond)
	// Shutdown: the two waiting operations answer UNAVAILABLE.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	start := time.Now()
	shut := make(chan error, 1)
	go func() { shut <- s.Shutdown(ctx) }()
	for range 2 {
		rep := recv(t, b)
		if rep.Results[0].Status != wire.Status_STATUS_UNAVAILABLE {
			t.Fatalf("request %d at shutdown: %v", rep.Id, rep.Results[0].Status)
		}
	}
	if err := <-shut; err != nil || time.Since(start) > 3*time.Second {
		t.Fatalf("shutdown: %v after %v", err, time.Since(start))
	}
	b.Close()

	// A client that hangs up.
	s = mustNew(t, Config{})
	a, b, _ = seqpacket.Pair()
	s.ServeConn(a)
	send(t, b, 1, genWatch(0, time.Hour))
	time.Sleep(20 * time.Millisecond)
	b.Close()
	ctx2, cancel2 := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel2()
	if err := s.Shutdown(ctx2); err != nil {
		t.Fatalf("the watch of a closed connection still runs: %v", err)
	}
}

// The orchestrator's flow across connections: watchers, acks, and
// wait-watchers until all have adjusted.
func TestAckAndWaitWatchers(t *testing.T) {
	s := mustNew(t, Config{})
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	dial := func() *seqpacket.Conn {
		a, b, err := seqpacket.Pair()
		if err != nil {
			t.Fatal(err)
		}
		s.ServeConn(a)
		b.SetRecvTimeout(10 * time.Second)
		t.Cleanup(func() { b.Close() })
		return b
	}
	app, orch := dial(), dial()
	// The app becomes a watcher (a watch that answers at once).
	one(t, app, 1, genWatch(0, 0))
	s.gen.Bump("restore")
	r := one(t, orch, 1, genWaitWatchers(50*time.Millisecond))
	if info := r.GetGeneration(); info.Generation != 1 || info.Watchers != 1 || info.OutdatedWatchers != 1 {
		t.Fatalf("wait-watchers timed out with %+v", info)
	}
	send(t, orch, 2, genWaitWatchers(10*time.Second))
	time.Sleep(20 * time.Millisecond)
	if r := one(t, app, 2, genAck(2)); r.Status != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("ack of a future generation: %v", r.Status)
	}
	if r := one(t, app, 3, genAck(1)); r.GetGeneration().GetOutdatedWatchers() != 0 {
		t.Fatalf("ack: %+v", r)
	}
	rep := recv(t, orch)
	if rep.Id != 2 || rep.Results[0].GetGeneration().GetOutdatedWatchers() != 0 {
		t.Fatalf("wait-watchers after the ack: %+v", rep)
	}
	// Named watchers outlive their connection; forgetting removes them.
	named := &wire.Op{Op: &wire.Op_GenerationAck{GenerationAck: &wire.GenerationAck{Generation: 1, Name: "db"}}}
	if r := one(t, app, 4, named); r.GetGeneration().GetWatchers() != 2 {
		t.Fatalf("named watcher: %+v", r)
	}
	app.Close()
	waitUntil(t, func() bool { w, _ := s.gen.Outdated(); return w == 1 })
	s.gen.Bump("again")
	if r := one(t, orch, 3, genWaitWatchers(0)); r.GetGeneration().GetOutdatedWatchers() != 1 {
		t.Fatalf("the named watcher: %+v", r)
	}
	forget := &wire.Op{Op: &wire.Op_GenerationAck{GenerationAck: &wire.GenerationAck{Name: "db", Forget: true}}}
	if r := one(t, orch, 4, forget); r.GetGeneration().GetWatchers() != 0 {
		t.Fatalf("forget: %+v", r)
	}
}

func waitUntil(t *testing.T, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}

// A connection may have only a few watches waiting.
func TestLongPollLimit(t *testing.T) {
	_, c := pair(t, Config{})
	for i := range maxLongPolls {
		send(t, c, uint64(i+1), genWatch(0, time.Hour))
	}
	time.Sleep(50 * time.Millisecond)
	if r := one(t, c, 100, genWatch(0, time.Hour)); r.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("one watch too many: %v", r.Status)
	}
	// A watch that does not wait is always answered.
	if r := one(t, c, 101, genWatch(0, 0)); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("a watch without timeout: %v", r.Status)
	}
}

// generation_map's reply carries the page, which shows every change.
func TestGenerationMap(t *testing.T) {
	s, c := pair(t, Config{})
	send(t, c, 1, &wire.Op{Op: &wire.Op_GenerationMap{GenerationMap: &wire.GenerationMap{}}},
		&wire.Op{Op: &wire.Op_GenerationMap{GenerationMap: &wire.GenerationMap{}}})
	buf, oob := make([]byte, 1<<16), make([]byte, seqpacket.OOBSize)
	n, fds, err := c.RecvFDs(buf, oob)
	if err != nil {
		t.Fatal(err)
	}
	rep := new(wire.Reply)
	if err := rep.UnmarshalVT(buf[:n]); err != nil {
		t.Fatal(err)
	}
	info := rep.Results[0].GetGenerationMap()
	if len(fds) != 1 || info.GetSize() != wire.GenPageSize || info.GetLayoutVersion() != 1 || rep.Results[1].GetGenerationMap() == nil {
		t.Fatalf("%d descriptors, %+v", len(fds), rep.Results)
	}
	mem, err := unix.Mmap(fds[0], 0, wire.GenPageSize, unix.PROT_READ, unix.MAP_SHARED)
	unix.Close(fds[0])
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if g, _, live, ok := wire.ReadGenPage(mem); !ok || g != 0 || !live {
		t.Fatalf("page: %d %v %v", g, live, ok)
	}
	s.gen.Bump("test")
	if g, _, _, _ := wire.ReadGenPage(mem); g != 1 {
		t.Fatalf("page after a bump: %d", g)
	}
	// Other replies carry nothing.
	send(t, c, 2, ping("x"))
	if _, fds, _ := c.RecvFDs(buf, oob); len(fds) != 0 {
		t.Fatalf("a ping reply carried %d descriptors", len(fds))
	}
}

// Status and generation_get describe the generation and its sources.
func TestGenerationStatus(t *testing.T) {
	s, c := pair(t, Config{})
	s.gen.Bump("test")
	r := one(t, c, 1, &wire.Op{Op: &wire.Op_Status{Status: &wire.StatusOp{}}})
	if g := r.GetServer().GetGeneration(); g.GetGeneration() != 1 || g.GetChangedUnixNano() == 0 {
		t.Fatalf("status: %+v", g)
	}
	r = one(t, c, 2, &wire.Op{Op: &wire.Op_GenerationGet{GenerationGet: &wire.GenerationGet{}}})
	if g := r.GetGeneration(); g.GetGeneration() != 1 {
		t.Fatalf("get: %+v", g)
	}
	// Root may bump.
	r = one(t, c, 3, &wire.Op{Op: &wire.Op_GenerationBump{GenerationBump: &wire.GenerationBump{}}})
	if unix.Geteuid() == 0 {
		if r.Status != wire.Status_STATUS_OK || r.GetGeneration().GetGeneration() != 2 {
			t.Fatalf("bump as root: %v %+v", r.Status, r.GetGeneration())
		}
	} else if r.Status != wire.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("bump as uid %d: %v", unix.Geteuid(), r.Status)
	}
}

// fakeSource reports a change for every string sent on it.
type fakeSource chan string

func (f fakeSource) Name() string          { return "fake" }
func (f fakeSource) Open() (string, error) { return "a test's channel", nil }
func (f fakeSource) Close() error          { return nil }
func (f fakeSource) Run(ctx context.Context, report func(string)) {
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-f:
			report(d)
		}
	}
}

// A change a source reports (rather than a bump) reaches every part: the
// session fails, the watcher is told, the page changes, status names the
// source.
func TestSourceChange(t *testing.T) {
	src := make(fakeSource)
	gen := genid.New(genid.Config{Sources: []genid.Source{src}})
	gen.Start()
	defer gen.Close()
	_, c := pair(t, Config{Generation: gen})
	sid := one(t, c, 1, &wire.Op{Op: &wire.Op_SessionOpen{SessionOpen: &wire.SessionOpen{
		Kind: wire.SessionKind_SESSION_KIND_HASH, Hash: wire.HashAlg_HASH_ALG_SHA256}}}).GetSession().GetSession()
	send(t, c, 2, genWatch(0, 10*time.Second))
	time.Sleep(20 * time.Millisecond)
	src <- "the VM was restored"
	rep := recv(t, c)
	if rep.Id != 2 || rep.Results[0].GetGeneration().GetGeneration() != 1 {
		t.Fatalf("watch: %+v", rep)
	}
	r := one(t, c, 3, &wire.Op{Op: &wire.Op_SessionUpdate{SessionUpdate: &wire.SessionUpdate{Session: sid, Data: []byte("x")}}})
	if r.Status != wire.Status_STATUS_GENERATION_CHANGED {
		t.Fatalf("session after the change: %v", r.Status)
	}
	info := one(t, c, 4, &wire.Op{Op: &wire.Op_GenerationGet{GenerationGet: &wire.GenerationGet{}}}).GetGeneration()
	if len(info.ChangedBy) != 1 || info.ChangedBy[0] != "fake" || len(info.Sources) != 1 ||
		info.Sources[0].LastReport != "the VM was restored" || !info.Sources[0].Active {
		t.Fatalf("generation: %+v", info)
	}
}

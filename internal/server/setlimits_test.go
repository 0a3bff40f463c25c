package server

import (
	"context"
	"fmt"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// setLimits calls SetLimits and fails the test on an error.
func setLimits(t *testing.T, s *Server, l Limits) {
	t.Helper()
	if err := s.SetLimits(l); err != nil {
		t.Fatal(err)
	}
}

// hashOpen opens a streaming hash session.
func hashOpen() *wire.Op {
	return &wire.Op{Op: &wire.Op_SessionOpen{SessionOpen: &wire.SessionOpen{Kind: wire.SessionKind_SESSION_KIND_HASH, Hash: wire.HashAlg_HASH_ALG_SHA256}}}
}

// holdWatch starts a generation watch of ss that waits until the test
// ends: a request in flight and a long poll of its uid.
func holdWatch(t *testing.T, s *Server, ss *Session, id Identity, reqID uint64) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		ss.Do(ctx, id, &wire.Request{Version: wire.ProtocolVersion, Id: reqID, Ops: []*wire.Op{genWatch(s.gen.Current(), time.Hour)}})
	}()
	t.Cleanup(func() { cancel(); <-done })
}

func exhausted(r *wire.Reply) bool {
	if r.Status == wire.Status_STATUS_RESOURCE_EXHAUSTED {
		return true
	}
	return len(r.Results) > 0 && r.Results[0].Status == wire.Status_STATUS_RESOURCE_EXHAUSTED
}

// Daemon-wide connection limits: a lower MaxConnections (and its reserve
// for administrators) refuses the next connection of an ordinary uid,
// while those already open stay; a higher one admits it again.
func TestSetLimitsConnections(t *testing.T) {
	s := newTestServer(t, Config{})
	for uid := uint32(1100); uid < 1103; uid++ {
		doSession(t, s, uid)
	}
	setLimits(t, s, Limits{MaxConnections: 5, AdminConnections: 2})
	if _, err := s.NewSession(context.Background(), testFront, idOf(1103)); err == nil {
		t.Fatal("a fourth ordinary connection was admitted with 5 connections, 2 kept for administrators")
	}
	// root still has the reserve.
	doSession(t, s, 0)
	setLimits(t, s, Limits{MaxConnections: 6, AdminConnections: 2})
	doSession(t, s, 1103)
	if s.Limits().MaxConnections != 6 {
		t.Fatalf("Limits() = %d connections, want 6", s.Limits().MaxConnections)
	}
}

// Per-uid limits apply to the uid's connections opened before SetLimits:
// connections, requests in flight, long polls and streaming sessions.
func TestSetLimitsPerUID(t *testing.T) {
	s := newTestServer(t, Config{})
	const uid = 1200
	id := idOf(uid)
	a, b := doSession(t, s, uid), doSession(t, s, uid)

	setLimits(t, s, Limits{MaxConnectionsPerUID: 2})
	if _, err := s.NewSession(context.Background(), testFront, id); err == nil {
		t.Fatal("a third connection of the uid was admitted over its new limit of 2")
	}
	doSession(t, s, uid+1) // another uid is not held to it

	setLimits(t, s, Limits{MaxSessionsPerUID: 1})
	if r := do(t, a, id, 1, hashOpen()); r.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("first session: %v %q", r.Results[0].Status, r.Results[0].Message)
	}
	if r := do(t, b, id, 2, hashOpen()); !exhausted(r) || !strings.Contains(r.Results[0].Message, "limit 1") {
		t.Fatalf("second session of the uid over its new limit of 1: %v", r)
	}

	setLimits(t, s, Limits{MaxInFlightPerUID: 1})
	holdWatch(t, s, a, id, 3)
	waitUntil(t, func() bool { return acctOf(s, uid).inFlight.Load() == 1 })
	if r := do(t, b, id, 4, ping("x")); !exhausted(r) || !strings.Contains(r.Message, "limit 1") {
		t.Fatalf("second request in flight of the uid over its new limit of 1: %v %q", r.Status, r.Message)
	}

	setLimits(t, s, Limits{MaxLongPollsPerUID: 1})
	if r := do(t, b, id, 5, genWatch(s.gen.Current(), time.Hour)); !exhausted(r) {
		t.Fatalf("second long poll of the uid over its new limit of 1: %v", r)
	}
	// Raised again, the uid is served.
	setLimits(t, s, Limits{})
	if r := do(t, b, id, 6, ping("x")); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("after the limits were raised: %v %q", r.Status, r.Message)
	}
}

// Per-uid request memory: a lower MaxRequestBytesPerUID refuses a
// request that held less than the old one allowed.
func TestSetLimitsRequestMemory(t *testing.T) {
	release := make(chan struct{})
	cfg := Config{Limits: Limits{MaxMessageBytes: 64 << 10}}
	cfg.heavyHook = func() { <-release }
	s := newTestServer(t, cfg)
	var once sync.Once
	free := func() { once.Do(func() { close(release) }) }
	t.Cleanup(free)
	c := serveAs(t, s, 1250)
	big := strings.Repeat("x", 40<<10)
	send(t, c, 1, rsaGen(), ping(big))
	waitUntil(t, func() bool { return acctOf(s, 1250).reqBytes.Load() > 40<<10 })
	setLimits(t, s, Limits{MaxMessageBytes: 64 << 10, MaxRequestBytesPerUID: 80 << 10})
	send(t, c, 2, rsaGen(), ping(big))
	if rep := recv(t, c); rep.Id != 2 || rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(rep.Message, "81920") {
		t.Fatalf("a second large request over the new limit: %d %v %q", rep.Id, rep.Status, rep.Message)
	}
	free()
	if rep := recv(t, c); rep.Id != 1 || rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("the first request: %d %v", rep.Id, rep.Status)
	}
}

// Per-connection limits apply to connections open before SetLimits:
// batch size, requests in flight, streaming sessions, handles.
func TestSetLimitsPerConnection(t *testing.T) {
	s := newTestServer(t, Config{})
	const uid = 1300
	id := idOf(uid)
	ss := doSession(t, s, uid)

	setLimits(t, s, Limits{MaxBatchOps: 2})
	if r := do(t, ss, id, 1, ping("a"), ping("b"), ping("c")); r.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(r.Message, "batch limit of 2") {
		t.Fatalf("3 operations over the new batch limit of 2: %v %q", r.Status, r.Message)
	}

	setLimits(t, s, Limits{MaxSessions: 1})
	if r := do(t, ss, id, 2, hashOpen()); r.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("first session: %v", r.Results[0].Status)
	}
	if r := do(t, ss, id, 3, hashOpen()); !exhausted(r) || !strings.Contains(r.Results[0].Message, "on this connection (limit 1)") {
		t.Fatalf("second session over the new limit of 1: %v", r)
	}

	setLimits(t, s, Limits{MaxHandles: 1})
	if r := do(t, ss, id, 4, generateAES("")); r.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("first key: %v %q", r.Results[0].Status, r.Results[0].Message)
	}
	if r := do(t, ss, id, 5, generateAES("")); !exhausted(r) {
		t.Fatalf("second handle over the new limit of 1: %v", r)
	}

	setLimits(t, s, Limits{MaxInFlight: 1})
	holdWatch(t, s, ss, id, 6)
	waitUntil(t, func() bool { return ss.inFlight.Load() == 1 })
	if r := do(t, ss, id, 7, ping("x")); r.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(r.Message, "in flight (limit 1)") {
		t.Fatalf("second request in flight over the new limit of 1: %v %q", r.Status, r.Message)
	}
}

// Keys per user: a lower MaxKeysPerUser refuses the next key of a uid
// that already has that many.
func TestSetLimitsKeysPerUser(t *testing.T) {
	s := newTestServer(t, Config{})
	const uid = 1400
	id := idOf(uid)
	ss := doSession(t, s, uid)
	for i := range 2 {
		if r := do(t, ss, id, uint64(i+1), generateAES(fmt.Sprintf("k%d", i))); r.Results[0].Status != wire.Status_STATUS_OK {
			t.Fatalf("key %d: %v %q", i, r.Results[0].Status, r.Results[0].Message)
		}
	}
	setLimits(t, s, Limits{MaxKeysPerUser: 2})
	if r := do(t, ss, id, 3, generateAES("k2")); !exhausted(r) {
		t.Fatalf("a third key over the new limit of 2: %v", r)
	}
}

// Heavy slots: a higher HeavySlots and MaxHeavyPerUID grants a waiting
// operation at once; a lower one holds back the next.
func TestSetLimitsHeavySlots(t *testing.T) {
	s := newTestServer(t, Config{Limits: Limits{HeavySlots: 1, MaxHeavyPerUID: 1}})
	acct, err := s.accts.connect(1500)
	if err != nil {
		t.Fatal(err)
	}
	defer s.accts.disconnect(acct)
	q := &s.accts.heavy[heavyCPU]
	if err := q.acquire(acct, nil); err != nil {
		t.Fatal(err)
	}
	stop := make(chan struct{})
	t.Cleanup(func() { close(stop) })
	granted := make(chan error, 1)
	go func() { granted <- q.acquire(acct, stop) }()
	select {
	case <-granted:
		t.Fatal("a second heavy operation ran with 1 slot")
	case <-time.After(50 * time.Millisecond):
	}
	setLimits(t, s, Limits{HeavySlots: 2, MaxHeavyPerUID: 2})
	select {
	case err := <-granted:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the waiting heavy operation was not granted the new slot")
	}
	setLimits(t, s, Limits{HeavySlots: 1, MaxHeavyPerUID: 1})
	q.release(acct)
	cancel := make(chan struct{})
	go func() { granted <- q.acquire(acct, cancel) }()
	select {
	case <-granted:
		t.Fatal("a heavy operation ran over the new limit of 1 slot")
	case <-time.After(50 * time.Millisecond):
	}
	close(cancel)
	<-granted
	q.release(acct)
}

// Audit rate: a lower burst refuses a uid whose records spent it.
func TestSetLimitsAuditRate(t *testing.T) {
	s, _ := auditedServer(t, Limits{})
	c := serveAs(t, s, 1600)
	send(t, c, 1, ping("x"))
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("first ping: %v %q", rep.Status, rep.Message)
	}
	setLimits(t, s, Limits{AuditBytesPerSecondPerUID: 1, AuditBurstPerUID: 1})
	refused := false
	for i := range 5 {
		send(t, c, uint64(i+2), ping("x"))
		rep := recv(t, c)
		if rep.Status == wire.Status_STATUS_RESOURCE_EXHAUSTED && strings.Contains(rep.Message, "(1 bytes a second)") {
			refused = true
			break
		}
	}
	if !refused {
		t.Fatal("pings were served over the new audit burst of 1 byte")
	}
}

// Limits sized into what the server made at its start cannot change: a
// SetLimits asking for another value changes nothing, and says which.
func TestSetLimitsRestartOnly(t *testing.T) {
	s := newTestServer(t, Config{Limits: Limits{MaxMessageBytes: 64 << 10}})
	before := s.Limits()
	for _, tc := range []struct {
		l    Limits
		name string
	}{
		{Limits{MaxMessageBytes: 128 << 10, MaxInFlight: 1}, "MaxMessageBytes"},
		{Limits{MaxMessageBytes: 64 << 10, MaxNamedWatchersPerUID: 3, MaxInFlight: 1}, "MaxNamedWatchersPerUID"},
		{Limits{MaxMessageBytes: 64 << 10, MaxComputingPerUID: 99, MaxInFlight: 1}, "MaxComputingPerUID"},
	} {
		err := s.SetLimits(tc.l)
		if err == nil || !strings.Contains(err.Error(), tc.name) {
			t.Errorf("SetLimits changing %s: %v", tc.name, err)
		}
		if s.Limits() != before {
			t.Errorf("SetLimits changing %s changed the limits", tc.name)
		}
	}
	// The message size as configured is no change, even where the kernel
	// lowered it.
	setLimits(t, s, Limits{MaxMessageBytes: 64 << 10, MaxInFlight: 1})
	if got := s.Limits().MaxInFlight; got != 1 {
		t.Fatalf("MaxInFlight %d after SetLimits, want 1", got)
	}
}

// Requests in flight on many connections while SetLimits replaces the
// limits: the race detector finds no unsynchronized access, and every
// request is either served or refused for a limit.
func TestSetLimitsConcurrent(t *testing.T) {
	s := newTestServer(t, Config{})
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for g := range 4 {
		uid := uint32(1700 + g%2)
		ss := doSession(t, s, uid)
		wg.Add(1)
		go func() {
			defer wg.Done()
			id := idOf(uid)
			for i := uint64(1); ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				rep, err := ss.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: i, Ops: []*wire.Op{ping("x"), hashOpen()}})
				if err != nil {
					t.Error(err)
					return
				}
				if rep.Status != wire.Status_STATUS_OK && rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED {
					t.Errorf("request %d: %v %q", i, rep.Status, rep.Message)
					return
				}
			}
		}()
	}
	for i := range 200 {
		l := Limits{MaxInFlight: 1 + i%3, MaxBatchOps: 1 + i%2, MaxSessions: 2 + i%5, MaxInFlightPerUID: 1 + i%4,
			MaxSessionsPerUID: 3 + i%7, MaxConnections: 16 + i%8, HeavySlots: 1 + i%2, MaxKeysPerUser: 10 + i}
		if err := s.SetLimits(l); err != nil {
			t.Fatal(err)
		}
		doSession(t, s, 1800).Close()
		s.wireLimits()
	}
	close(stop)
	wg.Wait()
}

// The defaults that depend on the processors are those New computed,
// although the daemon raises GOMAXPROCS after it: a reload that leaves
// them unset changes none of them (and MaxComputingPerUID, which needs
// a restart, does not make SetLimits fail).
func TestSetLimitsDefaultsAfterGOMAXPROCS(t *testing.T) {
	s := newTestServer(t, Config{})
	before := s.Limits()
	procs := runtime.GOMAXPROCS(0)
	runtime.GOMAXPROCS(procs + 4)
	defer runtime.GOMAXPROCS(procs)
	setLimits(t, s, Limits{MaxInFlight: 3})
	after := s.Limits()
	if after.HeavySlots != before.HeavySlots || after.MaxHeavyPerUID != before.MaxHeavyPerUID || after.MaxComputingPerUID != before.MaxComputingPerUID {
		t.Fatalf("defaults changed by a reload after GOMAXPROCS rose: %+v, were %+v", after, before)
	}
}

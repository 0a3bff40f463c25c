package server

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
	"golang.org/x/sys/unix"
)

func testLimits(l Limits) *Limits {
	l = l.withDefaults()
	return &l
}

func testAccounts(l *Limits, admins ...uint32) *accounts {
	isAdmin := func(uid uint32) bool {
		for _, a := range admins {
			if a == uid {
				return true
			}
		}
		return false
	}
	var p atomic.Pointer[limitSet]
	p.Store(newLimitSet(*l))
	return newAccounts(&p, isAdmin, time.Now)
}

// Connections: a uid gets at most its share, ordinary uids never take the
// slots kept for administrators, administrators take them all.
func TestAccountsConnections(t *testing.T) {
	a := testAccounts(testLimits(Limits{MaxConnections: 10, AdminConnections: 3, MaxConnectionsPerUID: 4}), 0)
	var held []*account
	connect := func(uid uint32) error {
		acct, err := a.connect(uid)
		if err == nil {
			held = append(held, acct)
		}
		return err
	}
	for i := range 4 {
		if err := connect(1000); err != nil {
			t.Fatalf("uid 1000, connection %d: %v", i+1, err)
		}
	}
	var le *limitError
	if err := connect(1000); !errors.As(err, &le) || le.kind != limitConnections {
		t.Fatalf("uid 1000 over its share: %v", err)
	}
	for i := range 3 {
		if err := connect(1001); err != nil {
			t.Fatalf("uid 1001, connection %d: %v", i+1, err)
		}
	}
	// 7 ordinary connections: the other 3 are the administrators'.
	if err := connect(1002); !errors.As(err, &le) || le.kind != limitDaemonConnections || !strings.Contains(err.Error(), "administrators") {
		t.Fatalf("an ordinary uid in the reserve: %v", err)
	}
	for i := range 3 {
		if err := connect(0); err != nil {
			t.Fatalf("administrator, connection %d: %v", i+1, err)
		}
	}
	if err := connect(0); !errors.As(err, &le) || le.kind != limitDaemonConnections {
		t.Fatalf("over the daemon's limit: %v", err)
	}
	a.disconnect(held[0]) // one of uid 1000's
	if err := connect(1002); err != nil {
		t.Fatalf("after a connection ended: %v", err)
	}
	if got := a.report(); !strings.Contains(got, "uid 1000: 1 (connections 1)") || !strings.Contains(got, "uid 1002: 1 (connections (daemon) 1)") ||
		!strings.Contains(got, "uid 0: 1 (connections (daemon) 1)") {
		t.Fatalf("report: %q", got)
	}
	if got := a.report(); got != "" {
		t.Fatalf("a second report without refusals: %q", got)
	}
}

// The audit allowance refills at its rate up to its burst; a uid is
// refused while it is spent.
func TestAllowance(t *testing.T) {
	var al allowance
	start := time.Now()
	if !al.ok(start, 1000, 4000) {
		t.Fatal("a new allowance is spent")
	}
	al.spend(4500)
	if al.ok(start.Add(100*time.Millisecond), 1000, 4000) {
		t.Fatal("ok while 400 bytes short")
	}
	if !al.ok(start.Add(700*time.Millisecond), 1000, 4000) {
		t.Fatal("not refilled")
	}
	if al.full(start.Add(time.Second), 1000, 4000) {
		t.Fatal("full too soon")
	}
	if !al.full(start.Add(10*time.Second), 1000, 4000) {
		t.Fatal("not full after 10s")
	}
}

// Heavy slots go to the waiting uids in turn, whatever the length of
// their queues, and a uid never runs more than its share.
func TestFairQueueTurns(t *testing.T) {
	a := testAccounts(testLimits(Limits{}))
	q := &fairQueue{slots: 1, perUID: 1, class: heavyCPU}
	flood, _ := a.connect(1000)
	other, _ := a.connect(1001)
	third, _ := a.connect(1002)
	if err := q.acquire(flood, nil); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 16)
	wait := func(acct *account, name string) {
		go func() {
			if err := q.acquire(acct, nil); err != nil {
				t.Error(err)
				return
			}
			order <- name
		}()
		time.Sleep(10 * time.Millisecond) // arrive in order
	}
	for range 4 {
		wait(flood, "flood")
	}
	wait(other, "other")
	wait(third, "third")
	var got []string
	var last *account = flood
	for range 6 {
		q.release(last)
		name := <-order
		got = append(got, name)
		last = map[string]*account{"flood": flood, "other": other, "third": third}[name]
	}
	q.release(last)
	if strings.Join(got, " ") != "other third flood flood flood flood" {
		t.Fatalf("order %v: the others waited behind the flood", got)
	}
	if q.running != 0 || len(q.ring) != 0 {
		t.Fatalf("left over: %d running, %d waiting", q.running, len(q.ring))
	}
}

// A uid over its share waits even while slots are free; a waiter whose
// connection ends leaves the queue.
func TestFairQueueShareAndCancel(t *testing.T) {
	a := testAccounts(testLimits(Limits{}))
	q := &fairQueue{slots: 4, perUID: 1, class: heavyCPU}
	flood, _ := a.connect(1000)
	other, _ := a.connect(1001)
	if err := q.acquire(flood, nil); err != nil {
		t.Fatal(err)
	}
	cancel := make(chan struct{})
	res := make(chan error, 1)
	go func() { res <- q.acquire(flood, cancel) }()
	time.Sleep(10 * time.Millisecond)
	select {
	case err := <-res:
		t.Fatalf("a second slot for one uid whose share is 1: %v", err)
	default:
	}
	if err := q.acquire(other, nil); err != nil {
		t.Fatal(err)
	}
	close(cancel)
	if err := <-res; !errors.Is(err, errConnClosing) {
		t.Fatalf("cancelled wait: %v", err)
	}
	q.release(flood)
	q.release(other)
	if q.running != 0 || len(q.ring) != 0 || len(flood.waiting[heavyCPU]) != 0 {
		t.Fatalf("left over: %d running, %d uids waiting", q.running, len(q.ring))
	}
	// Administrators do not queue.
	admin := &account{uid: 0, admin: true}
	for range 10 {
		if err := q.acquire(admin, nil); err != nil {
			t.Fatal(err)
		}
	}
}

// serveAs serves one end of a socket pair as a connection opened by uid
// (the test's messages still carry its own credentials) and returns the
// other end.
func serveAs(t *testing.T, s *Server, uid uint32) *seqpacket.Conn {
	t.Helper()
	a, b, err := seqpacket.Pair()
	if err != nil {
		t.Fatal(err)
	}
	cn := testConn(t, s, a, uid)
	if cn.pidfd, err = a.EnableCredentials(); err != nil {
		t.Fatal(err)
	}
	cn.armPark()
	s.mu.Lock()
	s.conns[cn] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	go cn.serve() // cn.ended forgets it
	t.Cleanup(func() { b.Close() })
	b.SetRecvTimeout(10 * time.Second)
	return b
}

// acctOf returns the account of uid.
func acctOf(s *Server, uid uint32) *account {
	s.accts.mu.Lock()
	defer s.accts.mu.Unlock()
	return s.accts.byUID[uid]
}

func newTestServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	s := mustNew(t, cfg)
	t.Cleanup(func() { s.Shutdown(context.Background()) })
	return s
}

// The requests in flight of a uid are counted over all its connections:
// one over the limit is refused at once, on any of them, while another
// uid is served; the refusal is counted in the report, not recorded.
func TestPerUIDInFlight(t *testing.T) {
	release := make(chan struct{})
	var logged lockedBuffer // the once-a-second report may take the counts first
	cfg := Config{Limits: Limits{MaxInFlightPerUID: 2}, Logger: slog.New(slog.NewTextHandler(&logged, nil))}
	cfg.heavyHook = func() { <-release }
	s := newTestServer(t, cfg)
	c1, c2 := serveAs(t, s, 1000), serveAs(t, s, 1000)
	other := serveAs(t, s, 1001)
	send(t, c1, 1, rsaGen())
	send(t, c2, 2, rsaGen())
	waitUntil(t, func() bool { return acctOf(s, 1000).inFlight.Load() == 2 })
	send(t, c1, 3, ping("over"))
	if rep := recv(t, c1); rep.Id != 3 || rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(rep.Message, "this user") {
		t.Fatalf("third request of the uid: %d %v %q", rep.Id, rep.Status, rep.Message)
	}
	send(t, other, 4, ping("other"))
	if rep := recv(t, other); rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("another uid: %v %q", rep.Status, rep.Message)
	}
	close(release)
	for _, c := range []*seqpacket.Conn{c1, c2} {
		if rep := recv(t, c); rep.Status != wire.Status_STATUS_OK {
			t.Fatalf("request %d: %v", rep.Id, rep.Status)
		}
	}
	const want = "requests refused for limits: uid 1000: 1 (in flight 1)"
	if got := s.accts.report(); got != want && !strings.Contains(logged.String(), want) {
		t.Fatalf("report: %q; logged:\n%s", got, logged.String())
	}
}

// lockedBuffer is a bytes.Buffer safe for concurrent writers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// The requests running concurrently hold their bytes against their uid's
// share: one that would exceed it is refused.
func TestPerUIDRequestMemory(t *testing.T) {
	release := make(chan struct{})
	cfg := Config{Limits: Limits{MaxMessageBytes: 64 << 10, MaxRequestBytesPerUID: 100 << 10}}
	cfg.heavyHook = func() { <-release }
	s := newTestServer(t, cfg)
	c := serveAs(t, s, 1000)
	big := strings.Repeat("x", 60<<10)
	send(t, c, 1, rsaGen(), ping(big))
	waitUntil(t, func() bool { return acctOf(s, 1000).reqBytes.Load() > 60<<10 })
	send(t, c, 2, rsaGen(), ping(big))
	if rep := recv(t, c); rep.Id != 2 || rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("a second large request: %d %v %q", rep.Id, rep.Status, rep.Message)
	}
	// A small one fits.
	send(t, c, 3, rsaGen())
	close(release)
	got := map[uint64]wire.Status{}
	for range 2 {
		rep := recv(t, c)
		got[rep.Id] = rep.Status
	}
	if got[1] != wire.Status_STATUS_OK || got[3] != wire.Status_STATUS_OK {
		t.Fatalf("replies %v", got)
	}
	waitUntil(t, func() bool { return acctOf(s, 1000).reqBytes.Load() == 0 })
}

// Long polls and sessions of a uid are counted over all its connections.
func TestPerUIDLongPollsAndSessions(t *testing.T) {
	s := newTestServer(t, Config{Limits: Limits{MaxLongPollsPerUID: 3, MaxSessionsPerUID: 2}})
	c1, c2 := serveAs(t, s, 1000), serveAs(t, s, 1000)
	for i := range 3 {
		send(t, []*seqpacket.Conn{c1, c2}[i%2], uint64(10+i), genWatch(0, time.Hour))
	}
	waitUntil(t, func() bool { return acctOf(s, 1000).longPolls.Load() == 3 })
	if r := one(t, c2, 20, genWatch(0, time.Hour)); r.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(r.Message, "this user") {
		t.Fatalf("fourth watch of the uid: %v %q", r.Status, r.Message)
	}
	hash := &wire.Op{Op: &wire.Op_SessionOpen{SessionOpen: &wire.SessionOpen{Kind: wire.SessionKind_SESSION_KIND_HASH, Hash: wire.HashAlg_HASH_ALG_SHA256}}}
	if r := one(t, c1, 30, hash); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("session: %v", r.Status)
	}
	if r := one(t, c2, 31, hash); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("session: %v", r.Status)
	}
	if r := one(t, c2, 32, hash); r.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(r.Message, "this user") {
		t.Fatalf("third session of the uid: %v %q", r.Status, r.Message)
	}
	// Closing a connection gives back what it held.
	c1.Close()
	waitUntil(t, func() bool { return acctOf(s, 1000).sessions.Load() == 1 && acctOf(s, 1000).longPolls.Load() == 1 })
	if r := one(t, c2, 33, hash); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("session after the other connection closed: %v %q", r.Status, r.Message)
	}
}

// A request over the in-flight limits is refused before it is decoded:
// a flood of large batches costs the daemon a counter each, not a decode.
// Once under the limits, a malformed request is refused as malformed and
// counts as in flight no longer.
func TestInFlightRefusedBeforeDecoding(t *testing.T) {
	release := make(chan struct{})
	cfg := Config{Limits: Limits{MaxInFlightPerUID: 1}}
	cfg.heavyHook = func() { <-release }
	s := newTestServer(t, cfg)
	releaseOnce := sync.OnceFunc(func() { close(release) })
	t.Cleanup(releaseOnce) // before the server's shutdown, which waits for it
	c := serveAs(t, s, 1000)
	send(t, c, 1, rsaGen())
	waitUntil(t, func() bool { return acctOf(s, 1000).inFlight.Load() == 1 })
	malformed := []byte{0xff, 0xff, 0xff, 0xff}
	if err := c.Send(malformed); err != nil {
		t.Fatal(err)
	}
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || !strings.Contains(rep.Message, "in flight") {
		t.Fatalf("malformed request over the limit: %v %q", rep.Status, rep.Message)
	}
	releaseOnce()
	if rep := recv(t, c); rep.Id != 1 || rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("generation: %d %v %q", rep.Id, rep.Status, rep.Message)
	}
	waitUntil(t, func() bool { return acctOf(s, 1000).inFlight.Load() == 0 })
	if err := c.Send(malformed); err != nil {
		t.Fatal(err)
	}
	if rep := recv(t, c); rep.Status != wire.Status_STATUS_INVALID_ARGUMENT {
		t.Fatalf("malformed request under the limit: %v %q", rep.Status, rep.Message)
	}
	if n := acctOf(s, 1000).inFlight.Load(); n != 0 {
		t.Fatalf("%d requests in flight after a malformed one", n)
	}
	send(t, c, 3, ping("after"))
	if rep := recv(t, c); rep.Id != 3 || rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("ping after: %d %v %q", rep.Id, rep.Status, rep.Message)
	}
}

// Heavy work of an ordinary uid runs off one processor, so that one is
// always left to the threads that answer requests.
func TestShortenSliceLeavesOneCPU(t *testing.T) {
	var before unix.CPUSet
	if err := unix.SchedGetaffinity(0, &before); err != nil {
		t.Fatal(err)
	}
	if before.Count() < 2 {
		t.Skip("one processor: nothing to leave")
	}
	done := make(chan unix.CPUSet)
	go func() {
		shortenSlice()
		var set unix.CPUSet
		unix.SchedGetaffinity(0, &set)
		done <- set
	}()
	if got := <-done; got.Count() != before.Count()-1 {
		t.Fatalf("heavy work may run on %d of %d processors", got.Count(), before.Count())
	}
	var after unix.CPUSet
	unix.SchedGetaffinity(0, &after)
	if after.Count() != before.Count() {
		t.Fatalf("the test's own thread lost a processor: %d of %d", after.Count(), before.Count())
	}
}

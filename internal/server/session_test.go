package server

import (
	"bytes"
	"context"
	"errors"
	"os"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// testFront is the name the tests' front gives its sessions.
const testFront = "test-front"

// doSession opens a session of testFront for uid, closed at the end of
// the test.
func doSession(t *testing.T, s *Server, uid uint32) *Session {
	t.Helper()
	ss, err := s.NewSession(context.Background(), testFront, idOf(uid))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ss.Close)
	return ss
}

// idOf is an identity of uid, as a front would have it from the kernel
// (this process's pid, without a pidfd).
func idOf(uid uint32) Identity {
	return Identity{PID: int32(os.Getpid()), UID: uid, GID: uid, Pidfd: -1}
}

// do runs ops for id on ss, through Do, and fails the test on an error.
func do(t *testing.T, ss *Session, id Identity, reqID uint64, ops ...*wire.Op) *wire.Reply {
	t.Helper()
	rep, err := ss.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: reqID, Ops: ops})
	if err != nil {
		t.Fatal(err)
	}
	if rep.Id != reqID {
		t.Fatalf("reply to request %d, want %d", rep.Id, reqID)
	}
	return rep
}

func generateAES(name string) *wire.Op {
	return &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_AES256_GCM, Name: name}}}}
}

func encrypt(h uint32) *wire.Op {
	return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Plaintext: []byte("sixteen bytes ok")}}}
}

// A front other than the SOCK_SEQPACKET one drives the core through
// Session.Do, with no socket: the core authorizes each request by the
// identity the front gives it, records it with the front's name, and
// keeps the administrators' operations to administrators.
func TestSessionDoAuthorizesAndRecords(t *testing.T) {
	s, path := auditedServer(t, Limits{})
	alice, bob := idOf(1001), idOf(1002)
	sa, sb := doSession(t, s, alice.UID), doSession(t, s, bob.UID)

	r := do(t, sa, alice, 1, generateAES("alice-key"))
	if st := r.Results[0].Status; st != wire.Status_STATUS_OK {
		t.Fatalf("generate: %v %q", st, r.Results[0].Message)
	}
	h, keyID := r.Results[0].GetKey().GetHandle(), r.Results[0].GetKey().GetInfo().GetId()
	if r := do(t, sa, alice, 2, encrypt(h)); r.Results[0].Status != wire.Status_STATUS_OK || len(r.Results[0].Data) == 0 {
		t.Fatalf("encrypt by the owner: %v %q", r.Results[0].Status, r.Results[0].Message)
	}

	// Another uid's identity on the same session: the handle is the
	// session's, the key is not the caller's.
	if r := do(t, sa, bob, 3, encrypt(h)); r.Results[0].Status == wire.Status_STATUS_OK || len(r.Results[0].Data) != 0 {
		t.Fatalf("bob used alice's key through her session: %v", r.Results[0].Status)
	}
	// Nor may it open the key on a session of its own.
	open := &wire.Op{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Id{Id: keyID}}}}
	if r := do(t, sb, bob, 4, open); r.Results[0].Status == wire.Status_STATUS_OK {
		t.Fatalf("bob opened alice's key: %v", r.Results[0].Status)
	}
	// An administrators' operation, refused to a user.
	seal := &wire.Op{Op: &wire.Op_Seal{Seal: &wire.Seal{}}}
	if r := do(t, sb, bob, 5, seal); r.Results[0].Status != wire.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("seal by a user: %v", r.Results[0].Status)
	}
	// A request refused as a whole is answered, and recorded, too.
	rep, err := sb.Do(context.Background(), bob, &wire.Request{Version: wire.ProtocolVersion + 1, Id: 6, Ops: []*wire.Op{ping("x")}})
	if err != nil || rep.Status != wire.Status_STATUS_UNIMPLEMENTED {
		t.Fatalf("another protocol version: %v %v", rep.GetStatus(), err)
	}
	// A request from nobody the kernel named is refused.
	if r := do(t, sb, Identity{UID: 1002, GID: 1002, Pidfd: -1}, 7, ping("x")); r.Status != wire.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("no pid: %v", r.Status)
	}

	// Every request has its record, written before Do returned, naming
	// the front and the caller.
	want := map[uint64]struct {
		uid    uint32
		status string
	}{1: {1001, "OK"}, 2: {1001, "OK"}, 3: {1002, ""}, 4: {1002, ""}, 5: {1002, "PERMISSION_DENIED"}, 6: {1002, "UNIMPLEMENTED"}, 7: {0, "PERMISSION_DENIED"}}
	seen := map[uint64]bool{}
	for _, rec := range auditRecords(t, path) {
		w, ok := want[rec.Request]
		if !ok || rec.Caller.PID == 0 && rec.Request != 7 {
			continue
		}
		seen[rec.Request] = true
		if rec.Front != testFront {
			t.Errorf("request %d recorded with front %q, want %q", rec.Request, rec.Front, testFront)
		}
		if w.uid != 0 && rec.Caller.UID != w.uid {
			t.Errorf("request %d recorded for uid %d, want %d", rec.Request, rec.Caller.UID, w.uid)
		}
		switch {
		case w.status != "" && rec.Status != w.status:
			t.Errorf("request %d recorded as %s, want %s", rec.Request, rec.Status, w.status)
		case w.status == "" && rec.Status == "OK":
			t.Errorf("request %d recorded as OK", rec.Request)
		}
	}
	for id := range want {
		if !seen[id] {
			t.Errorf("request %d not recorded", id)
		}
	}
}

// The records of the SOCK_SEQPACKET front name no front, as before there
// were others.
func TestSeqpacketRecordsNameNoFront(t *testing.T) {
	s, path := auditedServer(t, Limits{})
	c := serveAs(t, s, 1001)
	if r := one(t, c, 42, ping("x")); r.Status != wire.Status_STATUS_OK {
		t.Fatal(r.Status)
	}
	c.Close()
	waitUntil(t, func() bool {
		for _, rec := range auditRecords(t, path) {
			if rec.Request == 42 {
				if rec.Front != "" {
					t.Fatalf("front %q", rec.Front)
				}
				return true
			}
		}
		return false
	})
}

// Sessions count against their opener's uid as connections do, and Close
// gives back what a session held; a request in flight counts against the
// uid's limit; a cancelled context stops a request that waits, and Do
// refuses requests once the session is closed.
func TestSessionLimitsCloseAndCancel(t *testing.T) {
	s := newTestServer(t, Config{Limits: Limits{MaxConnectionsPerUID: 2, MaxInFlightPerUID: 1}})
	const uid = 1003
	id := idOf(uid)
	s1 := doSession(t, s, uid)
	s2, err := s.NewSession(context.Background(), testFront, id)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.NewSession(context.Background(), testFront, id); err == nil {
		t.Fatal("a third session of the uid was opened over its limit of 2")
	}
	// Another uid is not held to this one's limit.
	doSession(t, s, uid+1)

	// A long poll holds the uid's only request in flight, until its
	// context is cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	type result struct {
		rep *wire.Reply
		err error
	}
	done := make(chan result, 1)
	go func() {
		rep, err := s1.Do(ctx, id, &wire.Request{Version: wire.ProtocolVersion, Id: 1, Ops: []*wire.Op{genWatch(s.gen.Current(), time.Hour)}})
		done <- result{rep, err}
	}()
	waitUntil(t, func() bool { return acctOf(s, uid).longPolls.Load() == 1 })
	if r := do(t, s2, id, 2, ping("x")); r.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED {
		t.Fatalf("second request in flight of the uid: %v %q", r.Status, r.Message)
	}
	start := time.Now()
	cancel()
	select {
	case res := <-done:
		if res.err != nil || res.rep.Results[0].Status == wire.Status_STATUS_OK {
			t.Fatalf("cancelled watch: %v %v", res.rep, res.err)
		}
		if d := time.Since(start); d > 2*time.Second {
			t.Fatalf("the cancelled watch returned after %v", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a cancelled context did not stop the watch")
	}
	if n := acctOf(s, uid).longPolls.Load(); n != 0 {
		t.Fatalf("%d long polls still counted", n)
	}
	if r := do(t, s2, id, 3, ping("x")); r.Status != wire.Status_STATUS_OK {
		t.Fatalf("request after the watch ended: %v %q", r.Status, r.Message)
	}

	// A session's handles and streaming sessions go with it; Close gives
	// its place back to the uid.
	hash := &wire.Op{Op: &wire.Op_SessionOpen{SessionOpen: &wire.SessionOpen{Kind: wire.SessionKind_SESSION_KIND_HASH, Hash: wire.HashAlg_HASH_ALG_SHA256}}}
	if r := do(t, s2, id, 4, hash); r.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("hash session: %v", r.Results[0].Status)
	}
	if n := acctOf(s, uid).sessions.Load(); n != 1 {
		t.Fatalf("%d streaming sessions counted, want 1", n)
	}
	s2.Close()
	s2.Close() // again: nothing more
	if n := acctOf(s, uid).sessions.Load(); n != 0 {
		t.Fatalf("%d streaming sessions counted after Close", n)
	}
	if _, err := s2.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: 5, Ops: []*wire.Op{ping("x")}}); !errors.Is(err, ErrSessionClosed) {
		t.Fatalf("Do after Close: %v", err)
	}
	s3, err := s.NewSession(context.Background(), testFront, id)
	if err != nil {
		t.Fatalf("a session after another closed: %v", err)
	}
	s3.Close()
	a := acctOf(s, uid)
	s.accts.mu.Lock()
	conns := a.conns
	s.accts.mu.Unlock()
	if conns != 1 {
		t.Fatalf("%d sessions counted for the uid, want 1", conns)
	}
}

// A front's name is a short word, and not the daemon's own front's.
func TestSessionFrontName(t *testing.T) {
	s := newTestServer(t, Config{})
	for _, name := range []string{"", "seqpacket", "Upper", "has space", "a\"quote", string(make([]byte, maxFrontName+1))} {
		if ss, err := s.NewSession(context.Background(), name, idOf(1001)); err == nil {
			ss.Close()
			t.Errorf("front name %q accepted", name)
		}
	}
}

// A request with no process behind it (pid 0) is refused, unless the
// front names the principal it comes from (a client certificate over
// mutual TLS): then it is made as the uid the front gives, and recorded
// with the principal.
func TestSessionDoPrincipal(t *testing.T) {
	s, path := auditedServer(t, Limits{})
	anon := Identity{UID: 1500, GID: 1500, Pidfd: -1}
	ss, err := s.NewSession(context.Background(), testFront, anon)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ss.Close)
	if r := do(t, ss, anon, 1, generateAES("k")); r.Status != wire.Status_STATUS_PERMISSION_DENIED {
		t.Fatalf("pid 0 without a principal: %v %q", r.Status, r.Message)
	}
	cert := anon
	cert.Principal = "uri:spiffe://example.org/app"
	if r := do(t, ss, cert, 2, generateAES("k")); r.Status != wire.Status_STATUS_OK || r.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("pid 0 with a principal: %v %v", r.Status, r.Results)
	}
	var found bool
	for _, r := range auditRecords(t, path) {
		if r.Op == "generate" && r.Status == "OK" {
			found = true
			if r.Caller.Principal != cert.Principal || r.Caller.UID != 1500 || r.Caller.PID != 0 {
				t.Errorf("recorded %+v", r.Caller)
			}
		}
	}
	if !found {
		t.Error("no record of the generation")
	}
}

// TestRequestContext: a request through Do has ended once its caller's
// context or its session's has, with no context made to tell; what waits
// on it gets one that ends with either, and after Do one that has ended.
func TestRequestContext(t *testing.T) {
	for _, end := range []string{"caller", "session"} {
		caller, cancelCaller := context.WithCancel(context.Background())
		session, cancelSession := context.WithCancel(context.Background())
		rc := &reqCtx{caller: caller, session: session}
		if rc.done() {
			t.Fatal("done before anything ended")
		}
		ctx := rc.get()
		if end == "caller" {
			cancelCaller()
		} else {
			cancelSession()
		}
		if !rc.done() {
			t.Errorf("%s ended: not done", end)
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Second):
			t.Fatalf("%s ended: the context made for waiting did not end", end)
		}
		rc.release()
		cancelCaller()
		cancelSession()
	}
	rc := &reqCtx{caller: context.Background(), session: context.Background()}
	rc.release()
	if rc.get().Err() == nil {
		t.Fatal("a context got after release has not ended")
	}
}

// TestDoCopiesResults: the results Do returns are the reply's own, whole
// (a key's info too), and do not change when the next request reuses
// what the first was carved from.
func TestDoCopiesResults(t *testing.T) {
	s := mustNew(t, Config{})
	ss := doSession(t, s, 1)
	id := idOf(1)
	rep := do(t, ss, id, 1, &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
		Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}})
	info := rep.Results[0].GetKey()
	if rep.Results[0].Status != wire.Status_STATUS_OK || info == nil || info.Handle == 0 {
		t.Fatalf("generate: %v", rep.Results[0])
	}
	h := info.Handle
	first := do(t, ss, id, 2, encrypt(h), ping("one"))
	ct := bytes.Clone(first.Results[0].Data)
	do(t, ss, id, 3, encrypt(h), ping("two"))
	if !bytes.Equal(first.Results[0].Data, ct) || string(first.Results[1].Data) != "one" || first.Results[0].KeyVersion != 1 {
		t.Fatalf("a reply changed after the next request: %v", first.Results)
	}
	if rep.Results[0].GetKey().GetHandle() != h {
		t.Fatal("the key's info was not copied")
	}
}

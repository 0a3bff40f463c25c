package keywarden

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// fakeDaemon is the daemon end of a Client's connection: the test reads
// each request and decides when and what to answer.
type fakeDaemon struct {
	t    *testing.T
	conn *seqpacket.Conn
	reqs chan *wire.Request
}

// newFakeClient returns a Client connected to a fakeDaemon, with the
// daemon's default limits.
func newFakeClient(t *testing.T) (*Client, *fakeDaemon) {
	t.Helper()
	a, b, err := seqpacket.Pair()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.SetRecvTimeout(recvSlice); err != nil {
		t.Fatal(err)
	}
	c := &Client{
		conn: a, pending: make(map[uint64]*call), sem: make(chan struct{}, wire.DefaultMaxInFlight),
		recvBuf: make([]byte, wire.DefaultMaxMessageBytes+1),
		limits: Limits{MaxMessageBytes: wire.DefaultMaxMessageBytes, MaxInFlight: wire.DefaultMaxInFlight,
			MaxBatchOps: wire.DefaultMaxBatchOps},
	}
	d := &fakeDaemon{t: t, conn: b, reqs: make(chan *wire.Request, 256)}
	go func() {
		buf := make([]byte, wire.DefaultMaxMessageBytes+1)
		for {
			n, err := b.Recv(buf)
			if err != nil {
				close(d.reqs)
				return
			}
			req := &wire.Request{}
			if err := req.UnmarshalVT(bytes.Clone(buf[:n])); err != nil {
				panic(err)
			}
			d.reqs <- req
		}
	}()
	t.Cleanup(func() { c.Close(); b.Close() })
	return c, d
}

// next returns the next request the client sent.
func (d *fakeDaemon) next() *wire.Request {
	d.t.Helper()
	select {
	case req, ok := <-d.reqs:
		if !ok {
			d.t.Fatal("the connection ended")
		}
		return req
	case <-time.After(10 * time.Second):
		d.t.Fatal("no request came")
		return nil
	}
}

// none checks that no request is waiting to be read.
func (d *fakeDaemon) none() {
	d.t.Helper()
	select {
	case req := <-d.reqs:
		d.t.Fatalf("unexpected request of %d operations", len(req.Ops))
	default:
	}
}

// echo answers req: each ping's payload comes back as its data, but a
// payload starting with "fail" is refused with PERMISSION_DENIED, and a
// MAC's tag is its data reversed.
func (d *fakeDaemon) echo(req *wire.Request) {
	d.t.Helper()
	rep := &wire.Reply{Version: wire.ProtocolVersion, Id: req.Id}
	for _, op := range req.Ops {
		res := &wire.Result{}
		switch o := op.GetOp().(type) {
		case *wire.Op_Ping:
			if bytes.HasPrefix(o.Ping.Payload, []byte("fail")) {
				res.Status, res.Message = wire.Status_STATUS_PERMISSION_DENIED, "refused "+string(o.Ping.Payload)
			} else {
				res.Data = o.Ping.Payload
			}
		case *wire.Op_Mac:
			tag := bytes.Clone(o.Mac.Data)
			for i, j := 0, len(tag)-1; i < j; i, j = i+1, j-1 {
				tag[i], tag[j] = tag[j], tag[i]
			}
			res.Data = tag
		default:
			res.Status = wire.Status_STATUS_UNIMPLEMENTED
		}
		rep.Results = append(rep.Results, res)
	}
	d.send(rep)
}

// refuse refuses req as a whole.
func (d *fakeDaemon) refuse(req *wire.Request, st wire.Status, msg string) {
	d.send(&wire.Reply{Version: wire.ProtocolVersion, Id: req.Id, Status: st, Message: msg})
}

func (d *fakeDaemon) send(rep *wire.Reply) {
	d.t.Helper()
	b, err := rep.MarshalVT()
	if err != nil {
		d.t.Fatal(err)
	}
	if err := d.conn.Send(b); err != nil {
		d.t.Fatal(err)
	}
}

// queued waits until n combined calls wait in c's queue.
func queued(t *testing.T, c *Client, n int) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		c.mu.Lock()
		got := len(c.queue)
		c.mu.Unlock()
		if got == n {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d calls queued, want %d", got, n)
		}
		time.Sleep(time.Millisecond)
	}
}

// ping runs one ping with payload through c.do, as Client.Ping does,
// and returns the echoed data.
func ping(ctx context.Context, c *Client, payload string) ([]byte, error) {
	return c.doData(ctx, "ping", &wire.Op{Op: &wire.Op_Ping{Ping: &wire.Ping{Payload: []byte(payload)}}})
}

type outcome struct {
	data []byte
	err  error
}

// fillWindow starts combineWindow pings and reads their requests, so that
// the next calls queue; it returns the requests and their calls' outcomes.
func fillWindow(t *testing.T, c *Client, d *fakeDaemon) ([]*wire.Request, chan outcome) {
	t.Helper()
	out := make(chan outcome, combineWindow)
	var reqs []*wire.Request
	for i := range combineWindow {
		go func() {
			b, err := ping(context.Background(), c, fmt.Sprint("window ", i))
			out <- outcome{b, err}
		}()
		req := d.next()
		if len(req.Ops) != 1 {
			t.Fatalf("a lone call went in a request of %d operations", len(req.Ops))
		}
		reqs = append(reqs, req)
	}
	return reqs, out
}

// A call on an idle connection goes out at once, alone, and gets its
// result.
func TestCombineLoneCallGoesAtOnce(t *testing.T) {
	c, d := newFakeClient(t)
	done := make(chan outcome, 1)
	go func() {
		b, err := ping(context.Background(), c, "alone")
		done <- outcome{b, err}
	}()
	req := d.next() // nothing else is sent: the call did not wait for company
	if len(req.Ops) != 1 || req.ExpectedGeneration != nil {
		t.Fatalf("request of %d operations, expected generation %v", len(req.Ops), req.ExpectedGeneration)
	}
	d.echo(req)
	if o := <-done; o.err != nil || string(o.data) != "alone" {
		t.Fatalf("got %q, %v", o.data, o.err)
	}
}

// Calls made while the connection's combined requests are in flight go
// together in one request when a reply frees a place, and each gets its
// own result or its own error.
func TestCombineQueuedCallsGoTogether(t *testing.T) {
	c, d := newFakeClient(t)
	window, wout := fillWindow(t, c, d)
	k := &Key{c: c, handle: 9, typ: HMACSHA256}

	const n = 12
	outs := make([]chan outcome, n)
	for i := range n {
		outs[i] = make(chan outcome, 1)
		go func() {
			var b []byte
			var err error
			switch {
			case i%4 == 3:
				b, err = k.MAC(context.Background(), []byte(fmt.Sprint("mac ", i)))
			case i%3 == 1:
				b, err = ping(context.Background(), c, fmt.Sprint("fail ", i))
			default:
				b, err = ping(context.Background(), c, fmt.Sprint("call ", i))
			}
			outs[i] <- outcome{b, err}
		}()
		queued(t, c, i+1) // in this order
	}
	d.none()
	d.echo(window[0])
	req := d.next()
	if len(req.Ops) != n {
		t.Fatalf("%d calls queued went in a request of %d operations, want one request", n, len(req.Ops))
	}
	d.echo(req)
	d.echo(window[1])
	for range combineWindow {
		if o := <-wout; o.err != nil {
			t.Fatal(o.err)
		}
	}
	for i := range n {
		o := <-outs[i]
		switch {
		case i%4 == 3:
			want := []byte(fmt.Sprint("mac ", i))
			for a, b := 0, len(want)-1; a < b; a, b = a+1, b-1 {
				want[a], want[b] = want[b], want[a]
			}
			if o.err != nil || !bytes.Equal(o.data, want) {
				t.Errorf("call %d: got %q, %v", i, o.data, o.err)
			}
		case i%3 == 1:
			var e *Error
			if !errors.As(o.err, &e) || e.Code != CodePermissionDenied || e.Op != "ping" || e.Message != fmt.Sprint("refused fail ", i) {
				t.Errorf("call %d: error %v, want its own permission denied", i, o.err)
			}
		default:
			if o.err != nil || string(o.data) != fmt.Sprint("call ", i) {
				t.Errorf("call %d: got %q, %v", i, o.data, o.err)
			}
		}
	}
}

// A call queued whose context ends returns at once and is never sent; a
// call whose request is sent and whose context ends returns, and the
// other calls of its request get their results.
func TestCombineCancel(t *testing.T) {
	c, d := newFakeClient(t)
	window, wout := fillWindow(t, c, d)

	ctxQ, cancelQ := context.WithCancel(context.Background())
	q := make(chan outcome, 1)
	go func() {
		b, err := ping(ctxQ, c, "cancelled while queued")
		q <- outcome{b, err}
	}()
	queued(t, c, 1)
	cancelQ()
	if o := <-q; !errors.Is(o.err, context.Canceled) {
		t.Fatalf("queued call cancelled: %v", o.err)
	}
	queued(t, c, 0)

	ctxS, cancelS := context.WithCancel(context.Background())
	s := make(chan outcome, 1)
	go func() {
		b, err := ping(ctxS, c, "cancelled once sent")
		s <- outcome{b, err}
	}()
	queued(t, c, 1)
	other := make(chan outcome, 1)
	go func() {
		b, err := ping(context.Background(), c, "neighbour")
		other <- outcome{b, err}
	}()
	queued(t, c, 2)
	d.echo(window[0])
	req := d.next()
	if len(req.Ops) != 2 || string(req.Ops[0].GetPing().Payload) != "cancelled once sent" {
		t.Fatalf("request of %d operations, first %q", len(req.Ops), req.Ops[0].GetPing().GetPayload())
	}
	cancelS()
	if o := <-s; !errors.Is(o.err, context.Canceled) {
		t.Fatalf("sent call cancelled: %v", o.err)
	}
	d.echo(req)
	if o := <-other; o.err != nil || string(o.data) != "neighbour" {
		t.Fatalf("neighbour of a cancelled call: %q, %v", o.data, o.err)
	}
	d.echo(window[1])
	for range combineWindow {
		if o := <-wout; o.err != nil {
			t.Fatal(o.err)
		}
	}
	// The connection still works, for a lone call too.
	go func() { d.echo(d.next()) }()
	if b, err := ping(context.Background(), c, "after"); err != nil || string(b) != "after" {
		t.Fatalf("after: %q, %v", b, err)
	}
}

// Only calls expecting the same generation share a request, and a
// refusal of the whole request reaches each of its calls.
func TestCombineGenerations(t *testing.T) {
	c, d := newFakeClient(t)
	window, wout := fillWindow(t, c, d)
	gen7 := WithGeneration(context.Background(), 7)
	type tc struct {
		ctx     context.Context
		payload string
	}
	calls := []tc{{gen7, "p"}, {gen7, "q"}, {context.Background(), "r"}, {gen7, "s"}}
	outs := make([]chan outcome, len(calls))
	for i, x := range calls {
		outs[i] = make(chan outcome, 1)
		go func() {
			b, err := ping(x.ctx, c, x.payload)
			outs[i] <- outcome{b, err}
		}()
		queued(t, c, i+1)
	}
	d.echo(window[0])
	pq := d.next()
	if len(pq.Ops) != 2 || pq.ExpectedGeneration == nil || *pq.ExpectedGeneration != 7 {
		t.Fatalf("first request: %d operations, generation %v", len(pq.Ops), pq.ExpectedGeneration)
	}
	d.echo(window[1])
	r := d.next()
	if len(r.Ops) != 1 || r.ExpectedGeneration != nil || string(r.Ops[0].GetPing().Payload) != "r" {
		t.Fatalf("second request: %d operations, generation %v", len(r.Ops), r.ExpectedGeneration)
	}
	d.refuse(pq, wire.Status_STATUS_GENERATION_CHANGED, "the machine's generation changed")
	s := d.next()
	if len(s.Ops) != 1 || s.ExpectedGeneration == nil || string(s.Ops[0].GetPing().Payload) != "s" {
		t.Fatalf("third request: %d operations, generation %v", len(s.Ops), s.ExpectedGeneration)
	}
	d.echo(r)
	d.echo(s)
	for i, x := range calls {
		o := <-outs[i]
		if x.payload == "p" || x.payload == "q" {
			var e *Error
			if !errors.As(o.err, &e) || e.Code != CodeGenerationChanged || e.Op != "ping" {
				t.Errorf("%s: %v, want generation changed", x.payload, o.err)
			}
			continue
		}
		if o.err != nil || string(o.data) != x.payload {
			t.Errorf("%s: %q, %v", x.payload, o.data, o.err)
		}
	}
	for range combineWindow {
		<-wout
	}
}

// Combined requests stay within the size the daemon's reply budget is
// sure to execute in full: many calls queued go in several requests.
func TestCombineRequestsStayWithinLimits(t *testing.T) {
	c, d := newFakeClient(t)
	window, wout := fillWindow(t, c, d)
	const n, size = 40, 3000
	outs := make(chan outcome, n)
	for i := range n {
		go func() {
			p := fmt.Sprintf("%04d", i) + string(bytes.Repeat([]byte{'x'}, size-4))
			b, err := ping(context.Background(), c, p)
			if err == nil && string(b) != p {
				err = fmt.Errorf("call %d got another's data", i)
			}
			outs <- outcome{b, err}
		}()
	}
	queued(t, c, n)
	for _, w := range window {
		d.echo(w)
	}
	got := 0
	for got < n {
		req := d.next()
		req2, rep := 0, 0
		for _, op := range req.Ops {
			r, b, ok := combineSizes(op)
			if !ok {
				t.Fatal("an operation that is not combined")
			}
			req2 += r
			rep += b
		}
		if len(req.Ops) < 2 || req2 > c.combinedLimit() || rep > c.combinedLimit() {
			t.Fatalf("request of %d operations, %d bytes, reply bound %d, limit %d", len(req.Ops), req2, rep, c.combinedLimit())
		}
		got += len(req.Ops)
		d.echo(req)
	}
	for range n {
		if o := <-outs; o.err != nil {
			t.Fatal(o.err)
		}
	}
	for range combineWindow {
		<-wout
	}
}

// When the connection ends, every call, queued or sent, fails.
func TestCombineConnectionEnds(t *testing.T) {
	c, d := newFakeClient(t)
	_, wout := fillWindow(t, c, d)
	outs := make(chan outcome, 5)
	for i := range 5 {
		go func() {
			b, err := ping(context.Background(), c, fmt.Sprint(i))
			outs <- outcome{b, err}
		}()
	}
	queued(t, c, 5)
	d.conn.Close()
	for range 5 + combineWindow {
		var o outcome
		select {
		case o = <-outs:
		case o = <-wout:
		}
		if o.err == nil || CodeOf(o.err) != CodeUnavailable {
			t.Fatalf("call on a closed connection: %q, %v", o.data, o.err)
		}
	}
	if _, err := ping(context.Background(), c, "later"); err == nil {
		t.Fatal("a later call succeeded")
	}
}

// The results of one reply share its buffer: appending to one must not
// write into the next.
func TestCombinedResultsDoNotOverlap(t *testing.T) {
	rep := &wire.Reply{Version: wire.ProtocolVersion, Id: 1, Results: []*wire.Result{
		{Data: []byte("aaaa")}, {Data: []byte("bbbb")}}}
	b, err := rep.MarshalVT()
	if err != nil {
		t.Fatal(err)
	}
	got := &wire.Reply{}
	if err := got.UnmarshalVTUnsafe(b); err != nil {
		t.Fatal(err)
	}
	m0, m1 := &call{opName: "ping"}, &call{opName: "ping"}
	deliverLocked(&call{members: []*call{m0, m1}}, got)
	grown := append(m0.res.GetData(), "XXXXXXXX"...) // as long as what follows it
	if string(grown) != "aaaaXXXXXXXX" || string(m1.res.GetData()) != "bbbb" {
		t.Fatalf("appending to one result changed the next: %q", m1.res.GetData())
	}
}

package transit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// clientConn is one HTTP connection: one core session, opened with the
// identity of the process that connected. Every request of the connection
// is made with it.
type clientConn struct {
	f  *Front
	ss *server.Session
	// id is the connecting process as the kernel saw it at accept; its
	// pidfd belongs to ss and is open until ss is closed.
	id      server.Identity
	nextReq atomic.Uint64
	once    sync.Once

	// mu guards handles; never held across a request to the core.
	mu sync.Mutex
	// handles are the caller's keys open on ss, by name.
	handles map[string]openKey
}

// openKey is a key open on the connection's session.
type openKey struct {
	h   uint32
	typ wire.KeyType
}

// maxHandles bounds the keys a connection keeps open; past it, they are
// all closed and opened again as used.
const maxHandles = 256

func newClientConn(f *Front, ss *server.Session, id server.Identity) *clientConn {
	return &clientConn{f: f, ss: ss, id: id, handles: map[string]openKey{}}
}

func (c *clientConn) close() { c.once.Do(c.ss.Close) }

func (c *clientConn) reqID() uint64 { return c.nextReq.Add(1) }

// coreError is a request or an operation the core refused or failed: its
// status and the message the core gives clients (the audit log has the
// precise reason).
type coreError struct {
	status wire.Status
	msg    string
}

func (e *coreError) Error() string { return e.msg }

// errSession: the request was not taken (the session is closed).
var errSession = errors.New("the connection's session is closed")

// do runs ops in one request of the core and returns their results; a
// request refused as a whole is a *coreError.
func (c *clientConn) do(ctx context.Context, ops []*wire.Op) ([]*wire.Result, error) {
	rep, err := c.ss.Do(ctx, c.id, &wire.Request{Version: wire.ProtocolVersion, Id: c.reqID(), Ops: ops})
	if err != nil {
		return nil, errSession
	}
	if rep.Status != wire.Status_STATUS_OK {
		return nil, &coreError{status: rep.Status, msg: rep.Message}
	}
	if len(rep.Results) != len(ops) {
		return nil, &coreError{status: wire.Status_STATUS_INTERNAL, msg: "the core gave no result"}
	}
	return rep.Results, nil
}

// do1 runs one operation; a failed one is a *coreError.
func (c *clientConn) do1(ctx context.Context, op *wire.Op) (*wire.Result, error) {
	rs, err := c.do(ctx, []*wire.Op{op})
	if err != nil {
		return nil, err
	}
	if r := rs[0]; r.Status != wire.Status_STATUS_OK {
		return r, &coreError{status: r.Status, msg: r.Message}
	}
	return rs[0], nil
}

// errNoKey is the answer for a name that opens no key of the caller's.
type errNoKey struct{ name string }

func (e errNoKey) Error() string { return fmt.Sprintf("key %q not found", e.name) }

// open returns the handle of the caller's key named name, opened on the
// connection's session the first time it is used.
func (c *clientConn) open(ctx context.Context, name string) (openKey, *wire.KeyInfo, error) {
	c.mu.Lock()
	k, ok := c.handles[name]
	c.mu.Unlock()
	if ok {
		return k, nil, nil
	}
	return c.reopen(ctx, name)
}

// reopen opens name again (its handle is dropped first, if any).
func (c *clientConn) reopen(ctx context.Context, name string) (openKey, *wire.KeyInfo, error) {
	c.forget(ctx, name)
	r, err := c.do1(ctx, &wire.Op{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Name{Name: &wire.NameRef{Name: name}}}}})
	if err != nil {
		var ce *coreError
		if errors.As(err, &ce) && ce.status == wire.Status_STATUS_NOT_FOUND {
			return openKey{}, nil, errNoKey{name}
		}
		return openKey{}, nil, err
	}
	kr := r.GetKey()
	c.mu.Lock()
	var drop []uint32
	if len(c.handles) >= maxHandles {
		for _, k := range c.handles {
			drop = append(drop, k.h)
		}
		clear(c.handles)
	}
	k := openKey{h: kr.GetHandle(), typ: kr.GetInfo().GetType()}
	c.handles[name] = k
	c.mu.Unlock()
	c.closeHandles(ctx, drop)
	return k, kr.GetInfo(), nil
}

// forget closes name's handle, if it is open.
func (c *clientConn) forget(ctx context.Context, name string) {
	c.mu.Lock()
	k, ok := c.handles[name]
	delete(c.handles, name)
	c.mu.Unlock()
	if ok {
		c.closeHandles(ctx, []uint32{k.h})
	}
}

func (c *clientConn) closeHandles(ctx context.Context, hs []uint32) {
	if len(hs) == 0 {
		return
	}
	ops := make([]*wire.Op, len(hs))
	for i, h := range hs {
		ops[i] = &wire.Op{Op: &wire.Op_Close{Close: &wire.Close{Handle: h}}}
	}
	c.do(ctx, ops)
}

// withKey runs ops, made by mk for the handle of the caller's key named
// name, in requests of at most maxOps operations and maxBytes bytes
// each, and returns their results. A handle the core no longer knows
// (the key was deleted, and maybe made again, on another connection) is
// opened again once.
func (c *clientConn) withKey(ctx context.Context, name string, n int, mk func(k openKey, i int) *wire.Op) ([]*wire.Result, *wire.KeyInfo, error) {
	k, info, err := c.open(ctx, name)
	if err != nil {
		return nil, nil, err
	}
	for attempt := 0; ; attempt++ {
		rs, err := c.run(ctx, n, func(i int) *wire.Op { return mk(k, i) })
		if err != nil {
			return nil, nil, err
		}
		if attempt == 0 && info == nil && staleHandle(rs) {
			if k, info, err = c.reopen(ctx, name); err != nil {
				return nil, nil, err
			}
			continue
		}
		return rs, info, nil
	}
}

// staleHandle reports whether results show a handle the core does not
// know, or a key destroyed since it was opened.
func staleHandle(rs []*wire.Result) bool {
	for _, r := range rs {
		if r.Status == wire.Status_STATUS_NOT_FOUND && (r.Message == "no such handle" || r.Message == "key destroyed" || r.Message == "the key has been destroyed") {
			return true
		}
	}
	return false
}

// run runs n operations made by mk in as few requests as the core's
// limits allow.
func (c *clientConn) run(ctx context.Context, n int, mk func(i int) *wire.Op) ([]*wire.Result, error) {
	lim := c.f.cfg.Server.Limits()
	maxOps, maxBytes := lim.MaxBatchOps, lim.MaxMessageBytes/2
	out := make([]*wire.Result, 0, n)
	var ops []*wire.Op
	size := 0
	flush := func() error {
		if len(ops) == 0 {
			return nil
		}
		rs, err := c.do(ctx, ops)
		if err != nil {
			return err
		}
		out = append(out, rs...)
		ops, size = ops[:0], 0
		return nil
	}
	for i := range n {
		op := mk(i)
		s := op.SizeVT() + 8
		if len(ops) > 0 && (len(ops) >= maxOps || size+s > maxBytes) {
			if err := flush(); err != nil {
				return nil, err
			}
		}
		ops = append(ops, op)
		size += s
	}
	if err := flush(); err != nil {
		return nil, err
	}
	return out, nil
}

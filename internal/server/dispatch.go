package server

import (
	"slices"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// isHeavy reports whether a request must run concurrently rather than
// inline: RSA key generation takes from tens of milliseconds to seconds,
// and an Argon2id operation waits for the memory budget and a worker.
// Such a request may finish after requests sent later.
func isHeavy(req *wire.Request) bool { return heavyOps(req.Ops) }

// heavyOps is isHeavy of a request's ops.
func heavyOps(ops []*wire.Op) bool {
	for _, op := range ops {
		if runsApart(op) {
			return true
		}
	}
	return false
}

// hasKDF reports whether one of req's operations runs Argon2id.
func hasKDF(req *wire.Request) bool {
	return slices.ContainsFunc(req.Ops, isKDF)
}

// heavyClassOf says which slots op must wait for, if any (peruid.go): RSA
// key generation, and the rotation of an RSA key (which makes a new one),
// keep a processor busy for long; other operations that write the store
// wait for its commits. Argon2id operations wait in the KDF supervisor's
// queue instead. Every such operation makes its request run concurrently
// (isHeavy), never on the connection's own goroutine.
func (ss *Session) heavyClassOf(r *opRow, op *wire.Op) (heavyClass, bool) {
	if r == nil {
		return 0, false
	}
	if isRSAGenerate(op) {
		return heavyCPU, true
	}
	switch o := op.GetOp().(type) {
	case *wire.Op_Rotate:
		if obj, err := ss.object(o.Rotate.GetHandle()); err == nil && obj.Spec.Family == key.FamilyRSA {
			return heavyCPU, true
		}
	}
	if r.writesStore(op) && r.exec != execKDF {
		return heavyStore, true
	}
	return 0, false
}

var (
	errNoOp        = wire.Errorf(wire.Status_STATUS_UNIMPLEMENTED, "unknown operation")
	errBadHandle   = wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no such handle")
	errBadSession  = wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no such session")
	errConnClosing = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the connection is closing")
	errHungUp      = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "not executed: the client hung up")
)

// dispatch runs one operation. It returns either data, the operation's
// bytes output (nil for none), or full, a complete result. Errors are
// *wire.Error unless a bug. Data-path operations also set fields of out
// (the key version).
//
// Aliasing: the byte and string fields of op may point into the
// connection's receive buffer, which is overwritten by the next message.
// Nothing may keep them beyond the operation without copying: key names
// (create), imported key bytes (opImport). Results may alias them (the
// reply is encoded before the buffer is reused).
func (ss *Session) dispatch(op *wire.Op, id Identity, a *arena, out *wire.Result) (data []byte, full *wire.Result, err error) {
	return ss.dispatchRow(rowOf(op), op, id, a, out)
}

// dispatchRow is dispatch with op's row (nil: none) already found.
func (ss *Session) dispatchRow(r *opRow, op *wire.Op, id Identity, a *arena, out *wire.Result) (data []byte, full *wire.Result, err error) {
	if r == nil {
		return nil, nil, errNoOp
	}
	if err := ss.s.checkAccess(r, id); err != nil {
		return nil, nil, err
	}
	return r.run(ss, op, id, a, out)
}

// checkAccess applies the rule of r's access that does not depend on a
// key: the administrators' operations are refused to anyone else here,
// before they run. Keys' owners and ACLs are checked by the operations,
// which know the key (authorized).
func (s *Server) checkAccess(r *opRow, id Identity) error {
	switch r.who {
	case accessAdmin:
		return s.roles.Load().CheckAdmin(id.caller()).Err()
	case accessGenerationAdmin:
		return s.roles.Load().CheckBump(id.caller()).Err()
	}
	return nil
}

// encryptOverhead is what encryption with m adds to a plaintext at most:
// AES-GCM's nonce and tag, or an RSA block.
func encryptOverhead(m *mech.Key) int {
	if m.Spec().Family == key.FamilyRSA {
		return 512
	}
	return 12 + 16
}

// ok is an empty successful result.
func ok() *wire.Result { return &wire.Result{} }

func dataResult(b []byte) *wire.Result { return &wire.Result{Data: b} }

// object returns the key object behind a handle.
func (ss *Session) object(h uint32) (*keystore.Object, error) {
	ss.mu.Lock()
	o, found := ss.handles[h]
	ss.mu.Unlock()
	if !found {
		return nil, errBadHandle
	}
	return o, nil
}

// authorized returns the object behind h if id may perform act on it.
// Using or exporting a key is also refused to a program the key does not
// allow (checkProgram).
func (ss *Session) authorized(h uint32, id Identity, act policy.Action, need key.Usage) (*keystore.Object, error) {
	o, err := ss.object(h)
	if err != nil {
		return nil, err
	}
	if err := policy.Authorize(id.caller(), o.Policy(), act, need).Err(); err != nil {
		return nil, err
	}
	if act == policy.Use || act == policy.Export {
		if err := ss.checkProgram(o, id); err != nil {
			return nil, err
		}
	}
	return o, nil
}

// addHandle gives o a handle on this connection.
func (ss *Session) addHandle(o *keystore.Object) (uint32, error) {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		return 0, errConnClosing
	}
	if max := ss.s.lims().MaxHandles; len(ss.handles) >= max {
		return 0, handleLimit(max)
	}
	for {
		ss.nextHandle++
		if ss.nextHandle == 0 {
			continue
		}
		if _, used := ss.handles[ss.nextHandle]; !used {
			break
		}
	}
	ss.handles[ss.nextHandle] = o
	return ss.nextHandle, nil
}

// roomForHandle fails early, before a key is made, when no handle is left.
func (ss *Session) roomForHandle() error {
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if max := ss.s.lims().MaxHandles; len(ss.handles) >= max {
		return handleLimit(max)
	}
	return nil
}

func handleLimit(n int) error {
	return wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too many open handles on this connection (limit %d)", n)
}

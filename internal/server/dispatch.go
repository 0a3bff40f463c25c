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
func isHeavy(req *wire.Request) bool {
	for _, op := range req.Ops {
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

// runsApart reports whether op runs without a compute slot of its uid
// (peruid.go): it spends its time waiting (for a worker, the store, a
// generation change), or computes in a heavy slot (heavyClassOf).
func runsApart(op *wire.Op) bool {
	return isKDF(op) || isLongPoll(op) || writesStore(op) || isRSAGenerate(op)
}

// isRSAGenerate reports whether op generates an RSA key.
func isRSAGenerate(op *wire.Op) bool {
	g, ok := op.Op.(*wire.Op_Generate)
	if !ok || g.Generate.GetTemplate() == nil {
		return false
	}
	s := key.Lookup(g.Generate.Template.Type)
	return s != nil && s.Family == key.FamilyRSA
}

// heavyClassOf says which slots op must wait for, if any (peruid.go): RSA
// key generation, and the rotation of an RSA key (which makes a new one),
// keep a processor busy for long; other operations that write the store
// wait for its commits. Argon2id operations wait in the KDF supervisor's
// queue instead. Every such operation makes its request run concurrently
// (isHeavy), never on the connection's own goroutine.
func (cn *conn) heavyClassOf(op *wire.Op) (heavyClass, bool) {
	if isRSAGenerate(op) {
		return heavyCPU, true
	}
	switch o := op.GetOp().(type) {
	case *wire.Op_Rotate:
		if obj, err := cn.object(o.Rotate.GetHandle()); err == nil && obj.Spec.Family == key.FamilyRSA {
			return heavyCPU, true
		}
	}
	if writesStore(op) && !isKDF(op) {
		return heavyStore, true
	}
	return 0, false
}

// writesStore reports whether op may wait for the store (a durable write
// and its fsync, a master-key derivation, a backup): run concurrently, such
// operations of pipelined requests share their fsyncs.
func writesStore(op *wire.Op) bool {
	switch o := op.GetOp().(type) {
	case *wire.Op_Generate:
		return !o.Generate.GetTemplate().GetEphemeral()
	case *wire.Op_Import:
		return !o.Import.GetTemplate().GetEphemeral()
	case *wire.Op_Derive:
		return !o.Derive.GetTemplate().GetEphemeral()
	case *wire.Op_Unwrap:
		return !o.Unwrap.GetTemplate().GetEphemeral()
	case *wire.Op_Wrap:
		return true // the first wrap of a key records that it left the daemon
	case *wire.Op_Destroy, *wire.Op_SetAttributes, *wire.Op_SetAcl, *wire.Op_Rotate, *wire.Op_SetLifecycle,
		*wire.Op_Init, *wire.Op_Unseal, *wire.Op_Seal, *wire.Op_MasterRotate, *wire.Op_Backup, *wire.Op_Restore:
		return true
	}
	return false
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
func (cn *conn) dispatch(op *wire.Op, id Identity, a *arena, out *wire.Result) (data []byte, full *wire.Result, err error) {
	switch o := op.GetOp().(type) {
	case *wire.Op_Encrypt:
		data, err = cn.opEncrypt(o.Encrypt, id, a, out)
		return data, nil, err
	case *wire.Op_Decrypt:
		data, err = cn.opDecrypt(o.Decrypt, id, a, out)
		return data, nil, err
	case *wire.Op_Sign:
		data, err = cn.opSign(o.Sign, id, out)
		return data, nil, err
	case *wire.Op_Verify:
		return nil, nil, cn.opVerify(o.Verify, id, out)
	case *wire.Op_Mac:
		data, err = cn.opMAC(o.Mac, id, a, out)
		return data, nil, err
	case *wire.Op_MacVerify:
		return nil, nil, cn.opMACVerify(o.MacVerify, id, out)
	case *wire.Op_DataKey:
		full, err = cn.opDataKey(o.DataKey, id, a)
		return nil, full, err
	case *wire.Op_Hash:
		data, err = mech.Hash(o.Hash.Alg, o.Hash.Data, a.take(64))
		return data, nil, err
	case *wire.Op_Ping:
		return o.Ping.Payload, nil, nil
	case *wire.Op_Status:
		return nil, cn.opStatus(id), nil
	}
	if isGenerationOp(op) {
		full, err = cn.dispatchGeneration(op, id, a)
		return nil, full, err
	}
	full, err = cn.dispatchManagement(op, id)
	return nil, full, err
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

// dispatchManagement runs the operations that are not on the data path.
func (cn *conn) dispatchManagement(op *wire.Op, id Identity) (*wire.Result, error) {
	switch o := op.GetOp().(type) {
	case *wire.Op_Generate:
		return cn.opGenerate(o.Generate, id)
	case *wire.Op_Import:
		return cn.opImport(o.Import, id)
	case *wire.Op_Open:
		return cn.opOpen(o.Open, id)
	case *wire.Op_Close:
		return cn.opClose(o.Close.Handle)
	case *wire.Op_List:
		return cn.opList(o.List, id)
	case *wire.Op_Info:
		return cn.opInfo(o.Info.Handle, id)
	case *wire.Op_Export:
		return cn.opExport(o.Export, id)
	case *wire.Op_PublicKey:
		return cn.opPublicKey(o.PublicKey, id)
	case *wire.Op_Destroy:
		return cn.opDestroy(o.Destroy.Handle, id)
	case *wire.Op_SetAttributes:
		return cn.opSetAttributes(o.SetAttributes, id)
	case *wire.Op_SetAcl:
		return cn.opSetACL(o.SetAcl, id)
	case *wire.Op_Derive:
		return cn.opDerive(o.Derive, id)
	case *wire.Op_SessionOpen:
		return cn.opSessionOpen(o.SessionOpen, id)
	case *wire.Op_SessionUpdate:
		return cn.opSessionUpdate(o.SessionUpdate, id)
	case *wire.Op_SessionFinal:
		return cn.opSessionFinal(o.SessionFinal, id)
	case *wire.Op_SessionAbort:
		return cn.opSessionAbort(o.SessionAbort.Session)
	case *wire.Op_DerivePassphrase:
		return cn.opDerivePassphrase(o.DerivePassphrase, id)
	case *wire.Op_PasswordHash:
		return cn.opPasswordHash(o.PasswordHash, id)
	case *wire.Op_PasswordVerify:
		return cn.opPasswordVerify(o.PasswordVerify, id)
	case *wire.Op_KdfCalibrate:
		return cn.opKdfCalibrate(o.KdfCalibrate, id)
	case *wire.Op_Init:
		return cn.opInit(o.Init, id)
	case *wire.Op_Unseal:
		return cn.opUnseal(o.Unseal, id)
	case *wire.Op_Seal:
		return cn.opSeal(id)
	case *wire.Op_MasterRotate:
		return cn.opMasterRotate(o.MasterRotate, id)
	case *wire.Op_Rotate:
		return cn.opRotate(o.Rotate, id)
	case *wire.Op_SetLifecycle:
		return cn.opSetLifecycle(o.SetLifecycle, id)
	case *wire.Op_Backup:
		return cn.opBackup(o.Backup, id)
	case *wire.Op_Restore:
		return cn.opRestore(o.Restore, id)
	case *wire.Op_Wrap:
		return cn.opWrap(o.Wrap, id)
	case *wire.Op_Unwrap:
		return cn.opUnwrap(o.Unwrap, id)
	case *wire.Op_Rewrap:
		return cn.opRewrap(o.Rewrap, id)
	}
	return nil, errNoOp
}

// object returns the key object behind a handle.
func (cn *conn) object(h uint32) (*keystore.Object, error) {
	cn.mu.Lock()
	o, found := cn.handles[h]
	cn.mu.Unlock()
	if !found {
		return nil, errBadHandle
	}
	return o, nil
}

// authorized returns the object behind h if id may perform act on it.
func (cn *conn) authorized(h uint32, id Identity, act policy.Action, need key.Usage) (*keystore.Object, error) {
	o, err := cn.object(h)
	if err != nil {
		return nil, err
	}
	if err := policy.Authorize(id.caller(), o.Policy(), act, need).Err(); err != nil {
		return nil, err
	}
	return o, nil
}

// addHandle gives o a handle on this connection.
func (cn *conn) addHandle(o *keystore.Object) (uint32, error) {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.closed {
		return 0, errConnClosing
	}
	if len(cn.handles) >= cn.s.limits.MaxHandles {
		return 0, handleLimit(cn.s.limits.MaxHandles)
	}
	for {
		cn.nextHandle++
		if cn.nextHandle == 0 {
			continue
		}
		if _, used := cn.handles[cn.nextHandle]; !used {
			break
		}
	}
	cn.handles[cn.nextHandle] = o
	return cn.nextHandle, nil
}

// roomForHandle fails early, before a key is made, when no handle is left.
func (cn *conn) roomForHandle() error {
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if len(cn.handles) >= cn.s.limits.MaxHandles {
		return handleLimit(cn.s.limits.MaxHandles)
	}
	return nil
}

func handleLimit(n int) error {
	return wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too many open handles on this connection (limit %d)", n)
}

package server

import (
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
		if isKDF(op) {
			return true
		}
		if g, ok := op.Op.(*wire.Op_Generate); ok && g.Generate.GetTemplate() != nil {
			if s := key.Lookup(g.Generate.Template.Type); s != nil && s.Family == key.FamilyRSA {
				return true
			}
		}
	}
	return false
}

var (
	errNoOp        = wire.Errorf(wire.Status_STATUS_UNIMPLEMENTED, "unknown operation")
	errBadHandle   = wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no such handle")
	errBadSession  = wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no such session")
	errConnClosing = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the connection is closing")
)

// dispatch runs one operation. It returns either data, the operation's
// bytes output (nil for none), or full, a complete result. Errors are
// *wire.Error unless a bug.
//
// Aliasing: the byte and string fields of op may point into the
// connection's receive buffer, which is overwritten by the next message.
// Nothing may keep them beyond the operation without copying: key names
// (create), imported key bytes (opImport). Results may alias them (the
// reply is encoded before the buffer is reused).
func (cn *conn) dispatch(op *wire.Op, id Identity, a *arena) (data []byte, full *wire.Result, err error) {
	switch o := op.GetOp().(type) {
	case *wire.Op_Encrypt:
		e := o.Encrypt
		return cn.withKey(e.Handle, id, key.Encrypt, func(m *mech.Key) ([]byte, error) {
			return m.Encrypt(e.Plaintext, e.Aad, e.Hash, a.take(len(e.Plaintext)+encryptOverhead(m)))
		})
	case *wire.Op_Decrypt:
		dc := o.Decrypt
		return cn.withKey(dc.Handle, id, key.Decrypt, func(m *mech.Key) ([]byte, error) {
			return m.Decrypt(dc.Ciphertext, dc.Aad, dc.Hash, a.take(len(dc.Ciphertext)))
		})
	case *wire.Op_Sign:
		s := o.Sign
		return cn.withKey(s.Handle, id, key.Sign, func(m *mech.Key) ([]byte, error) {
			return m.Sign(mech.SignParams{Hash: s.Hash, Prehashed: s.Prehashed, Padding: s.Padding}, s.Data)
		})
	case *wire.Op_Verify:
		v := o.Verify
		return cn.withKey(v.Handle, id, key.Verify, func(m *mech.Key) ([]byte, error) {
			return nil, m.Verify(mech.SignParams{Hash: v.Hash, Prehashed: v.Prehashed, Padding: v.Padding}, v.Data, v.Signature)
		})
	case *wire.Op_Mac:
		return cn.withKey(o.Mac.Handle, id, key.Sign, func(m *mech.Key) ([]byte, error) {
			return m.MAC(o.Mac.Data, a.take(64))
		})
	case *wire.Op_MacVerify:
		return cn.withKey(o.MacVerify.Handle, id, key.Verify, func(m *mech.Key) ([]byte, error) {
			return nil, m.VerifyMAC(o.MacVerify.Data, o.MacVerify.Tag)
		})
	case *wire.Op_Hash:
		data, err = mech.Hash(o.Hash.Alg, o.Hash.Data, a.take(64))
		return data, nil, err
	case *wire.Op_Ping:
		return o.Ping.Payload, nil, nil
	case *wire.Op_Status:
		return nil, cn.opStatus(id), nil
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

// withKey authorizes a usage of the key behind h and runs fn with its
// material.
func (cn *conn) withKey(h uint32, id Identity, need key.Usage, fn func(*mech.Key) ([]byte, error)) ([]byte, *wire.Result, error) {
	o, err := cn.authorized(h, id, policy.Use, need)
	if err != nil {
		return nil, nil, err
	}
	var out []byte
	err = o.Use(func(m *mech.Key) error {
		var err error
		out, err = fn(m)
		return err
	})
	return out, nil, err
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

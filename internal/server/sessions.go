package server

import (
	"sync"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// session is one streaming computation. Keyed sessions re-check the
// caller's right at every step, since the identity is per message, and
// run under the key's Use, so a destroyed key ends them.
type session struct {
	// mu serializes use of the stream: a request that runs concurrently
	// (see isHeavy) may touch a session another request is using.
	mu     sync.Mutex
	kind   wire.SessionKind
	obj    *keystore.Object // nil for HASH
	need   key.Usage
	stream mech.Stream
	ended  bool   // under mu: the stream is destroyed
	gen    uint64 // the machine generation it was opened in
}

func (cn *conn) opSessionOpen(so *wire.SessionOpen, id Identity) (*wire.Result, error) {
	ss := &session{kind: so.Kind, gen: cn.s.gen.Current()}
	params := mech.SignParams{Hash: so.Hash, Padding: so.Padding}
	var err error
	switch so.Kind {
	case wire.SessionKind_SESSION_KIND_HASH:
		ss.stream, err = mech.NewHashStream(so.Hash)
	case wire.SessionKind_SESSION_KIND_MAC, wire.SessionKind_SESSION_KIND_SIGN:
		ss.need = key.Sign
	case wire.SessionKind_SESSION_KIND_MAC_VERIFY, wire.SessionKind_SESSION_KIND_VERIFY:
		ss.need = key.Verify
	default:
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unknown session kind")
	}
	if ss.need != 0 {
		ss.obj, err = cn.authorized(so.Handle, id, policy.Use, ss.need)
		if err != nil {
			return nil, err
		}
		err = ss.obj.Use(func(m *mech.Key) error {
			var err error
			switch so.Kind {
			case wire.SessionKind_SESSION_KIND_MAC, wire.SessionKind_SESSION_KIND_MAC_VERIFY:
				ss.stream, err = m.NewMACStream(so.Kind == wire.SessionKind_SESSION_KIND_MAC_VERIFY)
			default:
				ss.stream, err = m.NewSignStream(params, so.Kind == wire.SessionKind_SESSION_KIND_VERIFY)
			}
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	cn.mu.Lock()
	defer cn.mu.Unlock()
	if cn.closed {
		ss.stream.Destroy()
		return nil, errConnClosing
	}
	if len(cn.sessions) >= cn.s.limits.MaxSessions {
		ss.stream.Destroy()
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too many open sessions on this connection (limit %d)", cn.s.limits.MaxSessions)
	}
	if !cn.acct.takeSession(cn.s.limits.MaxSessionsPerUID) {
		ss.stream.Destroy()
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too many open sessions for this user (limit %d)", cn.s.limits.MaxSessionsPerUID)
	}
	for {
		cn.nextSession++
		if _, used := cn.sessions[cn.nextSession]; cn.nextSession != 0 && !used {
			break
		}
	}
	cn.sessions[cn.nextSession] = ss
	if ss.obj != nil {
		cn.s.store.Hold(ss.obj) // released by endSession
	}
	return &wire.Result{Value: &wire.Result_Session{Session: &wire.SessionResult{Session: cn.nextSession}}}, nil
}

func (cn *conn) session(sid uint32) (*session, error) {
	cn.mu.Lock()
	ss, found := cn.sessions[sid]
	cn.mu.Unlock()
	if !found {
		return nil, errBadSession
	}
	return ss, nil
}

func (cn *conn) endSession(sid uint32, ss *session) {
	cn.mu.Lock()
	if cn.sessions[sid] == ss {
		delete(cn.sessions, sid)
		cn.acct.dropSessions(1)
	}
	cn.mu.Unlock()
	ss.mu.Lock()
	release := !ss.ended && ss.obj != nil
	if !ss.ended {
		ss.ended = true
		ss.stream.Destroy()
	}
	ss.mu.Unlock()
	if release {
		cn.s.store.Release(ss.obj)
	}
}

// step runs fn on the session's stream with the key's material held, after
// checking the caller may still use the key. A refusal ends the session.
func (cn *conn) step(sid uint32, ss *session, id Identity, fn func() error) error {
	ss.mu.Lock()
	var err error
	if ss.ended {
		err = errBadSession
	} else if ss.gen != cn.s.gen.Current() {
		// A clone of this machine may hold the same session state.
		err = errGenerationChanged
	} else if ss.obj == nil {
		err = fn()
	} else if err = policy.Authorize(id.caller(), ss.obj.Policy(), policy.Use, ss.need).Err(); err == nil {
		if err = cn.checkProgram(ss.obj, id); err == nil {
			err = ss.obj.Use(func(*mech.Key) error { return fn() })
		}
	}
	ss.mu.Unlock()
	if err != nil && wire.StatusOf(err) != wire.Status_STATUS_VERIFICATION_FAILED {
		cn.endSession(sid, ss)
	}
	return err
}

func (cn *conn) opSessionUpdate(su *wire.SessionUpdate, id Identity) (*wire.Result, error) {
	ss, err := cn.session(su.Session)
	if err != nil {
		return nil, err
	}
	err = cn.step(su.Session, ss, id, func() error {
		ss.stream.Write(su.Data)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ok(), nil
}

func (cn *conn) opSessionFinal(sf *wire.SessionFinal, id Identity) (*wire.Result, error) {
	ss, err := cn.session(sf.Session)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = cn.step(sf.Session, ss, id, func() error {
		var err error
		out, err = ss.stream.Final(sf.Signature)
		return err
	})
	cn.endSession(sf.Session, ss)
	if err != nil {
		return nil, err
	}
	if out == nil {
		return ok(), nil
	}
	return dataResult(out), nil
}

func (cn *conn) opSessionAbort(sid uint32) (*wire.Result, error) {
	ss, err := cn.session(sid)
	if err != nil {
		return nil, err
	}
	cn.endSession(sid, ss)
	return ok(), nil
}

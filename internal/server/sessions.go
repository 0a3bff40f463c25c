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

func (ss *Session) opSessionOpen(so *wire.SessionOpen, id Identity) (*wire.Result, error) {
	sess := &session{kind: so.Kind, gen: ss.s.gen.Current()}
	params := mech.SignParams{Hash: so.Hash, Padding: so.Padding}
	var err error
	switch so.Kind {
	case wire.SessionKind_SESSION_KIND_HASH:
		sess.stream, err = mech.NewHashStream(so.Hash)
	case wire.SessionKind_SESSION_KIND_MAC, wire.SessionKind_SESSION_KIND_SIGN:
		sess.need = key.Sign
	case wire.SessionKind_SESSION_KIND_MAC_VERIFY, wire.SessionKind_SESSION_KIND_VERIFY:
		sess.need = key.Verify
	default:
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unknown session kind")
	}
	if sess.need != 0 {
		sess.obj, err = ss.authorized(so.Handle, id, policy.Use, sess.need)
		if err != nil {
			return nil, err
		}
		err = sess.obj.Use(func(m *mech.Key) error {
			var err error
			switch so.Kind {
			case wire.SessionKind_SESSION_KIND_MAC, wire.SessionKind_SESSION_KIND_MAC_VERIFY:
				sess.stream, err = m.NewMACStream(so.Kind == wire.SessionKind_SESSION_KIND_MAC_VERIFY)
			default:
				sess.stream, err = m.NewSignStream(params, so.Kind == wire.SessionKind_SESSION_KIND_VERIFY)
			}
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	ss.mu.Lock()
	defer ss.mu.Unlock()
	if ss.closed {
		sess.stream.Destroy()
		return nil, errConnClosing
	}
	l := ss.s.lims()
	if len(ss.sessions) >= l.MaxSessions {
		sess.stream.Destroy()
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too many open sessions on this connection (limit %d)", l.MaxSessions)
	}
	if !ss.acct.takeSession(l.MaxSessionsPerUID) {
		sess.stream.Destroy()
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too many open sessions for this user (limit %d)", l.MaxSessionsPerUID)
	}
	for {
		ss.nextSession++
		if _, used := ss.sessions[ss.nextSession]; ss.nextSession != 0 && !used {
			break
		}
	}
	ss.sessions[ss.nextSession] = sess
	if sess.obj != nil {
		ss.s.store.Hold(sess.obj) // released by endSession
	}
	return &wire.Result{Value: &wire.Result_Session{Session: &wire.SessionResult{Session: ss.nextSession}}}, nil
}

func (ss *Session) session(sid uint32) (*session, error) {
	ss.mu.Lock()
	sess, found := ss.sessions[sid]
	ss.mu.Unlock()
	if !found {
		return nil, errBadSession
	}
	return sess, nil
}

func (ss *Session) endSession(sid uint32, sess *session) {
	ss.mu.Lock()
	if ss.sessions[sid] == sess {
		delete(ss.sessions, sid)
		ss.acct.dropSessions(1)
	}
	ss.mu.Unlock()
	sess.mu.Lock()
	release := !sess.ended && sess.obj != nil
	if !sess.ended {
		sess.ended = true
		sess.stream.Destroy()
	}
	sess.mu.Unlock()
	if release {
		ss.s.store.Release(sess.obj)
	}
}

// step runs fn on the session's stream with the key's material held, after
// checking the caller may still use the key. A refusal ends the session.
func (ss *Session) step(sid uint32, sess *session, id Identity, fn func() error) error {
	sess.mu.Lock()
	var err error
	if sess.ended {
		err = errBadSession
	} else if sess.gen != ss.s.gen.Current() {
		// A clone of this machine may hold the same session state.
		err = errGenerationChanged
	} else if sess.obj == nil {
		err = fn()
	} else if err = policy.Authorize(id.caller(), sess.obj.Policy(), policy.Use, sess.need).Err(); err == nil {
		if err = ss.checkProgram(sess.obj, id); err == nil {
			err = sess.obj.Use(func(*mech.Key) error { return fn() })
		}
	}
	sess.mu.Unlock()
	if err != nil && wire.StatusOf(err) != wire.Status_STATUS_VERIFICATION_FAILED {
		ss.endSession(sid, sess)
	}
	return err
}

func (ss *Session) opSessionUpdate(su *wire.SessionUpdate, id Identity) (*wire.Result, error) {
	sess, err := ss.session(su.Session)
	if err != nil {
		return nil, err
	}
	err = ss.step(su.Session, sess, id, func() error {
		sess.stream.Write(su.Data)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return ok(), nil
}

func (ss *Session) opSessionFinal(sf *wire.SessionFinal, id Identity) (*wire.Result, error) {
	sess, err := ss.session(sf.Session)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = ss.step(sf.Session, sess, id, func() error {
		var err error
		out, err = sess.stream.Final(sf.Signature)
		return err
	})
	ss.endSession(sf.Session, sess)
	if err != nil {
		return nil, err
	}
	if out == nil {
		return ok(), nil
	}
	return dataResult(out), nil
}

func (ss *Session) opSessionAbort(sid uint32) (*wire.Result, error) {
	sess, err := ss.session(sid)
	if err != nil {
		return nil, err
	}
	ss.endSession(sid, sess)
	return ok(), nil
}

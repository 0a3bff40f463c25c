package p11front

import (
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// slotID is the one slot: the caller's view of the daemon's keys.
const slotID = 1

// session is a PKCS #11 session.
type session struct {
	rw   bool
	find []uint64 // the handles a search has not yet returned
	// finding: C_FindObjectsInit was called and not yet finalized.
	finding bool
	// The operation of each kind in progress, if any.
	sign, verify, encrypt, decrypt, digest *operation
}

// handler answers one call: it reads its arguments from d and writes its
// results to e, and returns CKR_OK, another return value, or rvParse.
type handler func(c *conn, d *decoder, e *encoder) uint64

var handlers [callMax]handler

func init() {
	handlers = [callMax]handler{
		callInitialize:        (*conn).cInitialize,
		callFinalize:          (*conn).cFinalize,
		callGetInfo:           (*conn).cGetInfo,
		callGetSlotList:       (*conn).cGetSlotList,
		callGetSlotInfo:       (*conn).cGetSlotInfo,
		callGetTokenInfo:      (*conn).cGetTokenInfo,
		callGetMechanismList:  (*conn).cGetMechanismList,
		callGetMechanismInfo:  (*conn).cGetMechanismInfo,
		callInitToken:         notSupported("uayz"),
		callOpenSession:       (*conn).cOpenSession,
		callCloseSession:      (*conn).cCloseSession,
		callCloseAllSessions:  (*conn).cCloseAllSessions,
		callGetSessionInfo:    (*conn).cGetSessionInfo,
		callInitPIN:           notSupported("uay"),
		callSetPIN:            notSupported("uayay"),
		callLogin:             (*conn).cLogin,
		callLogout:            (*conn).cLogout,
		callCreateObject:      (*conn).cCreateObject,
		callCopyObject:        (*conn).cCopyObject,
		callDestroyObject:     (*conn).cDestroyObject,
		callGetAttributeValue: (*conn).cGetAttributeValue,
		callSetAttributeValue: (*conn).cSetAttributeValue,
		callFindObjectsInit:   (*conn).cFindObjectsInit,
		callFindObjects:       (*conn).cFindObjects,
		callFindObjectsFinal:  (*conn).cFindObjectsFinal,
		callEncryptInit:       opInit(opEncrypt),
		callEncrypt:           opOneShot(opEncrypt),
		callEncryptUpdate:     opUpdateOut(opEncrypt),
		callEncryptFinal:      opFinal(opEncrypt),
		callDecryptInit:       opInit(opDecrypt),
		callDecrypt:           opOneShot(opDecrypt),
		callDecryptUpdate:     opUpdateOut(opDecrypt),
		callDecryptFinal:      opFinal(opDecrypt),
		callDigestInit:        (*conn).cDigestInit,
		callDigest:            opOneShot(opDigest),
		callDigestUpdate:      opUpdate(opDigest),
		callDigestKey:         (*conn).cDigestKey,
		callDigestFinal:       opFinal(opDigest),
		callSignInit:          opInit(opSign),
		callSign:              opOneShot(opSign),
		callSignUpdate:        opUpdate(opSign),
		callSignFinal:         opFinal(opSign),
		callVerifyInit:        opInit(opVerify),
		callVerify:            (*conn).cVerify,
		callVerifyUpdate:      opUpdate(opVerify),
		callVerifyFinal:       (*conn).cVerifyFinal,
		callGenerateKey:       (*conn).cGenerateKey,
		callGenerateKeyPair:   (*conn).cGenerateKeyPair,
		callWrapKey:           (*conn).cWrapKey,
		callUnwrapKey:         (*conn).cUnwrapKey,
		callDeriveKey:         (*conn).cDeriveKey,
		callSeedRandom:        (*conn).cSeedRandom,
		callGenerateRandom:    (*conn).cGenerateRandom,
	}
}

// notSupported reads a request of signature sig and answers
// CKR_FUNCTION_NOT_SUPPORTED.
func notSupported(sig string) handler {
	return func(c *conn, d *decoder, e *encoder) uint64 {
		return ckrFunctionNotSupported
	}
}

func (c *conn) cInitialize(d *decoder, e *encoder) uint64 {
	hs := d.Bytes()
	d.Byte()
	d.Bytes()
	if d.done() != nil {
		return rvParse
	}
	if string(hs) != handshake {
		return ckrGeneralError
	}
	if c.initialized {
		return ckrCryptokiAlreadyInitialized
	}
	c.initialized = true
	return ckrOK
}

func (c *conn) cFinalize(d *decoder, e *encoder) uint64 {
	if d.done() != nil {
		return rvParse
	}
	c.closeAll()
	c.initialized = false
	return ckrOK
}

// closeAll closes every session; session objects go with the last, as
// PKCS #11 says, and the login state.
func (c *conn) closeAll() {
	for _, s := range c.sessions {
		c.abortAll(s)
	}
	clear(c.sessions)
	for _, ks := range c.keys {
		if ks.session {
			if ks.handle != 0 {
				c.do(&wire.Op{Op: &wire.Op_Close{Close: &wire.Close{Handle: ks.handle}}})
				ks.handle = 0
			}
			c.forget(ks)
		}
	}
	c.loggedIn = false
}

func (c *conn) cGetInfo(d *decoder, e *encoder) uint64 {
	if d.done() != nil {
		return rvParse
	}
	e.Version(2, 40)
	e.Space("keywarden", 32)
	e.Ulong(0)
	e.Space("keywarden PKCS #11 front", 32)
	e.Version(1, 0)
	return ckrOK
}

func (c *conn) cGetSlotList(d *decoder, e *encoder) uint64 {
	d.Byte()
	room := d.Buffer("u")
	if d.done() != nil {
		return rvParse
	}
	switch {
	case room == 0:
		e.Ulongs(nil, 1)
	default:
		e.Ulongs([]uint64{slotID}, 1)
	}
	return ckrOK
}

func (c *conn) slot(d *decoder) uint64 {
	if d.Ulong() != slotID {
		return ckrSlotIDInvalid
	}
	return ckrOK
}

func (c *conn) cGetSlotInfo(d *decoder, e *encoder) uint64 {
	rv := c.slot(d)
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	e.Space("keywarden daemon", 64)
	e.Space("keywarden", 32)
	e.Ulong(ckfTokenPresent)
	e.Version(1, 0)
	e.Version(1, 0)
	return ckrOK
}

func (c *conn) cGetTokenInfo(d *decoder, e *encoder) uint64 {
	rv := c.slot(d)
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	e.Space(c.f.cfg.TokenLabel, 32)
	e.Space("keywarden", 32)
	e.Space("daemon", 16)
	e.Space("1", 16)
	// Login takes any PIN: the kernel identifies the caller. The flag
	// for a protected authentication path says so to programs, which
	// then log in without asking for a PIN.
	e.Ulong(ckfRNG | ckfLoginRequired | ckfUserPinInitialized | ckfProtectedAuthPath | ckfTokenInitialized)
	n := uint64(len(c.sessions))
	var rw uint64
	for _, s := range c.sessions {
		if s.rw {
			rw++
		}
	}
	e.Ulong(ckUnavailableInfomation) // max sessions: as the core's limits allow
	e.Ulong(n)
	e.Ulong(ckUnavailableInfomation)
	e.Ulong(rw)
	e.Ulong(64) // max PIN length
	e.Ulong(0)  // min PIN length
	for range 4 {
		e.Ulong(ckUnavailableInfomation)
	}
	e.Version(1, 0)
	e.Version(1, 0)
	e.Space("", 16)
	return ckrOK
}

func (c *conn) cOpenSession(d *decoder, e *encoder) uint64 {
	rv := c.slot(d)
	flags := d.Ulong()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if flags&ckfSerialSession == 0 {
		return ckrSessionParallelNotSupp
	}
	if len(c.sessions) >= maxSessions {
		return ckrSessionCount
	}
	h := c.nextSession
	c.nextSession++
	c.sessions[h] = &session{rw: flags&ckfRWSession != 0}
	e.Ulong(h)
	return ckrOK
}

// maxSessions bounds the sessions of a connection.
const maxSessions = 256

// session returns the session behind handle h.
func (c *conn) session(h uint64) (*session, uint64) {
	s, ok := c.sessions[h]
	if !ok {
		return nil, ckrSessionHandleInvalid
	}
	return s, ckrOK
}

func (c *conn) cCloseSession(d *decoder, e *encoder) uint64 {
	h := d.Ulong()
	if d.done() != nil {
		return rvParse
	}
	s, rv := c.session(h)
	if rv != ckrOK {
		return rv
	}
	c.abortAll(s)
	delete(c.sessions, h)
	if len(c.sessions) == 0 {
		c.closeAll()
	}
	return ckrOK
}

func (c *conn) cCloseAllSessions(d *decoder, e *encoder) uint64 {
	rv := c.slot(d)
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	c.closeAll()
	return ckrOK
}

func (c *conn) cGetSessionInfo(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	state := uint64(cksROPublic)
	switch {
	case s.rw && c.loggedIn:
		state = cksRWUser
	case s.rw:
		state = cksRWPublic
	case c.loggedIn:
		state = cksROUser
	}
	flags := uint64(ckfSerialSession)
	if s.rw {
		flags |= ckfRWSession
	}
	e.Ulong(slotID)
	e.Ulong(state)
	e.Ulong(flags)
	e.Ulong(0)
	return ckrOK
}

func (c *conn) cLogin(d *decoder, e *encoder) uint64 {
	_, rv := c.session(d.Ulong())
	user := d.Ulong()
	d.Bytes() // any PIN, or none: never kept, never checked
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	switch user {
	case ckuUser, ckuContextSpecific:
	case ckuSO:
		c.refuse("login", nil, wire.Status_STATUS_PERMISSION_DENIED, "PKCS #11 login as security officer: there is none")
		return ckrPinIncorrect
	default:
		return ckrUserTypeInvalid
	}
	if c.loggedIn && user == ckuUser {
		return ckrUserAlreadyLoggedIn
	}
	c.loggedIn = true
	return ckrOK
}

func (c *conn) cLogout(d *decoder, e *encoder) uint64 {
	_, rv := c.session(d.Ulong())
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if !c.loggedIn {
		return ckrUserNotLoggedIn
	}
	c.loggedIn = false
	return ckrOK
}

// object returns the visible object behind handle h.
func (c *conn) object(h uint64) (*object, uint64) {
	o, ok := c.objects[h]
	if !ok || o.key.gone || !c.visible(o) {
		return nil, ckrObjectHandleInvalid
	}
	return o, ckrOK
}

func (c *conn) cGetAttributeValue(d *decoder, e *encoder) uint64 {
	_, rv := c.session(d.Ulong())
	oh := d.Ulong()
	tmpl := d.AttrBuffer()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	o, rv := c.object(oh)
	if rv != ckrOK {
		return rv
	}
	out := make([]attrOut, len(tmpl))
	for i, a := range tmpl {
		out[i].typ = a.typ
		if n, ok := c.valueLen(o); ok && a.typ == ckaValue && uint64(a.size) < n {
			// Only the length is asked, or room for less: the key's type
			// gives it, and the key is not exported for nothing.
			out[i].length = int64(n)
			if a.size != 0 {
				out[i].length = -1
				if rv == ckrOK {
					rv = ckrBufferTooSmall
				}
			}
			continue
		}
		v, arv := c.attribute(o, a.typ)
		switch {
		case arv != ckrOK:
			out[i].length = -1
			if rv == ckrOK || arv == ckrAttributeSensitive {
				rv = arv
			}
		case a.size == 0:
			out[i].length = int64(len(v))
		case int(a.size) < len(v):
			out[i].length = -1
			if rv == ckrOK {
				rv = ckrBufferTooSmall
			}
		default:
			out[i].length, out[i].value = int64(len(v)), v
		}
	}
	e.Attrs(out)
	e.Ulong(rv)
	for i := range out {
		if out[i].typ == ckaValue {
			clear(out[i].value)
		}
	}
	return ckrOK
}

func (c *conn) cSetAttributeValue(d *decoder, e *encoder) uint64 {
	_, rv := c.session(d.Ulong())
	oh := d.Ulong()
	tmpl := d.Attrs()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	o, rv := c.object(oh)
	if rv != ckrOK {
		return rv
	}
	// Only changes the core's rules allow and that change nothing are
	// accepted here; a usage dropped or an export switched off goes
	// through the core.
	set := &wire.SetAttributes{}
	changed := false
	for _, a := range tmpl {
		if a.invalid || len(a.value) == 0 {
			return ckrAttributeValueInvalid
		}
		if a.typ == ckaValue {
			return ckrAttributeReadOnly // not exported to be compared
		}
		cur, arv := c.attribute(o, a.typ)
		if arv != ckrOK {
			return ckrAttributeTypeInvalid
		}
		if valueKind(a.typ) == kindByte {
			on := a.value[0] != 0
			if on == (len(cur) == 1 && cur[0] != 0) {
				continue
			}
			switch {
			case a.typ == ckaSensitive && on:
				v := false
				set.Exportable, changed = &v, true
				continue
			case a.typ == ckaExtractable && !on:
				v := false
				set.Wrappable, changed = &v, true
				continue
			}
			if u, ok := usageOf[a.typ]; ok && !on {
				// Every usage the template drops is dropped, not only
				// the last it names.
				usage := o.key.info.Usage
				if set.Usage != nil {
					usage = *set.Usage
				}
				usage &^= uint32(u)
				set.Usage, changed = &usage, true
				continue
			}
			return ckrAttributeReadOnly
		}
		if string(cur) != string(a.value) {
			return ckrAttributeReadOnly
		}
	}
	if !changed {
		return ckrOK
	}
	h, err := c.open(o.key)
	if err != nil {
		return rvOf(err, ckrActionProhibited)
	}
	set.Handle = h
	r, err := c.do(&wire.Op{Op: &wire.Op_SetAttributes{SetAttributes: set}})
	if err != nil {
		return rvOf(err, ckrActionProhibited)
	}
	if info := r.GetInfo(); info != nil {
		c.addKey(info, o.key.session)
	} else if err := c.refresh(); err != nil {
		return rvOf(err, ckrDeviceError)
	}
	return ckrOK
}

// valueLen is the length of CKA_VALUE of o, if the front answers it: a
// secret key that may be exported (the core still decides, and records,
// when the value itself is read).
func (c *conn) valueLen(o *object) (uint64, bool) {
	ti := pkcs11Type(o.key.info.Type)
	if o.class != ckoSecretKey || !o.key.info.Exportable || ti == nil {
		return 0, false
	}
	return ti.valLen, true
}

// usageOf maps the usage attributes to the core's usages.
var usageOf = map[uint32]wire.Usage{
	ckaEncrypt: wire.Usage_USAGE_ENCRYPT, ckaDecrypt: wire.Usage_USAGE_DECRYPT,
	ckaSign: wire.Usage_USAGE_SIGN, ckaVerify: wire.Usage_USAGE_VERIFY,
	ckaWrap: wire.Usage_USAGE_WRAP, ckaUnwrap: wire.Usage_USAGE_UNWRAP,
	ckaDerive: wire.Usage_USAGE_DERIVE,
}

func (c *conn) cFindObjectsInit(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	tmpl := d.Attrs()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if s.finding {
		return ckrOperationActive
	}
	hs, err := c.find(tmpl)
	if err != nil {
		return rvOf(err, ckrDeviceError)
	}
	s.find, s.finding = hs, true
	return ckrOK
}

func (c *conn) cFindObjects(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	room := d.Buffer("u")
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if !s.finding {
		return ckrOperationNotInitialized
	}
	n := min(int(room), len(s.find), maxArray)
	out := make([]uint64, n)
	copy(out, s.find[:n])
	s.find = s.find[n:]
	e.Ulongs(out, n)
	return ckrOK
}

func (c *conn) cFindObjectsFinal(d *decoder, e *encoder) uint64 {
	s, rv := c.session(d.Ulong())
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if !s.finding {
		return ckrOperationNotInitialized
	}
	s.find, s.finding = nil, false
	return ckrOK
}

func (c *conn) cDestroyObject(d *decoder, e *encoder) uint64 {
	_, rv := c.session(d.Ulong())
	oh := d.Ulong()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	o, rv := c.object(oh)
	if rv != ckrOK {
		return rv
	}
	h, err := c.open(o.key)
	if err != nil {
		return rvOf(err, ckrActionProhibited)
	}
	if _, err := c.do(&wire.Op{Op: &wire.Op_Destroy{Destroy: &wire.Destroy{Handle: h}}}); err != nil {
		return rvOf(err, ckrActionProhibited)
	}
	o.key.handle = 0
	c.forget(o.key)
	return ckrOK
}

// cCopyObject: no object of the front may be copied (CKA_COPYABLE is
// false on every one: the daemon has no operation that copies a key), so
// a copy of an object the caller sees is CKR_ACTION_PROHIBITED, as PKCS #11
// has it for such objects, whatever the template asks; nothing is made.
func (c *conn) cCopyObject(d *decoder, e *encoder) uint64 {
	_, rv := c.session(d.Ulong())
	oh := d.Ulong()
	d.Attrs()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if _, rv := c.object(oh); rv != ckrOK {
		return rv
	}
	return ckrActionProhibited
}

func (c *conn) cSeedRandom(d *decoder, e *encoder) uint64 {
	_, rv := c.session(d.Ulong())
	d.Bytes()
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	return ckrRandomSeedNotSupported
}

// maxRandom bounds one C_GenerateRandom.
const maxRandom = 64 << 10

func (c *conn) cGenerateRandom(d *decoder, e *encoder) uint64 {
	_, rv := c.session(d.Ulong())
	n := d.Buffer("y")
	if d.done() != nil {
		return rvParse
	}
	if rv != ckrOK {
		return rv
	}
	if n > maxRandom {
		return ckrDataLenRange
	}
	b := make([]byte, n)
	// The daemon's own source: re-keyed at every change of the machine's
	// generation, and refusing (UNAVAILABLE) rather than repeating bytes
	// a clone also drew.
	if err := random.Read(b); err != nil {
		return ckrDeviceError
	}
	e.Bytes(b, len(b))
	return ckrOK
}

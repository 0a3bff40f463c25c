package server

import (
	"bytes"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

func (ss *Session) opStatus(id Identity) *wire.Result {
	s := ss.s
	persistent, _ := s.store.Counts()
	var mem *wire.MemoryStatus
	if s.cfg.Memory != nil {
		mem = s.cfg.Memory()
	}
	return &wire.Result{Value: &wire.Result_Server{Server: &wire.StatusResult{
		Memory:          mem,
		ProtocolVersion: wire.ProtocolVersion,
		ServerVersion:   s.cfg.Version,
		Limits:          s.wireLimits(),
		DevMode:         s.cfg.DevMode,
		StartedUnixNano: s.started.UnixNano(),
		Keys:            uint64(persistent),
		Connections:     uint32(s.connsN.Load()),
		CallerUid:       id.UID,
		CallerGid:       id.GID,
		CallerPid:       id.PID,
		CallerPidfd:     id.Pidfd >= 0,
		SshAgentSockets: s.cfg.SSHAgentSockets,
		Seal:            s.sealStatus(),
		Generation:      s.generationInfo(true, s.watcherScope(id.UID)),
		Audit:           s.auditStatus(),
	}}}
}

// template turns a wire template into a policy template for class c.
func template(t *wire.KeyTemplate, c key.Class) (policy.Template, error) {
	if t == nil {
		return policy.Template{}, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "missing key template")
	}
	spec := key.Lookup(t.Type)
	if spec == nil {
		return policy.Template{}, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unknown key type")
	}
	if t.Name != "" && !key.ValidName(t.Name) {
		return policy.Template{}, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"invalid key name: 1-128 characters of A-Z a-z 0-9 . _ @ + -, starting with a letter, digit or underscore")
	}
	acl, err := aclFromWire(t.Acl)
	if err != nil {
		return policy.Template{}, err
	}
	return policy.Template{Spec: spec, Class: c, Usage: key.Usage(t.Usage),
		Exportable: t.Exportable, Wrappable: t.Wrappable, ACL: acl}, nil
}

func aclFromWire(w []*wire.AclEntry) ([]key.ACLEntry, error) {
	if len(w) > key.MaxACLEntries {
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "an ACL holds at most %d entries", key.MaxACLEntries)
	}
	acl := make([]key.ACLEntry, 0, len(w))
	for _, e := range w {
		switch p := e.GetPrincipal().(type) {
		case *wire.AclEntry_Uid:
			acl = append(acl, key.ACLEntry{ID: p.Uid, Usage: key.Usage(e.Usage)})
		case *wire.AclEntry_Gid:
			acl = append(acl, key.ACLEntry{Group: true, ID: p.Gid, Usage: key.Usage(e.Usage)})
		default:
			return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "an ACL entry names neither a uid nor a gid")
		}
	}
	return acl, nil
}

// remove destroys o (see keystore.Store.Remove).
func (ss *Session) remove(o *keystore.Object) error {
	err := ss.s.store.Remove(o)
	if err != nil {
		ss.log.Error("destroying a key failed", "key", o.ID.String(), "err", err)
	}
	return err
}

// release lets go of a handle's or session's hold on o: an ephemeral key
// dies with its handle; a persistent one stays in the store and is
// unloaded when nothing holds it.
func (ss *Session) release(o *keystore.Object) {
	if o.Ephemeral {
		ss.remove(o)
		return
	}
	ss.s.store.Release(o)
}

// discard destroys an object that never made it into the store.
func (ss *Session) discard(o *keystore.Object) {
	if err := keystore.Discard(o); err != nil {
		ss.log.Error("key memory corrupted: something wrote past the end of a key", "err", err)
	}
}

// create registers material made for template t as a new key owned by the
// caller and opens a handle to it. It takes ownership of mat. kdf records
// how a key derived from a passphrase was made (nil for others).
func (ss *Session) create(t *wire.KeyTemplate, pt policy.Template, usage key.Usage, mat *mech.Key, id Identity, kdf *wire.PassphraseKdf, origin persist.Origin) (*wire.Result, error) {
	o, err := ss.newObject(t, pt, usage, mat, id, origin)
	if err != nil {
		return nil, err
	}
	o.KDF = kdf
	return ss.createObject(o, t, id)
}

// newObject makes the object create adds. It takes ownership of mat.
func (ss *Session) newObject(t *wire.KeyTemplate, pt policy.Template, usage key.Usage, mat *mech.Key, id Identity, origin persist.Origin) (*keystore.Object, error) {
	attrs := &key.Attrs{Usage: usage, Exportable: pt.Exportable, Wrappable: pt.Wrappable, ACL: pt.ACL}
	o, err := keystore.NewObject(strings.Clone(t.Name), id.UID, mat, attrs, t.Ephemeral, ss.s.cfg.Now(), origin) // not aliasing the request
	if err != nil {
		mat.Destroy()
		return nil, err
	}
	return o, nil
}

// createObject adds o, a new object made for template t, to the store and
// opens a handle to it.
func (ss *Session) createObject(o *keystore.Object, t *wire.KeyTemplate, id Identity) (*wire.Result, error) {
	if err := lifecycleFromTemplate(o, t); err != nil {
		ss.discard(o)
		return nil, err
	}
	if o.Ephemeral || ss.s.cfg.StateDir == "" {
		// Nothing lasting to protect: the key dies with its connection,
		// or with the daemon.
		m := *o.Meta()
		m.DeletionAllowed = true
		keystore.SetMeta(o, &m)
	}
	attrs := o.Attrs()
	if err := ss.s.store.Add(o); err != nil {
		ss.discard(o)
		return nil, err
	}
	h, err := ss.addHandle(o)
	if err != nil {
		// The connection is closing: the client will never know of the key.
		ss.remove(o)
		return nil, err
	}
	ss.log.Info("key created", "key", o.ID.String(), "type", o.Spec.Name, "class", o.Class.String(),
		"owner", o.Owner, "usage", attrs.Usage.String(), "exportable", attrs.Exportable, "ephemeral", o.Ephemeral)
	return &wire.Result{Value: &wire.Result_Key{Key: &wire.KeyResult{Handle: h, Info: o.Info(id.caller())}}}, nil
}

func (ss *Session) opGenerate(g *wire.Generate, id Identity) (*wire.Result, error) {
	spec := key.Lookup(g.GetTemplate().GetType())
	class := key.Secret
	if spec != nil && spec.Asymmetric {
		class = key.Private
	}
	pt, err := template(g.Template, class)
	if err != nil {
		return nil, err
	}
	usage, d := policy.CheckTemplate(pt)
	if err := d.Err(); err != nil {
		return nil, err
	}
	if err := ss.precheck(g.Template, id); err != nil {
		return nil, err
	}
	// A change between the draw of the material and its version's budget
	// epoch must not give material from before it a budget after it (in
	// every clone): the version then encrypts in no epoch, and the key's
	// first encryption makes a new version.
	drawnIn := ss.s.store.BudgetEpoch()
	ss.s.onceAt(stageCounted)
	mat, err := mech.Generate(pt.Spec)
	if err != nil {
		return nil, err
	}
	ss.s.onceAt(stageMade)
	o, err := ss.newObject(g.Template, pt, usage, mat, id, persist.Origin_ORIGIN_GENERATED)
	if err != nil {
		return nil, err
	}
	keystore.DrawnIn(o, drawnIn)
	return ss.createObject(o, g.Template, id)
}

// precheck refuses early, before any expensive work, what Add and
// addHandle would refuse anyway.
func (ss *Session) precheck(t *wire.KeyTemplate, id Identity) error {
	if err := ss.roomForHandle(); err != nil {
		return err
	}
	if err := policy.CheckQuota(ss.s.store.Owned(id.UID), ss.s.lims().MaxKeysPerUser).Err(); err != nil {
		return err
	}
	if err := ss.s.store.Ready(); err != nil {
		return err
	}
	if !t.Ephemeral && t.Name != "" && ss.s.store.NameTaken(id.UID, t.Name) {
		return wire.Errorf(wire.Status_STATUS_ALREADY_EXISTS, "a key named %q already exists", t.Name)
	}
	return nil
}

func (ss *Session) opImport(im *wire.Import, id Identity) (*wire.Result, error) {
	// A parser may keep slices of its input (x509 does, for public keys):
	// hand it a copy, never the request buffer, and wipe both after.
	data := bytes.Clone(im.Data)
	defer clear(data)
	defer clear(im.Data)
	spec := key.Lookup(im.GetTemplate().GetType())
	if spec == nil {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unknown key type")
	}
	if err := ss.precheck(im.Template, id); err != nil {
		return nil, err
	}
	mat, err := mech.Import(spec, im.Format, data)
	if err != nil {
		return nil, err
	}
	pt, err := template(im.Template, mat.Class())
	if err == nil {
		var usage key.Usage
		var d policy.Decision
		usage, d = policy.CheckTemplate(pt)
		if err = d.Err(); err == nil {
			return ss.create(im.Template, pt, usage, mat, id, nil, persist.Origin_ORIGIN_IMPORTED)
		}
	}
	mat.Destroy()
	return nil, err
}

func (ss *Session) opOpen(op *wire.Open, id Identity) (*wire.Result, error) {
	if err := ss.roomForHandle(); err != nil {
		return nil, err
	}
	var o *keystore.Object
	var err error
	// A key the caller may not see is refused from its record, before its
	// bytes are loaded: the same NOT_FOUND as a key that does not exist,
	// without the work (and the memory) of opening it.
	access := func(k policy.Key) error { return policy.Authorize(id.caller(), k, policy.Open, 0).Err() }
	switch k := op.GetKey().(type) {
	case *wire.Open_Id:
		kid, valid := key.IDFromBytes(k.Id)
		if !valid {
			return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a key id is 16 bytes")
		}
		o, err = ss.s.store.GetFor(kid, access)
	case *wire.Open_Name:
		owner := id.UID
		if k.Name.OwnerUid != nil {
			owner = *k.Name.OwnerUid
		}
		if !key.ValidName(k.Name.Name) {
			return nil, wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no such key")
		}
		o, err = ss.s.store.LookupFor(owner, k.Name.Name, access)
	default:
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "open needs a key id or name")
	}
	if err != nil {
		return nil, err
	}
	// Again on the object: its attributes may have changed since.
	if err := access(o.Policy()); err != nil {
		ss.s.store.Release(o)
		return nil, err
	}
	h, err := ss.addHandle(o)
	if err != nil {
		ss.s.store.Release(o)
		return nil, err
	}
	return &wire.Result{Value: &wire.Result_Key{Key: &wire.KeyResult{Handle: h, Info: o.Info(id.caller())}}}, nil
}

// opClose releases a handle. Closing the handle of an ephemeral key
// destroys the key: nothing else can reach it.
func (ss *Session) opClose(h uint32) (*wire.Result, error) {
	ss.mu.Lock()
	o, found := ss.handles[h]
	delete(ss.handles, h)
	ss.mu.Unlock()
	if !found {
		return nil, errBadHandle
	}
	ss.release(o)
	return ok(), nil
}

// listPageDefault bounds a page of List when the client sets no limit;
// the reply must fit in one message even with RSA-4096 public keys.
const listPageDefault = 128

func (ss *Session) opList(l *wire.List, id Identity) (*wire.Result, error) {
	var after key.ID
	if len(l.After) > 0 {
		a, valid := key.IDFromBytes(l.After)
		if !valid {
			return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "list: after must be a 16-byte key id")
		}
		after = a
	}
	limit := int(l.Limit)
	if limit <= 0 || limit > listPageDefault {
		limit = listPageDefault
	}
	caller := id.caller()
	infos, err := ss.s.store.List(after, limit+1, func(info *wire.KeyInfo) bool {
		granted, visible := policy.Granted(caller, policyKey(info))
		info.CallerUsage = uint32(granted)
		return visible
	})
	if err != nil {
		return nil, err
	}
	res := &wire.ListResult{}
	budget, size := listBudget(ss.s.lims().MaxMessageBytes)-64, 0
	for i, info := range infos {
		size += info.SizeVT() + 8
		if i > 0 && (i == limit || size > budget) {
			res.Next = infos[i-1].Id
			break
		}
		res.Keys = append(res.Keys, info)
	}
	return &wire.Result{Value: &wire.Result_List{List: res}}, nil
}

func (ss *Session) opInfo(h uint32, id Identity) (*wire.Result, error) {
	o, err := ss.authorized(h, id, policy.Open, 0)
	if err != nil {
		return nil, err
	}
	if o.Destroyed() {
		return nil, wire.Errorf(wire.Status_STATUS_NOT_FOUND, "key destroyed")
	}
	return &wire.Result{Value: &wire.Result_Info{Info: o.Info(id.caller())}}, nil
}

func (ss *Session) opExport(e *wire.Export, id Identity) (*wire.Result, error) {
	o, err := ss.authorized(e.Handle, id, policy.Export, 0)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = o.Use(func(m *mech.Key) error {
		var err error
		out, err = m.Export(e.Format)
		return err
	})
	if err != nil {
		return nil, err
	}
	if o.Class != key.Public {
		ss.log.Info("key exported", "key", o.ID.String(), "uid", id.UID, "pid", id.PID)
	}
	return dataResult(out), nil
}

func (ss *Session) opPublicKey(p *wire.PublicKey, id Identity) (*wire.Result, error) {
	o, err := ss.authorized(p.Handle, id, policy.ReadPublic, 0)
	if err != nil {
		return nil, err
	}
	var out []byte
	err = o.Use(func(m *mech.Key) error {
		var err error
		out, err = m.Public(p.Format)
		return err
	})
	return dataResult(out), err
}

// errDeletionNotAllowed refuses to destroy a persistent key whose
// deletion was not allowed first: a key destroyed is gone for good, with
// every ciphertext and signature that needs it.
var errDeletionNotAllowed = wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION,
	"deletion is not allowed for this key: a destroyed key is gone for good, with whatever it protects; "+
		"allow it first (keywarden key set NAME --deletion-allowed), then destroy it")

func (ss *Session) opDestroy(h uint32, id Identity) (*wire.Result, error) {
	return ss.destroy(h, id, false)
}

// destroy destroys the key behind handle h. Unless undo (a key just made
// by a request that could not be recorded), a persistent key is destroyed
// only if its deletion is allowed.
func (ss *Session) destroy(h uint32, id Identity, undo bool) (*wire.Result, error) {
	o, err := ss.authorized(h, id, policy.Manage, 0)
	if err != nil {
		return nil, err
	}
	if !undo && !o.Ephemeral && !o.Meta().DeletionAllowed {
		return nil, errDeletionNotAllowed
	}
	if err := ss.remove(o); err != nil {
		return nil, err
	}
	ss.mu.Lock()
	delete(ss.handles, h)
	ss.mu.Unlock()
	ss.s.store.Release(o)
	ss.log.Info("key destroyed", "key", o.ID.String(), "uid", id.UID, "pid", id.PID)
	return ok(), nil
}

func (ss *Session) opSetAttributes(sa *wire.SetAttributes, id Identity) (*wire.Result, error) {
	o, err := ss.authorized(sa.Handle, id, policy.Manage, 0)
	if err != nil {
		return nil, err
	}
	var ch policy.Change
	if sa.Usage != nil {
		u := key.Usage(*sa.Usage)
		ch.Usage = &u
	}
	ch.Exportable, ch.Wrappable = sa.Exportable, sa.Wrappable
	err = ss.s.store.SetAttrs(o, func(old *key.Attrs) (*key.Attrs, error) {
		next, d := policy.CheckChange(old, ch)
		return next, d.Err()
	})
	if err != nil {
		return nil, err
	}
	return &wire.Result{Value: &wire.Result_Info{Info: o.Info(id.caller())}}, nil
}

func (ss *Session) opSetACL(sa *wire.SetACL, id Identity) (*wire.Result, error) {
	o, err := ss.authorized(sa.Handle, id, policy.Manage, 0)
	if err != nil {
		return nil, err
	}
	acl, err := aclFromWire(sa.Acl)
	if err != nil {
		return nil, err
	}
	err = ss.s.store.SetAttrs(o, func(old *key.Attrs) (*key.Attrs, error) {
		if err := policy.CheckACL(old.Usage, acl).Err(); err != nil {
			return nil, err
		}
		next := *old
		next.ACL = acl
		return &next, nil
	})
	if err != nil {
		return nil, err
	}
	return &wire.Result{Value: &wire.Result_Info{Info: o.Info(id.caller())}}, nil
}

// reservedInfo starts the HKDF info of the daemon's own derivations (the
// keys of keywarden's wrap format, among others): a derivation a caller
// asks for never uses it, so that no caller-derived key is one of them.
var reservedInfo = []byte("keywarden ")

func (ss *Session) opDerive(dv *wire.Derive, id Identity) (*wire.Result, error) {
	parent, err := ss.authorized(dv.Handle, id, policy.Use, key.Derive)
	if err != nil {
		return nil, err
	}
	if bytes.HasPrefix(dv.Info, reservedInfo) {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "derivation info that starts with %q is reserved for the daemon's own keys", reservedInfo)
	}
	pt, err := template(dv.Template, key.Secret)
	if err != nil {
		return nil, err
	}
	if err := policy.CheckDeriveKDF(parent.Policy(), dv.Kdf).Err(); err != nil {
		return nil, err
	}
	usage, d := policy.CheckDerive(id.caller(), parent.Policy(), pt)
	if err := d.Err(); err != nil {
		return nil, err
	}
	if err := ss.precheck(dv.Template, id); err != nil {
		return nil, err
	}
	pv, err := ss.current(parent)
	if err != nil {
		return nil, err
	}
	var mat *mech.Key
	err = parent.UseVersion(pv, func(m *mech.Key) error {
		var err error
		mat, err = m.DeriveKDF(dv.Kdf, dv.PeerPublicKey, dv.Hash, dv.Salt, dv.Info, pt.Spec)
		return err
	})
	if err != nil {
		return nil, err
	}
	// The child inherits the programs that may use its parent: made by
	// one of them, it would otherwise let any program use what only they
	// may make.
	attrs := &key.Attrs{Usage: usage, Exportable: pt.Exportable, Wrappable: pt.Wrappable, ACL: pt.ACL}
	o, err := keystore.NewObject(strings.Clone(dv.Template.Name), id.UID, mat, attrs, dv.Template.Ephemeral, ss.s.cfg.Now(), persist.Origin_ORIGIN_DERIVED)
	if err != nil {
		mat.Destroy()
		return nil, err
	}
	// And it records whether its parent was always sensitive and never
	// extractable (PKCS #11 ties the child's to them).
	m := *o.Meta()
	m.Programs = parent.Meta().Programs
	m.BaseAlwaysSensitive, m.BaseNeverExtractable = parent.AlwaysSensitive(), parent.NeverExtractable()
	keystore.SetMeta(o, &m)
	// Its material is the same in every clone that holds the parent's
	// version: no budget of a later generation than that version's.
	keystore.DerivedFrom(o, pv)
	return ss.createObject(o, dv.Template, id)
}

// policyKey describes a key for package policy from its description.
func policyKey(info *wire.KeyInfo) policy.Key {
	a := &key.Attrs{Usage: key.Usage(info.Usage), Exportable: info.Exportable, Wrappable: info.Wrappable}
	for _, e := range info.Acl {
		switch p := e.GetPrincipal().(type) {
		case *wire.AclEntry_Uid:
			a.ACL = append(a.ACL, key.ACLEntry{ID: p.Uid, Usage: key.Usage(e.Usage)})
		case *wire.AclEntry_Gid:
			a.ACL = append(a.ACL, key.ACLEntry{Group: true, ID: p.Gid, Usage: key.Usage(e.Usage)})
		}
	}
	return policy.Key{Owner: info.OwnerUid, Spec: key.Lookup(info.Type), Class: key.Class(info.Class), Attrs: a}
}

// errPassphraseRotation refuses a rotation period for a key derived from a
// passphrase: its bytes follow from the passphrase, so it cannot rotate.
var errPassphraseRotation = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
	"a key derived from a passphrase cannot rotate: give it no rotation period")

// lifecycleFromTemplate applies a template's rotation settings to a new
// object.
func lifecycleFromTemplate(o *keystore.Object, t *wire.KeyTemplate) error {
	if t.RotateAfterSeconds == 0 && !t.RefuseWhenSpent {
		return nil
	}
	if t.RotateAfterSeconds < 0 {
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "negative rotation period")
	}
	if t.RotateAfterSeconds > 0 && o.KDF != nil {
		return errPassphraseRotation
	}
	m := *o.Meta()
	m.RotateAfter = time.Duration(t.RotateAfterSeconds) * time.Second
	if t.RefuseWhenSpent {
		m.Budget = persist.BudgetPolicy_BUDGET_POLICY_REFUSE
	}
	keystore.SetMeta(o, &m)
	return nil
}

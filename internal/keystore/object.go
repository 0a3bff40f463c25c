package keystore

import (
	"bytes"
	"cmp"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// Object is one key object. Its identity fields never change after
// creation; its attributes change only by replacing the whole *key.Attrs,
// its lifecycle settings by replacing the whole *Meta, and its versions by
// replacing the whole slice.
type Object struct {
	ID        key.ID
	Name      string
	Owner     uint32
	Spec      *key.Spec
	Class     key.Class
	Ephemeral bool
	Created   time.Time
	// KDF records how a key derived from a passphrase was made (the
	// Argon2id parameters and salt, none of them secret); nil for others.
	// Set before the object is added to a store, never changed.
	KDF *wire.PassphraseKdf

	attrs atomic.Pointer[key.Attrs]
	meta  atomic.Pointer[Meta]
	// vers holds the live versions, oldest first; the last is the newest.
	vers atomic.Pointer[[]*Version]

	// removed is set once the object left the store.
	removed atomic.Bool
	// superseded is set (under the store's mu) once another daemon of a
	// shared store changed the key's record: the object is not its state
	// any more (follow.go).
	superseded atomic.Bool
	// gate, for a key of a shared store, refuses its use while the daemon
	// may not know its current record (follow.go); nil otherwise.
	gate *follower
	// refs counts the handles and sessions that hold a persistent object;
	// at zero the store unloads it (guarded by the store's mu).
	refs int

	// mu guards the versions' material: operations hold it for reading
	// while they use it, wiping holds it for writing, so material is never
	// wiped under a running operation. Nothing else is done under mu.
	mu sync.RWMutex
	// gone is why the material is gone (nil while it is there).
	gone error

	// wmu serializes changes to the object's record.
	wmu sync.Mutex
	// epoch is the unsealed epoch (seal.Lease.Epoch) the object was made
	// or loaded in; it is refused in any other. 0 for ephemeral objects not
	// yet added.
	epoch uint64
	// drawnIn, when drawn is set, is the budget epoch in which the
	// material was drawn (DrawnIn); set before the object is added.
	drawnIn uint64
	drawn   bool
}

// Meta are an object's lifecycle settings.
type Meta struct {
	Origin persist.Origin
	// NeverExportable: the key has never been exportable.
	NeverExportable bool
	// Trusted: an administrator made it a trusted wrapping key.
	Trusted bool
	// WrappedOut: the key's material has left the daemon wrapped.
	WrappedOut bool
	// BaseAlwaysSensitive, BaseNeverExtractable: for a derived key, its
	// base key was always sensitive, and never extractable, when it was
	// derived (AlwaysSensitive, NeverExtractable).
	BaseAlwaysSensitive, BaseNeverExtractable bool
	// EverWrappable: the key has been wrappable (it can only be switched
	// off): it was extractable, as PKCS #11 has it.
	EverWrappable bool
	// MinVersion: versions below it no longer decrypt or verify.
	MinVersion uint32
	// NextVersion is the number the next version gets.
	NextVersion uint32
	Budget      persist.BudgetPolicy
	RotateAfter time.Duration
	// DeletionAllowed: Destroy may delete the key (the server decides
	// for which keys that matters).
	DeletionAllowed bool
	// Programs are the executables that may use the key; none: any
	// (policy.CheckProgram).
	Programs []key.Program
	// SSH: the daemon's ssh-agent socket offers the key.
	SSH bool
}

// Version is one version of a key's material.
type Version struct {
	N       uint32
	Created time.Time
	Mat     *mech.Key
	// fp is the fingerprint of the material (hasFP false for a public
	// key), set before the version is shared and never changed.
	fp    fingerprint
	hasFP bool
	// epoch is the store's budget epoch when the version was made: it
	// encrypts only in that epoch (budget.go). auto marks a version made
	// because a generation change closed the one before. Both are set
	// before the version is shared and never changed.
	epoch uint64
	auto  bool
	// Counts of AES-GCM encryptions: made (in this process, on top of
	// what earlier processes reserved), durably reserved, and allowed.
	// used holds closedCount once the version is closed (budgets.go).
	used     atomic.Uint64
	reserved atomic.Uint64
	limit    atomic.Uint64
	// elsewhere is, in a store that several daemons share, the highest
	// reservation another daemon made for this version since this one
	// loaded it (follow.go); this daemon's next reservation goes on after
	// it. 0 otherwise.
	elsewhere atomic.Uint64
}

// Used returns the encryptions this version has made, as far as known.
func (v *Version) Used() uint64 { return v.used.Load() &^ closedCount }

// closedCount, set in a version's count, closes it: it counts no more
// encryptions. A count never comes near it (limits are at most
// DefaultEncryptionLimit).
const closedCount = 1 << 63

// closed reports whether v is closed at its count.
func (v *Version) closed() bool { return v.used.Load()&closedCount != 0 }

// Limit returns the most encryptions it may make.
func (v *Version) Limit() uint64 { return v.limit.Load() }

// DefaultEncryptionLimit is the most AES-GCM encryptions one version of a
// key makes: with random 96-bit nonces, NIST SP 800-38D allows 2^32.
const DefaultEncryptionLimit = 1 << 32

// NewObject makes an object for freshly generated, imported, derived or
// unwrapped material: version 1. It fails only when no fresh id can be
// drawn (after a generation change, until fresh randomness is confirmed);
// the caller still owns mat then.
func NewObject(name string, owner uint32, mat *mech.Key, attrs *key.Attrs, ephemeral bool, now time.Time, origin persist.Origin) (*Object, error) {
	id, err := key.NewID()
	if err != nil {
		return nil, err
	}
	o := &Object{
		ID:        id,
		Name:      name,
		Owner:     owner,
		Spec:      mat.Spec(),
		Class:     mat.Class(),
		Ephemeral: ephemeral,
		Created:   now,
	}
	o.attrs.Store(attrs)
	o.meta.Store(&Meta{Origin: origin, NeverExportable: !attrs.Exportable, EverWrappable: attrs.Wrappable, MinVersion: 1, NextVersion: 2})
	v := &Version{N: 1, Created: now, Mat: mat}
	v.limit.Store(DefaultEncryptionLimit)
	o.vers.Store(&[]*Version{v})
	return o, nil
}

// SetMeta sets the lifecycle settings of an object not yet added to a
// store.
func SetMeta(o *Object, m *Meta) { o.meta.Store(m) }

// SetFirstVersion renumbers the only version of an object not yet added
// to a store (an unwrapped key keeps its number), with what it has spent.
func SetFirstVersion(o *Object, n uint32, created time.Time, used, limit uint64) {
	v := o.Versions()[0]
	if n > 0 {
		v.N = n
	}
	if created.UnixNano() > 0 {
		v.Created = created
	}
	if limit > 0 {
		v.limit.Store(min(limit, DefaultEncryptionLimit))
	}
	v.used.Store(used)
	v.reserved.Store(used)
}

// Attrs returns the current attributes. The value must not be modified.
func (o *Object) Attrs() *key.Attrs { return o.attrs.Load() }

// Meta returns the lifecycle settings. The value must not be modified.
func (o *Object) Meta() *Meta { return o.meta.Load() }

// Versions returns the live versions, oldest first. The slice must not be
// modified.
func (o *Object) Versions() []*Version { return *o.vers.Load() }

// Newest returns the newest version.
func (o *Object) Newest() *Version {
	vs := o.Versions()
	return vs[len(vs)-1]
}

// Version returns version n if it is live and not below the minimum.
func (o *Object) Version(n uint32) (*Version, bool) {
	if n < o.Meta().MinVersion {
		return nil, false
	}
	// Versions are in increasing order, and a key may have thousands
	// (MaxAutoVersions).
	vs := o.Versions()
	if i, ok := slices.BinarySearchFunc(vs, n, func(v *Version, n uint32) int { return cmp.Compare(v.N, n) }); ok {
		return vs[i], true
	}
	return nil, false
}

// AlwaysSensitive reports whether o has always been sensitive, as PKCS
// #11 has it (CKA_ALWAYS_SENSITIVE): never exportable, and made in the
// daemon, generated or derived from a key that was always sensitive then.
// A key imported or unwrapped was outside the daemon before.
func (o *Object) AlwaysSensitive() bool {
	m := o.Meta()
	return m.NeverExportable && madeHere(m.Origin, m.BaseAlwaysSensitive)
}

// NeverExtractable reports whether o has never been extractable, as PKCS
// #11 has it (CKA_NEVER_EXTRACTABLE): never wrappable, never wrapped out,
// and made in the daemon, generated or derived from a key that was never
// extractable then.
func (o *Object) NeverExtractable() bool {
	m := o.Meta()
	return !o.Attrs().Wrappable && !m.EverWrappable && !m.WrappedOut && madeHere(m.Origin, m.BaseNeverExtractable)
}

func madeHere(origin persist.Origin, base bool) bool {
	return origin == persist.Origin_ORIGIN_GENERATED || origin == persist.Origin_ORIGIN_DERIVED && base
}

// Policy returns the object as package policy sees it.
func (o *Object) Policy() policy.Key {
	m := o.Meta()
	return policy.Key{Owner: o.Owner, Spec: o.Spec, Class: o.Class, Attrs: o.attrs.Load(), Prov: policy.Provenance{
		Origin: key.Origin(m.Origin), NeverExportable: m.NeverExportable, Trusted: m.Trusted, WrappedOut: m.WrappedOut,
	}, Programs: m.Programs}
}

// ReplaceAttrs installs next if the attributes are still old, and reports
// whether it did. Only ephemeral objects change this way; persistent ones
// go through Store.SetAttrs, which makes the change durable first.
func (o *Object) ReplaceAttrs(old, next *key.Attrs) bool {
	return o.attrs.CompareAndSwap(old, next)
}

var errDestroyed = wire.Errorf(wire.Status_STATUS_NOT_FOUND, "key destroyed")

// ErrSealedAway is the error of operations on keys that were wiped when
// the daemon was sealed: their handles are dead, the key is not.
var ErrSealedAway = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the daemon was sealed: unseal it and open the key again")

// errUnloaded is for handles of an object the store unloaded (it cannot
// happen while a handle holds it; reported rather than trusted).
var errUnloaded = wire.Errorf(wire.Status_STATUS_NOT_FOUND, "key no longer loaded: open it again")

// Use runs fn with the newest version's material, which stays valid (not
// wiped) until fn returns. It fails with STATUS_NOT_FOUND once the key is
// destroyed.
func (o *Object) Use(fn func(*mech.Key) error) error {
	if err := o.gate.check(); err != nil {
		return err
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.gone != nil {
		return o.gone
	}
	return fn(o.Newest().Mat)
}

// UseVersion runs fn with version v's material (see Use).
func (o *Object) UseVersion(v *Version, fn func(*mech.Key) error) error {
	if err := o.gate.check(); err != nil {
		return err
	}
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.gone != nil {
		return o.gone
	}
	return fn(v.Mat)
}

// Destroyed reports whether the object's material is gone.
func (o *Object) Destroyed() bool {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.gone != nil
}

// Gone returns why the material is gone, or nil.
func (o *Object) Gone() error {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.gone
}

// wipe destroys the material of every version, waiting for operations in
// progress, and makes later operations fail with why. It reports memory
// corruption found on the way (see mech.Key.Destroy).
func (o *Object) wipe(why error) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.gone != nil {
		return nil
	}
	o.gone = why
	var err error
	for _, v := range o.Versions() {
		if e := v.Mat.Destroy(); e != nil && err == nil {
			err = e
		}
	}
	return err
}

// setVersions installs new versions and wipes the material of those that
// are no longer among them, once no operation uses it.
func (o *Object) setVersions(next []*Version) error {
	old := o.Versions()
	o.vers.Store(&next)
	// Both are in increasing order of N (a key may have thousands).
	var dropped []*Version
	for _, v := range old {
		if i, ok := slices.BinarySearchFunc(next, v.N, func(w *Version, n uint32) int { return cmp.Compare(w.N, n) }); !ok || next[i] != v {
			dropped = append(dropped, v)
		}
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.gone != nil {
		// Wiped meanwhile (destroyed, sealed): the wipe did not see the
		// versions installed now.
		dropped = append(dropped, next...)
	}
	var err error
	for _, v := range dropped {
		if e := v.Mat.Destroy(); e != nil && err == nil {
			err = e
		}
	}
	return err
}

// Info returns the object's description for the wire, with the usages
// the given caller may exercise.
func (o *Object) Info(caller policy.Caller) *wire.KeyInfo {
	a := o.Attrs()
	m := o.Meta()
	granted, _ := policy.Granted(caller, o.Policy())
	newest := o.Newest()
	info := &wire.KeyInfo{
		Id:              o.ID[:],
		Name:            o.Name,
		OwnerUid:        o.Owner,
		Type:            o.Spec.Type,
		Class:           o.Class,
		Usage:           uint32(a.Usage),
		Exportable:      a.Exportable,
		Wrappable:       a.Wrappable,
		Ephemeral:       o.Ephemeral,
		CreatedUnixNano: o.Created.UnixNano(),
		Version:         newest.N,
		CallerUsage:     uint32(granted),
		Kdf:             o.KDF,
		Lifecycle:       lifecycleInfo(m, o.Versions()),
	}
	for _, e := range a.ACL {
		info.Acl = append(info.Acl, ACLToWire(e))
	}
	o.mu.RLock()
	if o.gone == nil {
		info.PublicKey = newest.Mat.PublicDER()
	}
	o.mu.RUnlock()
	return info
}

func lifecycleInfo(m *Meta, vs []*Version) *wire.KeyLifecycle {
	l := &wire.KeyLifecycle{
		Origin:             wire.KeyOrigin(m.Origin),
		NeverExportable:    m.NeverExportable,
		Trusted:            m.Trusted,
		WrappedOut:         m.WrappedOut,
		MinVersion:         m.MinVersion,
		RotateAfterSeconds: int64(m.RotateAfter / time.Second),
		RefuseWhenSpent:    m.Budget == persist.BudgetPolicy_BUDGET_POLICY_REFUSE,
		DeletionAllowed:    m.DeletionAllowed,
		AllowedPrograms:    ProgramsToWire(m.Programs),
		Ssh:                m.SSH,

		BaseAlwaysSensitive:  m.BaseAlwaysSensitive,
		BaseNeverExtractable: m.BaseNeverExtractable,
		EverWrappable:        m.EverWrappable,
	}
	for _, v := range vs {
		l.Versions = append(l.Versions, &wire.KeyVersionInfo{
			Version:         v.N,
			CreatedUnixNano: v.Created.UnixNano(),
			Encryptions:     v.Used(),
			EncryptionLimit: v.limit.Load(),
		})
	}
	return l
}

// ACLToWire converts one ACL entry to its wire form.
func ACLToWire(e key.ACLEntry) *wire.AclEntry {
	w := &wire.AclEntry{Usage: uint32(e.Usage)}
	if e.Group {
		w.Principal = &wire.AclEntry_Gid{Gid: e.ID}
	} else {
		w.Principal = &wire.AclEntry_Uid{Uid: e.ID}
	}
	return w
}

// ProgramsToWire converts a list of programs to its wire form.
func ProgramsToWire(ps []key.Program) []*wire.Program {
	var w []*wire.Program
	for _, p := range ps {
		w = append(w, &wire.Program{Path: p.Path, Sha256: p.SHA256})
	}
	return w
}

// ProgramsFromWire converts a list of programs from its wire form, not
// checked (policy.CheckPrograms). An empty hash is none.
func ProgramsFromWire(w []*wire.Program) []key.Program { return programsFrom(w) }

func programsToRecord(ps []key.Program) []*persist.Program {
	var r []*persist.Program
	for _, p := range ps {
		r = append(r, &persist.Program{Path: p.Path, Sha256: p.SHA256})
	}
	return r
}

func programsFromRecord(r []*persist.Program) []key.Program { return programsFrom(r) }

// programsFrom copies a list of programs out of its wire or record form
// (the two messages have the same fields); an empty hash is none.
func programsFrom[P interface {
	GetPath() string
	GetSha256() []byte
}](xs []P) []key.Program {
	var ps []key.Program
	for _, p := range xs {
		var h []byte
		if len(p.GetSha256()) > 0 {
			h = bytes.Clone(p.GetSha256())
		}
		ps = append(ps, key.Program{Path: strings.Clone(p.GetPath()), SHA256: h})
	}
	return ps
}

package keystore

import (
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// Object is one key object. Its identity fields never change after
// creation; its attributes change only by replacing the whole *key.Attrs.
type Object struct {
	ID        key.ID
	Name      string
	Owner     uint32
	Spec      *key.Spec
	Class     key.Class
	Ephemeral bool
	Created   time.Time
	Version   uint32
	// KDF records how a key derived from a passphrase was made (the
	// Argon2id parameters and salt, none of them secret); nil for others.
	// Set before the object is added to a store, never changed.
	KDF *wire.PassphraseKdf

	attrs atomic.Pointer[key.Attrs]
	// removed is set once the object left the store.
	removed atomic.Bool

	// mu guards mat: operations hold it for reading while they use the
	// material, Destroy holds it for writing while it wipes, so material is
	// never wiped under a running operation. Nothing else is done under mu.
	mu  sync.RWMutex
	mat *mech.Key // nil once destroyed
}

// NewObject makes an object for freshly generated or imported material.
func NewObject(name string, owner uint32, mat *mech.Key, attrs *key.Attrs, ephemeral bool, now time.Time) *Object {
	o := &Object{
		ID:        key.NewID(),
		Name:      name,
		Owner:     owner,
		Spec:      mat.Spec(),
		Class:     mat.Class(),
		Ephemeral: ephemeral,
		Created:   now,
		Version:   1,
		mat:       mat,
	}
	o.attrs.Store(attrs)
	return o
}

// Attrs returns the current attributes. The value must not be modified.
func (o *Object) Attrs() *key.Attrs { return o.attrs.Load() }

// Policy returns the object as package policy sees it.
func (o *Object) Policy() policy.Key {
	return policy.Key{Owner: o.Owner, Spec: o.Spec, Class: o.Class, Attrs: o.attrs.Load()}
}

// ReplaceAttrs installs next if the attributes are still old, and reports
// whether it did. Callers decide next from old with package policy and
// retry on false.
func (o *Object) ReplaceAttrs(old, next *key.Attrs) bool {
	return o.attrs.CompareAndSwap(old, next)
}

var errDestroyed = wire.Errorf(wire.Status_STATUS_NOT_FOUND, "key destroyed")

// Use runs fn with the key's material, which stays valid (not wiped) until
// fn returns. It fails with STATUS_NOT_FOUND once the key is destroyed.
func (o *Object) Use(fn func(*mech.Key) error) error {
	o.mu.RLock()
	defer o.mu.RUnlock()
	if o.mat == nil {
		return errDestroyed
	}
	return fn(o.mat)
}

// Destroyed reports whether the object's material is gone.
func (o *Object) Destroyed() bool {
	o.mu.RLock()
	defer o.mu.RUnlock()
	return o.mat == nil
}

// wipe destroys the material, waiting for operations in progress. It
// reports memory corruption found on the way (see mech.Key.Destroy).
func (o *Object) wipe() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	var err error
	if o.mat != nil {
		err = o.mat.Destroy()
		o.mat = nil
	}
	return err
}

// Info returns the object's description for the wire, with the usages
// the given caller may exercise.
func (o *Object) Info(caller policy.Caller) *wire.KeyInfo {
	a := o.Attrs()
	granted, _ := policy.Granted(caller, o.Policy())
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
		Version:         o.Version,
		CallerUsage:     uint32(granted),
		Kdf:             o.KDF,
	}
	for _, e := range a.ACL {
		info.Acl = append(info.Acl, ACLToWire(e))
	}
	o.mu.RLock()
	if o.mat != nil {
		info.PublicKey = o.mat.PublicDER()
	}
	o.mu.RUnlock()
	return info
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

package policy

import (
	"fmt"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// Caller is the identity the kernel attested for one message.
type Caller struct {
	UID uint32
	GID uint32
}

// Key is what policy needs to know about a key object.
type Key struct {
	Owner uint32
	Spec  *key.Spec
	Class key.Class
	Attrs *key.Attrs
	Prov  Provenance
	// Programs are the executables that may use the key (CheckProgram);
	// none: any.
	Programs []key.Program
}

// Provenance is where a key object's material came from and where it has
// been: what decides whether anyone outside the daemon may know it.
type Provenance struct {
	Origin key.Origin
	// NeverExportable: the key has never been exportable.
	NeverExportable bool
	// Trusted: an administrator vouches that the key's bytes are known to
	// no one outside the daemon (a key imported from an HSM, say).
	Trusted bool
	// WrappedOut: the key's material has left the daemon wrapped (or may
	// have: see Normalize).
	WrappedOut bool
}

// Decision is the outcome of a check. The zero value allows.
type Decision struct {
	Status wire.Status
	Public string // for the client: vague
	Reason string // for the log and audit: precise
}

// Allowed reports whether the decision allows the operation.
func (d Decision) Allowed() bool { return d.Status == wire.Status_STATUS_OK }

// Err returns nil when allowed, else a *wire.Error carrying both reasons.
func (d Decision) Err() error {
	if d.Allowed() {
		return nil
	}
	return &wire.Error{Status: d.Status, Public: d.Public, Detail: d.Reason}
}

var allow = Decision{}

func deny(st wire.Status, public, format string, args ...any) Decision {
	return Decision{Status: st, Public: public, Reason: fmt.Sprintf(format, args...)}
}

// Action is what a caller wants to do with a key.
type Action int

const (
	// Use exercises one or more usages (encrypt, sign, derive, ...).
	Use Action = iota + 1
	// Open puts a key into the caller's connection, or shows its info.
	Open
	// ReadPublic reads the public half of an asymmetric key.
	ReadPublic
	// Export reads the key's bytes in plaintext.
	Export
	// Manage destroys the key or changes its attributes or ACL.
	Manage
)

func (a Action) String() string {
	switch a {
	case Use:
		return "use"
	case Open:
		return "open"
	case ReadPublic:
		return "read-public"
	case Export:
		return "export"
	case Manage:
		return "manage"
	}
	return fmt.Sprintf("action(%d)", int(a))
}

// Granted returns the usages c may exercise on k and whether c may see k
// at all. The owner gets every usage the key has; anyone else gets the
// union of the ACL entries that name their uid or gid, limited to the
// usages the key has. An ACL entry with no usages still makes the key
// visible (open, info, public key).
func Granted(c Caller, k Key) (u key.Usage, visible bool) {
	if c.UID == k.Owner {
		return k.Attrs.Usage, true
	}
	for _, e := range k.Attrs.ACL {
		if (!e.Group && e.ID == c.UID) || (e.Group && e.ID == c.GID) {
			visible = true
			u |= e.Usage
		}
	}
	return u & k.Attrs.Usage, visible
}

// Authorize decides whether c may perform act on k; need names the usages
// for Use.
//
// A key c cannot see is NOT_FOUND, so that probing ids or names does not
// reveal which exist. A usage the key itself lacks is POLICY_VIOLATION; a
// usage the key has but c was not granted is PERMISSION_DENIED.
func Authorize(c Caller, k Key, act Action, need key.Usage) Decision {
	granted, visible := Granted(c, k)
	if !visible {
		return deny(wire.Status_STATUS_NOT_FOUND, "no such key",
			"uid %d gid %d is neither owner (uid %d) nor in the ACL", c.UID, c.GID, k.Owner)
	}
	owner := c.UID == k.Owner
	switch act {
	case Open, ReadPublic:
		return allow
	case Use:
		if need == 0 || need&^key.AllUsages != 0 {
			return deny(wire.Status_STATUS_INTERNAL, "internal error", "Use with invalid usage %#x", uint32(need))
		}
		if !k.Attrs.Usage.Has(need) {
			// The owner knows the key's usage and is told what is
			// missing; anyone else learns no more than that it is.
			public := "the key's usage does not allow this operation"
			if owner {
				public = fmt.Sprintf("the key's usage (%s) does not allow this operation, which needs %s", k.Attrs.Usage, need&^k.Attrs.Usage)
			}
			return deny(wire.Status_STATUS_POLICY_VIOLATION, public,
				"key usage %q lacks %q", k.Attrs.Usage, need&^k.Attrs.Usage)
		}
		if !granted.Has(need) {
			return deny(wire.Status_STATUS_PERMISSION_DENIED, "permission denied",
				"uid %d gid %d is granted %q, needs %q", c.UID, c.GID, granted, need)
		}
		return allow
	case Export:
		if k.Class == key.Public {
			return allow // a public key is always readable
		}
		if !owner {
			return deny(wire.Status_STATUS_PERMISSION_DENIED, "permission denied",
				"only the owner (uid %d) may export; caller uid %d", k.Owner, c.UID)
		}
		if !k.Attrs.Exportable {
			return deny(wire.Status_STATUS_POLICY_VIOLATION, "the key is not exportable", "export of a non-exportable key")
		}
		return allow
	case Manage:
		if !owner {
			return deny(wire.Status_STATUS_PERMISSION_DENIED, "permission denied",
				"only the owner (uid %d) may manage the key; caller uid %d", k.Owner, c.UID)
		}
		return allow
	}
	return deny(wire.Status_STATUS_INTERNAL, "internal error", "unknown action %v", act)
}

// DefaultUsage is what a key of this type and class gets when its template
// names no usage: everything it can do, minus what the role rule excludes
// (no key both moves keys and protects data). Where a type can do both,
// data wins: wrap and unwrap must be asked for explicitly.
func DefaultUsage(s *key.Spec, c key.Class) key.Usage {
	u := s.Capable(c)
	if u&key.Data != 0 {
		u &^= key.Transport
	}
	return u
}

// CheckUsage decides whether a key of this spec and class may carry usage u.
func CheckUsage(s *key.Spec, c key.Class, u key.Usage) Decision {
	if u&^key.AllUsages != 0 {
		return deny(wire.Status_STATUS_INVALID_ARGUMENT, "unknown usage bits", "usage %#x has unknown bits", uint32(u))
	}
	if capable := s.Capable(c); !capable.Has(u) {
		return deny(wire.Status_STATUS_INVALID_ARGUMENT, fmt.Sprintf("a %s key cannot %s", s.Name, u&^capable),
			"%s %v key asked for %q, capable of %q", s.Name, c, u, capable)
	}
	if u&key.Transport != 0 && u&key.Data != 0 {
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			fmt.Sprintf("a key that wraps or unwraps keys never encrypts or decrypts data (asked for %s): make two keys", u),
			"usage %q mixes key transport (%q) and data (%q)", u, u&key.Transport, u&key.Data)
	}
	return allow
}

// Template is a request to create a key object (generate, import, derive).
type Template struct {
	Spec       *key.Spec
	Class      key.Class
	Usage      key.Usage // 0: DefaultUsage
	Exportable bool
	Wrappable  bool
	ACL        []key.ACLEntry
}

// CheckTemplate validates a template and returns the usage the new key
// gets.
func CheckTemplate(t Template) (key.Usage, Decision) {
	if t.Spec == nil {
		return 0, deny(wire.Status_STATUS_INVALID_ARGUMENT, "unknown key type", "nil spec")
	}
	if !t.Spec.ClassOK(t.Class) {
		return 0, deny(wire.Status_STATUS_INVALID_ARGUMENT, "invalid key class for the type", "%s with class %v", t.Spec.Name, t.Class)
	}
	u := t.Usage
	if u == 0 {
		u = DefaultUsage(t.Spec, t.Class)
	}
	if d := CheckUsage(t.Spec, t.Class, u); !d.Allowed() {
		return 0, d
	}
	if u&key.Transport != 0 && t.Wrappable {
		return 0, deny(wire.Status_STATUS_POLICY_VIOLATION, "a key that wraps or unwraps keys is never wrappable",
			"wrappable key with usage %q", u)
	}
	if d := CheckACL(u, t.ACL); !d.Allowed() {
		return 0, d
	}
	return u, allow
}

// CheckACL validates an ACL for a key whose usage is u: bounded length, no
// principal twice, and no entry granting a usage the key does not have.
func CheckACL(u key.Usage, acl []key.ACLEntry) Decision {
	if len(acl) > key.MaxACLEntries {
		return deny(wire.Status_STATUS_RESOURCE_EXHAUSTED, fmt.Sprintf("an ACL holds at most %d entries", key.MaxACLEntries),
			"ACL of %d entries", len(acl))
	}
	seen := make(map[key.ACLEntry]bool, len(acl))
	for _, e := range acl {
		p := key.ACLEntry{Group: e.Group, ID: e.ID}
		if seen[p] {
			return deny(wire.Status_STATUS_INVALID_ARGUMENT, "an ACL names a principal twice", "duplicate ACL principal %+v", p)
		}
		seen[p] = true
		if !u.Has(e.Usage) {
			return deny(wire.Status_STATUS_INVALID_ARGUMENT, "an ACL entry grants a usage the key does not have",
				"ACL entry %+v grants %q beyond key usage %q", p, e.Usage&^u, u)
		}
	}
	return allow
}

// Change is a requested change of sticky attributes; nil fields are left
// alone.
type Change struct {
	Usage      *key.Usage
	Exportable *bool
	Wrappable  *bool
}

// CheckChange decides whether the attributes old may become those of c,
// and returns the result. Attributes only ever narrow: usage may shrink,
// exportable and wrappable may be switched off, never on. ACL entries that
// would grant more than the new usage are trimmed to it.
func CheckChange(old *key.Attrs, c Change) (*key.Attrs, Decision) {
	n := *old
	if c.Usage != nil {
		if *c.Usage&^key.AllUsages != 0 {
			return nil, deny(wire.Status_STATUS_INVALID_ARGUMENT, "unknown usage bits", "usage %#x", uint32(*c.Usage))
		}
		if !old.Usage.Has(*c.Usage) {
			return nil, deny(wire.Status_STATUS_POLICY_VIOLATION, "usage can only shrink",
				"usage %q would widen %q", *c.Usage, old.Usage)
		}
		n.Usage = *c.Usage
	}
	if c.Exportable != nil {
		if *c.Exportable && !old.Exportable {
			return nil, deny(wire.Status_STATUS_POLICY_VIOLATION, "exportable can only be switched off",
				"attempt to make a non-exportable key exportable")
		}
		n.Exportable = *c.Exportable
	}
	if c.Wrappable != nil {
		if *c.Wrappable && !old.Wrappable {
			return nil, deny(wire.Status_STATUS_POLICY_VIOLATION, "wrappable can only be switched off",
				"attempt to make a non-wrappable key wrappable")
		}
		n.Wrappable = *c.Wrappable
	}
	if n.Usage != old.Usage {
		n.ACL = make([]key.ACLEntry, len(old.ACL))
		for i, e := range old.ACL {
			e.Usage &= n.Usage
			n.ACL[i] = e
		}
	}
	return &n, allow
}

// CheckDerive decides whether caller may have a key made from parent by
// derivation with the attributes t asks for. A derived key inherits its
// parent's restrictions: it is exportable or wrappable only if the parent
// is, and only for the parent's owner (anyone else granted derive on the
// key could otherwise take out what only the owner may); and it is always
// a secret key.
func CheckDerive(c Caller, parent Key, t Template) (key.Usage, Decision) {
	if t.Spec == nil || t.Spec.Asymmetric {
		return 0, deny(wire.Status_STATUS_INVALID_ARGUMENT, "a derived key must be of a secret key type", "derive into %v", t.Spec)
	}
	if parent.Restricted() && c.UID != parent.Owner {
		// The child would be the caller's, who could lift the list of
		// programs it inherits.
		return 0, deny(wire.Status_STATUS_POLICY_VIOLATION, "only its owner may derive from a key restricted to named programs",
			"derive: uid %d from uid %d's key restricted to programs", c.UID, parent.Owner)
	}
	if (t.Exportable || t.Wrappable) && c.UID != parent.Owner {
		return 0, deny(wire.Status_STATUS_POLICY_VIOLATION, "only the parent's owner may derive an exportable or wrappable key",
			"derive: uid %d asked for an exportable or wrappable child of uid %d's key", c.UID, parent.Owner)
	}
	if t.Exportable && !parent.Attrs.Exportable {
		return 0, deny(wire.Status_STATUS_POLICY_VIOLATION, "a key derived from a non-exportable key cannot be exportable",
			"derive: exportable child of non-exportable %s parent", parent.Spec.Name)
	}
	if t.Wrappable && !parent.Attrs.Wrappable {
		return 0, deny(wire.Status_STATUS_POLICY_VIOLATION, "a key derived from a non-wrappable key cannot be wrappable",
			"derive: wrappable child of non-wrappable %s parent", parent.Spec.Name)
	}
	return CheckTemplate(t)
}

// CheckDeriveKDF decides whether a key may be derived from parent with
// kdf. The raw shared secret and the X9.63 KDF are for key agreement: they
// take an X25519 or ECDH parent only. From any other key they would give
// its own bytes (raw) or an unkeyed hash of them, under another type and
// other attributes.
func CheckDeriveKDF(parent Key, kdf wire.DeriveKdf) Decision {
	switch kdf {
	case wire.DeriveKdf_DERIVE_KDF_UNSPECIFIED, wire.DeriveKdf_DERIVE_KDF_HKDF:
		return allow
	case wire.DeriveKdf_DERIVE_KDF_NONE, wire.DeriveKdf_DERIVE_KDF_X963:
		if parent.Spec != nil && (parent.Spec.Family == key.FamilyX25519 || parent.Spec.Family == key.FamilyECDH) {
			return allow
		}
		name := "untyped"
		if parent.Spec != nil {
			name = parent.Spec.Name
		}
		return deny(wire.Status_STATUS_INVALID_ARGUMENT, "the raw and X9.63 derivations take an X25519 or ECDH key",
			"derive: %v from a %s key", kdf, name)
	}
	return deny(wire.Status_STATUS_INVALID_ARGUMENT, "unknown key derivation function", "derive: kdf %d", int32(kdf))
}

// CheckQuota decides whether an owner who holds owned keys may create one
// more under limit.
func CheckQuota(owned, limit int) Decision {
	if owned >= limit {
		return deny(wire.Status_STATUS_RESOURCE_EXHAUSTED, fmt.Sprintf("key quota reached (%d keys per user)", limit),
			"owner holds %d keys, limit %d", owned, limit)
	}
	return allow
}

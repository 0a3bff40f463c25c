package policy

import (
	"fmt"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// The rules of key transport: which keys may wrap, which may be wrapped,
// and what an unwrapped key may be. Together with the role rule
// (CheckUsage: no key both moves keys and protects data) and the copy rule
// (CheckCopy), they are what keeps a key's bytes from leaving the daemon
// by any sequence of calls; docs/security.md states them and the model
// search in model_test.go checks them.

// WrapFormat says what a wrap carries besides the key's bytes.
type WrapFormat int

const (
	// Bare formats (RFC 3394/5649, RSA-AES-KWP) carry no attributes.
	Bare WrapFormat = iota + 1
	// Bound is keywarden's format: the attributes are bound to the bytes.
	Bound
)

// TrustedWrapping reports whether k may wrap keys, and vouch for the
// attributes of keys unwrapped in keywarden's format: whether its bytes
// are known to no one outside the daemon and to no other key object in
// it. That holds for a key that
//
//   - is a pure key-transport key: no data usage (its bytes never serve
//     as an encryption key for data a caller chooses or reads), never
//     exportable now, never wrappable, and never wrapped out;
//   - and was generated here and has never been exportable, or was
//     generated or imported and an administrator vouches for it.
//
// A derived key never is: its bytes follow from its parent and inputs
// that anyone granted derive can repeat (and with ECDH the peer knows
// them); nor is a key derived from a passphrase, known to whoever knows
// the passphrase; nor a key made by unwrapping, whose bytes were in a
// blob, and may be in others that bring them back once it is gone, as
// another type of key.
func TrustedWrapping(k Key) bool {
	a, p := k.Attrs, k.Prov
	if a.Usage&key.Data != 0 || a.Exportable || a.Wrappable || p.WrappedOut {
		return false
	}
	switch p.Origin {
	case key.Generated:
		return p.NeverExportable || p.Trusted
	case key.Imported:
		return p.Trusted
	}
	return false
}

// CheckTrust decides whether an administrator may make k a trusted
// wrapping key: one with wrap or unwrap usage that TrustedWrapping would
// accept with the administrator's word.
func CheckTrust(k Key) Decision {
	a, p := k.Attrs, k.Prov
	switch {
	case a.Usage&key.Transport == 0:
		return deny(wire.Status_STATUS_POLICY_VIOLATION, "only a key with wrap or unwrap usage can be a trusted wrapping key",
			"trust of a key with usage %q", a.Usage)
	case p.Origin == key.Derived || p.Origin == key.Passphrase:
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			"a derived key cannot be a trusted wrapping key: its bytes follow from its parent (or passphrase) and inputs others can repeat",
			"trust of a %v key", p.Origin)
	case p.Origin == key.Unwrapped:
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			"a key made by unwrapping cannot be a trusted wrapping key: its bytes were in a blob and may be in others; import the wrapping key instead",
			"trust of an unwrapped key")
	case a.Exportable:
		return deny(wire.Status_STATUS_POLICY_VIOLATION, "an exportable key cannot be a trusted wrapping key: switch exportable off first",
			"trust of an exportable key")
	case p.WrappedOut:
		return deny(wire.Status_STATUS_POLICY_VIOLATION, "a key that has left the daemon wrapped cannot be a trusted wrapping key",
			"trust of a key that was wrapped out")
	}
	k.Prov.Trusted = true
	if !TrustedWrapping(k) {
		return deny(wire.Status_STATUS_POLICY_VIOLATION, "the key cannot be a trusted wrapping key",
			"trust refused: usage %q, wrappable %v, origin %v", a.Usage, a.Wrappable, p.Origin)
	}
	return allow
}

// CheckWrap decides whether c may wrap target under wrapping.
//
// Rules: only a key with wrap usage, granted to c, wraps, and only if it
// is a trusted wrapping key (TrustedWrapping: anyone who knows the
// wrapping key could open the blob, and wrapping would export a key that
// is not exportable). Only a wrappable key is wrapped, only by its owner
// (wrapping hands out a copy of the key), never a key-transport key (so no
// key wraps itself or a copy of itself), never under a weaker key, and
// never a public key (it is readable anyway).
func CheckWrap(c Caller, wrapping, target Key) Decision {
	if d := Authorize(c, wrapping, Use, key.Wrap); !d.Allowed() {
		return d
	}
	if d := Authorize(c, target, Manage, 0); !d.Allowed() {
		return d
	}
	switch {
	case target.Class == key.Public:
		return deny(wire.Status_STATUS_INVALID_ARGUMENT, "a public key is not wrapped: read it instead", "wrap of a public key")
	case target.Attrs.Usage&key.Transport != 0:
		return deny(wire.Status_STATUS_POLICY_VIOLATION, "a key that wraps or unwraps keys is never wrapped",
			"wrap of a key-transport %s key (usage %q)", target.Spec.Name, target.Attrs.Usage)
	case !target.Attrs.Wrappable:
		return deny(wire.Status_STATUS_POLICY_VIOLATION, "the key is not wrappable", "wrap of a non-wrappable %s key", target.Spec.Name)
	case !TrustedWrapping(wrapping):
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			"the wrapping key may be known outside the daemon: only keys generated here, never exportable, wrappable or wrapped out, with no data usage (or trusted by an administrator) wrap",
			"untrusted %s wrapping key (origin %v, usage %q, exportable %v, wrappable %v, wrapped out %v)", wrapping.Spec.Name,
			wrapping.Prov.Origin, wrapping.Attrs.Usage, wrapping.Attrs.Exportable, wrapping.Attrs.Wrappable, wrapping.Prov.WrappedOut)
	case wrapping.Spec.Strength < target.Spec.Strength:
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			fmt.Sprintf("a %d-bit key is not wrapped under a %d-bit key", target.Spec.Strength, wrapping.Spec.Strength),
			"wrap of %s (%d bits) under %s (%d bits)", target.Spec.Name, target.Spec.Strength, wrapping.Spec.Name, wrapping.Spec.Strength)
	}
	return allow
}

// Sealed are the attributes a bound (keywarden format) blob carries.
type Sealed struct {
	Spec       *key.Spec
	Class      key.Class
	Usage      key.Usage
	Exportable bool
	Wrappable  bool
}

// CheckUnwrap decides whether c may unwrap a blob of format f with
// unwrapping, and returns the template of the key it makes.
//
//   - A bound blob's attributes (sealed) count only when the unwrapping
//     key is a trusted wrapping key: whoever knows the key could have
//     written any. The key made has the blob's type and class, its usages
//     or fewer (req.Usage, if given, narrows them), and is wrappable only
//     if the blob says so.
//   - A bare blob carries no attributes: the request names the type and
//     usages (sealed is nil).
//   - Either way the key made is never exportable (switching exportable
//     off is final for every copy the daemon makes: an old blob of a key
//     that was exportable then gives no exportable key now), and is
//     wrappable only for the unwrapping key's owner: as with derive,
//     anyone else it is shared with gets a key locked in the daemon.
//
// The key made must still pass CheckTemplate, and CheckCopy when its
// material turns out to be held by another key already.
func CheckUnwrap(c Caller, unwrapping Key, f WrapFormat, sealed *Sealed, req Template) (Template, Decision) {
	if d := CheckUnwrapKey(c, unwrapping, f, req); !d.Allowed() {
		return Template{}, d
	}
	owner := c.UID == unwrapping.Owner
	t := req
	if f == Bound {
		if sealed == nil || sealed.Spec == nil || sealed.Usage == 0 {
			return Template{}, deny(wire.Status_STATUS_INVALID_ARGUMENT, "the blob carries no usable attributes", "bound unwrap without sealed attributes")
		}
		if req.Usage != 0 && !sealed.Usage.Has(req.Usage) {
			return Template{}, deny(wire.Status_STATUS_POLICY_VIOLATION,
				fmt.Sprintf("the wrapped key has usage %s: an unwrapped key may only have fewer", sealed.Usage),
				"bound unwrap asked for %q beyond the blob's %q", req.Usage, sealed.Usage)
		}
		t.Spec, t.Class = sealed.Spec, sealed.Class
		if t.Usage == 0 {
			t.Usage = sealed.Usage
		}
		t.Wrappable = sealed.Wrappable && owner
	} else if req.Wrappable && !owner {
		return Template{}, deny(wire.Status_STATUS_POLICY_VIOLATION, "only the unwrapping key's owner may unwrap into a wrappable key",
			"bare unwrap: uid %d asked for a wrappable key under uid %d's key", c.UID, unwrapping.Owner)
	}
	t.Exportable = false
	u, d := CheckTemplate(t)
	if !d.Allowed() {
		return Template{}, d
	}
	t.Usage = u
	return t, allow
}

// CheckUnwrapKey is the part of CheckUnwrap that needs no blob: whether c
// may unwrap blobs of format f with unwrapping at all, for the request
// req. The daemon asks it before opening the blob.
func CheckUnwrapKey(c Caller, unwrapping Key, f WrapFormat, req Template) Decision {
	if d := Authorize(c, unwrapping, Use, key.Unwrap); !d.Allowed() {
		return d
	}
	if f == Bound && !TrustedWrapping(unwrapping) {
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			"attributes are taken only from a blob wrapped under a key known to no one (generated here and never exportable, or trusted by an administrator)",
			"bound unwrap with an untrusted %s key", unwrapping.Spec.Name)
	}
	if req.Exportable {
		return deny(wire.Status_STATUS_POLICY_VIOLATION, "an unwrapped key is never exportable",
			"unwrap asked for an exportable key")
	}
	return allow
}

// Normalize brings the attributes of a key made under older rules within
// today's, by narrowing only: a key that had both key-transport and data
// usages keeps its data usages (as DefaultUsage prefers); a key-transport
// key that was wrappable is no longer, and counts as wrapped out (it may
// have been, and is then no longer trusted to wrap). ACL grants shrink
// with the usage. It reports whether it changed anything; a and p are not
// modified.
func Normalize(a *key.Attrs, p Provenance) (*key.Attrs, Provenance, bool) {
	u := a.Usage
	if u&key.Transport != 0 && u&key.Data != 0 {
		u &^= key.Transport
	}
	wrapOut := u&key.Transport != 0 && a.Wrappable
	if u == a.Usage && !wrapOut {
		return a, p, false
	}
	n := *a
	n.Usage = u
	if wrapOut {
		n.Wrappable = false
		p.WrappedOut = true
	}
	if u != a.Usage {
		n.ACL = make([]key.ACLEntry, len(a.ACL))
		for i, e := range a.ACL {
			e.Usage &= u
			n.ACL[i] = e
		}
	}
	return &n, p, true
}

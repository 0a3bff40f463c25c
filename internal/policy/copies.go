package policy

import (
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// CheckCopy decides whether a new key object n may hold material that the
// key objects held already hold: the copy rule, which makes the attribute
// rules hold for a key's material and not only for one object of it.
// Whatever made the copy (an unwrap in any format, a derivation repeated
// with the same inputs, an import of bytes someone had, the public half of
// a private key), two things must hold:
//
//   - One role per material: n does not move keys (wrap, unwrap) if any
//     holder protects data (encrypt, decrypt), nor the other way round,
//     whoever owns it. So no copy decrypts what another wraps; a public key
//     that wraps is never the public half of a private key that decrypts.
//   - n is a narrowing of one of the holders that constrain it: of the
//     same type, of the same class (or the public half of a private
//     holder), with no usage that holder lacks, exportable or wrappable
//     only if that holder is, and restricted to some programs if that
//     holder is (Key.Programs: otherwise a program the holder refuses
//     could use the copy). A key made by unwrapping is constrained by
//     every holder, whoever owns it: its bytes came from a blob, which
//     may be another user's key. Any other copy (derived, or of bytes the
//     caller supplied) is constrained by its own owner's holders only:
//     its maker could make it anyway (the parent's grant covers all its
//     children; imported bytes are known to their importer), and a
//     refusal because of another user's key would tell that user's
//     secrets (a guessed passphrase) and let one user squat another's
//     derivations. A private key whose material is held only by public
//     keys narrows nothing: the public keys hide nothing.
//
// So what all the objects of one material allow together never grows,
// whatever sequence of calls made them.
func CheckCopy(n Key, held []Key) Decision {
	if d := checkCopyRoles(n, held); !d.Allowed() {
		return d
	}
	return checkNarrowing(n, held)
}

// checkCopyRoles is the first half of CheckCopy: one role per material.
func checkCopyRoles(n Key, held []Key) Decision {
	for _, h := range held {
		if roles(n.Attrs.Usage)&^roles(h.Attrs.Usage) != 0 && roles(h.Attrs.Usage) != 0 {
			return deny(wire.Status_STATUS_POLICY_VIOLATION,
				"these key bytes are already held by a key of the other role (moving keys, or protecting data): one key's material has one role",
				"copy with usage %q of material held with %q", n.Attrs.Usage, h.Attrs.Usage)
		}
	}
	return allow
}

// checkNarrowing is the second half of CheckCopy: n narrows a holder
// that constrains it.
func checkNarrowing(n Key, held []Key) Decision {
	var why Decision
	constrained, publicHalves := false, n.Class == key.Private
	for _, h := range held {
		if n.Prov.Origin != key.Unwrapped && h.Owner != n.Owner {
			continue
		}
		constrained = true
		publicHalves = publicHalves && h.Class == key.Public && h.Spec.Type == n.Spec.Type
		d := narrows(n, h)
		if d.Allowed() {
			return allow
		}
		if why.Allowed() {
			why = d
		}
	}
	if !constrained || publicHalves {
		return allow
	}
	return why
}

// roles returns the roles a usage takes: key.Transport, key.Data, both or
// none (signing, verifying, deriving are no role).
func roles(u key.Usage) key.Usage {
	var r key.Usage
	if u&key.Transport != 0 {
		r |= key.Transport
	}
	if u&key.Data != 0 {
		r |= key.Data
	}
	return r
}

// narrows decides whether n is a narrowing of h.
func narrows(n, h Key) Decision {
	switch {
	case h.Spec.Type != n.Spec.Type || !(h.Class == n.Class || (n.Class == key.Public && h.Class == key.Private)):
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			"these key bytes are already held by a key of another type: a key's material keeps its type",
			"copy as %s %v of material held as %s %v", n.Spec.Name, n.Class, h.Spec.Name, h.Class)
	case !h.Attrs.Usage.Has(n.Attrs.Usage):
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			"these key bytes are already held by a key with fewer usages: a copy of a key never has more",
			"copy with usage %q of material held with %q", n.Attrs.Usage, h.Attrs.Usage)
	case n.Attrs.Exportable && !h.Attrs.Exportable:
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			"these key bytes are already held by a key that is not exportable: a copy cannot be",
			"exportable copy of non-exportable material")
	case n.Attrs.Wrappable && !h.Attrs.Wrappable:
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			"these key bytes are already held by a key that is not wrappable: a copy cannot be",
			"wrappable copy of non-wrappable material")
	case h.Restricted() && !n.Restricted():
		return deny(wire.Status_STATUS_POLICY_VIOLATION,
			"these key bytes are already held by a key that only some programs may use: a copy that any program may use is refused",
			"copy without a program restriction of material held by a restricted key")
	}
	return allow
}

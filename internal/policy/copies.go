package policy

import "github.com/keywarden/keywarden/internal/wire"

// CheckCopy decides whether a new key object n may hold material that the
// key objects held already hold: the copy rule, which makes the attribute
// rules hold for a key's material and not only for one object of it.
// Whatever made the copy (an unwrap in any format, a derivation repeated
// with the same inputs, an import of bytes someone had), it must be a
// narrowing of one of the holders: of the same type and class, with no
// usage that holder lacks, and exportable or wrappable only if that holder
// is. So no sequence of calls widens what any key of the material allows,
// switches exportable or wrappable back on, changes its type, or makes a
// decrypting copy of a key that wraps: what all the objects of one
// material allow together never grows.
func CheckCopy(n Key, held []Key) Decision {
	if len(held) == 0 {
		return allow
	}
	var why Decision
	for _, h := range held {
		d := narrows(n, h)
		if d.Allowed() {
			return allow
		}
		if why.Allowed() {
			why = d
		}
	}
	return why
}

// narrows decides whether n is a narrowing of h.
func narrows(n, h Key) Decision {
	switch {
	case h.Spec.Type != n.Spec.Type || h.Class != n.Class:
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
	}
	return allow
}

package keystore

import (
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/seal"
)

// Which key objects hold which material: the index that lets the copy
// rule (policy.CheckCopy) hold for a key's material and not only for one
// object of it. Every version of every live key, persistent or ephemeral,
// loaded or not, is in it under its fingerprint (seal.Keys.Fingerprint):
// the fingerprints of persistent keys are kept in their records, under the
// record MAC, and the index is built from them at unseal. A public key has
// the fingerprint of its private key: an object holding only the public
// half is of the same material (it may wrap for the private half), though
// it hides nothing.
//
// An entry costs about 48 bytes of heap; a million keys, about 48 MiB.

// fingerprint is a material fingerprint.
type fingerprint = [seal.FingerprintSize]byte

// holder is one key object holding some material, with what the copy rule
// needs of it.
type holder struct {
	id     key.ID
	owner  uint32
	typ    uint8
	class  uint8
	usage  uint8
	flags  uint8
	origin uint8
}

const (
	holderExportable = 1 << iota
	holderWrappable
	// holderRestricted: only some programs may use the key. The index
	// keeps no list: the copy rule asks only whether there is one.
	holderRestricted
)

// someProgram stands for a holder's list of programs in the copy rule.
var someProgram = []key.Program{{}}

func holderOf(id key.ID, owner uint32, s *key.Spec, c key.Class, a *key.Attrs, origin key.Origin, restricted bool) holder {
	h := holder{id: id, owner: owner, typ: uint8(s.Type), class: uint8(c), usage: uint8(a.Usage), origin: uint8(origin)}
	if restricted {
		h.flags |= holderRestricted
	}
	if a.Exportable {
		h.flags |= holderExportable
	}
	if a.Wrappable {
		h.flags |= holderWrappable
	}
	return h
}

// policyKey describes the holder as the copy rule sees it.
func (h holder) policyKey() policy.Key {
	k := policy.Key{
		Owner: h.owner,
		Spec:  key.Lookup(key.Type(h.typ)),
		Class: key.Class(h.class),
		Attrs: &key.Attrs{Usage: key.Usage(h.usage), Exportable: h.flags&holderExportable != 0, Wrappable: h.flags&holderWrappable != 0},
		Prov:  policy.Provenance{Origin: key.Origin(h.origin)},
	}
	if h.flags&holderRestricted != 0 {
		k.Programs = someProgram
	}
	return k
}

// materials maps fingerprints to their holders. Almost all material has
// one holder; the few with more keep the rest in more. Not safe for
// concurrent use: the store's mu guards it.
type materials struct {
	one  map[fingerprint]holder
	more map[fingerprint][]holder
}

func newMaterials(n int) materials {
	return materials{one: make(map[fingerprint]holder, n), more: make(map[fingerprint][]holder)}
}

// holders appends the holders of fp to dst.
func (m *materials) holders(dst []holder, fp fingerprint) []holder {
	if h, ok := m.one[fp]; ok {
		dst = append(dst, h)
		dst = append(dst, m.more[fp]...)
	}
	return dst
}

func (m *materials) add(fp fingerprint, h holder) {
	if cur, ok := m.one[fp]; ok {
		if cur.id == h.id {
			m.one[fp] = h
			return
		}
		for i, x := range m.more[fp] {
			if x.id == h.id {
				m.more[fp][i] = h
				return
			}
		}
		m.more[fp] = append(m.more[fp], h)
		return
	}
	m.one[fp] = h
}

func (m *materials) remove(fp fingerprint, id key.ID) {
	cur, ok := m.one[fp]
	if !ok {
		return
	}
	rest := m.more[fp]
	if cur.id == id {
		if len(rest) == 0 {
			delete(m.one, fp)
			return
		}
		m.one[fp] = rest[0]
		rest = rest[1:]
	} else {
		for i, x := range rest {
			if x.id == id {
				rest = append(rest[:i:i], rest[i+1:]...)
				break
			}
		}
	}
	if len(rest) == 0 {
		delete(m.more, fp)
	} else {
		m.more[fp] = rest
	}
}

// size returns the number of (material, holder) entries.
func (m *materials) size() int {
	n := len(m.one)
	for _, r := range m.more {
		n += len(r)
	}
	return n
}

// checkCopy applies the copy rule to o, whose versions have the
// fingerprints fps, against every other holder of their material.
func (m *materials) checkCopy(o *Object, fps []fingerprint) policy.Decision {
	var held []holder
	for _, fp := range fps {
		held = m.holders(held, fp)
	}
	if len(held) == 0 {
		return policy.Decision{}
	}
	keys := make([]policy.Key, 0, len(held))
	for _, h := range held {
		if h.id != o.ID {
			keys = append(keys, h.policyKey())
		}
	}
	return policy.CheckCopy(o.Policy(), keys)
}

// addObject records o as a holder of its versions' material, with its
// current attributes (again, after they change).
func (m *materials) addObject(o *Object) {
	h := holderOf(o.ID, o.Owner, o.Spec, o.Class, o.Attrs(), key.Origin(o.Meta().Origin), len(o.Meta().Programs) > 0)
	for _, v := range o.Versions() {
		if v.hasFP {
			m.add(v.fp, h)
		}
	}
}

// removeObject forgets o as a holder of the material of vs.
func (m *materials) removeObject(o *Object, vs []*Version) {
	for _, v := range vs {
		if v.hasFP {
			m.remove(v.fp, o.ID)
		}
	}
}

// fingerprintOf returns the fingerprint of m's material (ok is always
// true: every key is indexed).
func fingerprintOf(k *seal.Keys, m *mech.Key) (fp fingerprint, ok bool, err error) {
	switch m.Class() {
	case key.Private, key.Public:
		// An asymmetric key is known by its public key: two encodings of
		// one private key, an ECDSA and an ECDH key of one scalar, and a
		// private key and its public half have the same one.
		fp, err = k.Fingerprint('p', m.PublicDER())
	default:
		err = m.Canonical(func(b []byte) error {
			var err error
			fp, err = k.Fingerprint('s', b)
			return err
		})
	}
	return fp, err == nil, err
}

// setFingerprints computes the fingerprints of the versions of o, an
// object not yet in the store, and returns them.
func setFingerprints(k *seal.Keys, o *Object) ([]fingerprint, error) {
	var fps []fingerprint
	for _, v := range o.Versions() {
		if v.hasFP {
			fps = append(fps, v.fp)
			continue
		}
		fp, ok, err := fingerprintOf(k, v.Mat)
		if err != nil {
			return nil, err
		}
		if ok {
			v.fp, v.hasFP = fp, true
			fps = append(fps, fp)
		}
	}
	return fps, nil
}

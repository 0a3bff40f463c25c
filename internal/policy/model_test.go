package policy

// A model of keywarden's key-management API, searched exhaustively: every
// sequence of up to modelDepth calls that a compromised client may make,
// from each of a set of starting states, against the rules of this package
// (the same functions the daemon calls, composed as the daemon composes
// them). In no reachable state may the attacker know the bytes of a key
// that was never exportable, nor may the objects of one key's material
// together allow more than they did (usage, exportable, wrappable, type,
// and the programs that may use them), nor may the attacker's program use
// the material of a key restricted to another program, or a key derived
// from one.
//
// The model is symbolic (Dolev-Yao): key material is a name, not bytes.
// The attacker knows a material if it imported it, exported it, derived it
// by ECDH with a peer of its own, or opened a blob or ciphertext under a
// material it knows; it can also make any blob under a material it knows
// (and under any RSA key: the public half is public), and derive offline
// what HKDF gives from a material it knows. A derivation takes one of
// three functions: HKDF, the raw shared secret of an ECDH parent, or
// X9.63 of it; each gives a material of its own (kdf and param name it).
// Encryption of data and key
// wrapping are separate domains exactly where the daemon separates them:
// keywarden's format (KWW3) under keys derived for it, RFC 3394/5649 not
// being AES-GCM, and RSA-OAEP with an empty label being the same for
// decrypt and for the first half of RSA-AES-KWP. With the rules of the
// previous release (oldRules, KWW1 under the wrapping key itself), the
// search finds the attacks that were reported; with each of today's rules
// switched off in turn, it finds what that rule prevents.
//
// Programs (CheckProgram): a key object either lists one program, the
// allowed one, or none (any program may use it). The attacker's code runs
// in a program of its own, which is never on a list. Its uid also runs the
// allowed program, and the search lets that program make any call too (an
// over-approximation: a tool the attacker can drive only in part): what
// must hold is that the attacker's own program never gets to use the
// material of another user's restricted key, whatever both programs do.
// A list naming the attacker's own program is not modelled: the rules
// look only at whether a key has a list (the copy rule, derivation), and
// for the attacker's program such a key is one it may use, as one with no
// list is. The attacker sets or lifts the list of its own keys (the
// owner's right, from any program); the daemon makes no key with a list
// but a derived one, which inherits its parent's.

import (
	"bytes"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

const (
	attackerUID = 1000
	victimUID   = 2000
)

var attacker = Caller{UID: attackerUID, GID: attackerUID}

// shape says which key types a material's bytes fit: AES-256 and
// HMAC-SHA-256 keys are both 32 raw bytes (type confusion); an RSA or
// X25519 private key fits only its own type.
type shape uint8

const (
	shSym32 shape = iota + 1
	shRSA
	shX25519
)

var (
	mAES    = key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM)
	mHMAC   = key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256)
	mRSA    = key.Lookup(wire.KeyType_KEY_TYPE_RSA_3072)
	mX25519 = key.Lookup(wire.KeyType_KEY_TYPE_X25519)
)

func shapeOf(s *key.Spec) shape {
	switch s.Family {
	case key.FamilyRSA:
		return shRSA
	case key.FamilyX25519:
		return shX25519
	}
	return shSym32
}

func classOf(s *key.Spec) key.Class {
	if s.Asymmetric {
		return key.Private
	}
	return key.Secret
}

// mkind says how a material came to be.
type mkind uint8

const (
	mkGenerated mkind = iota + 1 // fresh random bytes, in the daemon
	mkAttacker                   // the attacker's own bytes
	mkHKDF                       // HKDF of parent with param
	mkECDH                       // ECDH of parent with the attacker's peer key, through a KDF (raw: none)
)

// Key derivation functions of a derive call, as the model names them.
const (
	kdfHKDF uint8 = iota
	kdfRaw
	kdfX963
)

var kdfNames = [...]string{kdfHKDF: "hkdf", kdfRaw: "raw", kdfX963: "x963"}
var kdfWire = [...]wire.DeriveKdf{kdfHKDF: wire.DeriveKdf_DERIVE_KDF_HKDF, kdfRaw: wire.DeriveKdf_DERIVE_KDF_NONE, kdfX963: wire.DeriveKdf_DERIVE_KDF_X963}

// The programs of the model: the attacker's, which no key lists, and the
// one some keys are restricted to.
var (
	allowedProgram = key.Program{Path: "/usr/libexec/allowed"}
	onlyAllowed    = []key.Program{allowedProgram}
	attackerProc   = Process{Exe: "/usr/bin/attacker"}
	allowedProc    = Process{Exe: allowedProgram.Path}
)

type material struct {
	shape  shape
	kind   mkind
	parent int8
	param  uint8
	// secret: made in the daemon and never held by an exportable object.
	secret bool
	known  bool
	// confined: only the allowed program may use it, never the attacker's:
	// the material of another user's key restricted to that program, and
	// what HKDF makes of such material.
	confined bool
}

// obj is one key object.
type obj struct {
	mat   int8
	spec  *key.Spec
	owner uint32
	usage key.Usage
	exp   bool
	wrp   bool
	prov  Provenance
	// grant is what an ACL entry gives the attacker on a victim's key
	// (visible says the entry exists).
	grant   key.Usage
	visible bool
	// pub: the object holds only the public half of an asymmetric key.
	pub bool
	// restricted: only the allowed program may use the object (its
	// Programs list it); otherwise any program may.
	restricted bool
}

func (o *obj) class() key.Class {
	if o.pub {
		return key.Public
	}
	return classOf(o.spec)
}

func (o *obj) key() Key {
	i := int(o.usage) | int(boolByte(o.exp))<<7 | int(boolByte(o.wrp))<<8
	if o.visible {
		i |= 1<<9 | int(o.grant)<<10
	}
	k := Key{Owner: o.owner, Spec: o.spec, Class: o.class(), Attrs: attrsTable()[i], Prov: o.prov}
	if o.restricted {
		k.Programs = onlyAllowed
	}
	return k
}

// attrsTable holds every attribute set the model's objects can have,
// made once: the rules never modify the attributes they are given.
var attrsTable = sync.OnceValue(func() []*key.Attrs {
	t := make([]*key.Attrs, 1<<17)
	for i := range t {
		a := &key.Attrs{Usage: key.Usage(i & 0x7f), Exportable: i&(1<<7) != 0, Wrappable: i&(1<<8) != 0}
		if i&(1<<9) != 0 {
			a.ACL = []key.ACLEntry{{ID: attackerUID, Usage: key.Usage(i >> 10)}}
		} else if i>>10 != 0 {
			continue
		}
		t[i] = a
	}
	return t
})

// Wrap formats.
const (
	fKW uint8 = iota + 1
	fKWP
	fKWW
	fRSA
)

var fmtNames = map[uint8]string{fKW: "kw", fKWP: "kwp", fKWW: "keywarden", fRSA: "rsa-aes-kwp"}

// blob is a wrapped key (or, with forged, one the attacker made); for KWW
// it carries attributes.
type blob struct {
	f     uint8
	kek   int8
	inner int8
	spec  *key.Spec
	usage key.Usage
	exp   bool
	wrp   bool
}

type state struct {
	mats  []material
	objs  []obj
	blobs []blob
}

func (s *state) clone() *state {
	return &state{mats: slices.Clone(s.mats), objs: slices.Clone(s.objs), blobs: slices.Clone(s.blobs)}
}

// encode appends the state's identity, for the search's visited set, to
// b: objects in a canonical order (handles are numbers the attacker
// chooses nothing by), materials and blobs as they are.
func (s *state) encode(b []byte) []byte {
	for _, m := range s.mats {
		b = append(b, byte(m.shape), byte(m.kind), byte(m.parent), m.param, boolByte(m.secret)|boolByte(m.known)<<1|boolByte(m.confined)<<2)
	}
	b = append(b, 0xff)
	start := len(b)
	for _, o := range s.objs {
		b = o.encode(b)
	}
	// Sort the fixed-size object encodings in place.
	n := (len(b) - start) / objEncLen
	objs := make([][objEncLen]byte, n)
	for i := range objs {
		copy(objs[i][:], b[start+i*objEncLen:])
	}
	slices.SortFunc(objs, func(x, y [objEncLen]byte) int { return bytes.Compare(x[:], y[:]) })
	b = b[:start]
	for _, o := range objs {
		b = append(b, o[:]...)
	}
	b = append(b, 0xff)
	for _, x := range s.blobs {
		b = append(b, x.f, byte(x.kek), byte(x.inner), specByte(x.spec), byte(x.usage), boolByte(x.exp)|boolByte(x.wrp)<<1)
	}
	return b
}

const objEncLen = 10

func (o *obj) encode(b []byte) []byte {
	p := o.prov
	return append(b, byte(o.mat), specByte(o.spec), byte(o.owner>>8), byte(o.usage),
		boolByte(o.exp)|boolByte(o.wrp)<<1|boolByte(o.visible)<<2, byte(p.Origin),
		boolByte(p.NeverExportable)|boolByte(p.Trusted)<<1|boolByte(p.WrappedOut)<<2, byte(o.grant), boolByte(o.pub), boolByte(o.restricted))
}

func boolByte(v bool) byte {
	if v {
		return 1
	}
	return 0
}

func specByte(s *key.Spec) byte {
	if s == nil {
		return 0
	}
	return byte(s.Type)
}

// holders returns the keys of the live objects holding material m.
func (s *state) holders(m int8) []Key {
	var ks []Key
	for i := range s.objs {
		if s.objs[i].mat == m {
			ks = append(ks, s.objs[i].key())
		}
	}
	return ks
}

// newMat returns the index of the material of this kind, parent and
// param, making it if it does not exist.
func (s *state) newMat(m material) int8 {
	if m.kind == mkHKDF || m.kind == mkECDH {
		for i, x := range s.mats {
			if x.kind == m.kind && x.parent == m.parent && x.param == m.param {
				return int8(i)
			}
		}
	}
	s.mats = append(s.mats, m)
	return int8(len(s.mats) - 1)
}

// learn closes the attacker's knowledge: blobs under known keys open, and
// HKDF of a known material is known.
func (s *state) learn() {
	for changed := true; changed; {
		changed = false
		for _, b := range s.blobs {
			if s.mats[b.kek].known && !s.mats[b.inner].known {
				s.mats[b.inner].known = true
				changed = true
			}
		}
		for i, m := range s.mats {
			if !m.known && m.kind == mkHKDF && s.mats[m.parent].known {
				s.mats[i].known = true
				changed = true
			}
		}
	}
}

// rules are the decisions the daemon takes, as functions; today's are
// this package's, and domainSep says keywarden's format is apart from data encryption.
type rules struct {
	name      string
	template  func(Template) (key.Usage, Decision)
	wrap      func(c Caller, wrapping, target Key) Decision
	unwrapKey func(c Caller, k Key, f WrapFormat, req Template) Decision
	unwrap    func(c Caller, k Key, f WrapFormat, sealed *Sealed, req Template) (Template, Decision)
	derive    func(c Caller, parent Key, t Template) (key.Usage, Decision)
	deriveKDF func(parent Key, kdf wire.DeriveKdf) Decision
	copy      func(n Key, held []Key) Decision
	trust     func(k Key) Decision
	domainSep bool
}

var todaysRules = rules{
	name: "today", template: CheckTemplate, wrap: CheckWrap, unwrapKey: CheckUnwrapKey, unwrap: CheckUnwrap,
	derive: CheckDerive, deriveKDF: CheckDeriveKDF, copy: CheckCopy, trust: CheckTrust, domainSep: true,
}

// action is one call of the attacker's, with its arguments.
type action struct {
	op     string
	h, h2  int // object indexes
	spec   *key.Spec
	usage  key.Usage
	exp    bool
	wrp    bool
	f      uint8
	blob   blob
	param  uint8
	kdf    uint8
	mat    int8
	change Change
	pub    bool
	// allowed: the call comes from the allowed program, not from the
	// attacker's own.
	allowed bool
	// restrict: with op "programs", the key's list is set to the allowed
	// program; without, lifted.
	restrict bool
}

func (a action) String() string {
	if a.allowed {
		return a.describe() + " (from the allowed program)"
	}
	return a.describe()
}

func (a action) describe() string {
	switch a.op {
	case "generate", "import":
		half := ""
		if a.pub {
			half = " (public half)"
		}
		return fmt.Sprintf("%s %s%s usage=%s exportable=%t wrappable=%t (material %d)", a.op, a.spec.Name, half, a.usage, a.exp, a.wrp, a.mat)
	case "export", "destroy":
		return fmt.Sprintf("%s #%d", a.op, a.h)
	case "trust":
		return fmt.Sprintf("an administrator trusts #%d to wrap", a.h)
	case "wrap":
		return fmt.Sprintf("wrap #%d under #%d as %s", a.h2, a.h, fmtNames[a.f])
	case "unwrap":
		return fmt.Sprintf("unwrap %s blob (material %d under %d) with #%d as %s usage=%s exportable=%t wrappable=%t",
			fmtNames[a.blob.f], a.blob.inner, a.blob.kek, a.h, specName(a.spec), a.usage, a.exp, a.wrp)
	case "decrypt":
		return fmt.Sprintf("decrypt %s blob (material %d under %d) with #%d", fmtNames[a.blob.f], a.blob.inner, a.blob.kek, a.h)
	case "encrypt":
		return fmt.Sprintf("encrypt, under #%d, a keywarden-format blob of material %d claiming usage=%s exportable=%t", a.h, a.mat, a.usage, a.exp)
	case "derive":
		return fmt.Sprintf("derive from #%d (%s, param %d) %s usage=%s exportable=%t wrappable=%t", a.h, kdfNames[a.kdf], a.param, a.spec.Name, a.usage, a.exp, a.wrp)
	case "set":
		return fmt.Sprintf("set attributes of #%d: %s", a.h, changeString(a.change))
	case "programs":
		if a.restrict {
			return fmt.Sprintf("restrict #%d to the allowed program", a.h)
		}
		return fmt.Sprintf("lift the program list of #%d: any program may use it", a.h)
	}
	return a.op
}

// process returns the program a is sent from.
func (a action) process() Process {
	if a.allowed {
		return allowedProc
	}
	return attackerProc
}

// uses returns the objects whose use a's program must be allowed
// (CheckProgram): those the daemon checks with the program, as the key
// used (encrypt, decrypt, derive, unwrap), exported or wrapped (both the
// wrapping key and the key wrapped). Managing a key is not a use.
func (a action) uses() (int, int) {
	switch a.op {
	case "export", "decrypt", "encrypt", "derive", "unwrap":
		return a.h, a.h
	case "wrap":
		return a.h, a.h2
	}
	return -1, -1
}

func specName(s *key.Spec) string {
	if s == nil {
		return "(from the blob)"
	}
	return s.Name
}

func changeString(c Change) string {
	var p []string
	if c.Usage != nil {
		p = append(p, "usage="+c.Usage.String())
	}
	if c.Exportable != nil {
		p = append(p, fmt.Sprint("exportable=", *c.Exportable))
	}
	if c.Wrappable != nil {
		p = append(p, fmt.Sprint("wrappable=", *c.Wrappable))
	}
	return strings.Join(p, " ")
}

// domain is what the attacker may ask for: the templates of generate,
// import, unwrap and derive.
type domain struct {
	templates []tmpl
	derive    bool // derive calls
	// trust: an administrator trusts, to wrap, any key the attacker
	// shows them that CheckTrust accepts and whose bytes are in truth
	// known to no one outside (an honest administrator).
	trust bool
	// programs: the attacker sets and lifts the program lists of its own
	// keys, and every call that uses a restricted key may also come from
	// the allowed program.
	programs bool
}

type tmpl struct {
	spec  *key.Spec
	usage key.Usage
	exp   bool
	wrp   bool
	pub   bool // the public half of an asymmetric key
}

// actions lists every call worth trying in s.
func (d *domain) actions(as []action, s *state) []action {
	as = as[:0]
	for _, t := range d.templates {
		if t.pub {
			// The public half of any asymmetric key is public: the attacker
			// may import it.
			for m, x := range s.mats {
				if x.shape == shapeOf(t.spec) {
					as = append(as, action{op: "import", spec: t.spec, usage: t.usage, exp: t.exp, mat: int8(m), pub: true})
				}
			}
			continue
		}
		as = append(as, action{op: "generate", spec: t.spec, usage: t.usage, exp: t.exp, wrp: t.wrp})
		// Import of bytes the attacker knows: its own, or any it learnt.
		for m, x := range s.mats {
			if (x.known || x.kind == mkAttacker) && x.shape == shapeOf(t.spec) {
				as = append(as, action{op: "import", spec: t.spec, usage: t.usage, exp: t.exp, wrp: t.wrp, mat: int8(m)})
			}
		}
	}
	// A material of the attacker's own, to import.
	for _, sh := range []shape{shSym32} {
		have := false
		for _, x := range s.mats {
			have = have || (x.kind == mkAttacker && x.shape == sh)
		}
		if !have {
			as = append(as, action{op: "attacker-material", mat: int8(sh)})
		}
	}
	for i := range s.objs {
		o := &s.objs[i]
		as = append(as, action{op: "export", h: i}, action{op: "destroy", h: i})
		if d.trust {
			as = append(as, action{op: "trust", h: i})
		}
		for _, u := range []key.Usage{key.Encrypt, key.Decrypt, key.Wrap, key.Unwrap} {
			if o.usage&u != 0 {
				n := o.usage &^ u
				as = append(as, action{op: "set", h: i, change: Change{Usage: &n}})
			}
		}
		if o.exp {
			as = append(as, action{op: "set", h: i, change: Change{Exportable: new(bool)}})
		}
		if o.wrp {
			as = append(as, action{op: "set", h: i, change: Change{Wrappable: new(bool)}})
		}
		for j := range s.objs {
			for _, f := range []uint8{fKW, fKWP, fKWW, fRSA} {
				as = append(as, action{op: "wrap", h: i, h2: j, f: f})
			}
		}
		// Blobs under this key's material: the daemon's, and any the
		// attacker can make.
		var bs []blob
		for _, b := range s.blobs {
			if b.kek == o.mat {
				bs = append(bs, b)
			}
		}
		kekKnown := s.mats[o.mat].known || shapeOf(o.spec) == shRSA
		if kekKnown {
			for m, x := range s.mats {
				if !x.known {
					continue
				}
				for _, f := range []uint8{fKW, fKWP, fRSA} {
					bs = append(bs, blob{f: f, kek: o.mat, inner: int8(m)})
				}
				for _, t := range d.templates {
					if shapeOf(t.spec) == x.shape && s.mats[o.mat].known {
						bs = append(bs, blob{f: fKWW, kek: o.mat, inner: int8(m), spec: t.spec, usage: t.usage, exp: t.exp, wrp: t.wrp})
					}
				}
			}
		}
		for _, b := range bs {
			as = append(as, action{op: "decrypt", h: i, blob: b})
			if b.f == fKWW {
				as = append(as, action{op: "unwrap", h: i, blob: b})
				as = append(as, action{op: "unwrap", h: i, blob: b, exp: true})
				for _, t := range d.templates {
					if t.spec == b.spec && b.usage.Has(t.usage) && t.usage != b.usage {
						as = append(as, action{op: "unwrap", h: i, blob: b, usage: t.usage})
					}
				}
				continue
			}
			for _, t := range d.templates {
				as = append(as, action{op: "unwrap", h: i, blob: b, spec: t.spec, usage: t.usage, exp: t.exp, wrp: t.wrp})
			}
		}
		// Forging a KWW blob by encrypting under the key (it works only
		// where the formats are not apart).
		for m, x := range s.mats {
			if x.known && o.spec == mAES {
				for _, t := range d.templates {
					if shapeOf(t.spec) == x.shape {
						as = append(as, action{op: "encrypt", h: i, mat: int8(m), spec: t.spec, usage: t.usage, exp: t.exp, wrp: t.wrp})
					}
				}
			}
		}
		if d.derive {
			for _, t := range d.templates {
				if t.spec.Asymmetric {
					continue
				}
				for p := uint8(0); p < 2; p++ {
					as = append(as, action{op: "derive", h: i, param: p, spec: t.spec, usage: t.usage, exp: t.exp, wrp: t.wrp})
				}
				// The raw secret (no param), and X9.63 with one shared
				// data: from any parent, for the rules to refuse.
				as = append(as, action{op: "derive", h: i, kdf: kdfRaw, spec: t.spec, usage: t.usage, exp: t.exp, wrp: t.wrp},
					action{op: "derive", h: i, kdf: kdfX963, spec: t.spec, usage: t.usage, exp: t.exp, wrp: t.wrp})
			}
		}
		if d.programs && o.owner == attackerUID {
			as = append(as, action{op: "programs", h: i, restrict: !o.restricted})
		}
	}
	if d.programs {
		// The program matters only to a call that uses a restricted key.
		for _, a := range as[:len(as):len(as)] {
			if h, h2 := a.uses(); h >= 0 && (s.objs[h].restricted || s.objs[h2].restricted) {
				a.allowed = true
				as = append(as, a)
			}
		}
	}
	return as
}

// apply runs a in s under r. It returns the next state, or nil when the
// daemon refuses the call (or it changes nothing). Decisions are taken on
// s; the state is copied only for a call that goes through.
func apply(s *state, a action, r *rules) *state {
	if !programAllows(s, a) {
		return nil
	}
	var n *state
	switch a.op {
	case "attacker-material":
		n = s.clone()
		n.newMat(material{shape: shape(a.mat), kind: mkAttacker, known: true})
	case "generate":
		t := Template{Spec: a.spec, Class: classOf(a.spec), Usage: a.usage, Exportable: a.exp, Wrappable: a.wrp}
		u, d := r.template(t)
		if !d.Allowed() {
			return nil
		}
		n = s.clone()
		m := n.newMat(material{shape: shapeOf(a.spec), kind: mkGenerated, secret: !a.exp})
		n.objs = append(n.objs, obj{mat: m, spec: a.spec, owner: attackerUID, usage: u, exp: a.exp, wrp: a.wrp,
			prov: Provenance{Origin: key.Generated, NeverExportable: !a.exp}})
	case "import":
		c := classOf(a.spec)
		if a.pub {
			c = key.Public
		}
		t := Template{Spec: a.spec, Class: c, Usage: a.usage, Exportable: a.exp, Wrappable: a.wrp}
		u, d := r.template(t)
		if !d.Allowed() {
			return nil
		}
		n = s.add(r, obj{mat: a.mat, spec: a.spec, owner: attackerUID, usage: u, exp: a.exp, wrp: a.wrp,
			prov: Provenance{Origin: key.Imported, NeverExportable: !a.exp}, pub: a.pub})
	case "trust":
		o := &s.objs[a.h]
		// The administrator's word is true only if no one outside knows
		// the bytes: the private key's, for a public half.
		if o.prov.Trusted || s.mats[o.mat].known || !r.trust(o.key()).Allowed() {
			return nil
		}
		n = s.clone()
		n.objs[a.h].prov.Trusted = true
	case "export":
		o := &s.objs[a.h]
		if o.pub || s.mats[o.mat].known || !Authorize(attacker, o.key(), Export, 0).Allowed() {
			return nil
		}
		n = s.clone()
		n.mats[o.mat].known = true
	case "destroy":
		if !Authorize(attacker, s.objs[a.h].key(), Manage, 0).Allowed() {
			return nil
		}
		n = s.clone()
		n.objs = slices.Delete(n.objs, a.h, a.h+1)
	case "set":
		o := &s.objs[a.h]
		if !Authorize(attacker, o.key(), Manage, 0).Allowed() {
			return nil
		}
		next, d := CheckChange(o.key().Attrs, a.change)
		if !d.Allowed() {
			return nil
		}
		n = s.clone()
		no := &n.objs[a.h]
		no.usage, no.exp, no.wrp = next.Usage, next.Exportable, next.Wrappable
	case "wrap":
		w, t := &s.objs[a.h], &s.objs[a.h2]
		// Formats by the wrapping key's family, and KW's length rule.
		if (a.f == fRSA) != (w.spec.Family == key.FamilyRSA) || (a.f == fKW && shapeOf(t.spec) != shSym32) {
			return nil
		}
		if !r.wrap(attacker, w.key(), t.key()).Allowed() {
			return nil
		}
		b := blob{f: a.f, kek: w.mat, inner: t.mat}
		if a.f == fKWW {
			b.spec, b.usage, b.exp, b.wrp = t.spec, t.usage, t.exp, t.wrp
		}
		if slices.Contains(s.blobs, b) && t.prov.WrappedOut {
			return nil
		}
		n = s.clone()
		if !slices.Contains(n.blobs, b) {
			n.blobs = append(n.blobs, b)
		}
		n.objs[a.h2].prov.WrappedOut = true
	case "unwrap":
		n = applyUnwrap(s, a, r)
	case "decrypt":
		o := &s.objs[a.h]
		if s.mats[a.blob.inner].known || !Authorize(attacker, o.key(), Use, key.Decrypt).Allowed() {
			return nil
		}
		switch {
		case a.blob.f == fRSA && o.spec.Family == key.FamilyRSA:
			// RSA-OAEP, empty label: decrypt opens the blob's first half.
		case a.blob.f == fKWW && o.spec == mAES && !r.domainSep:
			// KWW1: AES-GCM under the wrapping key itself.
		default:
			return nil
		}
		n = s.clone()
		n.mats[a.blob.inner].known = true
	case "encrypt":
		o := &s.objs[a.h]
		if r.domainSep || !Authorize(attacker, o.key(), Use, key.Encrypt).Allowed() {
			return nil
		}
		b := blob{f: fKWW, kek: o.mat, inner: a.mat, spec: a.spec, usage: a.usage, exp: a.exp, wrp: a.wrp}
		if slices.Contains(s.blobs, b) {
			return nil
		}
		n = s.clone()
		n.blobs = append(n.blobs, b)
	case "derive":
		p := &s.objs[a.h]
		if !Authorize(attacker, p.key(), Use, key.Derive).Allowed() {
			return nil
		}
		if !r.deriveKDF(p.key(), kdfWire[a.kdf]).Allowed() {
			return nil
		}
		t := Template{Spec: a.spec, Class: key.Secret, Usage: a.usage, Exportable: a.exp, Wrappable: a.wrp}
		u, d := r.derive(attacker, p.key(), t)
		if !d.Allowed() {
			return nil
		}
		pm := s.mats[p.mat]
		child := obj{spec: a.spec, owner: attackerUID, usage: u, exp: a.exp, wrp: a.wrp,
			prov: Provenance{Origin: key.Derived, NeverExportable: !a.exp}, restricted: p.restricted}
		if a.kdf == kdfRaw && p.spec.Family != key.FamilyX25519 {
			// The raw "secret" of a key that agrees on none would be the
			// key's own bytes (were the call not refused).
			if pm.shape != shSym32 {
				return nil
			}
			child.mat = p.mat
			n = s.add(r, child)
			break
		}
		// Each function gives a material of its own: param names the
		// function's output (HKDF's info, X9.63's shared data).
		param := a.kdf<<1 | a.param
		m := material{shape: shSym32, kind: mkHKDF, parent: p.mat, param: param, secret: pm.secret && !a.exp, known: pm.known,
			confined: pm.confined}
		if p.spec.Family == key.FamilyX25519 {
			// The peer is the attacker's: it knows the shared secret, and
			// so what any function makes of it.
			m = material{shape: shSym32, kind: mkECDH, parent: p.mat, param: param, known: true}
		}
		mi, ns := s.withMat(m)
		// The child inherits its parent's programs (as the daemon's derive
		// does).
		child.mat = mi
		n = ns.add(r, child)
	case "programs":
		o := &s.objs[a.h]
		if o.restricted == a.restrict || !Authorize(attacker, o.key(), Manage, 0).Allowed() {
			return nil
		}
		if a.restrict {
			// The store refuses a list that would restrict nothing:
			// another key of the owner's holds the material, and any
			// program may use that one.
			for j, x := range s.objs {
				if j != a.h && x.mat == o.mat && x.owner == o.owner && !x.restricted && !x.pub {
					return nil
				}
			}
		}
		n = s.clone()
		n.objs[a.h].restricted = a.restrict
	default:
		panic(a.op)
	}
	if n == nil {
		return nil
	}
	n.learn()
	return n
}

// programAllows reports whether the program a comes from may use the keys
// a uses: the daemon's CheckProgram, after its other checks.
func programAllows(s *state, a action) bool {
	h, h2 := a.uses()
	if h < 0 {
		return true
	}
	for _, i := range [2]int{h, h2} {
		if o := &s.objs[i]; o.restricted && !CheckProgram(o.key(), "k", a.process()).Allowed() {
			return false
		}
	}
	return true
}

// withMat returns the index of material m in s, and s, or, when s has no
// such material yet, its index in a copy of s that has it.
func (s *state) withMat(m material) (int8, *state) {
	for i, x := range s.mats {
		if x.kind == m.kind && x.parent == m.parent && x.param == m.param && (m.kind == mkHKDF || m.kind == mkECDH) {
			return int8(i), s
		}
	}
	n := s.clone()
	n.mats = append(n.mats, m)
	return int8(len(n.mats) - 1), n
}

// add returns a copy of s with o, a new object for material that may be
// held already (the daemon's keystore.Add), or nil if the copy rule
// refuses it.
func (s *state) add(r *rules, o obj) *state {
	if !r.copy(o.key(), s.holders(o.mat)).Allowed() {
		return nil
	}
	n := s.clone()
	if o.exp {
		n.mats[o.mat].secret = false
	}
	n.objs = append(n.objs, o)
	return n
}

func applyUnwrap(s *state, a action, r *rules) *state {
	k := &s.objs[a.h]
	b := a.blob
	f := Bare
	if b.f == fKWW {
		f = Bound
	}
	if (b.f == fRSA) != (k.spec.Family == key.FamilyRSA) || b.kek != k.mat {
		return nil
	}
	if !r.unwrapKey(attacker, k.key(), f, Template{Exportable: a.exp}).Allowed() {
		return nil
	}
	req := Template{Usage: a.usage, Exportable: a.exp, Wrappable: a.wrp}
	var sealed *Sealed
	if f == Bound {
		sealed = &Sealed{Spec: b.spec, Class: classOf(b.spec), Usage: b.usage, Exportable: b.exp, Wrappable: b.wrp}
	} else {
		req.Spec, req.Class = a.spec, classOf(a.spec)
	}
	t, d := r.unwrap(attacker, k.key(), f, sealed, req)
	if !d.Allowed() {
		return nil
	}
	if shapeOf(t.Spec) != s.mats[b.inner].shape {
		return nil // the bytes do not make a key of that type
	}
	return s.add(r, obj{mat: b.inner, spec: t.Spec, owner: attackerUID, usage: t.Usage, exp: t.Exportable, wrp: t.Wrappable,
		prov: Provenance{Origin: key.Unwrapped, NeverExportable: !t.Exportable}})
}

// violation returns what is wrong in s, reached from prev by a, or "".
// With secrecyOnly it looks only for a key that was never exportable and
// whose bytes the attacker knows.
func violation(prev, s *state, a action, secrecyOnly bool) string {
	for i, m := range s.mats {
		if m.secret && m.known {
			return fmt.Sprintf("the attacker knows material %d, which was never exportable", i)
		}
	}
	if secrecyOnly {
		return ""
	}
	for i, m := range s.mats {
		if !m.confined {
			continue
		}
		if m.known {
			return fmt.Sprintf("the attacker knows material %d, which only the allowed program may use", i)
		}
		// A key of it the attacker's program may use: one the attacker
		// holds some usage of, with no list (or one it may lift: it is
		// then the attacker's, and found when lifted). A public half hides
		// nothing.
		for j := range s.objs {
			o := &s.objs[j]
			if o.mat != int8(i) || o.pub || !CheckProgram(o.key(), "k", attackerProc).Allowed() {
				continue
			}
			if u, _ := Granted(attacker, o.key()); u != 0 {
				return fmt.Sprintf("the attacker's program may use #%d (%s), of material %d, which only the allowed program may use", j, u, i)
			}
		}
	}
	if a.op == "unwrap" && len(s.objs) > len(prev.objs) && s.objs[len(s.objs)-1].exp {
		return "an unwrapped key is exportable"
	}
	for i := range s.mats {
		now := union(s, int8(i))
		if now.n == 0 {
			continue
		}
		if now.usage&key.Transport != 0 && now.usage&key.Data != 0 {
			return fmt.Sprintf("the objects of material %d together both move keys and protect data (%s)", i, now.usage)
		}
		if len(now.types) > 1 {
			return fmt.Sprintf("material %d is held as %d key types", i, len(now.types))
		}
		if i >= len(prev.mats) {
			continue
		}
		was := union(prev, int8(i))
		if was.n == 0 {
			continue // held again after none held it: a key of its own
		}
		if !was.usage.Has(now.usage) || (now.exp && !was.exp) || (now.wrp && !was.wrp) {
			return fmt.Sprintf("what the objects of material %d allow grew: usage %s exportable %t wrappable %t, was %s %t %t",
				i, now.usage, now.exp, now.wrp, was.usage, was.exp, was.wrp)
		}
		// Lifting a key's list is its owner's right; a copy that sheds it
		// is not.
		if was.keys > 0 && !was.anyProgram && now.anyProgram && (a.op != "programs" || s.objs[a.h].mat != int8(i)) {
			return fmt.Sprintf("the programs that may use material %d grew: any program may, only the allowed one did", i)
		}
	}
	return ""
}

type matUnion struct {
	n        int
	usage    key.Usage
	exp, wrp bool
	types    map[*key.Spec]bool
	// keys counts the objects that are not public halves (which anyone
	// may use outside the daemon); anyProgram: any program may use one.
	keys       int
	anyProgram bool
}

func union(s *state, m int8) matUnion {
	u := matUnion{types: map[*key.Spec]bool{}}
	for _, o := range s.objs {
		if o.mat == m {
			u.n++
			u.usage |= o.usage
			u.exp = u.exp || o.exp
			u.wrp = u.wrp || o.wrp
			u.types[o.spec] = true
			if !o.pub {
				u.keys++
				u.anyProgram = u.anyProgram || !o.restricted
			}
		}
	}
	return u
}

// search explores every sequence of up to depth calls from start and
// returns the first violation found (with the calls that lead to it) and
// the number of distinct states visited.
func search(start *state, d *domain, r *rules, depth int, secrecyOnly bool) (trace []string, states int) {
	type node struct {
		s      *state
		parent *node
		a      action
	}
	seed1, seed2 := maphash.MakeSeed(), maphash.MakeSeed()
	var buf []byte
	id := func(s *state) [2]uint64 {
		buf = s.encode(buf[:0])
		return [2]uint64{maphash.Bytes(seed1, buf), maphash.Bytes(seed2, buf)}
	}
	seen := map[[2]uint64]bool{id(start): true}
	level := []*node{{s: start}}
	var as []action
	for range depth {
		var next []*node
		for _, nd := range level {
			as = d.actions(as, nd.s)
			for _, a := range as {
				ns := apply(nd.s, a, r)
				if ns == nil {
					continue
				}
				if v := violation(nd.s, ns, a, secrecyOnly); v != "" {
					out := []string{a.String(), "=> " + v}
					for p := nd; p.parent != nil; p = p.parent {
						out = append([]string{p.a.String()}, out...)
					}
					return out, len(seen)
				}
				key := id(ns)
				if seen[key] {
					continue
				}
				seen[key] = true
				next = append(next, &node{s: ns, parent: nd, a: a})
			}
		}
		level = next
	}
	return nil, len(seen)
}

// --- starting states --------------------------------------------------

// world builds a starting state: keys made by their owners through the
// same rules, and blobs the attacker has seen.
type world struct {
	s *state
}

func newWorld() *world { return &world{s: &state{}} }

// key adds a key generated by owner (which the attacker is, or is granted
// grant on), checked against today's rules, and returns its index.
func (w *world) key(t *testing.T, owner uint32, spec *key.Spec, u key.Usage, exp, wrp bool, grant key.Usage) int {
	t.Helper()
	if _, d := CheckTemplate(Template{Spec: spec, Class: classOf(spec), Usage: u, Exportable: exp, Wrappable: wrp}); !d.Allowed() {
		t.Fatalf("starting key %s %s: %s", spec.Name, u, d.Reason)
	}
	m := w.s.newMat(material{shape: shapeOf(spec), kind: mkGenerated, secret: !exp})
	w.s.objs = append(w.s.objs, obj{mat: m, spec: spec, owner: owner, usage: u, exp: exp, wrp: wrp,
		prov: Provenance{Origin: key.Generated, NeverExportable: !exp}, grant: grant, visible: owner != attackerUID})
	return len(w.s.objs) - 1
}

// wrapped adds the blob of key i wrapped under key kek in format f, as its
// owner made it (checked against today's rules), and marks i wrapped out.
func (w *world) wrapped(t *testing.T, kek, i int, f uint8) {
	t.Helper()
	k, o := &w.s.objs[kek], &w.s.objs[i]
	if d := CheckWrap(Caller{UID: o.owner, GID: o.owner}, k.key(), o.key()); !d.Allowed() {
		t.Fatalf("starting blob: %s", d.Reason)
	}
	b := blob{f: f, kek: k.mat, inner: o.mat}
	if f == fKWW {
		b.spec, b.usage, b.exp, b.wrp = o.spec, o.usage, o.exp, o.wrp
	}
	w.s.blobs = append(w.s.blobs, b)
	o.prov.WrappedOut = true
}

// restrict restricts key i to the allowed program, as its owner did
// (checked against today's rules); another user's key's material is then
// confined to that program.
func (w *world) restrict(t *testing.T, i int) {
	t.Helper()
	if d := CheckPrograms(onlyAllowed); !d.Allowed() {
		t.Fatalf("starting program list: %s", d.Reason)
	}
	o := &w.s.objs[i]
	o.restricted = true
	if o.owner != attackerUID {
		w.s.mats[o.mat].confined = true
	}
}

var (
	aesData   = tmpl{spec: mAES, usage: key.Encrypt | key.Decrypt, wrp: true}
	aesDec    = tmpl{spec: mAES, usage: key.Decrypt}
	aesEnc    = tmpl{spec: mAES, usage: key.Encrypt}
	aesKnown  = tmpl{spec: mAES, usage: key.Encrypt | key.Decrypt, exp: true}
	aesKEK    = tmpl{spec: mAES, usage: key.Wrap | key.Unwrap}
	aesKEKW   = tmpl{spec: mAES, usage: key.Wrap | key.Unwrap, wrp: true}
	aesKEKExp = tmpl{spec: mAES, usage: key.Wrap | key.Unwrap, exp: true}
	aesWrapEn = tmpl{spec: mAES, usage: key.Wrap | key.Encrypt}
	aesUnwDec = tmpl{spec: mAES, usage: key.Unwrap | key.Decrypt}
	hmacSign  = tmpl{spec: mHMAC, usage: key.Sign | key.Verify, wrp: true}
	hmacDrv   = tmpl{spec: mHMAC, usage: key.Derive}
	rsaKEK    = tmpl{spec: mRSA, usage: key.Wrap | key.Unwrap}
	rsaUnwDec = tmpl{spec: mRSA, usage: key.Unwrap | key.Decrypt}
	rsaDec    = tmpl{spec: mRSA, usage: key.Decrypt}
	x25519Drv = tmpl{spec: mX25519, usage: key.Derive, wrp: true}
	rsaPubWrp = tmpl{spec: mRSA, usage: key.Wrap, pub: true}
)

type scenario struct {
	name  string
	build func(t *testing.T) *state
	d     domain
}

func scenarios() []scenario {
	return []scenario{
		{
			// The application's own wrapping key and data key (the
			// reported attack: wrap the wrapping key under itself, unwrap
			// it with decrypt, open the data key's blob).
			name: "own wrapping and data keys",
			build: func(t *testing.T) *state {
				w := newWorld()
				kek := w.key(t, attackerUID, mAES, key.Wrap|key.Unwrap, false, false, 0)
				data := w.key(t, attackerUID, mAES, key.Encrypt|key.Decrypt, false, true, 0)
				w.wrapped(t, kek, data, fKWW)
				return w.s
			},
			d: domain{templates: []tmpl{aesData, aesDec, aesKnown, aesKEK, aesKEKW, aesKEKExp, aesWrapEn, aesUnwDec}},
		},
		{
			// Widening usage and changing type through a copy.
			name: "encrypt-only and HMAC keys",
			build: func(t *testing.T) *state {
				w := newWorld()
				kek := w.key(t, attackerUID, mAES, key.Wrap|key.Unwrap, false, false, 0)
				enc := w.key(t, attackerUID, mAES, key.Encrypt, false, true, 0)
				mac := w.key(t, attackerUID, mHMAC, key.Sign|key.Verify, false, true, 0)
				w.wrapped(t, kek, enc, fKWP)
				w.wrapped(t, kek, mac, fKWP)
				return w.s
			},
			d: domain{templates: []tmpl{aesData, aesEnc, aesDec, aesKEK, hmacSign}},
		},
		{
			// RSA-AES-KWP, and RSA decryption of its first half.
			name: "RSA wrapping key",
			build: func(t *testing.T) *state {
				w := newWorld()
				w.key(t, attackerUID, mRSA, key.Wrap|key.Unwrap, false, false, 0)
				w.key(t, attackerUID, mX25519, key.Derive, false, true, 0)
				return w.s
			},
			d: domain{templates: []tmpl{rsaKEK, rsaUnwDec, rsaDec, x25519Drv}},
		},
		{
			// Public halves, and an administrator who trusts a key to wrap
			// when the rules allow it and it is in truth known to no one
			// outside: a public key that wraps, whose private half here
			// decrypts (another user's, who granted the attacker decrypt).
			name: "public halves and trust",
			build: func(t *testing.T) *state {
				w := newWorld()
				w.key(t, attackerUID, mX25519, key.Derive, false, true, 0)
				w.key(t, victimUID, mRSA, key.Encrypt|key.Decrypt, false, false, key.Decrypt)
				return w.s
			},
			d: domain{templates: []tmpl{rsaDec, rsaPubWrp, rsaKEK}, trust: true},
		},
		{
			// A victim's wrapping key shared with the attacker for unwrap,
			// and blobs the victim made of its data key.
			name: "shared wrapping key",
			build: func(t *testing.T) *state {
				w := newWorld()
				kek := w.key(t, victimUID, mAES, key.Wrap|key.Unwrap, false, false, key.Unwrap)
				data := w.key(t, victimUID, mAES, key.Encrypt|key.Decrypt, false, true, 0)
				w.wrapped(t, kek, data, fKWW)
				w.wrapped(t, kek, data, fKWP)
				w.s.objs = slices.Delete(w.s.objs, data, data+1) // the victim's key lives elsewhere
				return w.s
			},
			d: domain{templates: []tmpl{aesData, aesKnown, aesKEK, aesKEKW}},
		},
		{
			// A key wrapped while it was exportable, then locked.
			name: "exportable switched off",
			build: func(t *testing.T) *state {
				w := newWorld()
				kek := w.key(t, attackerUID, mAES, key.Wrap|key.Unwrap, false, false, 0)
				data := w.key(t, attackerUID, mAES, key.Encrypt|key.Decrypt, true, true, 0)
				w.wrapped(t, kek, data, fKWW)
				w.s.objs[data].exp = false
				return w.s
			},
			d: domain{templates: []tmpl{aesData, aesKnown, aesKEK}},
		},
		{
			// Derivation: the same child twice, an ECDH child the attacker
			// knows, a derived wrapping key.
			name: "derivation",
			build: func(t *testing.T) *state {
				w := newWorld()
				w.key(t, attackerUID, mHMAC, key.Derive, false, true, 0)
				w.key(t, attackerUID, mAES, key.Encrypt|key.Decrypt, false, true, 0)
				w.key(t, attackerUID, mX25519, key.Derive, false, false, 0)
				return w.s
			},
			d: domain{templates: []tmpl{aesEnc, aesData, aesKEK}, derive: true},
		},
		{
			// Another user's keys restricted to a program the attacker's
			// is not, granted to the attacker: a data key, with blobs
			// (made before the restriction, or by the allowed program
			// since) under a wrapping key shared for unwrap, and a key to
			// derive from. The attacker's uid runs the allowed program
			// too, and restricts and lifts keys of its own.
			name: "restricted keys",
			build: func(t *testing.T) *state {
				w := newWorld()
				kek := w.key(t, victimUID, mAES, key.Wrap|key.Unwrap, false, false, key.Unwrap)
				data := w.key(t, victimUID, mAES, key.Encrypt|key.Decrypt, false, true, key.Decrypt)
				w.wrapped(t, kek, data, fKWW)
				w.wrapped(t, kek, data, fKWP)
				drv := w.key(t, victimUID, mHMAC, key.Derive, false, false, key.Derive)
				w.restrict(t, data)
				w.restrict(t, drv)
				return w.s
			},
			d: domain{templates: []tmpl{aesDec, aesData, aesKEK}, derive: true, programs: true},
		},
		{
			// The attacker's own keys restricted to the allowed program: a
			// data key with a blob under its wrapping key, and a key to
			// derive from. It may lift their lists (its right as their
			// owner); no copy may shed one.
			name: "own restricted keys",
			build: func(t *testing.T) *state {
				w := newWorld()
				kek := w.key(t, attackerUID, mAES, key.Wrap|key.Unwrap, false, false, 0)
				data := w.key(t, attackerUID, mAES, key.Encrypt|key.Decrypt, false, true, 0)
				w.wrapped(t, kek, data, fKWW)
				drv := w.key(t, attackerUID, mHMAC, key.Derive, false, false, 0)
				w.restrict(t, data)
				w.restrict(t, drv)
				return w.s
			},
			d: domain{templates: []tmpl{aesDec}, derive: true, programs: true},
		},
	}
}

package policy

import (
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// modelDepth is how many calls the search chains: every sequence of up to
// this many calls from each starting state is tried.
func modelDepth() int {
	if fullSearch() {
		return 5
	}
	return 3
}

// fullSearch reports whether the search runs to its full depth: not with
// -short, nor under the race detector (the search is single-threaded;
// the race run checks the concurrent code elsewhere).
func fullSearch() bool { return !testing.Short() && !raceEnabled }

// TestModelSearch: under today's rules no sequence of calls reveals a key
// that was never exportable or widens what a key's material allows.
func TestModelSearch(t *testing.T) {
	for _, sc := range scenarios() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			r := todaysRules
			trace, n := search(sc.build(t), &sc.d, &r, modelDepth(), false)
			t.Logf("%d states, every sequence of up to %d calls", n, modelDepth())
			if trace != nil {
				t.Fatalf("attack found:\n  %s", strings.Join(trace, "\n  "))
			}
		})
	}
}

// oldRules are the rules of the release before the copy rule: only the
// crossed pairs forbidden, wrapping keys wrappable, trust by origin alone,
// a bound blob's attributes taken as they are, no copy rule, and KWW1
// sealed under the wrapping key itself.
func oldRules() rules {
	oldTemplate := func(t Template) (key.Usage, Decision) {
		u := t.Usage
		if u == 0 {
			u = DefaultUsage(t.Spec, t.Class)
		}
		if !t.Spec.Capable(t.Class).Has(u) || u.Has(key.Wrap|key.Decrypt) || u.Has(key.Unwrap|key.Encrypt) {
			return 0, deny(wire.Status_STATUS_POLICY_VIOLATION, "refused", "old template")
		}
		return u, allow
	}
	trusted := func(k Key) bool {
		return k.Prov.Trusted || (k.Prov.Origin == key.Generated && k.Prov.NeverExportable && !k.Attrs.Exportable)
	}
	r := rules{name: "previous release", template: oldTemplate, copy: func(Key, []Key) Decision { return allow }}
	r.trust = func(k Key) Decision {
		if k.Attrs.Usage&key.Transport == 0 {
			return deny(wire.Status_STATUS_POLICY_VIOLATION, "refused", "old trust")
		}
		return allow
	}
	r.wrap = func(c Caller, w, t Key) Decision {
		if !Authorize(c, w, Use, key.Wrap).Allowed() || !Authorize(c, t, Manage, 0).Allowed() ||
			!t.Attrs.Wrappable || !trusted(w) || w.Spec.Strength < t.Spec.Strength {
			return deny(wire.Status_STATUS_POLICY_VIOLATION, "refused", "old wrap")
		}
		return allow
	}
	r.unwrapKey = func(c Caller, k Key, f WrapFormat, req Template) Decision {
		if !Authorize(c, k, Use, key.Unwrap).Allowed() || (f == Bound && !trusted(k)) || (f == Bare && req.Exportable) {
			return deny(wire.Status_STATUS_POLICY_VIOLATION, "refused", "old unwrap")
		}
		return allow
	}
	r.unwrap = func(c Caller, k Key, f WrapFormat, sealed *Sealed, req Template) (Template, Decision) {
		if d := r.unwrapKey(c, k, f, req); !d.Allowed() {
			return Template{}, d
		}
		t := req
		if f == Bound {
			t = Template{Spec: sealed.Spec, Class: sealed.Class, Usage: sealed.Usage, Exportable: sealed.Exportable, Wrappable: sealed.Wrappable}
		}
		u, d := oldTemplate(t)
		t.Usage = u
		return t, d
	}
	r.derive = func(c Caller, p Key, t Template) (key.Usage, Decision) {
		if ((t.Exportable || t.Wrappable) && c.UID != p.Owner) || (t.Exportable && !p.Attrs.Exportable) || (t.Wrappable && !p.Attrs.Wrappable) {
			return 0, deny(wire.Status_STATUS_POLICY_VIOLATION, "refused", "old derive")
		}
		return oldTemplate(t)
	}
	// The previous release derived with HKDF only.
	r.deriveKDF = func(_ Key, kdf wire.DeriveKdf) Decision {
		if kdf != wire.DeriveKdf_DERIVE_KDF_HKDF {
			return deny(wire.Status_STATUS_INVALID_ARGUMENT, "refused", "old derive")
		}
		return allow
	}
	return r
}

// TestModelFindsTheReportedAttacks: under the previous release's rules the
// same search finds the attacks that were reported, so a search that finds
// nothing under today's rules means something.
func TestModelFindsTheReportedAttacks(t *testing.T) {
	if !fullSearch() {
		t.Skip("the attacks take up to 5 calls: the full search runs without -short and without -race")
	}
	// The leaks are looked for alone: a key that both wraps and encrypts
	// breaks today's rules already, but is not yet a leak.
	want := map[string]string{
		"own wrapping and data keys": "never exportable",
		"encrypt-only and HMAC keys": "grew",
		"exportable switched off":    "unwrapped key is exportable",
		"derivation":                 "grew",
	}
	secrecyOnly := map[string]bool{"own wrapping and data keys": true}
	for _, sc := range scenarios() {
		w, ok := want[sc.name]
		if !ok {
			continue
		}
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			r := oldRules()
			trace, n := search(sc.build(t), &sc.d, &r, modelDepth(), secrecyOnly[sc.name])
			if trace == nil {
				t.Fatalf("no attack found in %d states under the previous rules", n)
			}
			if !strings.Contains(trace[len(trace)-1], w) {
				t.Errorf("found a different attack than expected (%q):\n  %s", w, strings.Join(trace, "\n  "))
			}
			t.Logf("%d states:\n  %s", n, strings.Join(trace, "\n  "))
		})
	}
}

// An RSA key that both unwraps and decrypts, shared for decrypt: under the
// previous rules whoever is granted decrypt reads every RSA-AES-KWP import
// sent to it (the blob's first half is RSA-OAEP with an empty label, as a
// decrypt is). Today such a key cannot be made, and one made before
// loses unwrap when it is loaded (Normalize).
func TestModelRSAUnwrapDecrypt(t *testing.T) {
	if _, d := CheckTemplate(Template{Spec: mRSA, Class: key.Private, Usage: key.Unwrap | key.Decrypt}); d.Allowed() {
		t.Fatal("an RSA key that unwraps and decrypts can be made")
	}
	if a, _, _ := Normalize(&key.Attrs{Usage: key.Unwrap | key.Decrypt}, Provenance{}); a.Usage != key.Decrypt {
		t.Fatalf("a key of an older release that unwraps and decrypts keeps %s", a.Usage)
	}
	w := newWorld()
	m := w.s.newMat(material{shape: shRSA, kind: mkGenerated, secret: true})
	w.s.objs = append(w.s.objs, obj{mat: m, spec: mRSA, owner: victimUID, usage: key.Unwrap | key.Decrypt,
		prov: Provenance{Origin: key.Generated, NeverExportable: true}, grant: key.Decrypt, visible: true})
	imported := w.s.newMat(material{shape: shX25519, kind: mkGenerated, secret: true})
	w.s.blobs = append(w.s.blobs, blob{f: fRSA, kek: m, inner: imported})
	r := oldRules()
	trace, _ := search(w.s, &domain{}, &r, 1, true)
	if trace == nil {
		t.Fatal("the previous rules' leak is not found")
	}
	t.Logf("previous rules:\n  %s", strings.Join(trace, "\n  "))
}

// mutant is today's rules with one of them switched off.
type mutant struct {
	name string
	r    func() rules
	// finds names the scenario where the search must then find a
	// violation; "" for a rule that the others cover within the search's
	// bounds (defence in depth: the search shows no violation without it).
	finds string
	// leak: the violation looked for is a key's bytes known to the
	// attacker (not only a broken rule on a material).
	leak bool
	// says, if set, is in the violation the search must find.
	says string
}

// pretend gives k the provenance TrustedWrapping needs when the mutated
// trust rule would trust it, so that today's functions decide the rest.
func pretend(k Key, trusts func(Key) bool) Key {
	if trusts(k) && !TrustedWrapping(k) {
		k.Prov = Provenance{Origin: key.Generated, NeverExportable: true}
	}
	return k
}

func withTrust(trusts func(Key) bool) rules {
	r := todaysRules
	r.wrap = func(c Caller, w, t Key) Decision { return CheckWrap(c, pretend(w, trusts), t) }
	r.unwrapKey = func(c Caller, k Key, f WrapFormat, req Template) Decision {
		return CheckUnwrapKey(c, pretend(k, trusts), f, req)
	}
	r.unwrap = func(c Caller, k Key, f WrapFormat, s *Sealed, req Template) (Template, Decision) {
		return CheckUnwrap(c, pretend(k, trusts), f, s, req)
	}
	return r
}

// copiesShedPrograms is today's rules without the copy rule's clause on
// programs: a copy of material held by a restricted key need not be
// restricted.
func copiesShedPrograms() rules {
	r := todaysRules
	r.copy = func(n Key, held []Key) Decision {
		n.Programs = onlyAllowed // so the clause never refuses
		return CheckCopy(n, held)
	}
	return r
}

func mutants() []mutant {
	return []mutant{
		{"no copy rule", func() rules {
			r := todaysRules
			r.copy = func(Key, []Key) Decision { return allow }
			return r
		}, "encrypt-only and HMAC keys", false, ""},
		{"one role per object, not per material", func() rules {
			r := todaysRules
			r.copy = checkNarrowing
			return r
		}, "public halves and trust", true, ""},
		{"unwrap keeps a bound blob's exportable", func() rules {
			r := todaysRules
			r.unwrap = func(c Caller, k Key, f WrapFormat, s *Sealed, req Template) (Template, Decision) {
				t, d := CheckUnwrap(c, k, f, s, req)
				if d.Allowed() && s != nil {
					t.Exportable = s.Exportable
				}
				return t, d
			}
			return r
		}, "exportable switched off", false, ""},
		{"a once-exportable key is trusted to wrap", func() rules {
			return withTrust(func(k Key) bool {
				return k.Prov.Origin == key.Generated && !k.Attrs.Exportable && k.Attrs.Usage&key.Data == 0 && !k.Attrs.Wrappable
			})
		}, "own wrapping and data keys", false, ""},
		{"a derived key is trusted to wrap", func() rules {
			return withTrust(func(k Key) bool {
				return k.Prov.Origin == key.Derived && !k.Attrs.Exportable && k.Attrs.Usage&key.Data == 0 && !k.Attrs.Wrappable
			})
		}, "derivation", false, ""},
		{"a wrapping key may be wrappable", func() rules {
			r := todaysRules
			r.template = func(t Template) (key.Usage, Decision) {
				t.Wrappable = false // the object made keeps the wrappable asked for
				return CheckTemplate(t)
			}
			return r
		}, "", false, ""},
		{"keywarden's format under the wrapping key itself", func() rules {
			r := todaysRules
			r.domainSep = false
			return r
		}, "", false, ""},
		{"a copy of another user's restricted key need not be restricted", copiesShedPrograms,
			"restricted keys", false, "only the allowed program may use"},
		{"a copy of one's own restricted key need not be restricted", copiesShedPrograms,
			"own restricted keys", false, "programs that may use material"},
		{"anyone granted derive derives from a restricted key", func() rules {
			r := todaysRules
			r.derive = func(c Caller, p Key, t Template) (key.Usage, Decision) {
				p.Programs = nil // the child still inherits them (apply)
				return CheckDerive(c, p, t)
			}
			return r
		}, "restricted keys", false, "only the allowed program may use"},
	}
}

// TestModelRulesAreNeeded: with each rule switched off, the search finds
// what it prevents; for the rules marked as covered by the others, it
// finds nothing within its bounds, which docs/security.md says.
func TestModelRulesAreNeeded(t *testing.T) {
	if !fullSearch() {
		t.Skip("the attacks take up to 5 calls: the full search runs without -short and without -race")
	}
	scs := map[string]scenario{}
	for _, sc := range scenarios() {
		scs[sc.name] = sc
	}
	for _, m := range mutants() {
		t.Run(m.name, func(t *testing.T) {
			t.Parallel()
			r := m.r()
			if m.finds == "" {
				for _, sc := range scenarios() {
					if trace, _ := search(sc.build(t), &sc.d, &r, modelDepth(), false); trace != nil {
						t.Errorf("%s: found, so the rule is needed and should say where:\n  %s", sc.name, strings.Join(trace, "\n  "))
					}
				}
				return
			}
			sc := scs[m.finds]
			trace, n := search(sc.build(t), &sc.d, &r, modelDepth(), m.leak)
			if trace == nil {
				t.Fatalf("%s: nothing found in %d states without the rule", sc.name, n)
			}
			if !strings.Contains(trace[len(trace)-1], m.says) {
				t.Errorf("found a different attack than expected (%q):\n  %s", m.says, strings.Join(trace, "\n  "))
			}
			t.Logf("%s, %d states:\n  %s", sc.name, n, strings.Join(trace, "\n  "))
		})
	}
}

// TestModelRawDeriveNeedsAgreement: the raw derivation of a key that
// agrees on nothing would hold its bytes as another type of key. The copy
// rule refuses that object too (the full search finds nothing with
// CheckDeriveKDF alone switched off); with both switched off, one call
// does it, and CheckDeriveKDF alone prevents it.
func TestModelRawDeriveNeedsAgreement(t *testing.T) {
	var sc scenario
	for _, s := range scenarios() {
		if s.name == "derivation" {
			sc = s
		}
	}
	r := todaysRules
	r.copy = func(Key, []Key) Decision { return allow }
	if trace, _ := search(sc.build(t), &sc.d, &r, 1, false); trace != nil {
		t.Fatalf("found with the copy rule alone off:\n  %s", strings.Join(trace, "\n  "))
	}
	r.deriveKDF = func(Key, wire.DeriveKdf) Decision { return allow }
	trace, _ := search(sc.build(t), &sc.d, &r, 1, false)
	if trace == nil || !strings.Contains(trace[0], "(raw,") || !strings.Contains(trace[len(trace)-1], "held as 2 key types") {
		t.Fatalf("the raw derivation of an HMAC key is not found: %v", trace)
	}
}

// TestModelAgreementDerivesAreSearched: the search's derive calls with
// the raw and X9.63 functions are enough, without HKDF, to find what the
// rule on derived wrapping keys prevents: with that rule switched off and
// HKDF refused, the attack the search finds derives with one of them.
// (A search that only tried HKDF would find nothing here.)
func TestModelAgreementDerivesAreSearched(t *testing.T) {
	var sc scenario
	for _, s := range scenarios() {
		if s.name == "derivation" {
			sc = s
		}
	}
	var m mutant
	for _, mm := range mutants() {
		if mm.name == "a derived key is trusted to wrap" {
			m = mm
		}
	}
	if m.r == nil || sc.build == nil {
		t.Fatal("the mutant or the scenario is gone")
	}
	r := m.r()
	r.deriveKDF = func(p Key, kdf wire.DeriveKdf) Decision {
		if kdf == wire.DeriveKdf_DERIVE_KDF_HKDF {
			return deny(wire.Status_STATUS_INVALID_ARGUMENT, "refused", "hkdf off")
		}
		return CheckDeriveKDF(p, kdf)
	}
	trace, n := search(sc.build(t), &sc.d, &r, modelDepth(), m.leak)
	if trace == nil {
		t.Fatalf("nothing found in %d states with derived wrapping keys trusted and only raw and X9.63 derivations", n)
	}
	found := false
	for _, step := range trace {
		found = found || strings.Contains(step, "(raw,") || strings.Contains(step, "(x963,")
	}
	if !found {
		t.Fatalf("the attack found derives with neither raw nor X9.63:\n  %s", strings.Join(trace, "\n  "))
	}
	t.Logf("%d states:\n  %s", n, strings.Join(trace, "\n  "))
}

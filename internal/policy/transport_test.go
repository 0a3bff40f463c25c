package policy

import (
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

var (
	p256    = spec(wire.KeyType_KEY_TYPE_ECDSA_P256)
	rsa3072 = spec(wire.KeyType_KEY_TYPE_RSA_3072)
	hmac512 = spec(wire.KeyType_KEY_TYPE_HMAC_SHA512)
)

// kk is a key of owner's with the given attributes and provenance.
func kk(s *key.Spec, c key.Class, u key.Usage, exp, wrappable bool, p Provenance, acl ...key.ACLEntry) Key {
	return Key{Owner: owner, Spec: s, Class: c, Attrs: &key.Attrs{Usage: u, Exportable: exp, Wrappable: wrappable, ACL: acl}, Prov: p}
}

var (
	generated = Provenance{Origin: key.Generated, NeverExportable: true}
	imported  = Provenance{Origin: key.Imported, NeverExportable: true}
)

func TestTrustedWrapping(t *testing.T) {
	for _, tc := range []struct {
		name string
		k    Key
		want bool
	}{
		{"generated, never exportable", kk(aes, key.Secret, key.Wrap|key.Unwrap, false, false, generated), true},
		{"generated, once exportable", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Generated}), false},
		{"generated, once exportable, vouched for", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Generated, Trusted: true}), true},
		{"exportable now", kk(aes, key.Secret, key.Wrap, true, false, Provenance{Origin: key.Generated, Trusted: true}), false},
		{"wrappable (older rules)", kk(aes, key.Secret, key.Wrap, false, true, generated), false},
		{"wrapped out", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Generated, NeverExportable: true, WrappedOut: true}), false},
		{"wrapped out, vouched for", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Generated, Trusted: true, WrappedOut: true}), false},
		{"data usage too (older rules)", kk(aes, key.Secret, key.Wrap|key.Encrypt, false, false, generated), false},
		{"imported", kk(aes, key.Secret, key.Wrap, false, false, imported), false},
		{"imported, vouched for", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Imported, Trusted: true}), true},
		{"unwrapped, vouched for (older rules)", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Unwrapped, Trusted: true}), false},
		{"unwrapped", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Unwrapped, NeverExportable: true}), false},
		{"derived, even vouched for", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Derived, NeverExportable: true, Trusted: true}), false},
		{"passphrase, even vouched for", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Passphrase, NeverExportable: true, Trusted: true}), false},
		{"rsa, signs too", kk(rsa3072, key.Private, key.Unwrap|key.Sign, false, false, generated), true},
		{"rsa, decrypts too (older rules)", kk(rsa3072, key.Private, key.Unwrap|key.Decrypt, false, false, generated), false},
	} {
		if got := TrustedWrapping(tc.k); got != tc.want {
			t.Errorf("%s: TrustedWrapping = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCheckTrust(t *testing.T) {
	for _, tc := range []struct {
		name string
		k    Key
		want wire.Status
	}{
		{"imported wrapping key", kk(aes, key.Secret, key.Wrap|key.Unwrap, false, false, imported), wire.Status_STATUS_OK},
		{"data key", kk(aes, key.Secret, key.Encrypt, false, false, imported), wire.Status_STATUS_POLICY_VIOLATION},
		{"derived", kk(aes, key.Secret, key.Unwrap, false, false, Provenance{Origin: key.Derived}), wire.Status_STATUS_POLICY_VIOLATION},
		{"from a passphrase", kk(aes, key.Secret, key.Unwrap, false, false, Provenance{Origin: key.Passphrase}), wire.Status_STATUS_POLICY_VIOLATION},
		{"unwrapped", kk(aes, key.Secret, key.Unwrap, false, false, Provenance{Origin: key.Unwrapped}), wire.Status_STATUS_POLICY_VIOLATION},
		{"exportable", kk(aes, key.Secret, key.Wrap, true, false, imported), wire.Status_STATUS_POLICY_VIOLATION},
		{"wrapped out", kk(aes, key.Secret, key.Wrap, false, false, Provenance{Origin: key.Imported, WrappedOut: true}), wire.Status_STATUS_POLICY_VIOLATION},
		{"wrappable (older rules)", kk(aes, key.Secret, key.Wrap, false, true, imported), wire.Status_STATUS_POLICY_VIOLATION},
	} {
		if got := CheckTrust(tc.k).Status; got != tc.want {
			t.Errorf("%s: CheckTrust = %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestCheckWrap(t *testing.T) {
	me := Caller{UID: owner, GID: 1}
	other := Caller{UID: stranger, GID: 2}
	kek := kk(aes, key.Secret, key.Wrap|key.Unwrap, false, false, generated)
	target := kk(aes, key.Secret, key.Encrypt|key.Decrypt, false, true, generated)
	for _, tc := range []struct {
		name     string
		c        Caller
		wrapping Key
		target   Key
		want     wire.Status
	}{
		{"allowed", me, kek, target, wire.Status_STATUS_OK},
		{"wrapping key lacks wrap", me, kk(aes, key.Secret, key.Unwrap, false, false, generated), target, wire.Status_STATUS_POLICY_VIOLATION},
		{"target not wrappable", me, kek, kk(aes, key.Secret, key.Encrypt, false, false, generated), wire.Status_STATUS_POLICY_VIOLATION},
		{"untrusted (imported) wrapping key", me, kk(aes, key.Secret, key.Wrap, false, false, imported), target, wire.Status_STATUS_POLICY_VIOLATION},
		{"wrapping key that decrypts (older rules)", me, kk(aes, key.Secret, key.Wrap|key.Encrypt, false, false, generated), target, wire.Status_STATUS_POLICY_VIOLATION},
		{"itself (a wrappable wrapping key of older rules)", me, kk(aes, key.Secret, key.Wrap, false, true, generated),
			kk(aes, key.Secret, key.Wrap, false, true, generated), wire.Status_STATUS_POLICY_VIOLATION},
		{"another wrapping key", me, kek, kk(aes, key.Secret, key.Unwrap, false, true, generated), wire.Status_STATUS_POLICY_VIOLATION},
		{"256-bit key under RSA-2048 (112)", me, kk(rsa2048, key.Private, key.Wrap, false, false, generated), target, wire.Status_STATUS_POLICY_VIOLATION},
		{"P-256 under RSA-3072 (128)", me, kk(rsa3072, key.Private, key.Wrap, false, false, generated),
			kk(p256, key.Private, key.Sign, false, true, generated), wire.Status_STATUS_OK},
		{"public key", me, kek, kk(p256, key.Public, key.Verify, false, true, imported), wire.Status_STATUS_INVALID_ARGUMENT},
		{"granted wrap is not enough to wrap another's key", other,
			kk(aes, key.Secret, key.Wrap, false, false, generated, key.ACLEntry{ID: stranger, Usage: key.Wrap}),
			kk(aes, key.Secret, key.Encrypt, false, true, generated, key.ACLEntry{ID: stranger, Usage: key.Encrypt}), wire.Status_STATUS_PERMISSION_DENIED},
	} {
		if got := CheckWrap(tc.c, tc.wrapping, tc.target); got.Status != tc.want {
			t.Errorf("%s: %v (%s), want %v", tc.name, got.Status, got.Reason, tc.want)
		}
	}
}

func TestCheckUnwrap(t *testing.T) {
	me := Caller{UID: owner, GID: 1}
	friendC := Caller{UID: friend, GID: 2}
	kek := kk(aes, key.Secret, key.Wrap|key.Unwrap, false, false, generated, key.ACLEntry{ID: friend, Usage: key.Unwrap})
	untrusted := kk(aes, key.Secret, key.Unwrap, false, false, imported)
	data := Template{Spec: aes, Class: key.Secret, Usage: key.Encrypt | key.Decrypt}
	sealed := &Sealed{Spec: aes, Class: key.Secret, Usage: key.Encrypt | key.Decrypt, Exportable: true, Wrappable: true}
	with := func(t Template, f func(*Template)) Template { f(&t); return t }
	for _, tc := range []struct {
		name   string
		c      Caller
		kek    Key
		f      WrapFormat
		sealed *Sealed
		req    Template
		want   wire.Status
		check  func(Template) bool
	}{
		{"bare", me, untrusted, Bare, nil, data, wire.Status_STATUS_OK, func(t Template) bool { return t.Usage == data.Usage && !t.Exportable }},
		{"bare never exportable", me, kek, Bare, nil, with(data, func(t *Template) { t.Exportable = true }), wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"bare wrappable for the owner", me, kek, Bare, nil, with(data, func(t *Template) { t.Wrappable = true }), wire.Status_STATUS_OK,
			func(t Template) bool { return t.Wrappable }},
		{"bare wrappable refused to a grantee", friendC, kek, Bare, nil, with(data, func(t *Template) { t.Wrappable = true }), wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"bare into a wrapping key that decrypts", me, kek, Bare, nil, Template{Spec: aes, Class: key.Secret, Usage: key.Unwrap | key.Decrypt}, wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"bound needs a trusted key", me, untrusted, Bound, sealed, Template{}, wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"bound: blob's attributes, never exportable", me, kek, Bound, sealed, Template{}, wire.Status_STATUS_OK,
			func(t Template) bool { return t.Spec == aes && t.Usage == sealed.Usage && !t.Exportable && t.Wrappable }},
		{"bound: asking exportable is refused", me, kek, Bound, sealed, Template{Exportable: true}, wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"bound: a grantee gets a locked key", friendC, kek, Bound, sealed, Template{}, wire.Status_STATUS_OK,
			func(t Template) bool { return !t.Exportable && !t.Wrappable }},
		{"bound: narrowing", me, kek, Bound, sealed, Template{Usage: key.Encrypt}, wire.Status_STATUS_OK, func(t Template) bool { return t.Usage == key.Encrypt }},
		{"bound: widening", me, kek, Bound, &Sealed{Spec: aes, Class: key.Secret, Usage: key.Encrypt}, Template{Usage: key.Encrypt | key.Decrypt},
			wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"bound: the template's type does not count", me, kek, Bound, sealed, Template{Spec: hmac256}, wire.Status_STATUS_OK,
			func(t Template) bool { return t.Spec == aes }},
		{"unwrap usage needed", me, kk(aes, key.Secret, key.Wrap, false, false, generated), Bare, nil, data, wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"stranger", Caller{UID: stranger, GID: 9}, kek, Bare, nil, data, wire.Status_STATUS_NOT_FOUND, nil},
	} {
		got, d := CheckUnwrap(tc.c, tc.kek, tc.f, tc.sealed, tc.req)
		if d.Status != tc.want {
			t.Errorf("%s: %v (%s), want %v", tc.name, d.Status, d.Reason, tc.want)
			continue
		}
		if tc.check != nil && !tc.check(got) {
			t.Errorf("%s: unexpected template %+v", tc.name, got)
		}
	}
}

func other(k Key) Key { k.Owner = stranger; return k }

func TestCheckCopy(t *testing.T) {
	held := kk(aes, key.Secret, key.Encrypt|key.Decrypt, false, true, generated)
	narrow := kk(aes, key.Secret, key.Encrypt, false, true, generated)
	for _, tc := range []struct {
		name string
		n    Key
		held []Key
		want wire.Status
	}{
		{"first holder", kk(aes, key.Secret, key.Encrypt|key.Decrypt, true, true, imported), nil, wire.Status_STATUS_OK},
		{"same attributes", kk(aes, key.Secret, key.Encrypt|key.Decrypt, false, true, imported), []Key{held}, wire.Status_STATUS_OK},
		{"fewer usages", kk(aes, key.Secret, key.Decrypt, false, false, imported), []Key{held}, wire.Status_STATUS_OK},
		{"more usages", kk(aes, key.Secret, key.Encrypt|key.Decrypt, false, false, imported), []Key{narrow}, wire.Status_STATUS_POLICY_VIOLATION},
		{"a narrowing of one of two holders", kk(aes, key.Secret, key.Decrypt, false, false, imported), []Key{narrow, held}, wire.Status_STATUS_OK},
		{"usage of one holder, wrappable of another", kk(aes, key.Secret, key.Decrypt, false, true, imported),
			[]Key{kk(aes, key.Secret, key.Decrypt, false, false, generated), kk(aes, key.Secret, key.Encrypt, false, true, generated)}, wire.Status_STATUS_POLICY_VIOLATION},
		{"another role", kk(aes, key.Secret, key.Unwrap, false, false, imported), []Key{held}, wire.Status_STATUS_POLICY_VIOLATION},
		{"exportable", kk(aes, key.Secret, key.Encrypt, true, false, imported), []Key{held}, wire.Status_STATUS_POLICY_VIOLATION},
		{"wrappable", kk(aes, key.Secret, key.Encrypt, false, true, imported), []Key{kk(aes, key.Secret, key.Encrypt, false, false, generated)}, wire.Status_STATUS_POLICY_VIOLATION},
		{"another type", kk(hmac256, key.Secret, key.Sign, false, false, imported), []Key{kk(hmac512, key.Secret, key.Sign, false, false, generated)}, wire.Status_STATUS_POLICY_VIOLATION},
		{"another curve use", kk(spec(wire.KeyType_KEY_TYPE_ECDH_P256), key.Private, key.Derive, false, false, imported),
			[]Key{kk(p256, key.Private, key.Sign, false, false, generated)}, wire.Status_STATUS_POLICY_VIOLATION},
		// Whose holders constrain a copy.
		{"an import is not constrained by another user's key", kk(aes, key.Secret, key.Encrypt|key.Decrypt, true, true, imported),
			[]Key{other(narrow)}, wire.Status_STATUS_OK},
		{"a derivation is not constrained by another user's key", kk(aes, key.Secret, key.Encrypt|key.Decrypt, false, false, Provenance{Origin: key.Derived}),
			[]Key{other(narrow)}, wire.Status_STATUS_OK},
		{"an unwrap is constrained by another user's key", kk(aes, key.Secret, key.Encrypt|key.Decrypt, false, false, Provenance{Origin: key.Unwrapped}),
			[]Key{other(narrow)}, wire.Status_STATUS_POLICY_VIOLATION},
		// One role per material, whoever holds it.
		{"the other role, another user's key", kk(aes, key.Secret, key.Unwrap, false, false, imported),
			[]Key{other(held)}, wire.Status_STATUS_POLICY_VIOLATION},
		{"a public half that wraps, a private half that decrypts", kk(rsa3072, key.Public, key.Wrap, false, false, imported),
			[]Key{other(kk(rsa3072, key.Private, key.Encrypt|key.Decrypt, false, false, generated))}, wire.Status_STATUS_POLICY_VIOLATION},
		{"a public half that verifies", kk(rsa3072, key.Public, key.Verify, false, false, imported),
			[]Key{kk(rsa3072, key.Private, key.Unwrap|key.Sign|key.Verify, false, false, generated)}, wire.Status_STATUS_OK},
		{"a public half as a narrowing", kk(rsa3072, key.Public, key.Wrap, false, false, imported),
			[]Key{kk(rsa3072, key.Private, key.Wrap|key.Unwrap, false, false, generated)}, wire.Status_STATUS_OK},
		{"a private half after its public ones", kk(rsa3072, key.Private, key.Unwrap|key.Sign, false, false, imported),
			[]Key{kk(rsa3072, key.Public, key.Wrap, false, false, imported)}, wire.Status_STATUS_OK},
		{"a private half that decrypts after a public one that wraps", kk(rsa3072, key.Private, key.Decrypt, false, false, imported),
			[]Key{kk(rsa3072, key.Public, key.Wrap, false, false, imported)}, wire.Status_STATUS_POLICY_VIOLATION},
	} {
		if got := CheckCopy(tc.n, tc.held); got.Status != tc.want {
			t.Errorf("%s: %v (%s), want %v", tc.name, got.Status, got.Reason, tc.want)
		}
	}
}

func TestNormalize(t *testing.T) {
	acl := []key.ACLEntry{{ID: friend, Usage: key.Wrap | key.Encrypt}}
	for _, tc := range []struct {
		name       string
		a          key.Attrs
		want       key.Attrs
		wrappedOut bool
		changed    bool
	}{
		{"today's data key", key.Attrs{Usage: key.Encrypt | key.Decrypt, Wrappable: true}, key.Attrs{Usage: key.Encrypt | key.Decrypt, Wrappable: true}, false, false},
		{"today's wrapping key", key.Attrs{Usage: key.Wrap | key.Unwrap}, key.Attrs{Usage: key.Wrap | key.Unwrap}, false, false},
		{"wrap+encrypt keeps encrypt", key.Attrs{Usage: key.Wrap | key.Encrypt, ACL: acl},
			key.Attrs{Usage: key.Encrypt, ACL: []key.ACLEntry{{ID: friend, Usage: key.Encrypt}}}, false, true},
		{"unwrap+decrypt, wrappable", key.Attrs{Usage: key.Unwrap | key.Decrypt, Wrappable: true}, key.Attrs{Usage: key.Decrypt, Wrappable: true}, false, true},
		{"wrappable wrapping key", key.Attrs{Usage: key.Wrap | key.Unwrap, Wrappable: true}, key.Attrs{Usage: key.Wrap | key.Unwrap}, true, true},
	} {
		in := tc.a
		got, p, changed := Normalize(&in, generated)
		if changed != tc.changed || got.Usage != tc.want.Usage || got.Wrappable != tc.want.Wrappable || p.WrappedOut != tc.wrappedOut ||
			len(got.ACL) != len(tc.want.ACL) || (len(got.ACL) > 0 && got.ACL[0] != tc.want.ACL[0]) {
			t.Errorf("%s: Normalize = %+v, %+v, %v", tc.name, got, p, changed)
		}
		if in.Usage != tc.a.Usage || (len(in.ACL) > 0 && in.ACL[0] != tc.a.ACL[0]) {
			t.Errorf("%s: Normalize modified its input", tc.name)
		}
		if _, d := CheckTemplate(Template{Spec: aes, Class: key.Secret, Usage: got.Usage, Wrappable: got.Wrappable, ACL: got.ACL}); got.Usage != 0 && !d.Allowed() {
			t.Errorf("%s: normalized attributes still break a rule: %s", tc.name, d.Reason)
		}
	}
}

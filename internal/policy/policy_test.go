package policy

import (
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

const (
	owner    = 1000
	friend   = 1001
	ogroup   = 50
	stranger = 2000
)

func spec(t wire.KeyType) *key.Spec { return key.Lookup(t) }

var (
	aes     = spec(wire.KeyType_KEY_TYPE_AES256_GCM)
	hmac256 = spec(wire.KeyType_KEY_TYPE_HMAC_SHA256)
	ed      = spec(wire.KeyType_KEY_TYPE_ED25519)
	rsa2048 = spec(wire.KeyType_KEY_TYPE_RSA_2048)
	x25519  = spec(wire.KeyType_KEY_TYPE_X25519)
)

func sharedKey(s *key.Spec, class key.Class, u key.Usage, exportable bool, acl ...key.ACLEntry) Key {
	return Key{Owner: owner, Spec: s, Class: class, Attrs: &key.Attrs{Usage: u, Exportable: exportable, ACL: acl}}
}

func TestAuthorize(t *testing.T) {
	plain := sharedKey(aes, key.Secret, key.Encrypt|key.Decrypt, false)
	shared := sharedKey(ed, key.Private, key.Sign|key.Verify, true,
		key.ACLEntry{ID: friend, Usage: key.Verify},
		key.ACLEntry{Group: true, ID: ogroup, Usage: key.Sign})
	seeOnly := sharedKey(ed, key.Private, key.Sign|key.Verify, false, key.ACLEntry{ID: friend})
	exportable := sharedKey(aes, key.Secret, key.Encrypt|key.Decrypt, true, key.ACLEntry{ID: friend, Usage: key.Encrypt})
	public := sharedKey(ed, key.Public, key.Verify, false, key.ACLEntry{ID: friend})
	// An ACL entry may never grant more than the key has; if a stale one
	// does (usage shrank), the key's usage still bounds it.
	staleACL := sharedKey(aes, key.Secret, key.Encrypt, false, key.ACLEntry{ID: friend, Usage: key.Encrypt | key.Decrypt})

	tests := []struct {
		name   string
		caller Caller
		k      Key
		act    Action
		need   key.Usage
		want   wire.Status
	}{
		{"owner uses own key", Caller{owner, 1}, plain, Use, key.Encrypt, wire.Status_STATUS_OK},
		{"owner needs two usages", Caller{owner, 1}, plain, Use, key.Encrypt | key.Decrypt, wire.Status_STATUS_OK},
		{"owner asks a usage the key lacks", Caller{owner, 1}, plain, Use, key.Sign, wire.Status_STATUS_POLICY_VIOLATION},
		{"stranger cannot see", Caller{stranger, 1}, plain, Use, key.Encrypt, wire.Status_STATUS_NOT_FOUND},
		{"stranger cannot open", Caller{stranger, 1}, plain, Open, 0, wire.Status_STATUS_NOT_FOUND},
		{"stranger cannot read public", Caller{stranger, 1}, shared, ReadPublic, 0, wire.Status_STATUS_NOT_FOUND},
		{"stranger cannot export", Caller{stranger, 1}, exportable, Export, 0, wire.Status_STATUS_NOT_FOUND},
		{"stranger cannot destroy", Caller{stranger, 1}, plain, Manage, 0, wire.Status_STATUS_NOT_FOUND},
		{"same gid as owner is not enough", Caller{stranger, ogroup}, plain, Use, key.Encrypt, wire.Status_STATUS_NOT_FOUND},
		{"friend verifies", Caller{friend, 1}, shared, Use, key.Verify, wire.Status_STATUS_OK},
		{"friend may not sign", Caller{friend, 1}, shared, Use, key.Sign, wire.Status_STATUS_PERMISSION_DENIED},
		{"group member signs", Caller{stranger, ogroup}, shared, Use, key.Sign, wire.Status_STATUS_OK},
		{"group member may not verify", Caller{stranger, ogroup}, shared, Use, key.Verify, wire.Status_STATUS_PERMISSION_DENIED},
		{"friend in group gets the union", Caller{friend, ogroup}, shared, Use, key.Sign | key.Verify, wire.Status_STATUS_OK},
		{"usage the key lacks beats the grant", Caller{friend, 1}, shared, Use, key.Encrypt, wire.Status_STATUS_POLICY_VIOLATION},
		{"stale ACL bounded by key usage", Caller{friend, 1}, staleACL, Use, key.Decrypt, wire.Status_STATUS_POLICY_VIOLATION},
		{"see-only entry opens", Caller{friend, 1}, seeOnly, Open, 0, wire.Status_STATUS_OK},
		{"see-only entry reads public", Caller{friend, 1}, seeOnly, ReadPublic, 0, wire.Status_STATUS_OK},
		{"see-only entry cannot sign", Caller{friend, 1}, seeOnly, Use, key.Sign, wire.Status_STATUS_PERMISSION_DENIED},
		{"owner exports exportable", Caller{owner, 1}, exportable, Export, 0, wire.Status_STATUS_OK},
		{"owner cannot export non-exportable", Caller{owner, 1}, plain, Export, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"grantee cannot export even exportable", Caller{friend, 1}, exportable, Export, 0, wire.Status_STATUS_PERMISSION_DENIED},
		{"grantee reads a public key object", Caller{friend, 1}, public, Export, 0, wire.Status_STATUS_OK},
		{"grantee cannot destroy", Caller{friend, 1}, shared, Manage, 0, wire.Status_STATUS_PERMISSION_DENIED},
		{"group cannot change attributes", Caller{stranger, ogroup}, shared, Manage, 0, wire.Status_STATUS_PERMISSION_DENIED},
		{"owner manages", Caller{owner, 1}, shared, Manage, 0, wire.Status_STATUS_OK},
		{"root has no special rights", Caller{0, 0}, plain, Use, key.Encrypt, wire.Status_STATUS_NOT_FOUND},
		{"use without a usage is a bug", Caller{owner, 1}, plain, Use, 0, wire.Status_STATUS_INTERNAL},
		{"unknown usage bits are a bug", Caller{owner, 1}, plain, Use, 1 << 20, wire.Status_STATUS_INTERNAL},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Authorize(tt.caller, tt.k, tt.act, tt.need)
			if d.Status != tt.want {
				t.Fatalf("Authorize = %v (%s), want %v", d.Status, d.Reason, tt.want)
			}
			if !d.Allowed() && (d.Public == "" || d.Reason == "") {
				t.Fatalf("a refusal needs a public and a precise reason: %+v", d)
			}
			if d.Allowed() != (d.Err() == nil) {
				t.Fatal("Err disagrees with Allowed")
			}
		})
	}
}

// A usage the key lacks: its owner is told which usage is missing and
// what the key has; a grantee learns no more than that it is refused.
func TestMissingUsageMessage(t *testing.T) {
	k := sharedKey(ed, key.Private, key.Sign|key.Verify, false, key.ACLEntry{ID: friend, Usage: key.Verify})
	d := Authorize(Caller{owner, 1}, k, Use, key.Encrypt)
	if want := "the key's usage (sign,verify) does not allow this operation, which needs encrypt"; d.Public != want {
		t.Errorf("owner: %q, want %q", d.Public, want)
	}
	d = Authorize(Caller{friend, 1}, k, Use, key.Encrypt)
	if want := "the key's usage does not allow this operation"; d.Public != want {
		t.Errorf("grantee: %q, want %q", d.Public, want)
	}
}

func TestCheckTemplate(t *testing.T) {
	tests := []struct {
		name      string
		t         Template
		wantUsage key.Usage
		want      wire.Status
	}{
		{"aes default", Template{Spec: aes, Class: key.Secret}, key.Encrypt | key.Decrypt, wire.Status_STATUS_OK},
		{"hmac default", Template{Spec: hmac256, Class: key.Secret}, key.Sign | key.Verify | key.Derive, wire.Status_STATUS_OK},
		{"ed25519 default", Template{Spec: ed, Class: key.Private}, key.Sign | key.Verify, wire.Status_STATUS_OK},
		{"ed25519 public default", Template{Spec: ed, Class: key.Public}, key.Verify, wire.Status_STATUS_OK},
		{"rsa default", Template{Spec: rsa2048, Class: key.Private}, key.Sign | key.Verify | key.Encrypt | key.Decrypt, wire.Status_STATUS_OK},
		{"rsa public default", Template{Spec: rsa2048, Class: key.Public}, key.Verify | key.Encrypt, wire.Status_STATUS_OK},
		{"x25519 default", Template{Spec: x25519, Class: key.Private}, key.Derive, wire.Status_STATUS_OK},
		{"aes wrap key", Template{Spec: aes, Class: key.Secret, Usage: key.Wrap | key.Unwrap}, key.Wrap | key.Unwrap, wire.Status_STATUS_OK},
		{"aes encrypt-only", Template{Spec: aes, Class: key.Secret, Usage: key.Encrypt}, key.Encrypt, wire.Status_STATUS_OK},
		{"wrap+decrypt forbidden", Template{Spec: aes, Class: key.Secret, Usage: key.Wrap | key.Decrypt}, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"unwrap+encrypt forbidden", Template{Spec: aes, Class: key.Secret, Usage: key.Unwrap | key.Encrypt}, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"all four forbidden", Template{Spec: aes, Class: key.Secret, Usage: key.Wrap | key.Unwrap | key.Encrypt | key.Decrypt}, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"wrap+encrypt forbidden", Template{Spec: aes, Class: key.Secret, Usage: key.Wrap | key.Encrypt}, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"unwrap+decrypt forbidden", Template{Spec: aes, Class: key.Secret, Usage: key.Unwrap | key.Decrypt}, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"rsa unwrap+decrypt forbidden", Template{Spec: rsa2048, Class: key.Private, Usage: key.Unwrap | key.Decrypt}, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"rsa public wrap+encrypt forbidden", Template{Spec: rsa2048, Class: key.Public, Usage: key.Wrap | key.Encrypt}, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"rsa sign with unwrap allowed", Template{Spec: rsa2048, Class: key.Private, Usage: key.Unwrap | key.Sign | key.Verify}, key.Unwrap | key.Sign | key.Verify, wire.Status_STATUS_OK},
		{"wrapping key never wrappable", Template{Spec: aes, Class: key.Secret, Usage: key.Wrap, Wrappable: true}, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"unwrapping key never wrappable", Template{Spec: rsa2048, Class: key.Private, Usage: key.Unwrap, Wrappable: true}, 0, wire.Status_STATUS_POLICY_VIOLATION},
		{"data key may be wrappable", Template{Spec: aes, Class: key.Secret, Wrappable: true}, key.Encrypt | key.Decrypt, wire.Status_STATUS_OK},
		{"aes cannot sign", Template{Spec: aes, Class: key.Secret, Usage: key.Sign}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"ed25519 cannot encrypt", Template{Spec: ed, Class: key.Private, Usage: key.Encrypt}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"public key cannot sign", Template{Spec: ed, Class: key.Public, Usage: key.Sign}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"rsa public cannot decrypt", Template{Spec: rsa2048, Class: key.Public, Usage: key.Decrypt}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"unknown usage bits", Template{Spec: aes, Class: key.Secret, Usage: 1 << 12}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"secret class for asymmetric", Template{Spec: ed, Class: key.Secret}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"private class for secret", Template{Spec: aes, Class: key.Private}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"no spec", Template{Class: key.Secret}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"acl within usage", Template{Spec: ed, Class: key.Private, ACL: []key.ACLEntry{{ID: friend, Usage: key.Verify}}}, key.Sign | key.Verify, wire.Status_STATUS_OK},
		{"acl beyond usage", Template{Spec: ed, Class: key.Private, Usage: key.Verify, ACL: []key.ACLEntry{{ID: friend, Usage: key.Sign}}}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"acl duplicate principal", Template{Spec: ed, Class: key.Private, ACL: []key.ACLEntry{{ID: friend}, {ID: friend, Usage: key.Verify}}}, 0, wire.Status_STATUS_INVALID_ARGUMENT},
		{"uid and gid of same number are distinct", Template{Spec: ed, Class: key.Private, ACL: []key.ACLEntry{{ID: 7}, {Group: true, ID: 7}}}, key.Sign | key.Verify, wire.Status_STATUS_OK},
		{"acl too long", Template{Spec: ed, Class: key.Private, ACL: longACL()}, 0, wire.Status_STATUS_RESOURCE_EXHAUSTED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			u, d := CheckTemplate(tt.t)
			if d.Status != tt.want {
				t.Fatalf("CheckTemplate = %v (%s), want %v", d.Status, d.Reason, tt.want)
			}
			if d.Allowed() && u != tt.wantUsage {
				t.Fatalf("usage %q, want %q", u, tt.wantUsage)
			}
		})
	}
}

func longACL() []key.ACLEntry {
	acl := make([]key.ACLEntry, key.MaxACLEntries+1)
	for i := range acl {
		acl[i].ID = uint32(i)
	}
	return acl
}

// Every default usage must itself pass the rules: the default never
// creates a key the rules would refuse.
func TestDefaultsAreAllowed(t *testing.T) {
	for _, ty := range key.Types() {
		s := key.Lookup(ty)
		for _, c := range []key.Class{key.Secret, key.Private, key.Public} {
			if !s.ClassOK(c) {
				continue
			}
			u := DefaultUsage(s, c)
			if d := CheckUsage(s, c, u); !d.Allowed() {
				t.Errorf("%s %v: default usage %q refused: %s", s.Name, c, u, d.Reason)
			}
			if u&key.Transport != 0 && u&key.Data != 0 {
				t.Errorf("%s %v: default usage %q mixes key transport and data", s.Name, c, u)
			}
		}
	}
}

func ptr[T any](v T) *T { return &v }

func TestCheckChange(t *testing.T) {
	base := &key.Attrs{Usage: key.Sign | key.Verify, Exportable: true, Wrappable: false,
		ACL: []key.ACLEntry{{ID: friend, Usage: key.Sign | key.Verify}}}
	locked := &key.Attrs{Usage: key.Sign | key.Verify}
	tests := []struct {
		name   string
		old    *key.Attrs
		c      Change
		want   wire.Status
		result func(*key.Attrs) bool
	}{
		{"nothing", base, Change{}, wire.Status_STATUS_OK, func(a *key.Attrs) bool { return a.Usage == base.Usage && a.Exportable }},
		{"shrink usage trims ACL", base, Change{Usage: ptr(key.Verify)}, wire.Status_STATUS_OK,
			func(a *key.Attrs) bool { return a.Usage == key.Verify && a.ACL[0].Usage == key.Verify }},
		{"same usage", base, Change{Usage: ptr(key.Sign | key.Verify)}, wire.Status_STATUS_OK, nil},
		{"empty usage", base, Change{Usage: ptr(key.Usage(0))}, wire.Status_STATUS_OK, func(a *key.Attrs) bool { return a.Usage == 0 }},
		{"widen usage", locked, Change{Usage: ptr(key.Sign | key.Verify | key.Derive)}, wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"swap usage", &key.Attrs{Usage: key.Sign}, Change{Usage: ptr(key.Verify)}, wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"unknown bits", base, Change{Usage: ptr(key.Usage(1 << 15))}, wire.Status_STATUS_INVALID_ARGUMENT, nil},
		{"export off", base, Change{Exportable: ptr(false)}, wire.Status_STATUS_OK, func(a *key.Attrs) bool { return !a.Exportable }},
		{"export back on", locked, Change{Exportable: ptr(true)}, wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"export stays on", base, Change{Exportable: ptr(true)}, wire.Status_STATUS_OK, func(a *key.Attrs) bool { return a.Exportable }},
		{"wrap on", base, Change{Wrappable: ptr(true)}, wire.Status_STATUS_POLICY_VIOLATION, nil},
		{"wrap off", base, Change{Wrappable: ptr(false)}, wire.Status_STATUS_OK, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := *tt.old
			beforeACL := append([]key.ACLEntry(nil), tt.old.ACL...)
			n, d := CheckChange(tt.old, tt.c)
			if d.Status != tt.want {
				t.Fatalf("CheckChange = %v (%s), want %v", d.Status, d.Reason, tt.want)
			}
			if tt.result != nil && !tt.result(n) {
				t.Fatalf("unexpected result %+v", n)
			}
			if tt.old.Usage != before.Usage || tt.old.Exportable != before.Exportable || len(tt.old.ACL) != len(beforeACL) ||
				(len(beforeACL) > 0 && tt.old.ACL[0] != beforeACL[0]) {
				t.Fatal("CheckChange modified the old attributes")
			}
		})
	}
}

// Whatever sequence of allowed changes is applied, attributes never widen.
func TestChangesOnlyNarrow(t *testing.T) {
	start := &key.Attrs{Usage: key.Encrypt | key.Decrypt, Exportable: false, Wrappable: true}
	cur := start
	for i := 0; i < 1<<10; i++ {
		u := key.Usage(i & 0x7f)
		e, w := i&0x80 != 0, i&0x100 != 0
		n, d := CheckChange(cur, Change{Usage: &u, Exportable: &e, Wrappable: &w})
		if !d.Allowed() {
			continue
		}
		if !cur.Usage.Has(n.Usage) || (n.Exportable && !cur.Exportable) || (n.Wrappable && !cur.Wrappable) {
			t.Fatalf("change %d widened %+v to %+v", i, cur, n)
		}
		cur = n
	}
	if cur.Exportable {
		t.Fatal("a non-exportable key became exportable")
	}
}

func TestCheckDerive(t *testing.T) {
	parent := func(exp, wrap bool) Key {
		return Key{Owner: owner, Spec: x25519, Class: key.Private, Attrs: &key.Attrs{Usage: key.Derive, Exportable: exp, Wrappable: wrap}}
	}
	restricted := parent(false, false)
	restricted.Programs = []key.Program{{Path: "/usr/bin/ssh"}}
	tests := []struct {
		name   string
		caller Caller
		p      Key
		t      Template
		want   wire.Status
	}{
		{"grantee, locked child", Caller{friend, 1}, parent(true, true), Template{Spec: aes, Class: key.Secret}, wire.Status_STATUS_OK},
		{"grantee, exportable child", Caller{friend, 1}, parent(true, true), Template{Spec: aes, Class: key.Secret, Exportable: true}, wire.Status_STATUS_POLICY_VIOLATION},
		{"grantee, wrappable child", Caller{friend, 1}, parent(true, true), Template{Spec: aes, Class: key.Secret, Wrappable: true}, wire.Status_STATUS_POLICY_VIOLATION},
		{"aes child", Caller{owner, 1}, parent(false, false), Template{Spec: aes, Class: key.Secret}, wire.Status_STATUS_OK},
		{"hmac child", Caller{owner, 1}, parent(false, false), Template{Spec: hmac256, Class: key.Secret, Usage: key.Sign}, wire.Status_STATUS_OK},
		{"exportable child of exportable parent", Caller{owner, 1}, parent(true, false), Template{Spec: aes, Class: key.Secret, Exportable: true}, wire.Status_STATUS_OK},
		{"exportable child of locked parent", Caller{owner, 1}, parent(false, false), Template{Spec: aes, Class: key.Secret, Exportable: true}, wire.Status_STATUS_POLICY_VIOLATION},
		{"wrappable child of locked parent", Caller{owner, 1}, parent(true, false), Template{Spec: aes, Class: key.Secret, Wrappable: true}, wire.Status_STATUS_POLICY_VIOLATION},
		{"asymmetric child", Caller{owner, 1}, parent(true, true), Template{Spec: ed, Class: key.Secret}, wire.Status_STATUS_INVALID_ARGUMENT},
		{"child with forbidden pair", Caller{owner, 1}, parent(true, true), Template{Spec: aes, Class: key.Secret, Usage: key.Wrap | key.Decrypt}, wire.Status_STATUS_POLICY_VIOLATION},
		{"no type", Caller{owner, 1}, parent(true, true), Template{Class: key.Secret}, wire.Status_STATUS_INVALID_ARGUMENT},
		// The grantee would own a child whose inherited programs it could lift.
		{"grantee, parent restricted to programs", Caller{friend, 1}, restricted, Template{Spec: aes, Class: key.Secret}, wire.Status_STATUS_POLICY_VIOLATION},
		{"owner, parent restricted to programs", Caller{owner, 1}, restricted, Template{Spec: aes, Class: key.Secret}, wire.Status_STATUS_OK},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, d := CheckDerive(tt.caller, tt.p, tt.t); d.Status != tt.want {
				t.Fatalf("CheckDerive = %v (%s), want %v", d.Status, d.Reason, tt.want)
			}
		})
	}
}

func TestCheckDeriveKDF(t *testing.T) {
	none, x963, hkdf := wire.DeriveKdf_DERIVE_KDF_NONE, wire.DeriveKdf_DERIVE_KDF_X963, wire.DeriveKdf_DERIVE_KDF_HKDF
	p256 := key.Lookup(wire.KeyType_KEY_TYPE_ECDH_P256)
	for _, tt := range []struct {
		spec *key.Spec
		kdf  wire.DeriveKdf
		want wire.Status
	}{
		{x25519, none, wire.Status_STATUS_OK},
		{x25519, x963, wire.Status_STATUS_OK},
		{p256, none, wire.Status_STATUS_OK},
		{p256, x963, wire.Status_STATUS_OK},
		{hmac256, hkdf, wire.Status_STATUS_OK},
		{hmac256, wire.DeriveKdf_DERIVE_KDF_UNSPECIFIED, wire.Status_STATUS_OK},
		// From a key that agrees on nothing, the raw "secret" would be
		// the key's own bytes.
		{hmac256, none, wire.Status_STATUS_INVALID_ARGUMENT},
		{hmac256, x963, wire.Status_STATUS_INVALID_ARGUMENT},
		{aes, none, wire.Status_STATUS_INVALID_ARGUMENT},
		{nil, none, wire.Status_STATUS_INVALID_ARGUMENT},
		{x25519, wire.DeriveKdf(42), wire.Status_STATUS_INVALID_ARGUMENT},
	} {
		p := Key{Owner: owner, Spec: tt.spec, Class: key.Private, Attrs: &key.Attrs{Usage: key.Derive}}
		if d := CheckDeriveKDF(p, tt.kdf); d.Status != tt.want {
			t.Errorf("%v from %v: %v (%s), want %v", tt.kdf, tt.spec, d.Status, d.Reason, tt.want)
		}
	}
}

func TestCheckQuota(t *testing.T) {
	for _, tt := range []struct {
		owned, limit int
		want         wire.Status
	}{
		{0, 1, wire.Status_STATUS_OK},
		{9, 10, wire.Status_STATUS_OK},
		{10, 10, wire.Status_STATUS_RESOURCE_EXHAUSTED},
		{11, 10, wire.Status_STATUS_RESOURCE_EXHAUSTED},
		{0, 0, wire.Status_STATUS_RESOURCE_EXHAUSTED},
	} {
		if d := CheckQuota(tt.owned, tt.limit); d.Status != tt.want {
			t.Errorf("CheckQuota(%d, %d) = %v, want %v", tt.owned, tt.limit, d.Status, tt.want)
		}
	}
}

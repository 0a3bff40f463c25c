package key

import (
	"testing"

	"github.com/keywarden/keywarden/internal/wire"
)

func TestValidName(t *testing.T) {
	good := []string{"a", "web-tls", "db_key.v2", "user@host", "x+y", "_private", "0day", string(make128('k'))}
	bad := []string{"", "-dash-first", ".dot", "has space", "colon:name", "slash/name", "id:abc", "tab\t", "uni\u00e9", "\x1b[31m", string(make128('k')) + "k"}
	for _, n := range good {
		if !ValidName(n) {
			t.Errorf("ValidName(%q) = false, want true", n)
		}
	}
	for _, n := range bad {
		if ValidName(n) {
			t.Errorf("ValidName(%q) = true, want false", n)
		}
	}
}

func make128(c byte) []byte {
	b := make([]byte, 128)
	for i := range b {
		b[i] = c
	}
	return b
}

func TestIDs(t *testing.T) {
	a, err := NewID()
	if err != nil {
		t.Fatal(err)
	}
	b, _ := NewID()
	if a == b {
		t.Fatal("two fresh ids are equal")
	}
	p, err := ParseID(a.String())
	if err != nil || p != a {
		t.Fatalf("ParseID(String()) = %v, %v", p, err)
	}
	for _, s := range []string{"", "abc", a.String() + "00", "zz" + a.String()[2:]} {
		if _, err := ParseID(s); err == nil {
			t.Errorf("ParseID(%q) succeeded", s)
		}
	}
	if _, ok := IDFromBytes(make([]byte, 15)); ok {
		t.Error("IDFromBytes accepted 15 bytes")
	}
}

func TestUsageString(t *testing.T) {
	if s := (Encrypt | Decrypt).String(); s != "encrypt,decrypt" {
		t.Errorf("got %q", s)
	}
	if s := Usage(0).String(); s != "" {
		t.Errorf("got %q", s)
	}
	if !(Sign | Verify).Has(Sign) || Sign.Has(Sign|Verify) {
		t.Error("Has is wrong")
	}
}

// Every wire key type has a spec, and every spec is consistent.
func TestSpecs(t *testing.T) {
	for v, name := range wire.KeyType_name {
		typ := wire.KeyType(v)
		if typ == wire.KeyType_KEY_TYPE_UNSPECIFIED {
			if Lookup(typ) != nil {
				t.Error("unspecified type has a spec")
			}
			continue
		}
		s := Lookup(typ)
		if s == nil {
			t.Errorf("%s has no spec", name)
			continue
		}
		if s.Type != typ || s.Name == "" || s.Strength < 112 {
			t.Errorf("%s: inconsistent spec %+v", name, s)
		}
		if !s.Asymmetric && (s.SecretLen*8 < s.Strength/2 || s.Public != 0) {
			t.Errorf("%s: secret key spec %+v", name, s)
		}
		if s.Asymmetric && !s.Private.Has(s.Public) {
			t.Errorf("%s: public key can do what the private cannot", name)
		}
	}
	if len(Types()) != len(wire.KeyType_name)-1 {
		t.Errorf("Types() = %d types", len(Types()))
	}
}

// Every type the protocol names has a spec, and every spec the name the
// protocol gives its type: the CLI, the client and the daemon's log agree.
func TestSpecsCoverTheProtocolsTypes(t *testing.T) {
	for _, wt := range wire.KeyTypes() {
		s := Lookup(wt)
		if s == nil {
			t.Errorf("%v has no spec", wt)
			continue
		}
		if name, _ := wire.KeyTypeName(wt); s.Name != name || s.Type != wt {
			t.Errorf("%v: spec %q (%v), protocol %q", wt, s.Name, s.Type, name)
		}
	}
	if len(Types()) != len(wire.KeyTypes()) {
		t.Errorf("%d specs for %d types", len(Types()), len(wire.KeyTypes()))
	}
}

package wire

import (
	"strings"
	"testing"
)

// Every key type of the protocol's enum has exactly one name, and every
// name one type; nothing else has a name.
func TestKeyTypeNames(t *testing.T) {
	seen := map[string]bool{}
	for v, enumName := range KeyType_name {
		kt := KeyType(v)
		name, ok := KeyTypeName(kt)
		if kt == KeyType_KEY_TYPE_UNSPECIFIED {
			if ok {
				t.Errorf("the unspecified type has the name %q", name)
			}
			continue
		}
		if !ok {
			t.Errorf("%s has no name", enumName)
			continue
		}
		if seen[name] {
			t.Errorf("two types are named %q", name)
		}
		seen[name] = true
		if back, ok := KeyTypeByName(name); !ok || back != kt {
			t.Errorf("%q names %v, want %v", name, back, kt)
		}
	}
	if len(KeyTypes()) != len(seen) {
		t.Errorf("KeyTypes lists %d types, the enum %d", len(KeyTypes()), len(seen))
	}
	if _, ok := KeyTypeName(KeyType(999)); ok {
		t.Error("an unknown type has a name")
	}
	if _, ok := KeyTypeByName("aes128-gcm"); ok {
		t.Error("an unknown name has a type")
	}
}

// Every usage bit of the protocol has a name, and the names parse back.
func TestUsageNames(t *testing.T) {
	for v, enumName := range Usage_name {
		if v == 0 {
			continue
		}
		s := UsageString(uint32(v))
		if s == "" || s == "unknown" || strings.Contains(s, ",") {
			t.Errorf("%s prints as %q", enumName, s)
		}
		if u, err := ParseUsage(s); err != nil || u != uint32(v) {
			t.Errorf("%q parses as %#x, %v", s, u, err)
		}
		if uint32(v)&^AllUsages != 0 {
			t.Errorf("%s is not in AllUsages", enumName)
		}
	}
	if s := UsageString(AllUsages | 1<<30); s != "encrypt,decrypt,sign,verify,wrap,unwrap,derive,unknown" {
		t.Errorf("got %q", s)
	}
	if _, err := ParseUsage("sign,explode"); err == nil {
		t.Error("an unknown usage parses")
	}
}

func TestParseKeyID(t *testing.T) {
	id, err := ParseKeyID("000102030405060708090a0b0c0d0e0f")
	if err != nil || id[15] != 15 || FormatKeyID(id) != "000102030405060708090a0b0c0d0e0f" {
		t.Fatalf("%x %v", id, err)
	}
	for _, bad := range []string{"", "00", "000102030405060708090a0b0c0d0e0f00", "zz0102030405060708090a0b0c0d0e0f"} {
		if _, err := ParseKeyID(bad); err == nil {
			t.Errorf("%q parses", bad)
		}
	}
}

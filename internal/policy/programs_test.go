package policy

import (
	"bytes"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

func TestCheckProgram(t *testing.T) {
	sum := bytes.Repeat([]byte{0xab}, 32)
	other := bytes.Repeat([]byte{0xcd}, 32)
	free := sharedKey(ed, key.Private, key.Sign|key.Verify, false)
	byPath := free
	byPath.Programs = []key.Program{{Path: "/usr/bin/ssh-keygen"}, {Path: "/usr/bin/ssh"}}
	byHash := free
	byHash.Programs = []key.Program{{Path: "/usr/bin/ssh-keygen", SHA256: sum}}

	tests := []struct {
		name string
		k    Key
		p    Process
		want wire.Status
	}{
		{"no list: any program", free, Process{Exe: "/usr/bin/python3.11"}, wire.Status_STATUS_OK},
		{"no list: even an unknown one", free, Process{Unknown: "no pidfd"}, wire.Status_STATUS_OK},
		{"listed path", byPath, Process{Exe: "/usr/bin/ssh-keygen"}, wire.Status_STATUS_OK},
		{"second listed path", byPath, Process{Exe: "/usr/bin/ssh"}, wire.Status_STATUS_OK},
		{"other program", byPath, Process{Exe: "/usr/bin/python3.11"}, wire.Status_STATUS_PERMISSION_DENIED},
		{"a prefix is not the path", byPath, Process{Exe: "/usr/bin/ssh-keygen2"}, wire.Status_STATUS_PERMISSION_DENIED},
		{"a replaced file shows as deleted", byPath, Process{Exe: "/usr/bin/ssh-keygen (deleted)"}, wire.Status_STATUS_PERMISSION_DENIED},
		{"unknown program", byPath, Process{Unknown: "the kernel gave no pidfd"}, wire.Status_STATUS_PERMISSION_DENIED},
		{"listed, in another user namespace", byPath, Process{Exe: "/usr/bin/ssh", OtherUserNS: true}, wire.Status_STATUS_PERMISSION_DENIED},
		{"hash matches", byHash, Process{Exe: "/usr/bin/ssh-keygen", SHA256: sum}, wire.Status_STATUS_OK},
		{"hash differs", byHash, Process{Exe: "/usr/bin/ssh-keygen", SHA256: other}, wire.Status_STATUS_PERMISSION_DENIED},
		{"hash not read", byHash, Process{Exe: "/usr/bin/ssh-keygen"}, wire.Status_STATUS_PERMISSION_DENIED},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := CheckProgram(tt.k, "k", tt.p)
			if d.Status != tt.want {
				t.Fatalf("got %v (%s), want %v", d.Status, d.Reason, tt.want)
			}
			if !d.Allowed() && tt.p.Exe != "" && (!strings.Contains(d.Public, tt.p.Exe) || !strings.Contains(d.Reason, tt.p.Exe)) {
				t.Errorf("refusal does not name the caller's program %q: %q / %q", tt.p.Exe, d.Public, d.Reason)
			}
		})
	}
	d := CheckProgram(byPath, "signer", Process{Exe: "/usr/bin/python3.11"})
	if want := "key signer may be used only by /usr/bin/ssh-keygen or /usr/bin/ssh; this request came from /usr/bin/python3.11"; d.Public != want {
		t.Errorf("message %q, want %q", d.Public, want)
	}
}

func TestCheckPrograms(t *testing.T) {
	many := make([]key.Program, key.MaxPrograms+1)
	for i := range many {
		many[i] = key.Program{Path: "/bin/p" + string(rune('a'+i))}
	}
	tests := []struct {
		name string
		ps   []key.Program
		want wire.Status
	}{
		{"none", nil, wire.Status_STATUS_OK},
		{"two", []key.Program{{Path: "/a"}, {Path: "/a", SHA256: make([]byte, 32)}}, wire.Status_STATUS_OK},
		{"relative", []key.Program{{Path: "bin/a"}}, wire.Status_STATUS_INVALID_ARGUMENT},
		{"not clean", []key.Program{{Path: "/usr/../bin/a"}}, wire.Status_STATUS_INVALID_ARGUMENT},
		{"short hash", []key.Program{{Path: "/a", SHA256: make([]byte, 20)}}, wire.Status_STATUS_INVALID_ARGUMENT},
		{"twice", []key.Program{{Path: "/a"}, {Path: "/a"}}, wire.Status_STATUS_INVALID_ARGUMENT},
		{"too many", many, wire.Status_STATUS_RESOURCE_EXHAUSTED},
	}
	for _, tt := range tests {
		if d := CheckPrograms(tt.ps); d.Status != tt.want {
			t.Errorf("%s: got %v (%s), want %v", tt.name, d.Status, d.Reason, tt.want)
		}
	}
}

// A key that only some programs may use cannot be escaped by copying its
// material into an object that any program may use: an unwrap (of any
// owner), an import or a repeated derivation.
func TestCopyKeepsProgramRestriction(t *testing.T) {
	restricted := sharedKey(aes, key.Secret, key.Encrypt|key.Decrypt, false)
	restricted.Programs = []key.Program{{Path: "/usr/bin/age"}}
	free := sharedKey(aes, key.Secret, key.Encrypt|key.Decrypt, false)
	for _, origin := range []key.Origin{key.Unwrapped, key.Imported, key.Derived} {
		n := free
		n.Prov.Origin = origin
		if d := CheckCopy(n, []Key{restricted}); d.Status != wire.Status_STATUS_POLICY_VIOLATION {
			t.Errorf("unrestricted %v copy of a restricted key: got %v, want POLICY_VIOLATION", origin, d.Status)
		}
		n.Programs = []key.Program{{Path: "/usr/bin/age"}}
		if d := CheckCopy(n, []Key{restricted}); !d.Allowed() {
			t.Errorf("restricted %v copy of a restricted key: %s", origin, d.Reason)
		}
	}
	// A copy may be restricted when the key it copies is not.
	n := restricted
	n.Prov.Origin = key.Unwrapped
	if d := CheckCopy(n, []Key{free}); !d.Allowed() {
		t.Errorf("restricted copy of an unrestricted key: %s", d.Reason)
	}
}

func TestParseProgram(t *testing.T) {
	h := strings.Repeat("ab", 32)
	for _, s := range []string{"/usr/bin/ssh-keygen", "/usr/bin/ssh-keygen@sha256:" + h, "/opt/a@b/c"} {
		p, err := key.ParseProgram(s)
		if err != nil {
			t.Fatalf("%s: %v", s, err)
		}
		if p.String() != s {
			t.Errorf("%s: round trip gives %s", s, p)
		}
	}
	for _, s := range []string{"", "ssh", "/usr/bin/ssh@sha256:12", "/usr/bin/ssh@sha256:" + h + "00", "/usr/bin/"} {
		if _, err := key.ParseProgram(s); err == nil {
			t.Errorf("%q parsed", s)
		}
	}
}

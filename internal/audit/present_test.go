package audit

import (
	"bytes"
	"crypto/ed25519"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPublicKeyFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.pub")
	k1 := testPub(t)
	other, _ := DeriveKeys(bytes.Repeat([]byte{3}, 32))
	k2 := other.PublicKey()
	// Written whole: what was there before does not stay.
	for _, ks := range [][]ed25519.PublicKey{{k2}, {k1, k2}, {k1, k2}} {
		if err := PublishPublicKeys(path, ks...); err != nil {
			t.Fatal(err)
		}
	}
	data, _ := os.ReadFile(path)
	keys, err := ParsePublicKeys(data)
	if err != nil || len(keys) != 2 || !keys[0].Equal(k1) || !keys[1].Equal(k2) {
		t.Fatalf("%v %x\n%s", err, keys, data)
	}
	if k, err := TrustedPublicKey(data); err != nil || !k.Equal(k1) {
		t.Fatalf("trusted %x, %v", k, err)
	}
	der, _ := x509.MarshalPKIXPublicKey(k1)
	keys, err = ParsePublicKeys(pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
	if err != nil || len(keys) != 1 || !keys[0].Equal(k1) {
		t.Fatalf("PEM: %v %x", err, keys)
	}
	for _, bad := range []string{"", "# nothing\n", "abcd\n", strings.Repeat("zz", 32)} {
		if _, err := ParsePublicKeys([]byte(bad)); err == nil {
			t.Errorf("%q accepted", bad)
		}
	}
}

func TestText(t *testing.T) {
	for _, r := range sampleRecords() {
		s := r.Text()
		if !strings.Contains(s, r.Kind.String()) || strings.Contains(s, "\n") {
			t.Errorf("%q", s)
		}
	}
	s := sampleRecords()[0].Text()
	for _, want := range []string{"uid=0", "pid=99", "exe=/usr/bin/é", "[sign key=00000001000000000000000000000000 OK ×5]", `msg=tab\there`} {
		if !strings.Contains(s, want) {
			t.Errorf("%q lacks %q", s, want)
		}
	}
}

func TestReportText(t *testing.T) {
	files, _ := series(t)
	var out bytes.Buffer
	verifyList(t, files, strict(t)).WriteText(&out)
	if !strings.HasPrefix(out.String(), "intact\n") || !strings.Contains(out.String(), "through seq") {
		t.Fatalf("%s", out.String())
	}
	out.Reset()
	verifyList(t, files[1:], VerifyOptions{}).WriteText(&out)
	if !strings.Contains(out.String(), "warning: the log given starts at seq") {
		t.Fatalf("%s", out.String())
	}
	out.Reset()
	verifyList(t, files[:1], VerifyOptions{RequireClosed: true}).WriteText(&out)
	if !strings.HasPrefix(out.String(), "NOT INTACT: ") {
		t.Fatalf("%s", out.String())
	}
}

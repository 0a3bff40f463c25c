package audit

import (
	"bytes"
	"crypto/ed25519"
	"os"
	"testing"
)

// TestDocsExample verifies the example log of docs/audit.md: it must be a
// real log, intact under the test key it names.
func TestDocsExample(t *testing.T) {
	doc, err := os.ReadFile("../../docs/audit.md")
	if err != nil {
		t.Skip(err)
	}
	var log bytes.Buffer
	for _, line := range bytes.SplitAfter(doc, []byte{'\n'}) {
		if bytes.HasPrefix(line, []byte(`{"v":1,`)) {
			log.Write(line)
		}
	}
	pub := testPub(t)
	if !bytes.Contains(doc, []byte(hexString(pub))) {
		t.Fatal("the page does not name the example's public key")
	}
	rep, err := Verify([]Input{{Name: "docs/audit.md", R: &log}},
		VerifyOptions{PublicKeys: []ed25519.PublicKey{pub}, Keys: []*Keys{testKeys(t)}})
	if err != nil {
		t.Fatal(err)
	}
	mustIntact(t, rep)
	if rep.Records != 8 || rep.TrustedThrough != 8 {
		t.Fatalf("report %+v", rep)
	}
}

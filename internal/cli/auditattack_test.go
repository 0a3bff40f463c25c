package cli

import (
	"bytes"
	"encoding/hex"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/audit"
)

// otherLog writes, beside dir, a log of another daemon (keys from secret
// b), closed; with cut, its checkpoints are cut off: it holds none.
func otherLog(t *testing.T, dir string, b byte, cut bool) (string, *audit.Keys) {
	t.Helper()
	k, err := audit.DeriveKeys(bytes.Repeat([]byte{b}, 32))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "other.log")
	l, err := audit.Open(audit.Options{Path: path, Keys: k, CheckpointEvery: 1000})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 3 {
		if err := l.Append(encryption(i)); err != nil {
			t.Fatal(err)
		}
	}
	l.Close()
	if cut {
		ls := lines(t, path)
		writeLinesTo(t, path, ls[:len(ls)-1])
	}
	pub, _ := audit.DeriveKeys(bytes.Repeat([]byte{b}, 32))
	return path, pub
}

// TestAuditVerifyPlantedKey: a key added to audit.pub (whoever can write
// the log can write the file beside it) is not trusted for being listed:
// a log forged with it is not intact.
func TestAuditVerifyPlantedKey(t *testing.T) {
	tl := writeTestLog(t, 4, 0, false)
	forged, x := otherLog(t, t.TempDir(), 7, false)
	planted := hex.EncodeToString(auditTestKeys(t).PublicKey()) + "\n" + hex.EncodeToString(x.PublicKey()) + "\n"
	if err := os.WriteFile(tl.pub, []byte(planted), 0o644); err != nil {
		t.Fatal(err)
	}
	code, out, _ := runCLI(t, "audit", "verify", "--public-key", tl.pub, "--closed", forged)
	if code != ExitFailed || !strings.Contains(out, "not trusted") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	// The log the file's first key signs is intact.
	if code, out, _ := runCLI(t, "audit", "verify", "--public-key", tl.pub, "--closed", tl.path); code != ExitOK {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

// TestAuditVerifyNothingSigned: with a public key, a log in which no
// checkpoint is signed with it (another daemon's, cut before its
// checkpoints) is not intact: nothing in it is vouched for.
func TestAuditVerifyNothingSigned(t *testing.T) {
	tl := writeTestLog(t, 0, 0, false)
	path, _ := otherLog(t, t.TempDir(), 7, true)
	code, out, _ := runCLI(t, "audit", "verify", "--public-key", tl.pub, path)
	if code != ExitFailed || !strings.Contains(out, "nothing in it is vouched for") {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

// TestAuditVerifyHeadCut: a series whose first file was removed is not
// intact, unless the checkpoint it continues from is given.
func TestAuditVerifyHeadCut(t *testing.T) {
	tl := writeTestLog(t, 40, 4<<10, false)
	files := tl.files(t)
	args := append([]string{"audit", "verify", "--public-key", tl.pub, "--closed"}, files[1:]...)
	code, out, _ := runCLI(t, args...)
	if code != ExitFailed || !strings.Contains(out, "in the middle of a chain") {
		t.Fatalf("exit %d\n%s", code, out)
	}
	var before audit.Checkpoint
	for _, c := range tl.cps {
		if f := lines(t, files[1])[0]; strings.Contains(f, `"seq":`+strconv.FormatUint(c.Seq+1, 10)+`,`) {
			before = c
		}
	}
	if before.Seq == 0 {
		t.Fatal("no checkpoint ends the first file")
	}
	args = append([]string{"audit", "verify", "--public-key", tl.pub, "--closed", "--expect", before.String()}, files[1:]...)
	if code, out, _ := runCLI(t, args...); code != ExitOK {
		t.Fatalf("exit %d\n%s", code, out)
	}
}

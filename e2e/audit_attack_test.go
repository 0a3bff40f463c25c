package e2e_test

import (
	"bytes"
	"crypto/ed25519"
	"crypto/rand"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/audit"
)

// TestAuditCopiedCheckpoint: while the daemon is stopped, records are
// forged after its last checkpoint, then that checkpoint and the record
// before it are copied after them, so that the file ends as the daemon
// left it; and a key of the attacker's is added to audit.pub. The daemon,
// started again, must not take the copy for the checkpoint it wrote: it
// sets the forged records aside instead of continuing after them. And
// audit.pub is written again from the keys of its log, without the
// planted key, which verify would not have trusted anyway.
func TestAuditCopiedCheckpoint(t *testing.T) {
	d, sock, state, passFile := keyedLogWritten(t)
	logPath, pub := filepath.Join(state, "audit.log"), filepath.Join(state, "audit.pub")
	lines := logLines(t, logPath)
	n := len(lines) // the last line is the final checkpoint
	forged := append(forgeTail(t, lines, forgedExport()), lines[n-2], lines[n-1])
	if err := os.WriteFile(logPath, bytes.Join(forged, nil), 0o600); err != nil {
		t.Fatal(err)
	}
	genuine, _ := os.ReadFile(pub)
	planted, _, _ := ed25519.GenerateKey(rand.Reader)
	if err := os.WriteFile(pub, append(bytes.Clone(genuine), hex.EncodeToString(planted)+"\n"...), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := auditVerify(t, d, "--public-key", pub, "--closed", logPath); r.code != 1 {
		t.Fatalf("verify of the forged log: %s", r)
	}

	d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	waitUnsealed(t, d)
	c := d.client(t)
	if _, err := c.Open(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	d.stop()

	if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte(forgedMark)) {
		t.Fatalf("the forged records are in the log after the daemon started again:\n%s", b)
	}
	if r := auditVerify(t, d, "--public-key", pub, "--closed", logPath); r.code != 0 || !strings.HasPrefix(r.stdout, "intact\n") {
		t.Fatalf("verify of the log after the daemon started again: %s", r)
	}
	ev := auditEvidence(t, logPath)
	if len(ev) != 1 {
		t.Fatalf("evidence %v", ev)
	}
	if b, _ := os.ReadFile(ev[0]); !bytes.Contains(b, []byte(forgedMark)) {
		t.Fatal("the evidence does not hold the forged records")
	}
	q := d.runCLI(t, nil, nil, "audit", "query", "--op", audit.OpAuditRecovered, "--log", logPath)
	if q.code != 0 || !strings.Contains(q.stdout, filepath.Base(ev[0])) {
		t.Fatalf("no audit-recovered event names the evidence: %s", q)
	}
	if now, _ := os.ReadFile(pub); !bytes.Equal(now, genuine) {
		t.Fatalf("audit.pub after the start:\n%s\nwant:\n%s", now, genuine)
	}
}

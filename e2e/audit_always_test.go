package e2e_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
)

// TestAuditSyncAlways: with --audit-sync always the daemon extends its
// log with zeros ahead of the records (docs/audit.md). The CLI reads the
// live log, and what SIGKILL leaves, as its records alone; a restart cuts
// the zeros off without calling them a torn record; a clean stop leaves a
// file that ends with its last record.
func TestAuditSyncAlways(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	flags := []string{"--unseal-passphrase-file", passFile, "--audit-sync", "always"}
	d := startPersistent(t, sock, state, flags...)
	initStore(t, d, passFile)
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "k"})
	const n = 25
	for range n {
		if _, err := k.Encrypt(ctx, []byte("always"), nil); err != nil {
			t.Fatal(err)
		}
	}
	logPath, pub := filepath.Join(state, "audit.log"), filepath.Join(state, "audit.pub")
	st := status(t, c)
	if st.Audit == nil || st.Audit.Sync != "always" {
		t.Fatalf("status: audit %+v", st.Audit)
	}
	fi, err := os.Stat(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Size() <= int64(st.Audit.FileBytes) {
		t.Fatalf("the live log is %d bytes, its records %d: not extended ahead", fi.Size(), st.Audit.FileBytes)
	}

	// The live log, zeros and all, reads as its records.
	if r := auditVerify(t, d, "--public-key", pub, logPath); r.code != 0 || !strings.HasPrefix(r.stdout, "intact\n") {
		t.Fatalf("verify of the live log: %s", r)
	}
	r := d.runCLI(t, nil, nil, "audit", "query", "--op", "encrypt", "--json")
	if r.code != 0 || strings.Count(r.stdout, `"op":"encrypt"`) != n {
		t.Fatalf("query of the live log: want %d encryptions: %s", n, r)
	}
	if r := d.runCLI(t, nil, nil, "audit", "tail", "-n", "3"); r.code != 0 || strings.Contains(r.stdout, "\x00") ||
		strings.Count(strings.TrimSpace(r.stdout), "\n") != 2 {
		t.Fatalf("tail of the live log: %s", r)
	}

	// SIGKILL leaves the zeros; the records before them verify.
	d.cmd.Process.Kill()
	<-d.done
	d.cmd.ProcessState = &os.ProcessState{} // stop() has nothing left to do
	killed, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	records := bytes.TrimRight(killed, "\x00")
	if len(records) == len(killed) {
		t.Fatal("the log SIGKILL left is not extended ahead of its records")
	}
	if r := auditVerify(t, d, "--public-key", pub, logPath); r.code != 0 || !strings.Contains(r.stdout, "does not end with a clean close") {
		t.Fatalf("verify after SIGKILL: %s", r)
	}

	// A restart cuts the zeros off and continues the chain; a clean stop
	// leaves the records alone.
	d = startPersistent(t, sock, state, flags...)
	waitUnsealed(t, d)
	c = d.client(t)
	if _, err := c.Open(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	d.stop()
	after, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(after, records) || bytes.IndexByte(after, 0) >= 0 || !bytes.HasSuffix(after, []byte("\n")) {
		t.Fatalf("after a restart and a clean stop, the log is not its records before the kill and then new ones")
	}
	if r := auditVerify(t, d, "--public-key", pub, "--closed", logPath); r.code != 0 || !strings.HasPrefix(r.stdout, "intact\n") {
		t.Fatalf("verify after a restart: %s", r)
	}
	for l := range bytes.Lines(after[len(records):]) {
		rec, err := audit.ParseRecord(l)
		if err != nil {
			t.Fatal(err)
		}
		if rec.Op == audit.OpAuditRecovered {
			t.Fatalf("the zeros were taken for damage: %s", rec.Msg)
		}
	}
}

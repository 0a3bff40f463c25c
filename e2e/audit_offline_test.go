package e2e_test

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
)

// forgedMark is in every record the tests forge.
const forgedMark = "forged-while-the-daemon-was-stopped"

// forgeTail appends to lines, as someone who can write the log while the
// daemon is stopped would, a segment that names no keys and then recs,
// none with a MAC (making one needs the daemon's key), with the chain
// recomputed so that the hashes agree.
func forgeTail(t *testing.T, lines [][]byte, recs ...*audit.Record) [][]byte {
	t.Helper()
	last, err := audit.ParseRecord(bytes.TrimSuffix(lines[len(lines)-1], []byte("\n")))
	if err != nil {
		t.Fatal(err)
	}
	out := append([][]byte{}, lines...)
	from := len(out)
	all := append([]*audit.Record{{Kind: audit.KindSegment, Segment: &audit.Segment{Reason: "start", Host: "vm", PID: 4242}}}, recs...)
	for i, r := range all {
		r.Seq = last.Seq + uint64(i) + 1
		r.Time = last.Time.Add(time.Second)
		out = append(out, audit.AppendLine(nil, r))
	}
	return rechain(t, out, from)
}

func forgedExport() *audit.Record {
	return &audit.Record{Kind: audit.KindRequest, Op: "export", Status: "OK", Caller: audit.Caller{PID: 1}, Msg: forgedMark}
}

// auditEvidence returns the files the daemon kept as evidence beside logPath.
func auditEvidence(t *testing.T, logPath string) []string {
	t.Helper()
	m, err := filepath.Glob(logPath + ".unverified-*")
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// TestAuditOfflineForgery is the attack of the issue, against the real
// daemon: with write access to the log while the daemon was stopped,
// records are removed, a segment that names no keys and a request without
// a MAC are appended. `audit verify --public-key` must report it at once;
// the daemon, started again, must not sign over it: it keeps the file as
// evidence, and its chain, without the forgery, verifies.
func TestAuditOfflineForgery(t *testing.T) {
	d, sock, state, passFile := keyedLogWritten(t)
	logPath, pub := filepath.Join(state, "audit.log"), filepath.Join(state, "audit.pub")
	lines := logLines(t, logPath)
	forged := forgeTail(t, lines[:len(lines)-3], forgedExport())
	if err := os.WriteFile(logPath, bytes.Join(forged, nil), 0o600); err != nil {
		t.Fatal(err)
	}

	r := auditVerify(t, d, "--public-key", pub, logPath)
	if r.code != 1 || !strings.Contains(r.stdout, "the segment changes the keys in use") {
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

	if r := auditVerify(t, d, "--public-key", pub, "--closed", logPath); r.code != 0 || !strings.HasPrefix(r.stdout, "intact\n") {
		t.Fatalf("verify of the log after the daemon started again: %s", r)
	}
	if b, _ := os.ReadFile(logPath); bytes.Contains(b, []byte(forgedMark)) {
		t.Fatalf("the daemon signed over the forgery:\n%s", b)
	}
	ev := auditEvidence(t, logPath)
	if len(ev) != 1 {
		t.Fatalf("evidence %v", ev)
	}
	if b, _ := os.ReadFile(ev[0]); !bytes.HasPrefix(b, bytes.Join(forged, nil)) {
		t.Fatal("the evidence is not the file the daemon found")
	}
	q := d.runCLI(t, nil, nil, "audit", "query", "--op", audit.OpAuditRecovered, "--log", logPath)
	if q.code != 0 || !strings.Contains(q.stdout, filepath.Base(ev[0])) || !strings.Contains(q.stdout, "no MAC") {
		t.Fatalf("no audit-recovered event names the evidence: %s", q)
	}
	if !strings.Contains(d.log.String(), "records set aside") {
		t.Errorf("the daemon's own log does not say it set records aside:\n%s", d.log)
	}
	// The evidence, verified, shows what was done.
	if r := auditVerify(t, d, "--public-key", pub, ev[0]); r.code != 1 || !strings.Contains(r.stdout, "changes the keys in use") {
		t.Fatalf("verify of the evidence: %s", r)
	}
}

// TestAuditForgedClose: `audit verify --closed` does not take an unsigned
// audit-close event for the clean close of a log that has had keys:
// neither one forged after a cut, nor the one a daemon stopped while
// sealed writes (whose records the next unsealed start sets aside).
func TestAuditForgedClose(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	initStore(t, d, passFile)
	c := d.client(t)
	generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "k"})
	c.Close()
	d.stop()
	logPath, pub := filepath.Join(state, "audit.log"), filepath.Join(state, "audit.pub")
	clean := logLines(t, logPath)

	forged := filepath.Join(t.TempDir(), "forged.log")
	close := &audit.Record{Kind: audit.KindEvent, Op: audit.OpAuditClose, Msg: "the log was closed"}
	os.WriteFile(forged, bytes.Join(forgeTail(t, clean[:len(clean)-2], close), nil), 0o600)
	if r := auditVerify(t, d, "--public-key", pub, "--closed", forged); r.code != 1 {
		t.Fatalf("verify --closed of a cut log with a forged close: %s", r)
	}

	// Started without its passphrase, the daemon stays sealed; stopped,
	// its log ends with an unsigned close.
	d = startPersistent(t, sock, state)
	d.stop()
	r := auditVerify(t, d, "--public-key", pub, "--closed", logPath)
	if r.code != 1 || !strings.Contains(r.stdout, "changes the keys in use") {
		t.Fatalf("verify --closed of a log whose daemon stopped sealed: %s", r)
	}
	d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	waitUnsealed(t, d)
	d.stop()
	if r := auditVerify(t, d, "--public-key", pub, "--closed", logPath); r.code != 0 {
		t.Fatalf("verify --closed after an unsealed start: %s", r)
	}
	if ev := auditEvidence(t, logPath); len(ev) != 1 {
		t.Fatalf("the sealed run's records were not set aside: %v", ev)
	}
	now := logLines(t, logPath)
	for i := range clean {
		if !bytes.Equal(now[i], clean[i]) {
			t.Fatalf("line %d of the first run changed", i+1)
		}
	}
}

// keyedLogWritten runs a persistent daemon that unseals at start, makes a
// key and three encryptions under it, and stops it (returned stopped): a keyed audit log
// with requests after its checkpoints, for the offline edits to work on.
func keyedLogWritten(t *testing.T) (d *daemon, sock, state, passFile string) {
	t.Helper()
	sock, state, passFile = persistentSetup(t)
	d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	initStore(t, d, passFile)
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "k"})
	for range 3 {
		if _, err := k.Encrypt(ctx, []byte("message"), nil); err != nil {
			t.Fatal(err)
		}
	}
	c.Close()
	d.stop()
	return d, sock, state, passFile
}

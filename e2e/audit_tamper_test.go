package e2e_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
)

// auditVerify runs "keywarden audit verify" with args.
func auditVerify(t *testing.T, d *daemon, args ...string) cliResult {
	t.Helper()
	return d.runCLI(t, nil, nil, append([]string{"audit", "verify"}, args...)...)
}

// logLines splits a log into its lines, each with its newline.
func logLines(t *testing.T, path string) [][]byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out [][]byte
	for l := range bytes.Lines(b) {
		out = append(out, l)
	}
	return out
}

// rechain recomputes the chain of lines from index from on, as someone who
// rewrote a record and wants the chain to agree again would: every "h",
// and the "prev" and "upto_h" naming the hash before. MACs and signatures
// are left as they are: making them needs the daemon's keys.
func rechain(t *testing.T, lines [][]byte, from int) [][]byte {
	t.Helper()
	out := make([][]byte, len(lines))
	var h [32]byte
	hashOf := func(l []byte) []byte {
		i := bytes.Index(l, []byte(`,"h":"`))
		return l[i+6 : i+6+64]
	}
	for i, l := range lines {
		l = bytes.Clone(l)
		if i < from {
			out[i] = l
			hex.Decode(h[:], hashOf(l))
			continue
		}
		prev := []byte(hex.EncodeToString(h[:]))
		for _, f := range []string{`"prev":"`, `"upto_h":"`} {
			if j := bytes.Index(l, []byte(f)); j >= 0 {
				copy(l[j+len(f):], prev)
			}
		}
		cut := bytes.Index(l, []byte(`,"h":"`))
		d := sha256.New()
		d.Write(h[:])
		d.Write(l[:cut])
		copy(h[:], d.Sum(nil))
		copy(l[cut+6:], hex.EncodeToString(h[:]))
		out[i] = l
	}
	return out
}

// TestAuditTamper stops a persistent daemon cleanly and checks that
// "keywarden audit verify" finds its log intact, and every kind of
// tampering with it; then that a log survives SIGKILL in the middle of
// traffic, and that a restarted daemon continues its chain.
func TestAuditTamper(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	initStore(t, d, passFile)
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "k"})
	for i := range 5 {
		if _, err := k.Encrypt(ctx, []byte(fmt.Sprint("message ", i)), nil); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := k.Export(ctx, keywarden.FormatRaw); err == nil {
		t.Fatal("export of a non-exportable key")
	}
	c.Close()
	d.stop()

	logPath, pub := filepath.Join(state, "audit.log"), filepath.Join(state, "audit.pub")
	r := auditVerify(t, d, "--public-key", pub, "--closed", "--json", logPath)
	var rep struct {
		Intact         bool
		Last           string
		LastSeq        uint64 `json:"last_seq"`
		Closed         bool
		MACsChecked    uint64 `json:"macs_checked"`
		TrustedThrough uint64 `json:"trusted_through"`
		Checkpoints    int
		Warnings       []string
	}
	if err := json.Unmarshal([]byte(r.stdout), &rep); r.code != 0 || err != nil || !rep.Intact || !rep.Closed ||
		rep.TrustedThrough != rep.LastSeq || rep.Checkpoints < 2 {
		t.Fatalf("verify of a cleanly stopped daemon's log (%v): %s", err, r)
	}
	if r := auditVerify(t, d, "--public-key", pub, "--closed", logPath); r.code != 0 || !strings.HasPrefix(r.stdout, "intact\n") {
		t.Fatalf("verify: %s", r)
	}
	lines := logLines(t, logPath)
	if uint64(len(lines)) != rep.LastSeq {
		t.Fatalf("%d lines, last seq %d", len(lines), rep.LastSeq)
	}
	// The records to tamper with: the first encryption and the one after.
	enc := -1
	for i, l := range lines {
		if bytes.Contains(l, []byte(`"op":"encrypt"`)) {
			enc = i
			break
		}
	}
	if enc < 0 || enc+3 >= len(lines) {
		t.Fatalf("no encryption record to tamper with:\n%s", bytes.Join(lines, nil))
	}
	seq := uint64(enc + 1) // lines hold seq 1, 2, 3, ...

	dir := t.TempDir()
	type tamper struct {
		name  string
		lines [][]byte
		args  []string
		// The problem verify must name: the line and seq, and the reason.
		at     string
		reason []string
	}
	without := func(i int) [][]byte {
		return append(append([][]byte{}, lines[:i]...), lines[i+1:]...)
	}
	edited := append([][]byte{}, lines...)
	edited[enc] = bytes.Replace(bytes.Clone(lines[enc]), []byte(`"status":"OK"`), []byte(`"status":"NO"`), 1)
	uid := append([][]byte{}, lines...)
	myUID := fmt.Sprintf(`"uid":%d,`, os.Getuid())
	uid[enc] = bytes.Replace(bytes.Clone(lines[enc]), []byte(myUID), []byte(fmt.Sprintf(`"uid":%d,`, os.Getuid()+1)), 1)
	if bytes.Equal(uid[enc], lines[enc]) {
		t.Fatalf("no %s in %s", myUID, lines[enc])
	}
	spaced := append([][]byte{}, lines...)
	spaced[enc] = bytes.Replace(bytes.Clone(lines[enc]), []byte(`"op":"encrypt"`), []byte(`"op": "encrypt"`), 1)
	swapped := append([][]byte{}, lines...)
	swapped[enc], swapped[enc+1] = swapped[enc+1], swapped[enc]
	dup := append(append(append([][]byte{}, lines[:enc+1]...), lines[enc]), lines[enc+1:]...)
	cut := lines[:len(lines)-3]
	for _, tc := range []tamper{
		{"edited status", edited, nil, fmt.Sprintf(":%d (seq %d): ", enc+1, seq), []string{"the chain hash does not match"}},
		{"edited uid", uid, nil, fmt.Sprintf(":%d (seq %d): ", enc+1, seq), []string{"the chain hash does not match"}},
		{"not canonical", spaced, nil, fmt.Sprintf(":%d: ", enc+1), []string{"canonical"}},
		{"deleted", without(enc), nil, fmt.Sprintf(":%d (seq %d): ", enc+1, seq+1), []string{fmt.Sprintf("seq %d follows seq %d: 1 record is missing", seq+1, seq-1)}},
		{"reordered", swapped, nil, fmt.Sprintf(":%d (seq %d): ", enc+1, seq+1), []string{"missing", "duplicated or out of order"}},
		{"duplicated", dup, nil, fmt.Sprintf(":%d (seq %d): ", enc+2, seq), []string{fmt.Sprintf("seq %d comes after seq %d: a record is duplicated or out of order", seq, seq)}},
		{"rewritten, chain recomputed", rechain(t, edited, enc), nil, "", []string{"the checkpoint signature does not verify"}},
		{"tail cut, --closed", cut, []string{"--closed"}, "", []string{"without the final record of a clean close"}},
		{"tail cut, --expect", cut, []string{"--expect", rep.Last}, "", []string{fmt.Sprintf("the log ends at seq %d, but a checkpoint at seq %d was published: its tail was cut", len(cut), rep.LastSeq)}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "_")+".log")
			if err := os.WriteFile(path, bytes.Join(tc.lines, nil), 0o600); err != nil {
				t.Fatal(err)
			}
			args := append([]string{"--public-key", pub}, tc.args...)
			if tc.args == nil {
				args = append(args, "--closed")
			}
			r := auditVerify(t, d, append(args, path)...)
			if r.code != 1 || !strings.HasPrefix(r.stdout, "NOT INTACT: "+path+tc.at) || !strings.Contains(r.stderr, "NOT INTACT") {
				t.Fatalf("want exit 1 naming %s%s: %s", path, tc.at, r)
			}
			found := false
			for _, reason := range tc.reason {
				found = found || strings.Contains(r.stdout, reason)
			}
			if !found {
				t.Fatalf("want the reason %q: %s", tc.reason, r)
			}
			t.Logf("%s", strings.TrimSpace(r.stderr))
		})
	}
	// Without outside knowledge a cut tail is a consistent prefix.
	cutPath := filepath.Join(dir, "tail_cut,_--closed.log")
	if r := auditVerify(t, d, "--public-key", pub, cutPath); r.code != 0 || !strings.Contains(r.stdout, "does not end with a clean close") {
		t.Fatalf("a cut tail without --closed or --expect: %s", r)
	}
	// A log signed with another key is not trusted.
	other := filepath.Join(dir, "other.pub")
	os.WriteFile(other, []byte(strings.Repeat("ab", 32)+"\n"), 0o644)
	if r := auditVerify(t, d, "--public-key", other, logPath); r.code != 1 || !strings.Contains(r.stdout, "signed with a key that is not trusted") {
		t.Fatalf("verify against another key: %s", r)
	}
	if t.Failed() {
		return
	}

	// SIGKILL in the middle of traffic: what survives verifies.
	pubBefore, _ := os.ReadFile(pub)
	d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	waitUnsealed(t, d)
	al := newAuditReader(t, logPath)
	al.read()
	tctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := keywarden.Dial(tctx, sock)
			if err != nil {
				return
			}
			defer c.Close()
			k, err := c.Open(tctx, "k")
			if err != nil {
				return
			}
			for i := 0; tctx.Err() == nil; i++ {
				if w == 0 && i%10 == 0 {
					// Key management too: records that also go to Linux audit.
					if g, err := c.Generate(tctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true}); err == nil {
						g.Close(tctx)
					}
					continue
				}
				if _, err := k.Encrypt(tctx, []byte("traffic"), nil); err != nil {
					return
				}
			}
		}()
	}
	// Kill once a few hundred requests are in the log, whatever the pace.
	deadline := time.Now().Add(30 * time.Second)
	for n := 0; n < 300; n += len(requests(al.read())) {
		if time.Now().After(deadline) {
			t.Fatalf("only %d requests recorded in 30s", n)
		}
		time.Sleep(5 * time.Millisecond)
	}
	d.cmd.Process.Kill()
	<-d.done
	d.cmd.ProcessState = &os.ProcessState{} // stop() has nothing left to do
	stop()
	wg.Wait()
	r = auditVerify(t, d, "--public-key", pub, logPath)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "intact\n") {
		t.Fatalf("verify after SIGKILL: %s", r)
	}
	if !strings.Contains(r.stdout, "does not end with a clean close") {
		t.Errorf("verify after SIGKILL does not warn that the log was not closed: %s", r)
	}
	if r := auditVerify(t, d, "--public-key", pub, "--closed", logPath); r.code != 1 {
		t.Errorf("verify --closed after SIGKILL: %s", r)
	}
	// The complete records that survived (a torn last line is cut off
	// when the daemon next opens the log).
	killed := logLines(t, logPath)
	if n := len(killed); n > 0 && !bytes.HasSuffix(killed[n-1], []byte("\n")) {
		t.Logf("SIGKILL left %d bytes of an incomplete record", len(killed[n-1]))
		killed = killed[:n-1]
	}

	// A restarted daemon continues the chain, with the same keys.
	d = startPersistent(t, sock, state, "--unseal-passphrase-file", passFile)
	waitUnsealed(t, d)
	c = d.client(t)
	if _, err := c.Open(ctx, "k"); err != nil {
		t.Fatal(err)
	}
	c.Close()
	d.stop()
	if r := auditVerify(t, d, "--public-key", pub, "--closed", logPath); r.code != 0 || !strings.HasPrefix(r.stdout, "intact\n") {
		t.Fatalf("verify of the whole log after a restart: %s", r)
	}
	if pubAfter, _ := os.ReadFile(pub); !bytes.Equal(pubBefore, pubAfter) {
		t.Errorf("audit.pub changed across restarts:\n%s\n%s", pubBefore, pubAfter)
	}
	all := logLines(t, logPath)
	var start *audit.Record
	for _, l := range all[len(killed):] {
		r, err := audit.ParseRecord(l)
		if err != nil {
			t.Fatal(err)
		}
		if r.Kind == audit.KindSegment {
			start = r
			break
		}
	}
	if start == nil || start.Segment.Reason != "start" {
		t.Fatalf("no start segment after the SIGKILL:\n%s", bytes.Join(all[len(killed):], nil))
	}
}

// waitUnsealed waits until a daemon started with --unseal-passphrase-file
// has unsealed.
func waitUnsealed(t *testing.T, d *daemon) {
	t.Helper()
	c := d.client(t)
	defer c.Close()
	deadline := time.Now().Add(30 * time.Second)
	for status(t, c).Seal.Sealed {
		if time.Now().After(deadline) {
			t.Fatalf("the daemon did not unseal:\n%s", d.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

package server

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// auditedServer returns a server recording in a fresh audit log, and the
// log's path.
func auditedServer(t *testing.T, lim Limits) (*Server, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.log")
	l, err := audit.Open(audit.Options{Path: path, Sync: audit.SyncGrouped})
	if err != nil {
		t.Fatal(err)
	}
	s := mustNew(t, Config{Audit: l, Limits: lim})
	t.Cleanup(func() {
		s.Shutdown(context.Background())
		l.Close()
	})
	return s, path
}

// auditRecords reads the records of the log at path.
func auditRecords(t *testing.T, path string) []*audit.Record {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var out []*audit.Record
	for line := range bytes.Lines(b) {
		if len(bytes.Trim(line, "\x00")) == 0 {
			break
		}
		r, err := audit.ParseRecord(line)
		if err != nil {
			t.Fatalf("%v in %q", err, line)
		}
		out = append(out, r)
	}
	return out
}

// A uid whose requests made more audit records than its allowance is
// refused, without a record for each refusal, until the allowance
// refills; the refusals are counted in a "limits" event. Another uid is
// served meanwhile.
func TestAuditRatePerUID(t *testing.T) {
	s, path := auditedServer(t, Limits{AuditBytesPerSecondPerUID: 100, AuditBurstPerUID: 3000})
	c := serveAs(t, s, 1000)
	other := serveAs(t, s, 1001)
	served, refused := 0, 0
	for i := range 50 {
		if i == 25 {
			// As the once-a-second report would in a slow run: the
			// refusals so far in one event, the rest in the next.
			s.reportRefusals()
		}
		send(t, c, uint64(i+1), ping("flood"))
		rep := recv(t, c)
		switch {
		case rep.Status == wire.Status_STATUS_OK:
			served++
		case rep.Status == wire.Status_STATUS_RESOURCE_EXHAUSTED && strings.Contains(rep.Message, "audit records"):
			refused++
		default:
			t.Fatalf("request %d: %v %q", i+1, rep.Status, rep.Message)
		}
	}
	if served == 0 || served > 10 || refused != 50-served {
		t.Fatalf("%d served and %d refused of 50 pings with an allowance of 3000 bytes", served, refused)
	}
	send(t, other, 1, ping("other"))
	if rep := recv(t, other); rep.Status != wire.Status_STATUS_OK {
		t.Fatalf("another uid: %v %q", rep.Status, rep.Message)
	}
	s.reportRefusals()
	recs := auditRecords(t, path)
	var pings, limits, reported int
	var size int
	lines := bytes.Split(must(os.ReadFile(path)), []byte("\n"))
	for i, r := range recs {
		switch {
		case r.Kind == audit.KindRequest && r.Op == "ping" && r.Conn != 0:
			if r.Status != "OK" {
				t.Errorf("a refusal was recorded: %+v", r)
			}
			pings++
			size += len(lines[i]) + 1
		case r.Kind == audit.KindEvent && r.Op == opLimits:
			// The refusals are reported once a second and at the end: a
			// slow run splits them over several events.
			limits++
			m := limitsCount.FindStringSubmatch(r.Msg)
			if m == nil || m[1] != m[2] || r.Status != "RESOURCE_EXHAUSTED" {
				t.Errorf("limits event %q %q, want uid 1000's audit rate refusals", r.Status, r.Msg)
				continue
			}
			n, _ := strconv.Atoi(m[1])
			reported += n
		}
	}
	if pings != served+1 || limits == 0 || reported != refused {
		t.Fatalf("%d ping records (want %d), %d limits events reporting %d refusals (want %d)", pings, served+1, limits, reported, refused)
	}
	// The allowance was charged at least what the records took.
	if spent := 3000 - acctOf(s, 1000).audit.tokens; spent < float64(size*served/(served+1)) {
		t.Errorf("charged %.0f bytes for records of %d", spent, size)
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// limitsCount reads uid 1000's refusals for its audit rate from a limits
// event's message.
var limitsCount = regexp.MustCompile(`uid 1000: (\d+) \(audit rate (\d+)\)`)

// A batch of unalike operations is recorded in at most twice the bytes of
// its request (beyond the fixed part of a record): the entries that do
// not fit are summarised by kind and status. recordSize bounds the size
// the log writes.
func TestBatchRecordBound(t *testing.T) {
	s, _ := auditedServer(t, Limits{})
	a, b, err := seqpacket.Pair()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { a.Close(); b.Close() })
	cn := testConn(t, s, a, 1000)
	id := Identity{PID: int32(os.Getpid()), UID: 1000, GID: 1000, Pidfd: -1}
	for range 64 {
		op := &wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
			Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}}
		res := cn.safeDispatch(rowOf(op), op, id, 0, &arena{}, &wire.Result{}, nil)
		if res.Status != wire.Status_STATUS_OK {
			t.Fatal(res.Message)
		}
	}
	for _, n := range []int{3, 100, 4096} {
		req := &wire.Request{Version: 1, Id: 1}
		for i := range n {
			// Encryptions of nothing under 64 keys in turn, a ping now and
			// then: no two operations in a row alike.
			op := &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: uint32(1 + i%64)}}}
			if i%7 == 6 {
				op = ping("")
			}
			req.Ops = append(req.Ops, op)
		}
		reqBytes := req.SizeVT()
		caller := s.callerOf(id)
		notes := cn.notesFor(new([]auditNote), &caller, n)
		var ar arena
		rep := cn.execute(req, id, &ar, notes, false)
		r := cn.requestRecord(req, rep, &caller, notes, reqBytes)
		r.Seq, r.Mono, r.HasMAC = 1<<40, 1<<50, true
		line := audit.AppendLine(nil, r)
		fixed := recordSize(&audit.Record{Op: r.Op, Status: r.Status, Caller: r.Caller})
		t.Logf("%d operations: request %d bytes, record %d bytes (%d entries; %q)", n, reqBytes, len(line), len(r.Ops), r.Msg)
		if len(line) > fixed+max(2*reqBytes, opsBudgetMin) {
			t.Errorf("%d operations: a record of %d bytes for a request of %d (fixed part %d)", n, len(line), reqBytes, fixed)
		}
		if est := recordSize(r); est < len(line) {
			t.Errorf("%d operations: recordSize %d < %d written", n, est, len(line))
		}
		if n == 4096 && (!strings.Contains(r.Msg, "operations 405 to 4096 not listed") || !strings.Contains(r.Msg, "encrypt OK") || !strings.Contains(r.Msg, "ping OK")) {
			t.Errorf("summary %q", r.Msg)
		}
		if n < 100 && r.Msg != "" {
			t.Errorf("%d operations summarised: %q", n, r.Msg)
		}
		putRecord(r)
	}
}

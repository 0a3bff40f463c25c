package server

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
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
	s := New(Config{Audit: l, Limits: lim})
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
	cn := newConn(s, a)
	id := Identity{PID: int32(os.Getpid()), UID: 1000, GID: 1000, Pidfd: -1}
	for range 64 {
		res := cn.safeDispatch(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
			Type: wire.KeyType_KEY_TYPE_AES256_GCM, Ephemeral: true}}}}, id, 0, &arena{}, &wire.Result{}, nil)
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
		rep := cn.execute(req, id, &ar, notes)
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

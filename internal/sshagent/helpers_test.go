package sshagent

import (
	"bytes"
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/crypto/cryptobyte"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// testAgent is an Agent over an in-memory core with an audit log,
// serving a socket in a temporary directory.
type testAgent struct {
	*Agent
	srv      *server.Server
	log      *audit.Log
	logPath  string
	sockPath string
}

func newTestAgent(t testing.TB, cfg Config) *testAgent {
	t.Helper()
	dir := t.TempDir()
	ta := &testAgent{logPath: filepath.Join(dir, "audit.log"), sockPath: filepath.Join(dir, "agent.sock")}
	var err error
	if ta.log, err = audit.Open(audit.Options{Path: ta.logPath, Sync: audit.SyncGrouped}); err != nil {
		t.Fatal(err)
	}
	if ta.srv, err = server.New(server.Config{Audit: ta.log}); err != nil {
		t.Fatal(err)
	}
	cfg.Server = ta.srv
	ta.Agent = New(cfg)
	l, err := Listen(ta.sockPath, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	go ta.Serve(l)
	t.Cleanup(func() {
		ta.Close()
		ta.srv.Shutdown(context.Background())
		ta.log.Close()
	})
	return ta
}

// dial connects to the agent.
func (ta *testAgent) dial(t testing.TB) net.Conn {
	t.Helper()
	c, err := net.Dial("unix", ta.sockPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// records reads the request records of the audit log.
func (ta *testAgent) records(t *testing.T) []*audit.Record {
	t.Helper()
	b, err := os.ReadFile(ta.logPath)
	if err != nil {
		t.Fatal(err)
	}
	var out []*audit.Record
	for line := range bytes.Lines(b) {
		if len(bytes.Trim(line, "\x00\n")) == 0 {
			break
		}
		r, err := audit.ParseRecord(line)
		if err != nil {
			t.Fatalf("%v in %q", err, line)
		}
		if r.Kind == audit.KindRequest {
			out = append(out, r)
		}
	}
	return out
}

// refusal returns the record of a refusal by the front of op with status
// whose msg holds want, or nil.
func (ta *testAgent) refusal(t *testing.T, op, status, want string) *audit.Record {
	t.Helper()
	for _, r := range ta.records(t) {
		if r.Front == Front && r.Op == op && r.Status == status && strings.Contains(r.Msg, want) {
			return r
		}
	}
	return nil
}

// mustRefusal fails the test unless the log holds such a refusal, by
// this process.
func (ta *testAgent) mustRefusal(t *testing.T, op, status, want string) *audit.Record {
	t.Helper()
	r := ta.refusal(t, op, status, want)
	if r == nil {
		var got []string
		for _, r := range ta.records(t) {
			got = append(got, r.Op+" "+r.Status+" "+r.Msg)
		}
		t.Fatalf("no %s %s refusal %q in the audit log:\n%s", op, status, want, strings.Join(got, "\n"))
	}
	if r.Caller.PID != int32(os.Getpid()) || r.Caller.UID != uint32(os.Getuid()) {
		t.Errorf("refusal recorded for pid %d uid %d", r.Caller.PID, r.Caller.UID)
	}
	return r
}

// generate makes a persistent key of the uid of id, marked for SSH if
// ssh, with usage (0: the type's default), and returns its id.
func (ta *testAgent) generate(t testing.TB, id server.Identity, name string, typ wire.KeyType, usage uint32, ssh bool) []byte {
	t.Helper()
	ss, err := ta.srv.NewSession(context.Background(), "test", id)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	do := func(op *wire.Op) *wire.Result {
		t.Helper()
		rep, err := ss.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: 1, Ops: []*wire.Op{op}})
		if err != nil {
			t.Fatal(err)
		}
		if rep.Status != wire.Status_STATUS_OK || rep.Results[0].Status != wire.Status_STATUS_OK {
			t.Fatalf("%v: %v %s %v", op, rep.Status, rep.Message, rep.Results)
		}
		return rep.Results[0]
	}
	k := do(&wire.Op{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{Name: name, Type: typ, Usage: usage}}}}).GetKey()
	if ssh {
		on := true
		do(&wire.Op{Op: &wire.Op_SetLifecycle{SetLifecycle: &wire.SetLifecycle{Handle: k.Handle, Ssh: &on}}})
	}
	return k.GetInfo().GetId()
}

// selfID is this process as an identity of uid (no pidfd).
func selfID(uid uint32) server.Identity {
	return server.Identity{PID: int32(os.Getpid()), UID: uid, GID: uid, Pidfd: -1}
}

// msg frames an agent message of type typ with body.
func msg(typ byte, body ...[]byte) []byte {
	b := []byte{typ}
	for _, p := range body {
		b = append(b, p...)
	}
	return frame(b)
}

// sshString encodes v as an SSH string.
func sshString(v []byte) []byte {
	return append(binary.BigEndian.AppendUint32(nil, uint32(len(v))), v...)
}

func u32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// roundTrip sends m and reads one reply; an error if the connection
// closed instead.
func roundTrip(c net.Conn, m []byte) ([]byte, error) {
	if _, err := c.Write(m); err != nil {
		return nil, err
	}
	return readReply(c)
}

func readReply(c net.Conn) ([]byte, error) {
	c.SetReadDeadline(time.Now().Add(20 * time.Second))
	var h [4]byte
	if _, err := io.ReadFull(c, h[:]); err != nil {
		return nil, err
	}
	b := make([]byte, binary.BigEndian.Uint32(h[:]))
	_, err := io.ReadFull(c, b)
	return b, err
}

// build runs f on a cryptobyte.Builder and returns its bytes.
func build(f func(b *cryptobyte.Builder)) []byte {
	var b cryptobyte.Builder
	f(&b)
	return b.BytesOrPanic()
}

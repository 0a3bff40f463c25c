package p11front

import (
	"context"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/server"
)

// testFront is a Front over an in-memory core with an audit log, serving
// a socket in a temporary directory.
type testFront struct {
	*Front
	srv      *server.Server
	log      *audit.Log
	logPath  string
	sockPath string
}

func newTestFront(t testing.TB) *testFront {
	t.Helper()
	return newTestFrontConfig(t, server.Config{})
}

// newTestFrontConfig is newTestFront over a core of cfg (its audit log
// the test's).
func newTestFrontConfig(t testing.TB, cfg server.Config) *testFront {
	t.Helper()
	dir := t.TempDir()
	tf := &testFront{logPath: filepath.Join(dir, "audit.log"), sockPath: filepath.Join(dir, "p11.sock")}
	var err error
	if tf.log, err = audit.Open(audit.Options{Path: tf.logPath, Sync: audit.SyncGrouped}); err != nil {
		t.Fatal(err)
	}
	cfg.Audit = tf.log
	if tf.srv, err = server.New(cfg); err != nil {
		t.Fatal(err)
	}
	tf.Front = New(Config{Server: tf.srv})
	l, err := Listen(tf.sockPath, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	go tf.Serve(l)
	t.Cleanup(func() {
		tf.Close()
		tf.srv.Shutdown(context.Background())
		tf.log.Close()
	})
	return tf
}

// logText is the audit log's text.
func (tf *testFront) logText(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile(tf.logPath)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// client is a p11-kit RPC client for tests: it sends requests built with
// req and returns the decoded response.
type client struct {
	t    testing.TB
	c    net.Conn
	code uint32
}

// dial connects, exchanges the version byte and calls C_Initialize.
func (tf *testFront) dial(t testing.TB) *client {
	t.Helper()
	c, err := net.Dial("unix", tf.sockPath)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(20 * time.Second))
	if _, err := c.Write([]byte{0}); err != nil {
		t.Fatal(err)
	}
	var v [1]byte
	if _, err := io.ReadFull(c, v[:]); err != nil || v[0] != 0 {
		t.Fatalf("version: %v %v", v, err)
	}
	cl := &client{t: t, c: c}
	cl.ok(cl.call(callInitialize, func(e *encoder) {
		e.u8(1)
		e.array([]byte(handshake))
		e.u8(0)
		e.u8(1)
		e.array([]byte{0})
	}))
	return cl
}

// request encodes a request body: the call id, its signature, and what
// args writes.
func request(id int, args func(e *encoder)) []byte {
	e := &encoder{}
	e.u32(uint32(id))
	e.array([]byte(calls[id].req))
	if args != nil {
		args(e)
	}
	return e.b
}

// call sends a request and returns the response: the return value (CKR_OK
// or the error response's) and a decoder of the response's arguments.
func (cl *client) call(id int, args func(e *encoder)) (uint64, *decoder) {
	cl.t.Helper()
	return cl.raw(request(id, args))
}

func (cl *client) raw(body []byte) (uint64, *decoder) {
	cl.t.Helper()
	cl.code++
	if _, err := cl.c.Write(appendFrame(nil, cl.code, body)); err != nil {
		cl.t.Fatal(err)
	}
	var h [frameHeader]byte
	if _, err := io.ReadFull(cl.c, h[:]); err != nil {
		cl.t.Fatalf("reading the response: %v", err)
	}
	code, olen, blen, err := parseHeader(h[:])
	if err != nil || code != cl.code {
		cl.t.Fatalf("response header: code %d (want %d) %v", code, cl.code, err)
	}
	buf := make([]byte, olen+blen)
	if _, err := io.ReadFull(cl.c, buf); err != nil {
		cl.t.Fatal(err)
	}
	d := &decoder{b: buf[olen:]}
	rid := d.u32()
	sig, _ := d.array()
	if rid == callError {
		return d.u64(), nil
	}
	d.sig = string(sig)
	return ckrOK, d
}

func (cl *client) ok(rv uint64, d *decoder) *decoder {
	cl.t.Helper()
	if rv != ckrOK {
		cl.t.Fatalf("return value %#x", rv)
	}
	return d
}

// session opens a read-write session.
func (cl *client) session() uint64 {
	cl.t.Helper()
	d := cl.ok(cl.call(callOpenSession, func(e *encoder) { e.u64(slotID); e.u64(ckfSerialSession | ckfRWSession) }))
	return d.Ulong()
}

func (cl *client) login(s uint64) {
	cl.t.Helper()
	cl.ok(cl.call(callLogin, func(e *encoder) { e.u64(s); e.u64(ckuUser); e.u8(1); e.array([]byte("any")) }))
}

// tmplAttr is an attribute of a template a client sends.
type tmplAttr struct {
	typ   uint32
	value []byte
}

func writeAttrs(e *encoder, as []tmplAttr) {
	e.u32(uint32(len(as)))
	for _, a := range as {
		e.u32(a.typ)
		e.u8(1)
		e.u32(uint32(len(a.value)))
		switch valueKind(a.typ) {
		case kindByte:
			e.u8(a.value[0])
		case kindUlong:
			e.u64(binary.NativeEndian.Uint64(a.value))
		default:
			e.array(a.value)
		}
	}
}

// find returns the handles of the objects matching as.
func (cl *client) find(s uint64, as ...tmplAttr) []uint64 {
	cl.t.Helper()
	cl.ok(cl.call(callFindObjectsInit, func(e *encoder) { e.u64(s); writeAttrs(e, as) }))
	d := cl.ok(cl.call(callFindObjects, func(e *encoder) { e.u64(s); e.u32(100) }))
	d.part("au")
	var hs []uint64
	if d.u8() == 1 {
		n := d.u32()
		for range n {
			hs = append(hs, d.u64())
		}
	}
	cl.ok(cl.call(callFindObjectsFinal, func(e *encoder) { e.u64(s) }))
	return hs
}

// generate makes a key with C_GenerateKey and returns its handle.
func (cl *client) generate(s, mech uint64, as ...tmplAttr) uint64 {
	cl.t.Helper()
	d := cl.ok(cl.call(callGenerateKey, func(e *encoder) { e.u64(s); e.u32(uint32(mech)); e.u32(0xffffffff); writeAttrs(e, as) }))
	return d.Ulong()
}

func boolAttr(t uint32, v bool) tmplAttr    { return tmplAttr{t, boolVal(v)} }
func ulongAttr(t uint32, v uint64) tmplAttr { return tmplAttr{t, ulongVal(v)} }

func contains(s, sub string) bool { return strings.Contains(s, sub) }

func bytesReader(b []byte) *bytesReaderT { return &bytesReaderT{b: b} }

type bytesReaderT struct{ b []byte }

func (r *bytesReaderT) Read(p []byte) (int, error) {
	if len(r.b) == 0 {
		return 0, io.EOF
	}
	n := copy(p, r.b)
	r.b = r.b[n:]
	return n, nil
}

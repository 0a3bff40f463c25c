package p11front

import (
	"encoding/binary"
	"errors"
	"io"
	"net"
	"os"
	"testing"
	"time"
)

// sendTooLong writes a frame of olen option bytes and body (longer than
// the front takes) and returns the answer's return value.
func (cl *client) sendTooLong(olen int, body []byte) uint64 {
	cl.t.Helper()
	return cl.sendTooLongOpts(make([]byte, olen), body)
}

// sendTooLongOpts is sendTooLong with the options' bytes given.
func (cl *client) sendTooLongOpts(opts, body []byte) uint64 {
	cl.t.Helper()
	olen := len(opts)
	cl.code++
	hdr := make([]byte, frameHeader)
	binary.BigEndian.PutUint32(hdr[0:], cl.code)
	binary.BigEndian.PutUint32(hdr[4:], uint32(olen))
	binary.BigEndian.PutUint32(hdr[8:], uint32(len(body)))
	written := make(chan struct{})
	go func() {
		defer close(written)
		cl.c.Write(hdr)
		cl.c.Write(opts)
		cl.c.Write(body)
	}()
	defer func() { <-written }()
	var h [frameHeader]byte
	if _, err := io.ReadFull(cl.c, h[:]); err != nil {
		cl.t.Fatalf("no answer: %v", err)
	}
	code, olen2, blen, err := parseHeader(h[:])
	if err != nil || code != cl.code {
		cl.t.Fatalf("answer's header: code %d (want %d) %v", code, cl.code, err)
	}
	buf := make([]byte, olen2+blen)
	if _, err := io.ReadFull(cl.c, buf); err != nil {
		cl.t.Fatal(err)
	}
	d := &decoder{b: buf[olen2:]}
	if d.u32() != callError {
		return ckrOK
	}
	d.array()
	return d.u64()
}

// A frame too long is read through to the length its header gives and
// answered once: requests hidden in it, whole in its first bytes (which
// name the call) or framed further in, are never run, and the next frame
// is the one after it.
func TestAttackTooLongFrameRunsNothingInside(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	mac := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	closeS := request(callCloseSession, func(e *encoder) { e.u64(s) })
	// A C_CloseSession whose frame is padded past the limit: its own
	// request, whole in the first bytes.
	padded := append(append([]byte(nil), closeS...), make([]byte, maxBody+1)...)
	if rv := cl.sendTooLong(0, padded); rv != ckrArgumentsBad {
		t.Fatalf("a padded C_CloseSession: rv %#x", rv)
	}
	// Frames of C_CloseSession and C_DestroyObject inside the body, past
	// its first bytes, and at its very end.
	var inner []byte
	for i := 0; i < 4; i++ {
		inner = appendFrame(inner, 7, closeS)
		inner = appendFrame(inner, 8, request(callDestroyObject, func(e *encoder) { e.u64(s); e.u64(mac) }))
	}
	body := request(callGetInfo, nil)
	body = append(body, inner...)
	body = append(body, make([]byte, maxBody)...)
	body = append(body, inner...)
	if rv := cl.sendTooLong(0, body); rv != ckrArgumentsBad {
		t.Fatalf("a C_GetInfo with frames inside: rv %#x", rv)
	}
	// And in options too long.
	opts := append(append([]byte(nil), inner...), make([]byte, maxOptions+1)...)
	if rv := cl.sendTooLongOpts(opts, closeS); rv != ckrArgumentsBad {
		t.Fatalf("frames in options too long: rv %#x", rv)
	}
	// The session and the key are still there, the stream in step.
	cl.ok(cl.initOp(callSignInit, s, ckmSHA256HMAC, mac), nil)
	d := cl.ok(cl.call(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("abc")); e.u32(64) }))
	if tag := d.Bytes(); len(tag) != 32 {
		t.Fatalf("a tag of %d bytes", len(tag))
	}
}

// A frame too long on one connection names a session by its number: the
// number is the connection's own, so the same number's operation on
// another connection (of another process, or user) goes on.
func TestAttackTooLongFrameOtherConnection(t *testing.T) {
	tf := newTestFront(t)
	victim := tf.dial(t)
	vs := victim.session()
	victim.login(vs)
	mac := victim.generate(vs, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	victim.ok(victim.initOp(callSignInit, vs, ckmSHA256HMAC, mac), nil)
	victim.ok(victim.call(callSignUpdate, func(e *encoder) { e.u64(vs); e.u8(1); e.array([]byte("part")) }))

	attacker := tf.dial(t)
	for _, call := range []int{callSignUpdate, callSignFinal, callSign} {
		body := request(call, func(e *encoder) { e.u64(vs); e.u8(1); e.array(make([]byte, maxBody)) })
		if rv := attacker.sendTooLong(0, body); rv == ckrOK {
			t.Fatalf("%s too long on another connection: CKR_OK", calls[call].name)
		}
		// A NULL mechanism C_SignInit naming the victim's session.
		rv, _ := attacker.call(callSignInit, func(e *encoder) { e.u64(vs); e.u32(mechNone); e.u32(0xffffffff); e.u64(0) })
		if rv == ckrOK {
			t.Fatalf("a NULL mechanism C_SignInit on a session of another connection: CKR_OK")
		}
	}
	d := victim.ok(victim.call(callSignFinal, func(e *encoder) { e.u64(vs); e.u32(64) }))
	if tag := d.Bytes(); len(tag) != 32 {
		t.Fatalf("the victim's C_SignFinal: a tag of %d bytes", len(tag))
	}
}

// A frame whose header announces more than ever comes ends only its own
// connection, when the peer goes; the front serves others meanwhile and
// after, and holds no more than its reading buffer for it.
func TestAttackTooLongFrameHeaderLies(t *testing.T) {
	tf := newTestFront(t)
	var liars []net.Conn
	for i := 0; i < 8; i++ {
		c, err := net.Dial("unix", tf.sockPath)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte{0})
		var v [1]byte
		io.ReadFull(c, v[:])
		hdr := make([]byte, frameHeader)
		binary.BigEndian.PutUint32(hdr[0:], 1)
		binary.BigEndian.PutUint32(hdr[4:], 0xffffffff)
		binary.BigEndian.PutUint32(hdr[8:], 0xffffffff)
		c.Write(hdr)
		c.Write(request(callGetInfo, nil))
		liars = append(liars, c)
	}
	cl := tf.dial(t)
	s := cl.session()
	cl.ok(cl.call(callGetInfo, nil))
	for _, c := range liars {
		c.Close()
	}
	// The liars' connections end without an answer, and the front goes on.
	time.Sleep(50 * time.Millisecond)
	cl.ok(cl.call(callGetSessionInfo, func(e *encoder) { e.u64(s) }))
	cl2 := tf.dial(t)
	cl2.ok(cl2.call(callGetInfo, nil))
}

// A frame too long whose bytes come slowly is under the deadline of its
// header (bodyTimeout), not one renewed as bytes come: a sender that
// never finishes it has its connection closed, and others are served
// meanwhile.
func TestAttackTooLongFrameSlowly(t *testing.T) {
	if testing.Short() {
		t.Skip("waits for the body's deadline")
	}
	tf := newTestFront(t)
	c, err := net.Dial("unix", tf.sockPath)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte{0})
	var v [1]byte
	io.ReadFull(c, v[:])
	hdr := make([]byte, frameHeader)
	binary.BigEndian.PutUint32(hdr[0:], 1)
	binary.BigEndian.PutUint32(hdr[8:], maxBody+1)
	c.Write(hdr)
	start := time.Now()
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		// A byte every 100 ms: the frame would take days.
		for {
			select {
			case <-stop:
				return
			case <-time.After(100 * time.Millisecond):
				if _, err := c.Write([]byte{0}); err != nil {
					return
				}
			}
		}
	}()
	cl := tf.dial(t)
	cl.ok(cl.call(callGetInfo, nil))
	c.SetReadDeadline(time.Now().Add(bodyTimeout + 10*time.Second))
	if n, err := c.Read(v[:]); err == nil {
		t.Fatalf("an answer (%d bytes) to a frame never finished", n)
	} else if errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the connection of a frame never finished still open after %v", time.Since(start))
	}
	cl.ok(cl.call(callGetInfo, nil))
}

// The NULL_PTR mechanism as keywarden's module sends it comes with no
// key (handle 0): a C_*Init of the type 0xffffffff with a key, which a
// program may send through p11-kit's own client, is a mechanism the
// front does not offer, and ends nothing.
func TestNullMechanismTakesNoKey(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	mac := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	initNone := func(key uint64) uint64 {
		rv, _ := cl.call(callSignInit, func(e *encoder) { e.u64(s); e.u32(mechNone); e.u32(0xffffffff); e.u64(key) })
		return rv
	}
	if rv := initNone(mac); rv != ckrMechanismInvalid {
		t.Fatalf("C_SignInit of mechanism 0xffffffff with a key, no operation: rv %#x", rv)
	}
	cl.ok(cl.initOp(callSignInit, s, ckmSHA256HMAC, mac), nil)
	cl.ok(cl.call(callSignUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("part")) }))
	if rv := initNone(mac); rv == ckrOK {
		t.Fatalf("C_SignInit of mechanism 0xffffffff with a key, an operation active: CKR_OK")
	}
	d := cl.ok(cl.call(callSignFinal, func(e *encoder) { e.u64(s); e.u32(64) }))
	if tag := d.Bytes(); len(tag) != 32 {
		t.Fatalf("C_SignFinal: a tag of %d bytes", len(tag))
	}
	// With no key it ends the operation.
	cl.ok(cl.initOp(callSignInit, s, ckmSHA256HMAC, mac), nil)
	cl.ok(initNone(0), nil)
	if rv, _ := cl.call(callSignFinal, func(e *encoder) { e.u64(s); e.u32(64) }); rv != ckrOperationNotInitialized {
		t.Fatalf("C_SignFinal after a NULL_PTR C_SignInit: rv %#x", rv)
	}
}

package p11front

import (
	"encoding/binary"
	"io"
	"testing"
)

// opFamily is one kind of operation as a test drives it: its C_*Init,
// and a call of it with data (opCall) that succeeds on an operation.
type opFamily struct {
	name string
	init func(cl *client, s uint64) uint64
	// call is the family's one-shot call (C_Encrypt, C_Sign, ...) on data,
	// with room for the result.
	call int
	// body encodes call's arguments after the session.
	body func(e *encoder, data []byte)
}

// opFamilies are the five kinds, each with a key of the session's made
// for it.
func opFamilies(t *testing.T, cl *client, s uint64) []opFamily {
	t.Helper()
	aes := cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, false))
	mac := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	withRoom := func(e *encoder, data []byte) { e.u8(1); e.array(data); e.u32(4096) }
	keyInit := func(call int, key uint64, mech uint32) func(cl *client, s uint64) uint64 {
		return func(cl *client, s uint64) uint64 { return cl.initOp(call, s, mech, key) }
	}
	return []opFamily{
		{"encrypt", keyInit(callEncryptInit, aes, ckmAESGCM), callEncrypt, withRoom},
		{"decrypt", keyInit(callDecryptInit, aes, ckmAESGCM), callDecrypt, withRoom},
		{"sign", keyInit(callSignInit, mac, ckmSHA256HMAC), callSign, withRoom},
		{"verify", keyInit(callVerifyInit, mac, ckmSHA256HMAC), callVerify, func(e *encoder, data []byte) {
			e.u8(1)
			e.array(data)
			e.u8(1)
			e.array(make([]byte, 32))
		}},
		{"digest", func(cl *client, s uint64) uint64 {
			rv, _ := cl.call(callDigestInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256); e.u32(0xffffffff) })
			return rv
		}, callDigest, withRoom},
	}
}

// ended checks that f's operation on s has ended: its next call is
// CKR_OPERATION_NOT_INITIALIZED, and a new C_*Init succeeds (not
// CKR_OPERATION_ACTIVE), whose operation is then ended with a call.
func ended(t *testing.T, cl *client, s uint64, f opFamily, after string) {
	t.Helper()
	if rv, _ := cl.call(f.call, func(e *encoder) { e.u64(s); f.body(e, []byte("data")) }); rv != ckrOperationNotInitialized {
		t.Errorf("%s, after %s: the operation's next call is %#x, not CKR_OPERATION_NOT_INITIALIZED", f.name, after, rv)
	}
	if rv := f.init(cl, s); rv != ckrOK {
		t.Fatalf("%s, after %s: a new C_*Init is %#x", f.name, after, rv)
	}
	cl.call(f.call, func(e *encoder) { e.u64(s); f.body(e, []byte("data")) })
}

// A call of an operation that fails ends the operation, whatever made it
// fail (PKCS #11 v2.40, 5.2): here a request that does not decode (a
// byte too many), a request longer than the front takes (answered with
// the call's error, the connection going on), and a C_*Init with a NULL
// mechanism (PKCS #11 3.0's way to end an operation, which keywarden's
// module sends after a call it refused without sending it).
func TestRefusedCallEndsTheOperation(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	for _, f := range opFamilies(t, cl, s) {
		// A request that does not decode.
		cl.ok(f.init(cl, s), nil)
		body := request(f.call, func(e *encoder) { e.u64(s); f.body(e, []byte("data")) })
		if rv, _ := cl.raw(append(body, 0)); rv != ckrDeviceError {
			t.Fatalf("%s: a request with a byte too many: rv %#x", f.name, rv)
		}
		ended(t, cl, s, f, "a malformed call")

		// A request longer than the front takes.
		cl.ok(f.init(cl, s), nil)
		want := uint64(ckrDataLenRange)
		if f.call == callDecrypt {
			want = ckrEncryptedDataLenRange
		}
		big := request(f.call, func(e *encoder) { e.u64(s); f.body(e, make([]byte, maxBody)) })
		if rv, _ := cl.raw(big); rv != want {
			t.Fatalf("%s: a call too long: rv %#x, want %#x", f.name, rv, want)
		}
		ended(t, cl, s, f, "a call too long")

		// A C_*Init with a NULL mechanism.
		cl.ok(f.init(cl, s), nil)
		initCall := map[int]int{callEncrypt: callEncryptInit, callDecrypt: callDecryptInit, callSign: callSignInit,
			callVerify: callVerifyInit, callDigest: callDigestInit}[f.call]
		cl.ok(cl.call(initCall, func(e *encoder) {
			e.u64(s)
			e.u32(mechNone)
			e.u32(0xffffffff)
			if initCall != callDigestInit {
				e.u64(0)
			}
		}))
		ended(t, cl, s, f, "a C_*Init without a mechanism")
	}
	// C_DigestKey is not offered: its refusal ends the digest.
	fs := opFamilies(t, cl, s)
	cl.ok(fs[4].init(cl, s), nil)
	if rv, _ := cl.call(callDigestKey, func(e *encoder) { e.u64(s); e.u64(1) }); rv != ckrFunctionNotSupported {
		t.Fatalf("C_DigestKey: rv %#x", rv)
	}
	ended(t, cl, s, fs[4], "C_DigestKey")
	// C_Verify of a wrong signature, C_Decrypt of a ciphertext that does
	// not open: the daemon's refusals end the operation too.
	for _, f := range []opFamily{fs[1], fs[3]} {
		cl.ok(f.init(cl, s), nil)
		if rv, _ := cl.call(f.call, func(e *encoder) { e.u64(s); f.body(e, make([]byte, 64)) }); rv == ckrOK {
			t.Fatalf("%s: refused data accepted", f.name)
		}
		ended(t, cl, s, f, "the daemon's refusal")
	}
}

// A frame longer than the front takes is answered with an error, not by
// closing the connection: its header says where the next frame starts.
// Its body is read through without being kept; a body that names no call
// is CKR_DEVICE_ERROR, options too long are refused as a body too long
// is, and a multi-part operation ends with its C_*Update too long.
func TestFrameTooLongAnswered(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	send := func(olen int, body []byte) uint64 {
		t.Helper()
		cl.code++
		hdr := make([]byte, frameHeader)
		binary.BigEndian.PutUint32(hdr[0:], cl.code)
		binary.BigEndian.PutUint32(hdr[4:], uint32(olen))
		binary.BigEndian.PutUint32(hdr[8:], uint32(len(body)))
		written := make(chan struct{})
		go func() {
			defer close(written)
			cl.c.Write(hdr)
			cl.c.Write(make([]byte, olen))
			cl.c.Write(body)
		}()
		defer func() { <-written }()
		var h [frameHeader]byte
		if _, err := io.ReadFull(cl.c, h[:]); err != nil {
			t.Fatalf("no answer: %v", err)
		}
		code, olen2, blen, err := parseHeader(h[:])
		if err != nil || code != cl.code {
			t.Fatalf("answer's header: code %d (want %d) %v", code, cl.code, err)
		}
		buf := make([]byte, olen2+blen)
		if _, err := io.ReadFull(cl.c, buf); err != nil {
			t.Fatal(err)
		}
		d := &decoder{b: buf[olen2:]}
		if d.u32() != callError {
			return ckrOK
		}
		d.array()
		return d.u64()
	}
	if rv := send(0, make([]byte, 3<<20)); rv != ckrDeviceError {
		t.Fatalf("a body of zeros too long: rv %#x", rv)
	}
	if rv := send(maxOptions+1, request(callGetInfo, nil)); rv != ckrArgumentsBad {
		t.Fatalf("options too long: rv %#x", rv)
	}
	mac := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	cl.ok(cl.initOp(callSignInit, s, ckmSHA256HMAC, mac), nil)
	cl.ok(cl.call(callSignUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("part")) }))
	if rv := send(0, request(callSignUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array(make([]byte, maxBody)) })); rv != ckrDataLenRange {
		t.Fatalf("C_SignUpdate too long: rv %#x", rv)
	}
	if rv, _ := cl.call(callSignFinal, func(e *encoder) { e.u64(s); e.u32(64) }); rv != ckrOperationNotInitialized {
		t.Fatalf("C_SignFinal after a C_SignUpdate too long: rv %#x", rv)
	}
	if rv := send(0, request(callUnwrapKey, func(e *encoder) {
		e.u64(s)
		e.u32(ckmAESKeyWrapPad)
		e.u32(0xffffffff)
		e.u64(mac)
		e.u8(1)
		e.array(make([]byte, maxBody))
		writeAttrs(e, nil)
	})); rv != ckrWrappedKeyLenRange {
		t.Fatalf("C_UnwrapKey too long: rv %#x", rv)
	}
	// The connection goes on, its session with it.
	cl.ok(cl.initOp(callSignInit, s, ckmSHA256HMAC, mac), nil)
	d := cl.ok(cl.call(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("abc")); e.u32(64) }))
	if tag := d.Bytes(); len(tag) != 32 {
		t.Fatalf("a tag of %d bytes after the frames too long", len(tag))
	}
	if !contains(tf.logText(t), "C_UnwrapKey of 0+") {
		t.Error("the refusal of a frame too long is not in the audit log")
	}
}

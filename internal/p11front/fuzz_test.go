package p11front

import (
	"context"
	"encoding/binary"
	"io"
	"os"
	"testing"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// seeds are well-formed requests: the fuzzer starts from them.
func seeds() [][]byte {
	init := request(callInitialize, func(e *encoder) {
		e.u8(1)
		e.array([]byte(handshake))
		e.u8(0)
		e.u8(1)
		e.array([]byte{0})
	})
	tmpl := func(e *encoder) {
		writeAttrs(e, []tmplAttr{ulongAttr(ckaClass, ckoSecretKey), boolAttr(ckaToken, false), {ckaLabel, []byte("k")},
			ulongAttr(ckaValueLen, 32), {ckaStartDate, []byte("20260101")}})
	}
	return [][]byte{
		init,
		request(callGetInfo, nil),
		request(callGetSlotList, func(e *encoder) { e.u8(1); e.u32(4) }),
		request(callGetTokenInfo, func(e *encoder) { e.u64(slotID) }),
		request(callGetMechanismList, func(e *encoder) { e.u64(slotID); e.u32(64) }),
		request(callOpenSession, func(e *encoder) { e.u64(slotID); e.u64(ckfSerialSession | ckfRWSession) }),
		request(callLogin, func(e *encoder) { e.u64(1); e.u64(ckuUser); e.u8(1); e.array([]byte("pin")) }),
		request(callGenerateKey, func(e *encoder) { e.u64(1); e.u32(ckmAESKeyGen); e.u32(0xffffffff); tmpl(e) }),
		request(callFindObjectsInit, func(e *encoder) { e.u64(1); tmpl(e) }),
		request(callFindObjects, func(e *encoder) { e.u64(1); e.u32(10) }),
		request(callGetAttributeValue, func(e *encoder) {
			e.u64(1)
			e.u64(1)
			e.u32(2)
			e.u32(ckaValue)
			e.u32(0)
			e.u32(ckaLabel)
			e.u32(10)
		}),
		request(callSignInit, func(e *encoder) {
			e.u64(1)
			e.u32(ckmRSAPKCSPSS)
			e.u64(ckmSHA256)
			e.u64(ckgMGF1SHA256)
			e.u64(32)
			e.u64(1)
		}),
		request(callEncryptInit, func(e *encoder) {
			e.u64(1)
			e.u32(ckmRSAPKCSOAEP)
			e.u64(ckmSHA256)
			e.u64(ckgMGF1SHA256)
			e.u64(1)
			e.array(nil)
			e.u64(1)
		}),
		request(callEncryptInit, func(e *encoder) {
			e.u64(1)
			e.u32(ckmAESGCM)
			e.array(make([]byte, 12))
			e.u64(96)
			e.array([]byte("aad"))
			e.u64(128)
			e.u64(1)
		}),
		request(callWrapKey, func(e *encoder) {
			e.u64(1)
			e.u32(ckmRSAAESKeyWrap)
			e.u64(256)
			e.u64(ckmSHA256)
			e.u64(ckgMGF1SHA256)
			e.u64(1)
			e.array(nil)
			e.u64(1)
			e.u64(2)
			e.u32(512)
		}),
		request(callUnwrapKey, func(e *encoder) {
			e.u64(1)
			e.u32(ckmRSAAESKeyWrap)
			e.u64(128)
			e.u64(ckmSHA384)
			e.u64(ckgMGF1SHA384)
			e.u64(1)
			e.array([]byte{})
			e.u64(1)
			e.u8(1)
			e.array(make([]byte, 300))
			tmpl(e)
		}),
		request(callDeriveKey, func(e *encoder) {
			e.u64(1)
			e.u32(ckmHKDFDerive)
			e.u8(1)
			e.u8(1)
			e.u64(ckmSHA256)
			e.u64(ckfHKDFSaltData)
			e.array([]byte("salt"))
			e.u64(0)
			e.array([]byte("info"))
			e.u64(1)
			tmpl(e)
		}),
		request(callDeriveKey, func(e *encoder) {
			e.u64(1)
			e.u32(ckmECDH1Derive)
			e.u64(ckdNull)
			e.array(nil)
			e.array(append([]byte{4}, make([]byte, 64)...))
			e.u64(2)
			tmpl(e)
		}),
		request(callDeriveKey, func(e *encoder) {
			e.u64(1)
			e.u32(ckmECDH1Derive)
			e.u64(ckdSHA256KDF)
			e.array([]byte("shared"))
			e.array(append([]byte{4, 65, 4}, make([]byte, 64)...))
			e.u64(2)
			tmpl(e)
		}),
		request(callSign, func(e *encoder) { e.u64(1); e.u8(1); e.array([]byte("data")); e.u32(512) }),
		request(callDigestInit, func(e *encoder) { e.u64(1); e.u32(ckmSHA256); e.u32(0xffffffff) }),
		request(callDigest, func(e *encoder) { e.u64(1); e.u8(1); e.array([]byte("data")); e.u32(0) }),
		request(callGenerateRandom, func(e *encoder) { e.u64(1); e.u32(16) }),
		request(callCreateObject, func(e *encoder) {
			e.u64(1)
			writeAttrs(e, []tmplAttr{ulongAttr(ckaClass, ckoPublicKey), ulongAttr(ckaKeyType, ckkEC), {ckaECParams, oidP256}, {ckaECPoint, []byte{4, 65, 4}}})
		}),
		// A C_*Init with a NULL mechanism ends the operation.
		request(callSignInit, func(e *encoder) { e.u64(1); e.u32(mechNone); e.u32(0xffffffff); e.u64(0) }),
		request(callDigestInit, func(e *encoder) { e.u64(1); e.u32(mechNone); e.u32(0xffffffff) }),
		request(callFinalize, nil),
	}
}

// FuzzHandle feeds request bodies to a connection's handler, in order
// after a well-formed start, over the real core: no input may panic, hang
// or answer anything but a well-formed response. It also sends group's
// request bodies (groupFrames) and body after them as frames read
// together, which defers calls to combine them, to one front, and one at
// a time to another, after the same start on both: every frame gets a
// well-formed response, in order, with the return value it has alone.
func FuzzHandle(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s, []byte(nil))
	}
	for _, g := range groupSeeds() {
		f.Add(g[len(g)-1], joinFrames(g[:len(g)-1]...))
	}
	tf := newTestFront(f)
	// The audit allowance of the caller's uid, spent at the pace of the
	// fuzzer, would refuse the calls of one front and not the other's.
	lim := server.Limits{AuditBytesPerSecondPerUID: 1 << 30, AuditBurstPerUID: 1 << 30}
	together, alone := newTestFrontConfig(f, server.Config{Limits: lim}), newTestFrontConfig(f, server.Config{Limits: lim})
	f.Fuzz(func(t *testing.T, body, group []byte) {
		id := server.Identity{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Pidfd: -1}
		ss, err := tf.srv.NewSession(context.Background(), Name, id)
		if err != nil {
			t.Skip(err)
		}
		defer ss.Close()
		c := newConn(tf.Front, nil, ss, id)
		for _, s := range seeds()[:8] {
			c.handle(s)
		}
		out, _ := c.handle(body)
		d := &decoder{b: out}
		rid := d.u32()
		sig, ok := d.array()
		if !ok || rid >= callMax || string(sig) != calls[rid].resp {
			t.Fatalf("malformed response %x to %x", out, body)
		}
		// The same body's start, as the front reads it of a frame too
		// long to take: an error response, always.
		out = c.tooLong(body[:min(len(body), 64)], 0, maxBody+1)
		d = &decoder{b: out}
		rid = d.u32()
		sig, ok = d.array()
		if !ok || rid != callError || string(sig) != "u" || len(d.b) != 8 {
			t.Fatalf("malformed answer %x to a frame too long starting %x", out, body)
		}

		frames := append(groupFrames(group), body)
		got := together.groupStart(t).sendTogether(frames)
		want := alone.groupStart(t).sendAlone(frames)
		for i := range frames {
			if got[i] != want[i] {
				t.Fatalf("frame %d of %d (%x) read with the others: rv %#x, alone %#x", i, len(frames), frames[i], got[i], want[i])
			}
		}
	})
}

// maxGroupFrames bounds the frames a fuzzed group sends together: past
// maxCombined, so that the front's bounds are reached.
const maxGroupFrames = 2 * maxCombined

// groupFrames splits b into request bodies, each a 2-byte big-endian
// length and that many bytes (what is left, at the end).
func groupFrames(b []byte) [][]byte {
	var out [][]byte
	for len(b) >= 2 && len(out) < maxGroupFrames {
		n := min(int(binary.BigEndian.Uint16(b)), len(b)-2)
		out = append(out, b[2:2+n])
		b = b[2+n:]
	}
	return out
}

// joinFrames is the group that groupFrames splits into bodies.
func joinFrames(bodies ...[]byte) []byte {
	var b []byte
	for _, x := range bodies {
		b = binary.BigEndian.AppendUint16(b, uint16(len(x)))
		b = append(b, x...)
	}
	return b
}

// Handles of the fuzzed groups' start (groupStart): three sessions, the
// first logged in, and two session keys open on the connection.
const (
	groupHMAC = 1 // an HMAC-SHA256 key
	groupAES  = 2 // an AES-256 key
)

// groupStart dials tf and opens the sessions and keys that groupSeeds
// name, each key used once so that it is open on the connection.
func (tf *testFront) groupStart(t *testing.T) *client {
	t.Helper()
	cl := tf.dial(t)
	s := cl.session()
	cl.session()
	cl.session()
	cl.login(s)
	if h := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32)); h != groupHMAC {
		t.Fatalf("HMAC key handle %d", h)
	}
	if h := cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32)); h != groupAES {
		t.Fatalf("AES key handle %d", h)
	}
	for _, b := range [][]byte{groupSignInit(s, groupHMAC), groupSign(s, "x"), groupEncryptInit(s), groupEncrypt(s, "x")} {
		cl.ok(cl.raw(b))
	}
	return cl
}

func groupSignInit(s, k uint64) []byte {
	return request(callSignInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(k) })
}

func groupSign(s uint64, data string) []byte {
	return request(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte(data)); e.u32(64) })
}

func groupEncryptInit(s uint64) []byte {
	return request(callEncryptInit, func(e *encoder) { e.u64(s); gcm(e, make([]byte, 12), nil, 128); e.u64(groupAES) })
}

func groupEncrypt(s uint64, data string) []byte {
	return request(callEncrypt, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte(data)); e.u32(4096) })
}

// groupSeeds are frames that threads calling at once send together (the
// last one is the fuzzer's body, the others its group).
func groupSeeds() [][][]byte {
	lengthQuery := request(callEncrypt, func(e *encoder) { e.u64(1); e.u8(0); e.array([]byte("data")); e.u32(0) })
	short := request(callSign, func(e *encoder) { e.u64(3); e.u8(1); e.array([]byte("data")); e.u32(8) })
	return [][][]byte{
		{groupSignInit(1, groupHMAC), groupSign(1, "a"), groupEncryptInit(2), groupEncrypt(2, "b"), groupSignInit(3, groupHMAC), groupSign(3, "c")},
		// A call on a deferred call's session, and one that ended.
		{groupSignInit(1, groupHMAC), groupSign(1, "a"), groupSign(1, "a"), groupSignInit(2, groupHMAC), groupSign(2, "b")},
		// A length query and a buffer too small among deferred calls.
		{groupEncryptInit(2), groupEncrypt(2, "b"), groupEncryptInit(1), lengthQuery, groupSignInit(3, groupHMAC), short, groupSign(3, "c")},
		// Another call between deferred ones, and a malformed one.
		{groupSignInit(1, groupHMAC), groupSign(1, "a"), request(callGetInfo, nil), groupSignInit(2, groupAES), groupSign(2, "b"), {1, 2, 3}},
		// A key of another session, closed while its call waits.
		{groupEncryptInit(3), groupEncrypt(3, "c"), request(callCloseSession, func(e *encoder) { e.u64(3) }), groupEncrypt(3, "c")},
	}
}

// sendTogether writes frames of bodies in one write and returns each
// response's return value, checking that every frame is answered, in
// order, with a well-formed response.
func (cl *client) sendTogether(bodies [][]byte) []uint64 {
	cl.t.Helper()
	var out []byte
	first := cl.code + 1
	for _, b := range bodies {
		cl.code++
		out = appendFrame(out, cl.code, b)
	}
	if _, err := cl.c.Write(out); err != nil {
		cl.t.Fatal(err)
	}
	rvs := make([]uint64, len(bodies))
	for i := range bodies {
		rvs[i] = cl.readResponse(first+uint32(i), bodies[i])
	}
	return rvs
}

// sendAlone sends frames of bodies one at a time, each once the one
// before was answered, and returns each response's return value.
func (cl *client) sendAlone(bodies [][]byte) []uint64 {
	cl.t.Helper()
	rvs := make([]uint64, len(bodies))
	for i, b := range bodies {
		cl.code++
		if _, err := cl.c.Write(appendFrame(nil, cl.code, b)); err != nil {
			cl.t.Fatal(err)
		}
		rvs[i] = cl.readResponse(cl.code, b)
	}
	return rvs
}

// readResponse reads the response of frame code, whose request was
// body, and returns its return value: it must be well-formed, an error
// response or one of body's call.
func (cl *client) readResponse(code uint32, body []byte) uint64 {
	cl.t.Helper()
	var h [frameHeader]byte
	if _, err := io.ReadFull(cl.c, h[:]); err != nil {
		cl.t.Fatalf("response to %x: %v", body, err)
	}
	got, olen, blen, err := parseHeader(h[:])
	if err != nil || got != code {
		cl.t.Fatalf("response to %x: code %d (want %d) %v", body, got, code, err)
	}
	buf := make([]byte, olen+blen)
	if _, err := io.ReadFull(cl.c, buf); err != nil {
		cl.t.Fatal(err)
	}
	d := &decoder{b: buf[olen:]}
	rid := d.u32()
	sig, ok := d.array()
	switch {
	case !ok || rid >= callMax || string(sig) != calls[rid].resp:
		cl.t.Fatalf("malformed response %x to %x", buf[olen:], body)
	case rid == callError:
		rv := d.u64()
		if d.err != nil || len(d.b) != 0 || rv == ckrOK {
			cl.t.Fatalf("malformed error response %x to %x", buf[olen:], body)
		}
		return rv
	case len(body) < 4 || rid != binary.BigEndian.Uint32(body):
		cl.t.Fatalf("response of call %d to %x", rid, body)
	}
	return ckrOK
}

// FuzzECDHParams feeds CK_ECDH1_DERIVE_PARAMS to their reading: no input
// panics, and what is accepted is a known KDF and a SEC 1 point of the
// curve's size.
func FuzzECDHParams(f *testing.F) {
	pt := append([]byte{4}, make([]byte, 64)...)
	der := append([]byte{4, 65}, pt...)
	f.Add(uint64(ckdNull), []byte(nil), pt, 32)
	f.Add(uint64(ckdSHA256KDF), []byte("shared"), der, 32)
	f.Add(uint64(ckdSHA384KDF), []byte{}, append([]byte{2}, make([]byte, 48)...), 48)
	f.Add(uint64(ckdSHA1KDF), []byte(nil), pt, 32)
	f.Add(uint64(ckdNull), []byte(nil), append(der, 0), 32)
	f.Add(uint64(ckdNull), []byte(nil), make([]byte, 32), 32)
	f.Add(uint64(ckdSHA256KDF), []byte("shared"), append([]byte{4, 32}, make([]byte, 32)...), 32)
	f.Fuzz(func(t *testing.T, kdf uint64, shared, public []byte, size int) {
		if size != 32 && size != 48 {
			size = 32
		}
		m := mechanism{typ: ckmECDH1Derive, extra: kdf, param: shared, source: public, hasParam: true}
		k, h, info, p, rv := ecdhParams(m, size, false)
		if _, _, _, x, rv := ecdhParams(m, size, true); rv == ckrOK && len(x) != 32 {
			t.Fatalf("accepted %x as an X25519 public value", x)
		}
		if rv != ckrOK {
			return
		}
		switch {
		case k == wire.DeriveKdf_DERIVE_KDF_NONE && (h != 0 || len(info) != 0):
			t.Fatalf("CKD_NULL with hash %v and %d bytes of shared data", h, len(info))
		case k == wire.DeriveKdf_DERIVE_KDF_X963 && h == 0:
			t.Fatal("X9.63 without a hash")
		case k != wire.DeriveKdf_DERIVE_KDF_NONE && k != wire.DeriveKdf_DERIVE_KDF_X963:
			t.Fatalf("KDF %v", k)
		}
		if !(len(p) == 1+2*size && p[0] == 4) && !(len(p) == 1+size && (p[0] == 2 || p[0] == 3)) {
			t.Fatalf("accepted %x as a point of %d-byte coordinates", p, size)
		}
	})
}

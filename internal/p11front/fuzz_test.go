package p11front

import (
	"context"
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
// or answer anything but a well-formed response.
func FuzzHandle(f *testing.F) {
	for _, s := range seeds() {
		f.Add(s)
	}
	tf := newTestFront(f)
	f.Fuzz(func(t *testing.T, body []byte) {
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
	})
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

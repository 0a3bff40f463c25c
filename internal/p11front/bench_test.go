package p11front

import "testing"

// BenchmarkHMAC is one PKCS #11 HMAC of 256 bytes through the front, as
// p11-kit's client makes it: C_SignInit and C_Sign, two round trips.
func BenchmarkHMAC(b *testing.B) {
	tf := newTestFront(b)
	cl := tf.dial(b)
	s := cl.session()
	cl.login(s)
	h := cl.generate(s, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	data := make([]byte, 256)
	for b.Loop() {
		cl.ok(cl.call(callSignInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(h) }))
		cl.ok(cl.call(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array(data); e.u32(64) }))
	}
}

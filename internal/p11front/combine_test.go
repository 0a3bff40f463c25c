package p11front

import (
	"bufio"
	"bytes"
	"encoding/json"
	"io"
	"strings"
	"testing"
)

// sendFrames writes the request bodies in one write, as threads sharing
// the module's connection do when they call at once, and returns the
// responses' return values and decoders, in order.
func (cl *client) sendFrames(bodies ...[]byte) ([]uint64, []*decoder) {
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
	ds := make([]*decoder, len(bodies))
	for i := range bodies {
		var h [frameHeader]byte
		if _, err := io.ReadFull(cl.c, h[:]); err != nil {
			cl.t.Fatalf("reading response %d: %v", i, err)
		}
		code, olen, blen, err := parseHeader(h[:])
		if err != nil || code != first+uint32(i) {
			cl.t.Fatalf("response %d: code %d (want %d) %v", i, code, first+uint32(i), err)
		}
		buf := make([]byte, olen+blen)
		if _, err := io.ReadFull(cl.c, buf); err != nil {
			cl.t.Fatal(err)
		}
		d := &decoder{b: buf[olen:]}
		rid := d.u32()
		sig, _ := d.array()
		if rid == callError {
			rvs[i] = d.u64()
			continue
		}
		d.sig = string(sig)
		ds[i] = d
	}
	return rvs, ds
}

// auditOps returns the request number of each record of op in the
// audit log, in order.
func auditOps(t *testing.T, tf *testFront, op string) []uint64 {
	t.Helper()
	var reqs []uint64
	sc := bufio.NewScanner(strings.NewReader(tf.logText(t)))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var r struct {
			Kind    string `json:"kind"`
			Op      string `json:"op"`
			Status  string `json:"status"`
			Request uint64 `json:"request"`
		}
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("audit line %q: %v", sc.Text(), err)
		}
		if r.Kind == "request" && r.Op == op {
			reqs = append(reqs, r.Request)
		}
	}
	return reqs
}

// Calls of several sessions read together (threads sharing the module's
// connection) go to the core as one combined request: each still gets
// its own result, as it would alone, and its own audit record; a call on
// a session whose call is deferred sees that call done.
func TestCallsReadTogetherCombined(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s1, s2 := cl.session(), cl.session()
	cl.login(s1)
	mac := cl.generate(s1, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	d := cl.ok(cl.call(callGenerateKeyPair, func(e *encoder) {
		e.u64(s2)
		e.u32(ckmECEdwardsGen)
		e.u32(0xffffffff)
		writeAttrs(e, []tmplAttr{{ckaECParams, oidEd25519}, boolAttr(ckaToken, false), boolAttr(ckaVerify, true)})
		writeAttrs(e, []tmplAttr{boolAttr(ckaSign, true)})
	}))
	d.Ulong()
	ed := d.Ulong()
	signInit := func(s, mech, key uint64) []byte {
		return request(callSignInit, func(e *encoder) { e.u64(s); e.u32(uint32(mech)); e.u32(0xffffffff); e.u64(key) })
	}
	sign := func(s uint64, data string) []byte {
		return request(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte(data)); e.u32(128) })
	}
	// Each alone first (which opens the keys): the results to expect,
	// both mechanisms being deterministic.
	want := map[uint64][]byte{}
	for _, k := range []struct{ s, mech, key uint64 }{{s1, ckmSHA256HMAC, mac}, {s2, ckmEDDSA, ed}} {
		cl.ok(cl.raw(signInit(k.s, k.mech, k.key)))
		want[k.s] = cl.ok(cl.raw(sign(k.s, "data"))).Bytes()
	}
	before := len(auditOps(t, tf, "mac")) + len(auditOps(t, tf, "sign"))

	rvs, ds := cl.sendFrames(
		signInit(s1, ckmSHA256HMAC, mac), sign(s1, "data"),
		signInit(s2, ckmEDDSA, ed), sign(s2, "data"),
		sign(s1, "data"), // s1's operation ended with its result
		signInit(s1, ckmSHA256HMAC, mac), sign(s1, "data"))
	wantRV := []uint64{ckrOK, ckrOK, ckrOK, ckrOK, ckrOperationNotInitialized, ckrOK, ckrOK}
	for i, rv := range rvs {
		if rv != wantRV[i] {
			t.Fatalf("response %d: return value %#x, want %#x", i, rv, wantRV[i])
		}
	}
	for _, c := range []struct {
		i int
		s uint64
	}{{1, s1}, {3, s2}, {6, s1}} {
		if got := ds[c.i].Bytes(); !bytes.Equal(got, want[c.s]) {
			t.Errorf("response %d: %x, want %x (as alone)", c.i, got, want[c.s])
		}
	}

	macs, signs := auditOps(t, tf, "mac"), auditOps(t, tf, "sign")
	if n := len(macs) + len(signs) - before; n != 3 {
		t.Fatalf("%d records of the 3 calls", n)
	}
	// The first two calls were read together: one request of the
	// core's, a record each. The last came after a call on its session
	// and went alone.
	if m, s := macs[len(macs)-2], signs[len(signs)-1]; m != s {
		t.Errorf("the calls read together were recorded as requests %d and %d, not one combined", m, s)
	}
	if m := macs[len(macs)-1]; m == signs[len(signs)-1] {
		t.Errorf("the call after a call on its session was combined with it (request %d)", m)
	}
}

// Calls read together that fail, or only ask for their result's length,
// return what they would alone: a decryption that does not authenticate
// is CKR_ENCRYPTED_DATA_INVALID and ends its operation, a length query
// keeps its operation and result, and the calls with them succeed.
func TestCallsReadTogetherFailAsAlone(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s1, s2, s3 := cl.session(), cl.session(), cl.session()
	cl.login(s1)
	aes := cl.generate(s1, ckmAESKeyGen, boolAttr(ckaToken, false))
	mac := cl.generate(s1, ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	iv := make([]byte, 12)
	encInit := func(s uint64) []byte {
		return request(callEncryptInit, func(e *encoder) { e.u64(s); gcm(e, iv, []byte("aad"), 128); e.u64(aes) })
	}
	decInit := func(s uint64, aad string) []byte {
		return request(callDecryptInit, func(e *encoder) { e.u64(s); gcm(e, iv, []byte(aad), 128); e.u64(aes) })
	}
	cl.ok(cl.raw(encInit(s1)))
	ct := cl.ok(cl.call(callEncrypt, func(e *encoder) { e.u64(s1); e.u8(1); e.array([]byte("secret message")); e.u32(4096) })).Bytes()
	cl.ok(cl.call(callSignInit, func(e *encoder) { e.u64(s3); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(mac) }))
	tag := cl.ok(cl.call(callSign, func(e *encoder) { e.u64(s3); e.u8(1); e.array([]byte("data")); e.u32(64) })).Bytes()

	decrypt := func(s uint64) []byte {
		return request(callDecrypt, func(e *encoder) { e.u64(s); e.u8(1); e.array(ct); e.u32(4096) })
	}
	sign := func(room uint32) []byte {
		return request(callSign, func(e *encoder) { e.u64(s3); e.u8(1); e.array([]byte("data")); e.u32(room) })
	}
	rvs, ds := cl.sendFrames(
		decInit(s1, "aad"), decrypt(s1),
		decInit(s2, "other"), decrypt(s2),
		request(callSignInit, func(e *encoder) { e.u64(s3); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(mac) }),
		sign(0),
		decrypt(s2), // s2's decryption ended with its failure
		sign(64))    // s3's operation stayed after the length query
	wantRV := []uint64{ckrOK, ckrOK, ckrOK, ckrEncryptedDataInvalid, ckrOK, ckrOK, ckrOperationNotInitialized, ckrOK}
	for i, rv := range rvs {
		if rv != wantRV[i] {
			t.Fatalf("response %d: return value %#x, want %#x", i, rv, wantRV[i])
		}
	}
	if pt := ds[1].Bytes(); string(pt) != "secret message" {
		t.Errorf("decryption: %q", pt)
	}
	ds[5].part("ay")
	if valid, n := ds[5].u8(), ds[5].u32(); valid != 0 || n != 32 {
		t.Errorf("length query: valid %d length %d", valid, n)
	}
	if got := ds[7].Bytes(); !bytes.Equal(got, tag) {
		t.Errorf("HMAC after the length query: %x, want %x", got, tag)
	}
	// The decryptions and the HMAC of the length query went together.
	decs, macs := auditOps(t, tf, "decrypt"), auditOps(t, tf, "mac")
	if len(decs) != 2 || decs[0] != decs[1] || macs[len(macs)-1] != decs[0] {
		t.Errorf("decryptions recorded as requests %v, the HMAC as %v: not one combined", decs, macs)
	}
}

package p11front

import (
	"context"
	"os"
	"testing"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// The classic PKCS #11 API attacks that need key wrapping, through the
// front with CKM_AES_KEY_WRAP_PAD (which p11-kit's client does not
// forward: the front refuses the attacks for any client of its protocol).
// Each is tried and must fail; docs/security.md has the table.

// wrapKey wraps target under wrapping with mech and returns the call's
// return value and the blob.
func (cl *client) wrapKey(s uint64, mech uint32, wrapping, target uint64) (uint64, []byte) {
	cl.t.Helper()
	rv, d := cl.call(callWrapKey, func(e *encoder) {
		e.u64(s)
		e.u32(mech)
		e.u32(0xffffffff)
		e.u64(wrapping)
		e.u64(target)
		e.u32(4096)
	})
	if rv != ckrOK {
		return rv, nil
	}
	return rv, d.Bytes()
}

func (cl *client) unwrapKey(s uint64, mech uint32, unwrapping uint64, blob []byte, as ...tmplAttr) (uint64, uint64) {
	cl.t.Helper()
	rv, d := cl.call(callUnwrapKey, func(e *encoder) {
		e.u64(s)
		e.u32(mech)
		e.u32(0xffffffff)
		e.u64(unwrapping)
		e.u8(1)
		e.array(blob)
		writeAttrs(e, as)
	})
	if rv != ckrOK {
		return rv, 0
	}
	return rv, d.Ulong()
}

func (cl *client) initOp(call int, s uint64, mech uint32, key uint64) uint64 {
	cl.t.Helper()
	rv, _ := cl.call(call, func(e *encoder) {
		e.u64(s)
		if mech == ckmAESGCM {
			gcm(e, make([]byte, 12), nil, 128)
		} else {
			e.u32(mech)
			e.u32(0xffffffff)
		}
		e.u64(key)
	})
	return rv
}

func aesKey(cl *client, s uint64, as ...tmplAttr) uint64 {
	cl.t.Helper()
	return cl.generate(s, ckmAESKeyGen, append([]tmplAttr{boolAttr(ckaToken, false)}, as...)...)
}

// Wrap a key, then decrypt the blob as data with the wrapping key: a key
// never has both wrap and decrypt, so the second step is refused.
func TestAttackWrapThenDecrypt(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	rv, _ := cl.call(callGenerateKey, func(e *encoder) {
		e.u64(s)
		e.u32(ckmAESKeyGen)
		e.u32(0xffffffff)
		writeAttrs(e, []tmplAttr{boolAttr(ckaToken, false), boolAttr(ckaWrap, true), boolAttr(ckaDecrypt, true)})
	})
	if rv != ckrTemplateInconsistent {
		t.Fatalf("a key that wraps and decrypts: rv %#x", rv)
	}
	w := aesKey(cl, s, boolAttr(ckaWrap, true), boolAttr(ckaUnwrap, true))
	target := aesKey(cl, s, boolAttr(ckaExtractable, true))
	rv, blob := cl.wrapKey(s, ckmAESKeyWrapPad, w, target)
	if rv != ckrOK || len(blob) == 0 {
		t.Fatalf("wrapping an extractable key: rv %#x", rv)
	}
	if rv := cl.initOp(callDecryptInit, s, ckmAESGCM, w); rv == ckrOK {
		rv, _ := cl.call(callDecrypt, func(e *encoder) { e.u64(s); e.u8(1); e.array(blob); e.u32(4096) })
		if rv == ckrOK {
			t.Fatal("the wrapping key decrypted its blob")
		}
	}
}

// Encrypt chosen bytes with the unwrapping key, then unwrap them as a key
// the attacker knows: a key never has both unwrap and encrypt.
func TestAttackEncryptThenUnwrap(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	u := aesKey(cl, s, boolAttr(ckaUnwrap, true), boolAttr(ckaWrap, true))
	if rv := cl.initOp(callEncryptInit, s, ckmAESGCM, u); rv == ckrOK {
		rv, _ := cl.call(callEncrypt, func(e *encoder) { e.u64(s); e.u8(1); e.array(make([]byte, 32)); e.u32(4096) })
		if rv == ckrOK {
			t.Fatal("the unwrapping key encrypted chosen bytes")
		}
	}
}

// A Trojan wrapping key: the attacker imports a key it knows and wraps a
// key under it, to decrypt the blob outside. A key imported (known
// outside the daemon) never wraps, even a key marked extractable; and a
// key that is not extractable is never wrapped at all.
func TestAttackTrojanWrappingKey(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	known := make([]byte, 32)
	d := cl.ok(cl.call(callCreateObject, func(e *encoder) {
		e.u64(s)
		writeAttrs(e, []tmplAttr{ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkAES), {ckaValue, known},
			boolAttr(ckaWrap, true), boolAttr(ckaToken, false)})
	}))
	trojan := d.Ulong()
	victim := aesKey(cl, s) // sensitive, not extractable (the defaults)
	if rv, blob := cl.wrapKey(s, ckmAESKeyWrapPad, trojan, victim); rv == ckrOK {
		t.Fatalf("a non-extractable key was wrapped under a known key: %x", blob)
	}
	if rv, blob := cl.wrapKey(s, ckmAESKeyWrap, trojan, victim); rv == ckrOK {
		t.Fatalf("a non-extractable key was wrapped under a known key: %x", blob)
	}
	extractable := aesKey(cl, s, boolAttr(ckaExtractable, true))
	if rv, blob := cl.wrapKey(s, ckmAESKeyWrapPad, trojan, extractable); rv != ckrKeyUnextractable {
		t.Fatalf("an extractable key wrapped under a known key: rv %#x %x", rv, blob)
	}
}

// Wrap a key, then unwrap it under new attributes (exportable, or with
// more usages): a key unwrapped from a standard format is never
// exportable, and its value never readable.
func TestAttackReimportUnderNewAttributes(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	w := aesKey(cl, s, boolAttr(ckaWrap, true), boolAttr(ckaUnwrap, true))
	target := aesKey(cl, s, boolAttr(ckaExtractable, true), boolAttr(ckaEncrypt, true), boolAttr(ckaDecrypt, false))
	rv, blob := cl.wrapKey(s, ckmAESKeyWrapPad, w, target)
	if rv != ckrOK {
		t.Fatalf("wrap: rv %#x", rv)
	}
	// With more usages than the key has: the daemon knows these bytes.
	rv, _ = cl.unwrapKey(s, ckmAESKeyWrapPad, w, blob, ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkAES),
		boolAttr(ckaToken, false), boolAttr(ckaEncrypt, true), boolAttr(ckaDecrypt, true))
	if rv != ckrTemplateInconsistent {
		t.Fatalf("unwrapped with decrypt added: rv %#x", rv)
	}
	// Exportable: accepted, and the key is not.
	rv, h := cl.unwrapKey(s, ckmAESKeyWrapPad, w, blob, ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkAES),
		boolAttr(ckaToken, false), boolAttr(ckaEncrypt, true), boolAttr(ckaSensitive, false), boolAttr(ckaExtractable, true))
	if rv != ckrOK {
		t.Fatalf("unwrap: rv %#x\n%s", rv, tf.logText(t))
	}
	if rv, v := cl.getAttr(s, h, ckaValue); rv != ckrAttributeSensitive || v != nil {
		t.Fatalf("the unwrapped key's value: rv %#x %x", rv, v)
	}
	if _, v := cl.getAttr(s, h, ckaSensitive); len(v) != 1 || v[0] != 1 {
		t.Fatalf("the unwrapped key is not sensitive: %v", v)
	}
}

// Drop two usages in one C_SetAttributeValue: both must be gone, not only
// the last the template names (a restriction asked for and answered
// CKR_OK must hold).
func TestSetAttributeValueDropsEveryUsage(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := aesKey(cl, s, boolAttr(ckaEncrypt, true), boolAttr(ckaDecrypt, true))
	cl.ok(cl.call(callSetAttributeValue, func(e *encoder) {
		e.u64(s)
		e.u64(h)
		writeAttrs(e, []tmplAttr{boolAttr(ckaEncrypt, false), boolAttr(ckaDecrypt, false)})
	}))
	for _, typ := range []uint32{ckaEncrypt, ckaDecrypt} {
		if _, v := cl.getAttr(s, h, typ); len(v) != 1 || v[0] != 0 {
			t.Errorf("attribute %#x after dropping it: %v", typ, v)
		}
	}
	if rv := cl.initOp(callEncryptInit, s, ckmAESGCM, h); rv == ckrOK {
		rv, _ := cl.call(callEncrypt, func(e *encoder) { e.u64(s); e.u8(1); e.array(make([]byte, 16)); e.u32(4096) })
		if rv == ckrOK {
			t.Fatal("the key still encrypts after CKA_ENCRYPT was dropped")
		}
	}
}

// Collect the parts of multi-part operations that the front keeps (AES-GCM
// encryption, here) in every session of one connection: what one
// connection holds is bounded, not 1 MiB for every operation of each of
// its 256 sessions.
func TestCollectedPartsBoundedPerConnection(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	k := aesKey(cl, s)
	part := make([]byte, 512<<10)
	var held int
	for i := 0; i < maxSessions-1; i++ {
		si := cl.session()
		if rv := cl.initOp(callEncryptInit, si, ckmAESGCM, k); rv != ckrOK {
			t.Fatalf("EncryptInit: rv %#x", rv)
		}
		rv, _ := cl.call(callEncryptUpdate, func(e *encoder) { e.u64(si); e.u8(1); e.array(part); e.u32(0) })
		if rv != ckrOK {
			if rv != ckrDeviceMemory {
				t.Fatalf("refused with rv %#x", rv)
			}
			break
		}
		held += len(part)
	}
	if held > maxCollected {
		t.Fatalf("one connection holds %d MiB of collected parts (at most %d MiB)", held>>20, maxCollected>>20)
	}
	// What was refused was aborted; the others go on.
	if rv := cl.initOp(callEncryptInit, s, ckmAESGCM, k); rv != ckrOK {
		t.Fatalf("EncryptInit after the refusal: rv %#x", rv)
	}
}

// Keep the results of one-shot operations with length queries (a NULL
// output buffer) in every session of one connection: the results kept
// count against the same bound as the parts collected.
func TestKeptResultsBoundedPerConnection(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	k := aesKey(cl, s)
	data := make([]byte, 200<<10)
	var held int
	for i := 0; i < maxSessions-1; i++ {
		si := cl.session()
		if rv := cl.initOp(callEncryptInit, si, ckmAESGCM, k); rv != ckrOK {
			t.Fatalf("EncryptInit: rv %#x", rv)
		}
		rv, _ := cl.call(callEncrypt, func(e *encoder) { e.u64(si); e.u8(1); e.array(data); e.u32(0) })
		if rv != ckrOK {
			if rv != ckrDeviceMemory {
				t.Fatalf("refused with rv %#x", rv)
			}
			break
		}
		held += len(data)
	}
	if held > maxCollected {
		t.Fatalf("one connection keeps %d MiB of results (at most %d MiB)", held>>20, maxCollected>>20)
	}
}

// Another uid makes a key with the name of one of the caller's and shares
// it with the caller: a program that finds "its" key by label
// (pkcs11:object=backup) must not get the other uid's, to encrypt to it
// or trust its signatures. A key of another owner shows with the core's
// name for it, UID:NAME.
func TestSharedKeyLabelCollision(t *testing.T) {
	tf := newTestFront(t)
	const attacker = 4242
	id := server.Identity{PID: int32(os.Getpid()), UID: attacker, GID: attacker, Pidfd: -1}
	ss, err := tf.srv.NewSession(context.Background(), "test-other", id)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	rep, err := ss.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: 1,
		Ops: []*wire.Op{{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
			Name: "backup", Type: wire.KeyType_KEY_TYPE_AES256_GCM, Exportable: true,
			Usage: uint32(wire.Usage_USAGE_ENCRYPT | wire.Usage_USAGE_DECRYPT),
			Acl:   []*wire.AclEntry{{Principal: &wire.AclEntry_Uid{Uid: uint32(os.Getuid())}, Usage: uint32(wire.Usage_USAGE_ENCRYPT)}}}}}}}})
	if err != nil || rep.Status != wire.Status_STATUS_OK || rep.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("the other uid's key: %v %v", err, rep)
	}
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	mine := cl.generate(s, ckmAESKeyGen, boolAttr(ckaToken, true), tmplAttr{ckaLabel, []byte("backup")})
	hs := cl.find(s, tmplAttr{ckaLabel, []byte("backup")})
	if len(hs) != 1 || hs[0] != mine {
		t.Fatalf("objects labelled backup: %v (the caller's own: %d)", hs, mine)
	}
	if hs := cl.find(s, tmplAttr{ckaLabel, []byte("4242:backup")}); len(hs) != 1 || hs[0] == mine {
		t.Fatalf("the shared key under its owner's name: %v", hs)
	}
}

// A length query of CKA_VALUE (or a buffer too small for it) answers
// only the length, which the key's type gives: the key is not exported for
// it, so its bytes never pass through the front for nothing, and the audit
// log records no export that answered no key.
func TestValueLengthQueryExportsNothing(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := aesKey(cl, s, boolAttr(ckaSensitive, false))
	for _, size := range []uint32{0, 16} {
		rv, _ := cl.call(callGetAttributeValue, func(e *encoder) { e.u64(s); e.u64(h); e.u32(1); e.u32(ckaValue); e.u32(size) })
		if rv != ckrOK {
			t.Fatalf("room %d: rv %#x", size, rv)
		}
	}
	if contains(tf.logText(t), `"op":"export"`) {
		t.Fatal("a length query exported the key")
	}
	if rv, v := cl.getAttr(s, h, ckaValue); rv != ckrOK || len(v) != 32 {
		t.Fatalf("the value: rv %#x, %d bytes", rv, len(v))
	}
	if !contains(tf.logText(t), `"op":"export"`) {
		t.Fatal("the export is not recorded")
	}
}

// C_SetAttributeValue of CKA_VALUE is read-only at once: the front does
// not export the key to compare it with the value given.
func TestSetValueExportsNothing(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	h := aesKey(cl, s, boolAttr(ckaSensitive, false))
	rv, _ := cl.call(callSetAttributeValue, func(e *encoder) { e.u64(s); e.u64(h); writeAttrs(e, []tmplAttr{{ckaValue, make([]byte, 32)}}) })
	if rv != ckrAttributeReadOnly {
		t.Fatalf("setting CKA_VALUE: rv %#x", rv)
	}
	if contains(tf.logText(t), `"op":"export"`) {
		t.Fatal("C_SetAttributeValue exported the key")
	}
}

// C_CopyObject: no object may be copied (CKA_COPYABLE false), so a copy
// asking a sensitive, unwrappable key to be exportable or wrappable, or
// to gain a usage, or asking nothing, is CKR_ACTION_PROHIBITED; no object
// is made and the key keeps its attributes. A handle the caller does not
// see is CKR_OBJECT_HANDLE_INVALID.
func TestAttackCopyObject(t *testing.T) {
	tf := newTestFront(t)
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	k := aesKey(cl, s, boolAttr(ckaEncrypt, true), boolAttr(ckaDecrypt, false))
	if rv, v := cl.getAttr(s, k, ckaCopyable); rv != ckrOK || v[0] != 0 {
		t.Fatalf("CKA_COPYABLE: rv %#x %x", rv, v)
	}
	before := len(cl.find(s))
	copyObject := func(o uint64, as ...tmplAttr) uint64 {
		rv, _ := cl.call(callCopyObject, func(e *encoder) { e.u64(s); e.u64(o); writeAttrs(e, as) })
		return rv
	}
	for name, as := range map[string][]tmplAttr{
		"exportable":     {boolAttr(ckaSensitive, false)},
		"wrappable":      {boolAttr(ckaExtractable, true)},
		"a usage more":   {boolAttr(ckaDecrypt, true)},
		"to wrap":        {boolAttr(ckaWrap, true)},
		"a session copy": {boolAttr(ckaToken, false)},
		"nothing":        nil,
	} {
		if rv := copyObject(k, as...); rv != ckrActionProhibited {
			t.Errorf("a copy asking %s: rv %#x", name, rv)
		}
	}
	if rv := copyObject(k + 1000); rv != ckrObjectHandleInvalid {
		t.Errorf("a copy of no object: rv %#x", rv)
	}
	if after := len(cl.find(s)); after != before {
		t.Fatalf("%d objects before the copies, %d after", before, after)
	}
	for _, a := range []struct {
		typ  uint32
		want byte
	}{{ckaSensitive, 1}, {ckaExtractable, 0}, {ckaDecrypt, 0}, {ckaWrap, 0}, {ckaEncrypt, 1}} {
		if rv, v := cl.getAttr(s, k, a.typ); rv != ckrOK || len(v) != 1 || v[0] != a.want {
			t.Errorf("attribute %#x after the copies: rv %#x %x", a.typ, rv, v)
		}
	}
	if rv, _ := cl.getAttr(s, k, ckaValue); rv != ckrAttributeSensitive {
		t.Errorf("CKA_VALUE after the copies: rv %#x", rv)
	}
	// Before C_Login another connection sees no secret key to copy.
	cl2 := tf.dial(t)
	s2 := cl2.session()
	if rv, _ := cl2.call(callCopyObject, func(e *encoder) { e.u64(s2); e.u64(k); writeAttrs(e, nil) }); rv != ckrObjectHandleInvalid {
		t.Errorf("a copy without login: rv %#x", rv)
	}
}

package p11front

import (
	"bytes"
	"context"
	"crypto/ecdh"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"encoding/asn1"
	"os"
	"testing"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// coreX25519 makes an X25519 key named name through the core, as the
// test's own uid, and returns its public key.
func coreX25519(t *testing.T, tf *testFront, name string, exportable bool) *ecdh.PublicKey {
	t.Helper()
	id := server.Identity{PID: int32(os.Getpid()), UID: uint32(os.Getuid()), GID: uint32(os.Getgid()), Pidfd: -1}
	ss, err := tf.srv.NewSession(context.Background(), "test-core", id)
	if err != nil {
		t.Fatal(err)
	}
	defer ss.Close()
	rep, err := ss.Do(context.Background(), id, &wire.Request{Version: wire.ProtocolVersion, Id: 1,
		Ops: []*wire.Op{{Op: &wire.Op_Generate{Generate: &wire.Generate{Template: &wire.KeyTemplate{
			Name: name, Type: wire.KeyType_KEY_TYPE_X25519, Exportable: exportable,
			Usage: uint32(wire.Usage_USAGE_DERIVE)}}}}}})
	if err != nil || rep.Status != wire.Status_STATUS_OK || rep.Results[0].Status != wire.Status_STATUS_OK {
		t.Fatalf("X25519 key: %v %v", err, rep)
	}
	pub, err := x509.ParsePKIXPublicKey(rep.Results[0].GetKey().GetInfo().GetPublicKey())
	if err != nil {
		t.Fatal(err)
	}
	return pub.(*ecdh.PublicKey)
}

// X25519 keys show as PKCS #11 3.0's CKK_EC_MONTGOMERY key pairs: the
// daemon's (found by label) and one made with
// CKM_EC_MONTGOMERY_KEY_PAIR_GEN (CKA_EC_PARAMS as the OID or as the
// PrintableString "curve25519"), with curve25519's OID in CKA_EC_PARAMS,
// the public value in an OCTET STRING in CKA_EC_POINT, and the derive
// usage. CKM_ECDH1_DERIVE with one and a peer's raw 32-byte public value
// (or the value in an OCTET STRING) gives X25519's shared secret
// (CKD_NULL) or its X9.63 KDF; a value of another length, or a P-256
// point, is refused.
func TestX25519(t *testing.T) {
	tf := newTestFront(t)
	mine := coreX25519(t, tf, "xdh", true)
	peer, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	cl := tf.dial(t)
	s := cl.session()
	cl.login(s)
	privs := cl.find(s, tmplAttr{ckaLabel, []byte("xdh")}, ulongAttr(ckaClass, ckoPrivateKey))
	pubs := cl.find(s, tmplAttr{ckaLabel, []byte("xdh")}, ulongAttr(ckaClass, ckoPublicKey))
	if len(privs) != 1 || len(pubs) != 1 {
		t.Fatalf("objects labelled xdh: private %v, public %v", privs, pubs)
	}
	if hs := cl.find(s, ulongAttr(ckaKeyType, ckkECMontgomery)); len(hs) != 2 {
		t.Fatalf("CKK_EC_MONTGOMERY objects: %v", hs)
	}
	for _, a := range []struct {
		o    uint64
		typ  uint32
		want []byte
	}{
		{privs[0], ckaKeyType, ulongVal(ckkECMontgomery)}, {privs[0], ckaDerive, boolVal(true)},
		{privs[0], ckaSign, boolVal(false)}, {privs[0], ckaECParams, oidX25519},
		{pubs[0], ckaKeyType, ulongVal(ckkECMontgomery)}, {pubs[0], ckaECParams, oidX25519},
		{pubs[0], ckaECPoint, mustDER(mine.Bytes())},
	} {
		if rv, v := cl.getAttr(s, a.o, a.typ); rv != ckrOK || !bytes.Equal(v, a.want) {
			t.Fatalf("attribute %#x of object %d: rv %#x, %x (want %x)", a.typ, a.o, rv, v, a.want)
		}
	}
	if rv, _ := cl.getAttr(s, privs[0], ckaValue); rv != ckrAttributeSensitive {
		t.Fatalf("CKA_VALUE of the private key: rv %#x", rv)
	}

	z, err := peer.ECDH(mine)
	if err != nil {
		t.Fatal(err)
	}
	secret := []tmplAttr{ulongAttr(ckaClass, ckoSecretKey), ulongAttr(ckaKeyType, ckkGenericSecret), boolAttr(ckaToken, false), boolAttr(ckaSensitive, false)}
	value := func(h uint64) []byte {
		t.Helper()
		rv, v := cl.getAttr(s, h, ckaValue)
		if rv != ckrOK {
			t.Fatalf("CKA_VALUE of the derived key: rv %#x", rv)
		}
		return v
	}
	rv, h := cl.ecdhDerive(s, privs[0], ckdNull, nil, peer.PublicKey().Bytes(), secret...)
	if rv != ckrOK || !bytes.Equal(value(h), z) {
		t.Fatalf("CKD_NULL with the raw value: rv %#x", rv)
	}
	rv, h = cl.ecdhDerive(s, privs[0], ckdSHA256KDF, []byte("shared"), mustDER(peer.PublicKey().Bytes()), secret...)
	if rv != ckrOK || !bytes.Equal(value(h), x963KDF(sha256.New, z, []byte("shared"), 32)) {
		t.Fatalf("CKD_SHA256_KDF with the value in an OCTET STRING: rv %#x", rv)
	}
	p256, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	for name, bad := range map[string][]byte{
		"31 bytes": peer.PublicKey().Bytes()[:31], "33 bytes": append(peer.PublicKey().Bytes(), 0),
		"a P-256 point": p256.PublicKey().Bytes(), "nothing": nil,
	} {
		if rv, _ := cl.ecdhDerive(s, privs[0], ckdNull, nil, bad, secret...); rv != ckrMechanismParamInvalid {
			t.Errorf("%s as the peer's value: rv %#x", name, rv)
		}
	}

	// Key pairs made through the front, the curve named both ways.
	for name, params := range map[string][]byte{"the OID": oidX25519, "the name": nameX25519} {
		d := cl.ok(cl.call(callGenerateKeyPair, func(e *encoder) {
			e.u64(s)
			e.u32(ckmECMontgomeryGen)
			e.u32(0xffffffff)
			writeAttrs(e, []tmplAttr{{ckaECParams, params}, boolAttr(ckaToken, false), boolAttr(ckaDerive, true)})
			writeAttrs(e, []tmplAttr{boolAttr(ckaDerive, true), boolAttr(ckaToken, false), boolAttr(ckaSensitive, false)})
		}))
		pub, priv := d.Ulong(), d.Ulong()
		for _, a := range []struct {
			o    uint64
			typ  uint32
			want []byte
		}{
			{priv, ckaKeyType, ulongVal(ckkECMontgomery)}, {priv, ckaDerive, boolVal(true)},
			{pub, ckaECParams, oidX25519}, {priv, ckaKeyGenMechanism, ulongVal(ckmECMontgomeryGen)},
		} {
			if rv, v := cl.getAttr(s, a.o, a.typ); rv != ckrOK || !bytes.Equal(v, a.want) {
				t.Fatalf("%s: attribute %#x: rv %#x, %x", name, a.typ, rv, v)
			}
		}
		rv, pt := cl.getAttr(s, pub, ckaECPoint)
		var raw []byte
		if rest, err := asn1.Unmarshal(pt, &raw); rv != ckrOK || err != nil || len(rest) != 0 || len(raw) != 32 {
			t.Fatalf("%s: CKA_EC_POINT %x (rv %#x)", name, pt, rv)
		}
		theirs, err := ecdh.X25519().NewPublicKey(raw)
		if err != nil {
			t.Fatal(err)
		}
		z, err := peer.ECDH(theirs)
		if err != nil {
			t.Fatal(err)
		}
		rv, h := cl.ecdhDerive(s, priv, ckdNull, nil, peer.PublicKey().Bytes(), secret...)
		if rv != ckrOK || !bytes.Equal(value(h), z) {
			t.Fatalf("%s: CKD_NULL with a key made by the front: rv %#x", name, rv)
		}
	}
	rv, _ = cl.call(callGenerateKeyPair, func(e *encoder) {
		e.u64(s)
		e.u32(ckmECMontgomeryGen)
		e.u32(0xffffffff)
		writeAttrs(e, []tmplAttr{{ckaECParams, oidEd25519}, boolAttr(ckaToken, false)})
		writeAttrs(e, []tmplAttr{boolAttr(ckaToken, false)})
	})
	if rv != ckrAttributeValueInvalid {
		t.Fatalf("CKM_EC_MONTGOMERY_KEY_PAIR_GEN with Ed25519's OID: rv %#x", rv)
	}
}

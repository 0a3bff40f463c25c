package audit

import (
	"bytes"
	"crypto/ed25519"
	"encoding/hex"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestDeriveKeysKnownAnswer pins the derivation (labels, HKDF, Ed25519
// from the seed): a change would orphan every published public key.
func TestDeriveKeysKnownAnswer(t *testing.T) {
	k := testKeys(t)
	const wantPub = "efec42a499b088da148fa2b600e39cd4947df361c6c15123fc00090f2df43ddc"
	const wantMACID = "25e10f9f6f04c9a1"
	id := k.MACKeyID()
	if got := hex.EncodeToString(k.PublicKey()); got != wantPub {
		t.Errorf("public key %s, want %s", got, wantPub)
	}
	if got := hex.EncodeToString(id[:]); got != wantMACID {
		t.Errorf("MAC key id %s, want %s", got, wantMACID)
	}
	if _, err := DeriveKeys(make([]byte, 31)); err != ErrKeySize {
		t.Errorf("short secret: %v", err)
	}
	other, _ := DeriveKeys(bytes.Repeat([]byte{1}, 32))
	if other.PublicKey().Equal(k.PublicKey()) {
		t.Error("different secrets, same key")
	}
}

// TestSealedStart: a daemon starts sealed (no keys), records unseal
// attempts, gets its keys, is sealed again, and is unsealed with other
// keys. Every step verifies, and the checkpoints authenticate the records
// written without keys.
func TestSealedStart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path})
	for _, st := range []string{"PERMISSION_DENIED", "OK"} {
		if err := l.Append(&Record{Kind: KindRequest, Op: OpUnseal, Status: st, Caller: Caller{PID: 1, UID: 0}}); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := l.Checkpoint(); err != ErrNoKeys {
		t.Fatalf("checkpoint without keys: %v", err)
	}
	if err := l.SetKeys(testKeys(t)); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 3)
	if err := l.ClearKeys(OpSeal); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 2)
	other, _ := DeriveKeys(bytes.Repeat([]byte{9}, 32))
	if err := l.SetKeys(testKeys(t)); err != nil {
		t.Fatal(err)
	}
	if err := l.SetKeys(other); err != nil { // rekey
		t.Fatal(err)
	}
	appendN(t, l, 2)
	if st := l.Status(); !st.Keyed || !st.PublicKey.Equal(other.PublicKey()) {
		t.Fatalf("status %+v", st)
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	// Pinning the first key is enough: the rekey checkpoint, signed with
	// it, introduces the second.
	rep := verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{testPub(t)}, RequireClosed: true})
	mustIntact(t, rep)
	if rep.Unkeyed != 2+1+2 || rep.TrustedThrough != rep.LastSeq || len(rep.SigningKeys) != 2 {
		t.Fatalf("report %+v", rep)
	}
	// With both MAC keys every keyed record's MAC is checked.
	other2, _ := DeriveKeys(bytes.Repeat([]byte{9}, 32))
	rep = verifyPath(t, path, VerifyOptions{Keys: []*Keys{testKeys(t), other2}})
	mustIntact(t, rep)
	if rep.MACsChecked != rep.Records-rep.Unkeyed {
		t.Fatalf("%d MACs checked of %d", rep.MACsChecked, rep.Records-rep.Unkeyed)
	}
	// Pinning only the second key: the checkpoints signed with the first
	// are not trusted.
	mustBroken(t, verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{other2.PublicKey()}}), "not trusted")
}

// TestOtherKeysStartANewChain: a log written with other keys (another
// daemon's, or a development daemon's, whose key is new at every start)
// cannot be verified by the keys a run gets: it is set aside whole, and a
// new chain starts, which verifies under the new key alone.
func TestOtherKeysStartANewChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t)})
	appendN(t, l, 3)
	l.Close()
	before := readLines(t, path)
	other, _ := DeriveKeys(bytes.Repeat([]byte{5}, 32))
	otherPub := other.PublicKey()
	l = openLog(t, Options{Path: path})
	if err := l.SetKeys(other); err != nil {
		t.Fatal(err)
	}
	appendN(t, l, 1)
	l.Close()
	msgs := recovered(t, path)
	if len(msgs) != 1 || !strings.Contains(msgs[0], "a new chain starts") {
		dump(t, path)
		t.Fatalf("audit-recovered events %q", msgs)
	}
	rep := verifyPath(t, path, VerifyOptions{PublicKeys: []ed25519.PublicKey{otherPub}, RequireClosed: true})
	mustIntact(t, rep)
	if rep.FirstSeq != 1 || rep.TrustedThrough != rep.LastSeq {
		t.Fatalf("report %+v", rep)
	}
	ev := evidence(t, path)
	if len(ev) != 1 {
		t.Fatalf("evidence %v", ev)
	}
	if got := readLines(t, ev[0]); !slices.EqualFunc(got[:len(before)], before, bytes.Equal) {
		t.Fatal("the evidence is not the log as it was")
	}
}

package p11front

import (
	"bufio"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/wire"
)

// C_Encrypt calls read together, with a key whose budget has room for
// fewer of them under refuse-when-spent: as many succeed as would alone,
// and the others return what a call alone returns (the combined request
// was counted at once, and all of its encryptions refused).
func TestDeferredEncryptionsPastRefusedBudget(t *testing.T) {
	ks, err := keystore.NewDev(keystore.Config{})
	if err != nil {
		t.Fatal(err)
	}
	tf := newTestFrontConfig(t, server.Config{Store: ks})
	cl := tf.dial(t)
	ss := []uint64{cl.session(), cl.session(), cl.session()}
	cl.login(ss[0])
	k := cl.generate(ss[0], ckmAESKeyGen, boolAttr(ckaToken, true), tmplAttr{ckaLabel, []byte("strict")})
	zero := make([]byte, 12)
	encInit := func(s uint64) []byte {
		return request(callEncryptInit, func(e *encoder) { e.u64(s); gcm(e, zero, nil, 128); e.u64(k) })
	}
	enc := func(s uint64) []byte {
		return request(callEncrypt, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("data")); e.u32(4096) })
	}
	// One alone opens the key on the connection.
	cl.ok(cl.raw(encInit(ss[0])))
	cl.ok(cl.raw(enc(ss[0])))

	infos, err := ks.List(key.ID{}, 0, func(*wire.KeyInfo) bool { return true })
	if err != nil || len(infos) != 1 {
		t.Fatalf("the store's keys: %d %v", len(infos), err)
	}
	kid, _ := key.IDFromBytes(infos[0].Id)
	o, err := ks.Get(kid)
	if err != nil {
		t.Fatal(err)
	}
	refuse := true
	if err := ks.SetLifecycle(o, keystore.Lifecycle{Refuse: &refuse}); err != nil {
		t.Fatal(err)
	}
	used := o.Newest().Used()
	keystore.SetFirstVersion(o, 0, time.Time{}, used, used+2) // two encryptions left

	var frames [][]byte
	for _, s := range ss {
		frames = append(frames, encInit(s), enc(s))
	}
	rvs, _ := cl.sendFrames(frames...)
	for i, rv := range rvs[:5] {
		if rv != ckrOK {
			t.Errorf("frame %d: rv %#x, want CKR_OK (as alone)", i, rv)
		}
	}
	// What a call alone returns once the budget is spent.
	cl.ok(cl.raw(encInit(ss[0])))
	if spent, _ := cl.raw(enc(ss[0])); rvs[5] != spent || spent == ckrOK {
		t.Errorf("the third encryption: rv %#x; alone, once the budget is spent: %#x", rvs[5], spent)
	}
	// Each call recorded on its own, as alone: the first, the three read
	// together, the last.
	var st []string
	sc := bufio.NewScanner(strings.NewReader(tf.logText(t)))
	for sc.Scan() {
		var r struct{ Kind, Op, Status string }
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatal(err)
		}
		if r.Kind == "request" && r.Op == "encrypt" {
			st = append(st, r.Status)
		}
	}
	if want := "OK OK OK RESOURCE_EXHAUSTED RESOURCE_EXHAUSTED"; strings.Join(st, " ") != want {
		t.Errorf("encrypt records: %v, want %s", st, want)
	}
	if u := o.Newest().Used(); u != used+2 {
		t.Errorf("%d encryptions counted, want %d", u-used, 2)
	}
}

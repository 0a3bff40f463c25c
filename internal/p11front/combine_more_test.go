package p11front

import (
	"encoding/hex"
	"net"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/server"
)

func newTestFrontLimits(t *testing.T, lim server.Limits) *testFront {
	t.Helper()
	return newTestFrontConfig(t, server.Config{Limits: lim})
}

func hmacSetup(cl *client, n int) (ss []uint64, key uint64) {
	for range n {
		ss = append(ss, cl.session())
	}
	cl.login(ss[0])
	key = cl.generate(ss[0], ckmGenericSecretGen, boolAttr(ckaToken, false), ulongAttr(ckaValueLen, 32))
	// open the key on the connection
	cl.ok(cl.call(callSignInit, func(e *encoder) { e.u64(ss[0]); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(key) }))
	cl.ok(cl.call(callSign, func(e *encoder) { e.u64(ss[0]); e.u8(1); e.array([]byte("x")); e.u32(64) }))
	return ss, key
}

func signInitReq(s, key uint64) []byte {
	return request(callSignInit, func(e *encoder) { e.u64(s); e.u32(ckmSHA256HMAC); e.u32(0xffffffff); e.u64(key) })
}
func signReq(s uint64) []byte {
	return request(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("data")); e.u32(64) })
}

// A --max-batch-ops below the number of calls read together: each call
// gets what it gets alone (they went as one combined request over the
// limit, which refused them all).
func TestDeferredCallsWithinBatchLimit(t *testing.T) {
	tf := newTestFrontLimits(t, server.Limits{MaxBatchOps: 2})
	cl := tf.dial(t)
	ss, key := hmacSetup(cl, 3)
	var frames [][]byte
	for _, s := range ss {
		frames = append(frames, signInitReq(s, key), signReq(s))
	}
	rvs, _ := cl.sendFrames(frames...)
	for i, rv := range rvs {
		if rv != ckrOK {
			t.Errorf("frame %d: rv %#x (alone: CKR_OK)", i, rv)
		}
	}
	if n := len(auditOps(t, tf, "mac")); n != 4 {
		t.Errorf("%d mac records, want 4 (the setup's and one per call)", n)
	}
}

// A frame another process writes on the connection after the owner's
// frames read together: the owner's are answered, the other's never run.
func TestOtherWriterNotCombined(t *testing.T) {
	if hx := os.Getenv("P11FRONT_TEST_CHILD_FRAME"); hx != "" {
		b, _ := hex.DecodeString(hx)
		f := os.NewFile(3, "sock")
		f.Write(b)
		os.Exit(0)
	}
	tf := newTestFront(t)
	cl := tf.dial(t)
	ss, key := hmacSetup(cl, 3)
	before := len(auditOps(t, tf, "mac"))
	var out []byte
	for _, s := range ss[:2] {
		cl.code++
		out = appendFrame(out, cl.code, signInitReq(s, key))
		cl.code++
		out = appendFrame(out, cl.code, signReq(s))
	}
	childFrame := appendFrame(nil, 999, signInitReq(ss[2], key))
	childFrame = appendFrame(childFrame, 1000, signReq(ss[2]))
	// parent writes first half, child writes its frames, parent writes the rest
	uc := cl.c.(*net.UnixConn)
	f, err := uc.File()
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	half := len(out) / 2
	if _, err := cl.c.Write(out[:half]); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(os.Args[0], "-test.run=^TestOtherWriterNotCombined$")
	cmd.Env = append(os.Environ(), "P11FRONT_TEST_CHILD_FRAME="+hex.EncodeToString(childFrame))
	cmd.ExtraFiles = []*os.File{f}
	if err := cmd.Run(); err != nil {
		t.Fatal(err)
	}
	cl.c.Write(out[half:])
	cl.c.SetReadDeadline(time.Now().Add(3 * time.Second))
	buf := make([]byte, 4096)
	n, _ := cl.c.Read(buf)
	_ = n
	time.Sleep(200 * time.Millisecond)
	after := len(auditOps(t, tf, "mac"))
	if after-before > 1 {
		t.Errorf("%d mac records after the mix (want at most the owner's first call)", after-before)
	}
	if !contains(tf.logText(t), "wrote on the connection: it is closed") {
		t.Error("the other writer's refusal is not recorded")
	}
}

// alone sends each frame by itself and returns the rvs and bodies.
func (cl *client) alone(frames ...[]byte) ([]uint64, []*decoder) {
	var rvs []uint64
	var ds []*decoder
	for _, f := range frames {
		rv, d := cl.raw(f)
		rvs = append(rvs, rv)
		ds = append(ds, d)
	}
	return rvs, ds
}

// Sequences with a call between grouped calls that changes state: the
// results read together must be those of the frames sent one by one.
func TestCombinedOrderingAsAlone(t *testing.T) {
	tf := newTestFront(t)
	simple := func(id int, s uint64) []byte { return request(id, func(e *encoder) { e.u64(s) }) }
	destroy := func(s, k uint64) []byte { return request(callDestroyObject, func(e *encoder) { e.u64(s); e.u64(k) }) }
	signUpd := func(s uint64) []byte {
		return request(callSignUpdate, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("da")) })
	}
	signFinal := func(s uint64, room uint32) []byte {
		return request(callSignFinal, func(e *encoder) { e.u64(s); e.u32(room) })
	}
	signQ := func(s uint64, room uint32) []byte {
		return request(callSign, func(e *encoder) { e.u64(s); e.u8(1); e.array([]byte("data")); e.u32(room) })
	}
	seqs := map[string]func(ss []uint64, k uint64) [][]byte{
		"close": func(ss []uint64, k uint64) [][]byte {
			return [][]byte{signInitReq(ss[0], k), signInitReq(ss[1], k), signReq(ss[0]), signReq(ss[1]),
				simple(callCloseSession, ss[0]), signReq(ss[0]), signInitReq(ss[2], k), signReq(ss[2]), signReq(ss[1])}
		},
		"destroy": func(ss []uint64, k uint64) [][]byte {
			return [][]byte{signInitReq(ss[0], k), signInitReq(ss[1], k), signInitReq(ss[2], k), signReq(ss[0]),
				destroy(ss[0], k), signReq(ss[1]), signReq(ss[2])}
		},
		"logout": func(ss []uint64, k uint64) [][]byte {
			return [][]byte{signInitReq(ss[0], k), signInitReq(ss[1], k), signReq(ss[0]),
				request(callLogout, func(e *encoder) { e.u64(ss[0]) }), signReq(ss[1])}
		},
		"multipart": func(ss []uint64, k uint64) [][]byte {
			return [][]byte{signInitReq(ss[0], k), signInitReq(ss[1], k), signReq(ss[0]), signUpd(ss[1]),
				signReq(ss[1]), signFinal(ss[1], 64), signInitReq(ss[0], k), signQ(ss[0], 0), signInitReq(ss[2], k),
				signQ(ss[2], 0), signQ(ss[0], 64), signQ(ss[2], 64)}
		},
		"closeall": func(ss []uint64, k uint64) [][]byte {
			return [][]byte{signInitReq(ss[0], k), signInitReq(ss[1], k), signReq(ss[0]),
				request(callCloseAllSessions, func(e *encoder) { e.u64(slotID) }), signReq(ss[1])}
		},
	}
	for name, seq := range seqs {
		t.Run(name, func(t *testing.T) {
			a, b := tf.dial(t), tf.dial(t)
			ssA, kA := hmacSetup(a, 3)
			ssB, kB := hmacSetup(b, 3)
			if kA != kB || ssA[2] != ssB[2] {
				t.Fatalf("handles differ: %v %d / %v %d", ssA, kA, ssB, kB)
			}
			fr := seq(ssA, kA)
			rvT, dT := a.sendFrames(fr...)
			rvA, dA := b.alone(fr...)
			for i := range fr {
				if rvT[i] != rvA[i] {
					t.Errorf("frame %d: together %#x, alone %#x", i, rvT[i], rvA[i])
					continue
				}
				if dT[i] != nil && dA[i] != nil && len(dT[i].b) != len(dA[i].b) {
					t.Errorf("frame %d: bodies differ", i)
				}
			}
		})
	}
}

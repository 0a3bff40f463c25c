package e2e_test

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// cpuTime is the processor time the process pid has used so far.
func cpuTime(t *testing.T, pid int) time.Duration {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	utime, _ := strconv.ParseInt(f[11], 10, 64) // fields 14 and 15 of stat(5)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	return time.Duration(utime+stime) * 10 * time.Millisecond // USER_HZ is 100
}

// TestDepartedClientWorkStops: a client queues a key derivation that
// would run for a minute, then 16 batches of 400 RSA signatures (a few
// seconds of one processor), and hangs up. Within a second its worker is
// gone, no other starts, its connection is gone, the daemon's processors
// are idle, and another client's status is answered at once.
func TestDepartedClientWorkStops(t *testing.T) {
	d := startDaemon(t)
	pid := d.cmd.Process.Pid
	c, err := seqpacket.Dial(ctx, d.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	r := &rawConn{t: t, c: c, buf: make([]byte, 2<<20)}
	c.SetRecvTimeout(30 * time.Second)
	res := r.one(genOp(wire.KeyType_KEY_TYPE_RSA_2048, "", uint32(wire.Usage_USAGE_SIGN)))
	if res.Status != wire.Status_STATUS_OK {
		t.Fatalf("generate: %v %q", res.Status, res.Message)
	}
	h := res.GetKey().GetHandle()

	r.sendOps(&wire.Op{Op: &wire.Op_PasswordHash{PasswordHash: &wire.PasswordHash{Password: []byte("pw"),
		Params: &wire.Argon2Params{Time: slowParams.Time, MemoryKib: slowParams.MemoryKiB, Threads: uint32(slowParams.Threads)}}}})
	waitWorker(t, d)
	sign := make([]*wire.Op, 400)
	for i := range sign {
		sign[i] = &wire.Op{Op: &wire.Op_Sign{Sign: &wire.Sign{Handle: h, Data: []byte("a message to sign")}}}
	}
	for range 16 {
		r.sendOps(sign...)
	}
	time.Sleep(100 * time.Millisecond) // the signing is under way
	workers := d.workersStarted()
	c.Close()
	left := time.Now()

	// The worker is killed.
	for {
		if _, _, w := procChildren(pid); len(w) == 0 {
			break
		}
		if time.Since(left) > time.Second {
			t.Fatalf("a KDF worker of the departed client still runs %v after it left", time.Since(left).Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond)
	}
	// Its connection ends, and another client is answered at once.
	other := d.client(t)
	for {
		asked := time.Now()
		st, err := other.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if took := time.Since(asked); took > 500*time.Millisecond {
			t.Errorf("status took %v", took)
		}
		if st.Connections == 1 {
			break
		}
		if time.Since(left) > time.Second {
			t.Fatalf("%d connections served %v after the client left, want only the one asking", st.Connections, time.Since(left).Round(time.Millisecond))
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Logf("worker and connection gone %v after the client left", time.Since(left).Round(time.Millisecond))
	// Nothing is done for it any more.
	time.Sleep(200 * time.Millisecond)
	before := cpuTime(t, pid)
	time.Sleep(time.Second)
	if used := cpuTime(t, pid) - before; used > 200*time.Millisecond {
		t.Errorf("the daemon used %v of processor time in the second after the departed client's work should have stopped", used)
	}
	if n := d.workersStarted(); n != workers {
		t.Errorf("%d KDF workers started after the client left", n-workers)
	}
	d.noChildren(t)
}

package e2e_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/wire"
)

// Floods (docs/security.md, "Limits"): one ordinary uid tries to deny
// service to everyone else, each of the ways below and all at once, while
// another ordinary uid pings the daemon and an administrator (root) comes
// to connect, ask for the status, seal and unseal. The other uid's ping
// p99 must stay within 5x of what it was before the flood, measured in
// the same test; the administrator must get through; the daemon's memory
// must stay under the documented bound; nothing may crash; and the
// requests refused for limits must be counted in the audit log.

// floodEnv makes the test binary act as one of the client processes
// below (its value names which); floodSockEnv is the daemon's socket.
const (
	floodEnv     = "KEYWARDEN_E2E_FLOOD"
	floodSockEnv = "KEYWARDEN_E2E_FLOOD_SOCK"
)

var (
	// flooderCred floods; victimCred pings. Neither is an administrator.
	flooderCred = &syscall.Credential{Uid: 4201, Gid: 4201}
	victimCred  = &syscall.Credential{Uid: 4202, Gid: 4202}
)

// floodRSSBound is the bound docs/security.md gives for the daemon's
// resident memory while one uid floods it with the default limits.
const floodRSSBound = 256 << 20

// floodAuditRate and floodAuditBurst are the documented defaults of the
// audit bytes one uid may cause per second, and at once.
const (
	floodAuditRate  = 1 << 20
	floodAuditBurst = 4 << 20
)

// longPollPayload pads each long poll of the connection flood to nearly
// the default message limit.
const longPollPayload = 250 << 10

func init() {
	mode := os.Getenv(floodEnv)
	if mode == "" {
		return
	}
	if err := floodHelper(mode, os.Getenv(floodSockEnv)); err != nil {
		fmt.Fprintf(os.Stderr, "flood helper %s: %v\n", mode, err)
		os.Exit(1)
	}
	os.Exit(0)
}

// floodHelper runs one client process: the pinger, which measures round
// trips when told to on stdin, or a flooder, which says "ready" on stdout
// once its flood is under way, floods until stdin closes, and then prints
// what it saw.
func floodHelper(mode, sock string) error {
	out := json.NewEncoder(os.Stdout)
	if mode == "pinger" {
		return pinger(sock, out)
	}
	var st floodStats
	stop := make(chan struct{})
	ready, err := startFlood(mode, sock, &st, stop)
	if err != nil {
		return err
	}
	out.Encode(ready)
	io.Copy(io.Discard, os.Stdin)
	close(stop)
	return out.Encode(st.snapshot())
}

// latency is what the pinger measured.
type latency struct {
	N      int           `json:"n"`
	P50    time.Duration `json:"p50"`
	P99    time.Duration `json:"p99"`
	Max    time.Duration `json:"max"`
	Errors int           `json:"errors"`
	Err    string        `json:"err,omitempty"`
}

func (l latency) String() string {
	return fmt.Sprintf("p50 %v p99 %v max %v over %d pings", l.P50, l.P99, l.Max, l.N)
}

// pingThink is the pause between two pings: the pinger is a client that
// asks now and then, not one that keeps a processor busy.
const pingThink = 200 * time.Microsecond

// pingBudget bounds one measurement.
const pingBudget = 15 * time.Second

func pinger(sock string, out *json.Encoder) error {
	c, err := keywarden.Dial(context.Background(), sock)
	if err != nil {
		return err
	}
	defer c.Close()
	out.Encode(latency{})
	in := bufio.NewScanner(os.Stdin)
	for in.Scan() {
		f := strings.Fields(in.Text())
		if len(f) == 0 {
			continue
		}
		switch f[0] {
		case "measure":
			n, _ := strconv.Atoi(f[1])
			out.Encode(measurePings(c, n))
		case "dial":
			// A new connection of this uid, during the flood.
			var l latency
			c2, err := keywarden.Dial(context.Background(), sock)
			if err == nil {
				err = c2.Ping(context.Background(), []byte("new"))
				c2.Close()
			}
			if err != nil {
				l.Err = err.Error()
			}
			out.Encode(l)
		}
	}
	return nil
}

func measurePings(c *keywarden.Client, n int) latency {
	payload := []byte("are you there?")
	var l latency
	warm := time.Now().Add(pingBudget / 5)
	for i := 0; i < 300 && time.Now().Before(warm); i++ {
		c.Ping(context.Background(), payload)
		time.Sleep(pingThink)
	}
	ds := make([]time.Duration, 0, n)
	// A measurement ends after a while even if the pings are slow.
	deadline := time.Now().Add(pingBudget)
	for len(ds) < n && time.Now().Before(deadline) {
		start := time.Now()
		err := c.Ping(context.Background(), payload)
		ds = append(ds, time.Since(start))
		if err != nil {
			l.Errors++
			l.Err = err.Error()
		}
		time.Sleep(pingThink)
	}
	slices.Sort(ds)
	n = len(ds)
	l.N, l.P50, l.P99, l.Max = n, ds[n/2], ds[n*99/100], ds[n-1]
	return l
}

// floodStats counts what a flooder's requests got.
type floodStats struct {
	ok, refused, other atomic.Int64
	lastOther          atomic.Value // string
}

type floodResult struct {
	OK        int64  `json:"ok"`
	Refused   int64  `json:"refused"` // RESOURCE_EXHAUSTED, or a connection the daemon refused
	Other     int64  `json:"other"`
	LastOther string `json:"last_other,omitempty"`
}

func (s *floodStats) snapshot() floodResult {
	r := floodResult{OK: s.ok.Load(), Refused: s.refused.Load(), Other: s.other.Load()}
	r.LastOther, _ = s.lastOther.Load().(string)
	return r
}

// count counts a reply by its status: the whole request's, else that of
// its first failed operation.
func (s *floodStats) count(rep *wire.Reply) {
	st := rep.Status
	if st == wire.Status_STATUS_OK {
		for _, r := range rep.Results {
			if r.Status != wire.Status_STATUS_OK {
				st = r.Status
				break
			}
		}
	}
	switch st {
	case wire.Status_STATUS_OK:
		s.ok.Add(1)
	case wire.Status_STATUS_RESOURCE_EXHAUSTED:
		s.refused.Add(1)
	default:
		s.other.Add(1)
		s.lastOther.Store(st.String() + ": " + rep.Message)
	}
}

// floodReady is what a flooder says once its flood is under way.
type floodReady struct {
	Conns        int `json:"conns"`         // connections serving
	Refused      int `json:"refused"`       // connections refused
	RequestBytes int `json:"request_bytes"` // size of one flooding request
}

func request(id uint64, ops ...*wire.Op) []byte {
	b, err := (&wire.Request{Version: wire.ProtocolVersion, Id: id, Ops: ops}).MarshalVT()
	if err != nil {
		panic(err)
	}
	return b
}

func decodeReply(b []byte) (*wire.Reply, error) {
	rep := new(wire.Reply)
	return rep, rep.UnmarshalVT(b)
}

// startFlood starts the flood of mode and returns once it is under way.
func startFlood(mode, sock string, st *floodStats, stop <-chan struct{}) (floodReady, error) {
	switch mode {
	case "rsa":
		// RSA-4096 generations, as many in flight as each connection allows.
		req := request(1, genOp(wire.KeyType_KEY_TYPE_RSA_4096, "", 0))
		return pipelineFlood(sock, 8, 64, req, st, stop)
	case "kdf":
		return kdfFlood(sock, st, stop)
	case "audit":
		return auditFlood(sock, st, stop)
	case "conns":
		return connFlood(sock, st)
	}
	return floodReady{}, fmt.Errorf("unknown mode %q", mode)
}

// pipelineFlood keeps depth copies of req in flight on each of n
// connections: each reply is answered by sending req again.
func pipelineFlood(sock string, n, depth int, req []byte, st *floodStats, stop <-chan struct{}) (floodReady, error) {
	var wg sync.WaitGroup
	var conns atomic.Int64
	for range n {
		c, err := seqpacket.Dial(context.Background(), sock)
		if err != nil {
			return floodReady{}, err
		}
		conns.Add(1)
		wg.Add(1)
		go func() {
			defer c.Close()
			sent := 0
			for range depth {
				if c.Send(req) == nil {
					sent++
				}
			}
			wg.Done()
			buf := make([]byte, 2<<20)
			for {
				m, err := c.Recv(buf)
				if err != nil {
					return
				}
				if rep, err := decodeReply(buf[:m]); err == nil {
					st.count(rep)
				}
				select {
				case <-stop:
					return
				default:
				}
				if c.Send(req) != nil {
					return
				}
			}
		}()
	}
	wg.Wait()
	return floodReady{Conns: int(conns.Load()), RequestBytes: len(req)}, nil
}

// kdfFlood hashes passwords on 4 connections, 32 at a time on each, as
// fast as the daemon answers.
func kdfFlood(sock string, st *floodStats, stop <-chan struct{}) (floodReady, error) {
	params := keywarden.Argon2Params{Time: 2, MemoryKiB: 32 << 10, Threads: 2}
	for range 4 {
		c, err := dialRetry(sock)
		if err != nil {
			return floodReady{}, err
		}
		for range 32 {
			go func() {
				for {
					select {
					case <-stop:
						return
					default:
					}
					_, err := c.HashPassword(context.Background(), []byte("hunter2"), params)
					switch {
					case err == nil:
						st.ok.Add(1)
					case errors.Is(err, keywarden.ErrResourceExhausted):
						st.refused.Add(1)
						time.Sleep(time.Millisecond)
					default:
						st.other.Add(1)
						st.lastOther.Store(err.Error())
						time.Sleep(time.Millisecond)
					}
				}
			}()
		}
	}
	time.Sleep(500 * time.Millisecond) // the queue fills
	return floodReady{Conns: 4}, nil
}

// dialRetry dials as the client library does, again while the daemon
// refuses for a limit (when this uid floods in other ways too), for up to
// 10 seconds.
func dialRetry(sock string) (*keywarden.Client, error) {
	deadline := time.Now().Add(10 * time.Second)
	for {
		c, err := keywarden.Dial(context.Background(), sock)
		if err == nil || !errors.Is(err, keywarden.ErrResourceExhausted) || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// auditBatch is a batch of operations that are all unalike: encryptions
// of nothing under 64 keys in turn, each operation a few bytes on the
// wire and a full entry (key id, algorithm, version) in the audit log.
func auditBatch() []*wire.Op {
	ops := make([]*wire.Op, wire.DefaultMaxBatchOps)
	for i := range ops {
		ops[i] = &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: uint32(1 + i%64)}}}
	}
	return ops
}

// auditFlood sends batches of unalike operations on 4 connections, one
// after another as fast as they are answered.
func auditFlood(sock string, st *floodStats, stop <-chan struct{}) (floodReady, error) {
	req := request(2, auditBatch()...)
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	for range 4 {
		c, err := seqpacket.Dial(context.Background(), sock)
		if err != nil {
			return floodReady{}, err
		}
		// Handles 1 to 64: a fresh connection numbers them from 1.
		var gens []*wire.Op
		for range 64 {
			gens = append(gens, genOp(wire.KeyType_KEY_TYPE_AES256_GCM, "", 0))
		}
		buf := make([]byte, 2<<20)
		// Again while refused for a limit (this uid may flood in other
		// ways too), for up to 10 seconds.
		for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
			if err := c.Send(request(1, gens...)); err != nil {
				return floodReady{}, err
			}
			m, err := c.Recv(buf)
			if err != nil {
				return floodReady{}, err
			}
			rep, err := decodeReply(buf[:m])
			if err == nil && rep.Status == wire.Status_STATUS_RESOURCE_EXHAUSTED && time.Now().Before(deadline) {
				continue
			}
			if err != nil || rep.Status != wire.Status_STATUS_OK || rep.Results[63].Status != wire.Status_STATUS_OK {
				return floodReady{}, fmt.Errorf("generating the keys: %v %v", err, rep)
			}
			break
		}
		wg.Add(1)
		go func() {
			defer c.Close()
			first := true
			for {
				if err := c.Send(req); err != nil {
					return
				}
				m, err := c.Recv(buf)
				if err != nil {
					return
				}
				rep, err := decodeReply(buf[:m])
				if err == nil {
					st.count(rep)
				}
				if first {
					first = false
					if err == nil && rep.Status == wire.Status_STATUS_OK && len(rep.Results) > 0 && rep.Results[0].Status != wire.Status_STATUS_OK {
						err = fmt.Errorf("encrypt: %v %s", rep.Results[0].Status, rep.Results[0].Message)
					}
					errs <- err
					wg.Done()
				}
				select {
				case <-stop:
					return
				default:
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return floodReady{}, err
		}
	}
	return floodReady{Conns: 4, RequestBytes: len(req)}, nil
}

// connFlood opens connections until the daemon refuses 64 in a row (at
// most 1100), and on each sends 8 long polls (generation watches of an
// hour) padded to nearly the message limit. The connections stay open
// until the flood ends.
func connFlood(sock string, st *floodStats) (floodReady, error) {
	poll := request(3,
		&wire.Op{Op: &wire.Op_GenerationWatch{GenerationWatch: &wire.GenerationWatch{TimeoutMs: 3600000}}},
		ping(strings.Repeat("x", longPollPayload)))
	var conns []*seqpacket.Conn
	refusedInARow, refused := 0, 0
	buf := make([]byte, 2<<20)
	for len(conns)+refused < 1100 && refusedInARow < 64 {
		c, err := seqpacket.Dial(context.Background(), sock)
		if err != nil {
			refused++
			refusedInARow++
			continue
		}
		for range 8 {
			if c.Send(poll) != nil {
				break
			}
		}
		// A refused connection is answered at once and closed; a served
		// one's polls wait (or some are refused, for a limit).
		c.SetRecvTimeout(20 * time.Millisecond)
		closed := false
		for {
			m, err := c.Recv(buf)
			if err != nil {
				closed = !errors.Is(err, seqpacket.ErrTimeout)
				break
			}
			if rep, err := decodeReply(buf[:m]); err == nil {
				st.count(rep)
				if rep.Status == wire.Status_STATUS_RESOURCE_EXHAUSTED && strings.Contains(rep.Message, "connection") {
					closed = true
				}
			}
		}
		if closed {
			c.Close()
			refused++
			refusedInARow++
			continue
		}
		refusedInARow = 0
		conns = append(conns, c)
	}
	return floodReady{Conns: len(conns), Refused: refused, RequestBytes: len(poll)}, nil
}

// shield runs every thread of process pid at a high priority (nice -10)
// with a short time slice, so that the machine's other work (tests run on
// shared machines) does not decide the measurement. On a real system
// systemd gives the daemon and each user their own cgroup, which the
// kernel shares the processors between; the test runs every process in
// one, and shields the daemon and the pinger instead. The flooders run as
// they are. Threads made later inherit the priority.
func shield(t *testing.T, pid int) {
	t.Helper()
	done := map[int]bool{}
	for range 8 {
		ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
		if err != nil {
			t.Fatal(err)
		}
		fresh := false
		for _, e := range ents {
			tid, _ := strconv.Atoi(e.Name())
			if !done[tid] {
				done[tid], fresh = true, true
				if err := unix.SchedSetAttr(tid, &unix.SchedAttr{Nice: -10, Runtime: uint64(100 * time.Microsecond)}, 0); err != nil {
					syscall.Setpriority(syscall.PRIO_PROCESS, tid, -10)
				}
			}
		}
		if !fresh {
			return
		}
	}
}

// helperProc is a running helper process.
type helperProc struct {
	t      *testing.T
	mode   string
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	lines  chan string
	stderr *syncBuffer
	done   bool
}

func startHelper(t *testing.T, sock, mode string, cred *syscall.Credential) *helperProc {
	t.Helper()
	h := &helperProc{t: t, mode: mode, lines: make(chan string, 16), stderr: &syncBuffer{}}
	h.cmd = exec.Command(binary(t))

	h.cmd.Env = append(os.Environ(), floodEnv+"="+mode, floodSockEnv+"="+sock)
	h.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	h.cmd.Stderr = h.stderr
	var err error
	if h.stdin, err = h.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	stdout, err := h.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := h.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			h.lines <- sc.Text()
		}
		close(h.lines)
	}()
	t.Cleanup(func() { h.stop(nil) })
	return h
}

// next decodes the helper's next line of output into v.
func (h *helperProc) next(v any) {
	h.t.Helper()
	select {
	case line, ok := <-h.lines:
		if !ok {
			h.cmd.Wait()
			h.t.Fatalf("helper %s exited: %s", h.mode, h.stderr)
		}
		if err := json.Unmarshal([]byte(line), v); err != nil {
			h.t.Fatalf("helper %s printed %q: %v", h.mode, line, err)
		}
	case <-time.After(2 * time.Minute):
		h.t.Fatalf("helper %s said nothing for 2 minutes: %s", h.mode, h.stderr)
	}
}

func (h *helperProc) send(cmd string) {
	h.t.Helper()
	if _, err := io.WriteString(h.stdin, cmd+"\n"); err != nil {
		h.t.Fatalf("helper %s: %v: %s", h.mode, err, h.stderr)
	}
}

// stop ends the helper (its stdin closes) and decodes its last line into
// v, if v is not nil.
func (h *helperProc) stop(v any) {
	if h.done {
		return
	}
	h.done = true
	h.stdin.Close()
	kill := time.AfterFunc(30*time.Second, func() { h.cmd.Process.Kill() })
	defer kill.Stop()
	var last string
	for line := range h.lines {
		last = line
	}
	h.cmd.Wait()
	if v != nil {
		if err := json.Unmarshal([]byte(last), v); err != nil {
			h.t.Errorf("helper %s ended with %q: %v: %s", h.mode, last, err, h.stderr)
		}
	}
}

// floodRig is a persistent daemon with an audit log, initialized and
// unsealed by root, and an ordinary uid's pinger connected to it.
type floodRig struct {
	t       *testing.T
	d       *daemon
	log     string
	pinger  *helperProc
	floods  []*helperProc
	modes   []string
	results []floodResult
	base    latency
	start   time.Time
}

func newFloodRig(t *testing.T) *floodRig {
	t.Helper()
	requireRoot(t)
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state)
	shield(t, d.cmd.Process.Pid)
	initStore(t, d, passFile)
	r := &floodRig{t: t, d: d, log: filepath.Join(state, "audit.log")}
	r.pinger = startHelper(t, sock, "pinger", victimCred)
	var ready latency
	r.pinger.next(&ready)
	shield(t, r.pinger.cmd.Process.Pid)
	r.base = r.measure()
	t.Logf("unloaded: %v", r.base)
	return r
}

func (r *floodRig) measure() latency {
	r.t.Helper()
	r.pinger.send("measure 3000")
	var l latency
	r.pinger.next(&l)
	if l.Errors > 0 {
		r.t.Errorf("the other uid's pings failed %d times: %s", l.Errors, l.Err)
	}
	return l
}

// flood starts a flooder of mode as the flooding uid and waits until its
// flood is under way.
func (r *floodRig) flood(mode string) floodReady {
	r.t.Helper()
	if r.start.IsZero() {
		r.start = time.Now()
	}
	h := startHelper(r.t, r.d.sock, mode, flooderCred)
	r.floods = append(r.floods, h)
	r.modes = append(r.modes, mode)
	var ready floodReady
	h.next(&ready)
	r.t.Logf("%s flood under way: %+v", mode, ready)
	return ready
}

// stopFloods stops the flooders and keeps what they saw.
func (r *floodRig) stopFloods() {
	r.t.Helper()
	for _, h := range r.floods {
		var fr floodResult
		h.stop(&fr)
		r.t.Logf("%s flooder saw %+v", h.mode, fr)
		r.results = append(r.results, fr)
	}
	r.floods = nil
}

// settle waits until the daemon is done with the floods' work: it uses
// less than a tenth of a processor (at most 10 seconds).
func (r *floodRig) settle() {
	cpu := func() int64 {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", r.d.cmd.Process.Pid))
		if err != nil {
			return 0
		}
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		u, _ := strconv.ParseInt(f[11], 10, 64)
		s, _ := strconv.ParseInt(f[12], 10, 64)
		return u + s // clock ticks, 100 a second
	}
	for deadline := time.Now().Add(10 * time.Second); time.Now().Before(deadline); {
		before := cpu()
		time.Sleep(200 * time.Millisecond)
		if cpu()-before < 2 {
			return
		}
	}
}

// checkLatency: the other uid's ping p99 stays within 5x of its unloaded
// value. Other work on the machine can spoil one measurement: once, the
// test stops the floods, measures the unloaded p99 again, starts the
// floods again and measures again.
func (r *floodRig) checkLatency() {
	r.t.Helper()
	for attempt := 1; ; attempt++ {
		l := r.measure()
		r.t.Logf("during the flood: %v (%.1fx the unloaded p99)", l, float64(l.P99)/float64(r.base.P99))
		if l.P99 <= 5*r.base.P99 {
			return
		}
		// On a 2-vCPU virtual machine, sixteen runs of this test with
		// the daemon as it is and as it was before the fronts were split
		// from the core measured 1.8x to 5.8x, two of them above 5x (one
		// run, twice); an unfair daemon measured 7x to 18x, in every
		// attempt. So one attempt in three within the bound passes.
		if attempt == 3 {
			r.t.Errorf("the other uid's ping p99 is %v during the flood, more than 5x its unloaded %v", l.P99, r.base.P99)
			return
		}
		r.t.Logf("measuring both again")
		modes := r.modes
		r.modes = nil
		r.stopFloods()
		r.settle()
		r.base = r.measure()
		r.t.Logf("unloaded: %v", r.base)
		for _, mode := range modes {
			r.flood(mode)
		}
	}
}

// checkOtherUser: the other uid can still make a new connection.
func (r *floodRig) checkOtherUser() {
	r.t.Helper()
	r.pinger.send("dial")
	var l latency
	r.pinger.next(&l)
	if l.Err != "" {
		r.t.Errorf("the other uid cannot connect during the flood: %s", l.Err)
	}
}

// checkAdmin: an administrator (root) connects, asks for the status,
// seals and unseals, promptly, during the flood.
func (r *floodRig) checkAdmin() {
	r.t.Helper()
	start := time.Now()
	c, err := keywarden.Dial(ctx, r.d.sock)
	if err != nil {
		r.t.Errorf("the administrator cannot connect during the flood: %v", err)
		return
	}
	defer c.Close()
	if _, err := c.Status(ctx); err != nil {
		r.t.Errorf("status during the flood: %v", err)
		return
	}
	if err := c.Admin().Seal(ctx); err != nil {
		r.t.Errorf("seal during the flood: %v", err)
		return
	}
	unseal := time.Now()
	if err := c.Admin().Unseal(ctx, []byte(testPass), nil); err != nil {
		r.t.Errorf("unseal during the flood: %v", err)
		return
	}
	took := time.Since(unseal)
	r.t.Logf("administrator: connect and status %v, unseal %v", unseal.Sub(start).Round(time.Millisecond), took.Round(time.Millisecond))
	// Unsealing here takes some milliseconds of Argon2id; the bound
	// leaves room for a loaded machine, not for a queue of derivations.
	if took > 10*time.Second {
		r.t.Errorf("unseal took %v during the flood", took)
	}
}

// checkResources: the daemon's peak resident memory is under the
// documented bound (its threads and descriptors are logged).
func (r *floodRig) checkResources() {
	r.t.Helper()
	pid := r.d.cmd.Process.Pid
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		r.t.Errorf("the daemon is gone: %v", err)
		return
	}
	field := func(name string) int64 {
		for line := range strings.Lines(string(b)) {
			if rest, ok := strings.CutPrefix(line, name+":"); ok {
				f := strings.Fields(rest)
				n, _ := strconv.ParseInt(f[0], 10, 64)
				if len(f) > 1 && f[1] == "kB" {
					n <<= 10
				}
				return n
			}
		}
		return -1
	}
	fds, _ := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	hwm := field("VmHWM")
	r.t.Logf("daemon: peak RSS %d MiB, RSS %d MiB, %d threads, %d descriptors",
		hwm>>20, field("VmRSS")>>20, field("Threads"), len(fds))
	if hwm > floodRSSBound {
		r.t.Errorf("the daemon's peak RSS is %d MiB, over the documented %d MiB", hwm>>20, floodRSSBound>>20)
	}
}

// during runs every check that must hold while the flood goes on.
func (r *floodRig) during() {
	r.t.Helper()
	r.checkLatency()
	r.checkOtherUser()
	r.checkAdmin()
	r.checkResources()
}

// end stops the floods and checks that the daemon serves on. It returns
// what the flooders saw.
func (r *floodRig) end() []floodResult {
	r.t.Helper()
	r.stopFloods()
	r.d.healthy(r.t)
	r.checkResources()
	return r.results
}

// auditLines returns the audit log's records, from every file of the
// series (audit.log.SEQ, rotated, then audit.log), with the length of
// each line.
func (r *floodRig) auditLines() ([]*audit.Record, []int) {
	r.t.Helper()
	files, err := filepath.Glob(r.log + ".[0-9]*")
	if err != nil {
		r.t.Fatal(err)
	}
	slices.Sort(files)
	var recs []*audit.Record
	var sizes []int
	for _, f := range append(files, r.log) {
		b, err := os.ReadFile(f)
		if err != nil {
			r.t.Fatal(err)
		}
		for line := range bytes.Lines(b) {
			if len(bytes.TrimRight(line, "\x00")) == 0 {
				break // the zeros ahead of the records
			}
			rec, err := audit.ParseRecord(line)
			if err != nil {
				r.t.Fatalf("audit log %s: %v in %.200s", f, err, line)
			}
			recs = append(recs, rec)
			sizes = append(sizes, len(line))
		}
	}
	return recs, sizes
}

// checkRefusalsCounted: the requests refused for limits are counted in a
// "limits" event that names the flooding uid.
func (r *floodRig) checkRefusalsCounted() {
	r.t.Helper()
	want := fmt.Sprintf("uid %d", flooderCred.Uid)
	deadline := time.Now().Add(5 * time.Second)
	for {
		recs, _ := r.auditLines()
		for _, e := range events(recs, "limits") {
			if strings.Contains(e.Msg, want) {
				r.t.Logf("audit event: %s", e.Msg)
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Errorf("no \"limits\" event in the audit log counts the refusals of %s", want)
			return
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// TestFloodConnections: one uid opens every connection it can, each with
// long polls of a quarter MiB.
func TestFloodConnections(t *testing.T) {
	r := newFloodRig(t)
	ready := r.flood("conns")
	r.during()
	r.end()
	if ready.Refused == 0 {
		t.Errorf("the flooder had all of its %d connections", ready.Conns)
	}
	r.checkRefusalsCounted()
}

// TestFloodKDF: one uid keeps the Argon2id queue full with password
// hashes.
func TestFloodKDF(t *testing.T) {
	r := newFloodRig(t)
	r.flood("kdf")
	r.during()
	r.end()
}

// TestFloodRSA: one uid keeps RSA-4096 generations in flight on several
// connections.
func TestFloodRSA(t *testing.T) {
	r := newFloodRig(t)
	r.flood("rsa")
	r.during()
	var refused int64
	for _, res := range r.end() {
		refused += res.Refused
	}
	if refused == 0 {
		t.Errorf("none of the flooder's generations was refused")
	}
	r.checkRefusalsCounted()
}

// TestFloodAuditBatches: one uid sends batches of unalike operations as
// fast as they are answered. Each record stays within twice its request
// (plus the fixed part of a record), and the log grows by no more than
// the uid's audit rate allows.
func TestFloodAuditBatches(t *testing.T) {
	r := newFloodRig(t)
	ready := r.flood("audit")
	r.during()
	r.end()
	took := time.Since(r.start)
	recs, sizes := r.auditLines()
	var total, largest, n, over int
	for i, rec := range recs {
		if rec.Kind != audit.KindRequest || rec.Caller.UID != flooderCred.Uid {
			continue
		}
		size := sizes[i]
		total += size
		n++
		largest = max(largest, size)
		if rec.Op == audit.OpBatch && size > 2*ready.RequestBytes+auditRecordFixed {
			over++
		}
	}
	if over > 0 {
		t.Errorf("%d records larger than twice their request of %d bytes plus %d (the largest: %d bytes)",
			over, ready.RequestBytes, auditRecordFixed, largest)
	}
	allowed := int(took.Seconds()*floodAuditRate) + floodAuditBurst + 2*(2*ready.RequestBytes+auditRecordFixed)
	t.Logf("flooder: %d records, %d bytes (largest %d) in %v; its requests are %d bytes; its rate allows %d",
		n, total, largest, took.Round(time.Millisecond), ready.RequestBytes, allowed)
	if total > allowed {
		t.Errorf("the flooder made %d bytes of audit records in %v, more than its rate allows (%d)", total, took.Round(time.Millisecond), allowed)
	}
	r.checkRefusalsCounted()
}

// auditRecordFixed bounds the part of a record that does not depend on
// the request: header, caller (with its executable and cgroup), chain
// hash and MAC.
const auditRecordFixed = 2 << 10

// TestFloodAll: one uid floods every way above at once.
func TestFloodAll(t *testing.T) {
	r := newFloodRig(t)
	// The floods that need a few requests to start go first: the others
	// take every request this uid may have in flight.
	for _, mode := range []string{"audit", "kdf", "rsa", "conns"} {
		r.flood(mode)
	}
	r.during()
	r.end()
	r.checkRefusalsCounted()
}

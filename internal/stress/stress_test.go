package stress

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"math/rand/v2"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	keywarden "github.com/keywarden/keywarden"
)

// TestLifecycleStress races the lifecycle operations (seal, unseal,
// master-key rotation, backup, restore, generation bumps) against several
// clients' traffic (creations, destroys, key rotations, encryptions,
// signatures, MACs, batches, streaming sessions, ephemeral keys), round
// after round, and checks after each round, unsealed and quiet: every key
// a client was told it created is there and works, and so does every
// result it was given (ciphertexts decrypt, signatures verify), no
// destroyed key came back, the store holds no key that no client could
// have made, the daemon's counts (status, per-user quota) equal what the
// store holds, nothing is quarantined, no request panicked. During each
// round: no key operation succeeds while the daemon is sealed, and no
// error says a key was destroyed that no one destroyed. The race detector
// (go test -race) watches both sides.
//
// It runs for -stress.duration, or $KEYWARDEN_STRESS (e.g. 10m); by
// default briefly. Each round's schedule comes from its seed: a failure
// prints the command that replays from that round.
func TestLifecycleStress(t *testing.T) {
	dur := stressDuration(t)
	seed := *seedFlag
	if seed == 0 {
		seed = uint64(time.Now().UnixNano())
	}
	t.Logf("stress: %v, seed %d (race detector: %v)", dur, seed, raceEnabled)
	d := startDaemon(t, maxKeys)
	h := &harness{t: t, d: d, m: newModel()}
	h.makeBase(baseKeys)
	deadline := time.Now().Add(dur)
	rounds := 0
	for r := uint64(0); rounds == 0 || time.Now().Before(deadline); r++ {
		rs := seed + r
		h.round(rounds, rs)
		rounds++
		if t.Failed() {
			t.Fatalf("round %d failed; replay from it with: go test -race ./internal/stress -run 'TestLifecycleStress$' -stress.seed=%d -stress.duration=%v",
				rounds-1, rs, dur)
		}
	}
	t.Logf("stress: %d rounds, %d keys at the end, %d events", rounds, len(h.m.all()), h.m.clk.n.Load())
}

var (
	durationFlag = flag.Duration("stress.duration", 0, "how long TestLifecycleStress runs (default: $KEYWARDEN_STRESS, else 30s with -race, 8s without)")
	seedFlag     = flag.Uint64("stress.seed", 0, "the seed of TestLifecycleStress's first round (default: from the clock)")
)

func stressDuration(t *testing.T) time.Duration {
	if *durationFlag > 0 {
		return *durationFlag
	}
	if v := os.Getenv("KEYWARDEN_STRESS"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			t.Fatalf("KEYWARDEN_STRESS=%q: %v", v, err)
		}
		return d
	}
	if testing.Short() {
		return 3 * time.Second
	}
	if raceEnabled {
		return 30 * time.Second
	}
	return 8 * time.Second
}

const (
	maxKeys   = 2000 // the per-user quota; every client is root here
	baseKeys  = 300  // more than one re-wrap batch
	workers   = 3    // client connections
	perWorker = 2    // goroutines sharing each connection
	ownMax    = 12   // keys one goroutine keeps
)

type harness struct {
	t *testing.T
	d *daemon
	m *model
	w windows

	mu       sync.Mutex
	findings []string
	events   []string // the administrators' operations of the round
}

// event notes an administrator's operation for the report of a failed
// round.
func (h *harness) event(format string, args ...any) {
	s0, n0 := h.w.snap()
	h.mu.Lock()
	defer h.mu.Unlock()
	h.events = append(h.events, fmt.Sprintf("%6d [sealed %v, window %d] ", h.m.clk.tick(), s0, n0)+fmt.Sprintf(format, args...))
}

func (h *harness) finding(format string, args ...any) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.findings) < 50 {
		h.findings = append(h.findings, fmt.Sprintf(format, args...))
	}
}

// windows knows when the daemon is surely sealed: from a seal's (or a
// restore's) acknowledgement until the next unseal is sent, if no unseal
// was under way, or sent, while the seal was (another administrator's
// unseal may reach the daemon after the seal, and be answered before the
// seal's answer is read). A key operation that begins and ends inside one
// such window must fail.
type windows struct {
	mu        sync.Mutex
	unsealing int
	unseals   uint64 // unseals sent
	sealed    bool
	n         uint64
}

// sealSent is called before a seal (or a restore) is sent; what it
// returns goes to sealAcked.
func (w *windows) sealSent() uint64 {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.unseals
}

func (w *windows) snap() (bool, uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.sealed, w.n
}

func (w *windows) sealAcked(sent uint64) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.unsealing == 0 && w.unseals == sent && !w.sealed {
		w.sealed = true
		w.n++
	}
}

func (w *windows) unsealStart() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.unsealing++
	w.unseals++
	if w.sealed {
		w.sealed = false
		w.n++
	}
}

func (w *windows) unsealEnd() {
	w.mu.Lock()
	w.unsealing--
	w.mu.Unlock()
}

// keyOp runs an operation that needs a key, and reports it if it
// succeeded inside a sealed window.
func (h *harness) keyOp(name string, f func() error) error {
	s0, n0 := h.w.snap()
	err := f()
	s1, n1 := h.w.snap()
	if err == nil && s0 && s1 && n0 == n1 {
		h.finding("%s succeeded while the daemon was sealed (sealed window %d, at event %d)", name, n0, h.m.clk.tick())
	}
	return err
}

// unexpected reports errors that no interleaving explains: an internal
// error (a panic, a quarantined record), or a transport failure of a
// client that did not go away.
func (h *harness) unexpected(ctx context.Context, op string, err error) {
	if err == nil || ctx.Err() != nil {
		return
	}
	var e *keywarden.Error
	if !errors.As(err, &e) {
		h.finding("%s: transport failure: %v", op, err)
		return
	}
	if e.Code == keywarden.CodeInternal {
		h.finding("%s: %v", op, err)
	}
}

// unknownOutcome reports whether err leaves open whether the operation
// happened: the daemon was sealed under it, or the client went away.
func unknownOutcome(ctx context.Context, err error) bool {
	if ctx.Err() != nil {
		return true
	}
	var e *keywarden.Error
	return !errors.As(err, &e) || e.Code == keywarden.CodeUnavailable
}

var aad = []byte("stress")

// makeBase creates the base keys: persistent AES keys that no client
// destroys, enough for a master-key rotation to re-wrap in several
// batches.
func (h *harness) makeBase(n int) {
	ctx := context.Background()
	var wg sync.WaitGroup
	for g := range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := h.d.dial(h.t)
			defer c.Close()
			for i := g; i < n; i += 4 {
				start := h.m.clk.tick()
				k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM})
				if err != nil {
					h.finding("base key %d: %v", i, err)
					return
				}
				r := &keyRec{id: k.ID(), typ: keywarden.AES256GCM, base: true, createStart: start, acked: h.m.clk.tick()}
				pt := []byte(fmt.Sprintf("base %d", i))
				ct, err := k.Encrypt(ctx, pt, aad)
				if err != nil {
					h.finding("base key %d: encrypt: %v", i, err)
					return
				}
				r.samples = []sample{{at: h.m.clk.tick(), ct: ct, aad: aad, pt: pt}}
				h.m.acked(r)
				k.Close(ctx)
			}
		}()
	}
	wg.Wait()
	if len(h.findings) > 0 {
		h.t.Fatalf("making the base keys: %v", h.findings)
	}
}

// round runs one round: traffic, lifecycle operations, then the checks.
func (h *harness) round(n int, seed uint64) {
	t := h.t
	rng := rand.New(rand.NewPCG(seed, 0x5eed))
	ctx, cancel := context.WithCancel(context.Background())
	length := time.Duration(800+rng.IntN(1600)) * time.Millisecond

	// Traffic: each goroutine owns some of the keys clients made.
	var owned [workers * perWorker][]*keyRec
	i := 0
	for _, r := range h.m.all() {
		if !r.base {
			owned[i%len(owned)] = append(owned[i%len(owned)], r)
			i++
		}
	}
	var base []*keyRec
	for _, r := range h.m.all() {
		if r.base {
			base = append(base, r)
		}
	}
	var wg sync.WaitGroup
	var clients []*keywarden.Client
	for w := range workers {
		c := h.d.dial(t)
		clients = append(clients, c)
		for g := range perWorker {
			tw := &trafficWorker{h: h, c: c, rng: rand.New(rand.NewPCG(seed, uint64(w*perWorker+g+1))), base: base}
			for _, r := range owned[w*perWorker+g] {
				tw.own = append(tw.own, &ownedKey{rec: r})
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				tw.run(ctx)
			}()
		}
	}

	// Lifecycle: a schedule from the seed, and on some rounds a rival
	// administrator sealing, unsealing and bumping at the same time.
	lc := &lifecycle{h: h, c: h.d.dial(t), rng: rand.New(rand.NewPCG(seed, 0)), base: base}
	defer lc.c.Close()
	rival := rng.IntN(3) == 0
	var rwg sync.WaitGroup
	if rival {
		rc := h.d.dial(t)
		defer rc.Close()
		rl := &lifecycle{h: h, c: rc, rng: rand.New(rand.NewPCG(seed, 99)), base: base}
		rwg.Add(1)
		go func() {
			defer rwg.Done()
			rl.rival(ctx)
		}()
	}
	steps := 3 + rng.IntN(6)
	end := time.Now().Add(length)
	var plan []string
	for range steps {
		if time.Now().After(end) {
			break
		}
		plan = append(plan, lc.step(ctx))
		time.Sleep(time.Duration(rng.IntN(120)) * time.Millisecond)
	}
	time.Sleep(time.Until(end))
	cancel()
	rwg.Wait()
	wg.Wait()
	for _, c := range clients {
		c.Close()
	}
	h.check(n, seed, plan, rival, lc.restore)
}

// check brings the daemon to rest, unsealed, and compares it with the
// model.
func (h *harness) check(n int, seed uint64, plan []string, rival bool, rs *restoreInfo) {
	t := h.t
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := h.d.dial(t)
	defer c.Close()
	fail := func(format string, args ...any) { h.finding(format, args...) }

	h.w.unsealStart()
	err := c.Admin().Unseal(ctx, []byte(passphrase), nil)
	h.w.unsealEnd()
	if err != nil && !errors.Is(err, keywarden.ErrAlreadyExists) {
		fail("unseal after the round: %v", err)
	}
	// A master-key rotation finishes its re-wrap.
	deadline := time.Now().Add(time.Minute)
	var st *keywarden.ServerStatus
	for {
		st, err = c.Status(ctx)
		if err != nil {
			fail("status: %v", err)
			break
		}
		if !st.Seal.Rotating || time.Now().After(deadline) {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if st != nil && st.Seal.Rotating {
		fail("the master-key rotation does not finish: %d of %d re-wrapped, sealed %v", st.Seal.RotationDone, st.Seal.RotationTotal, st.Seal.Sealed)
	}
	// The traffic's connections are gone, and their ephemeral keys.
	deadline = time.Now().Add(30 * time.Second)
	for {
		p, live := h.d.keys.Counts()
		if p == live || time.Now().After(deadline) {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}

	actual, err := h.d.records()
	if err != nil {
		fail("reading the store: %v", err)
	}
	problems, adopted := h.m.reconcile(actual, rs)
	for _, p := range problems {
		fail("%s", p)
	}
	for _, id := range adopted {
		k, err := c.OpenID(ctx, id)
		if err != nil {
			fail("key %s, in the store, does not open: %v", id, err)
			continue
		}
		h.m.acked(&keyRec{id: id, typ: k.Type(), acked: h.m.clk.tick()})
		k.Close(ctx)
	}
	for _, name := range h.m.takeRefusedNames() {
		if h.d.keys.NameTaken(0, name) {
			fail("key %q exists though its creation was refused", name)
		}
	}
	// Every key works, and every result given with it still checks.
	for _, r := range h.m.all() {
		h.usable(ctx, c, r)
	}
	st, err = c.Status(ctx)
	if err != nil {
		fail("status: %v", err)
	} else {
		p, live := h.d.keys.Counts()
		if int(st.Keys) != len(actual) || p != len(actual) || live != len(actual) || h.d.keys.Owned(0) != len(actual) {
			fail("counts: the store holds %d keys; status says %d, the key store %d persistent and %d live, uid 0 owns %d",
				len(actual), st.Keys, p, live, h.d.keys.Owned(0))
		}
		if st.Seal.Quarantined != 0 || h.d.keys.Quarantined() != 0 {
			fail("%d records quarantined", st.Seal.Quarantined)
		}
		if st.Seal.Sealed || st.Seal.Rotating {
			fail("after the round: sealed %v, rotating %v", st.Seal.Sealed, st.Seal.Rotating)
		}
	}
	lines, bad := h.d.logs.take()
	for _, l := range bad {
		fail("daemon log: %s", l)
	}
	h.mu.Lock()
	findings, events := h.findings, h.events
	h.findings, h.events = nil, nil
	h.mu.Unlock()
	if len(findings) > 0 {
		t.Errorf("round %d (seed %d, rival administrator %v), lifecycle steps %v: %d findings:\n  %s",
			n, seed, rival, plan, len(findings), strings.Join(findings, "\n  "))
		if len(lines) > 40 {
			lines = lines[len(lines)-40:]
		}
		t.Logf("daemon warnings and errors of the round:\n  %s", strings.Join(lines, "\n  "))
		t.Logf("administrators' operations of the round:\n  %s", strings.Join(events, "\n  "))
		return
	}
	if testing.Verbose() {
		t.Logf("round %d (seed %d): %v, rival %v, %d keys", n, seed, plan, rival, len(actual))
	}
}

// usable opens r's key, uses it, and checks the results given with it.
func (h *harness) usable(ctx context.Context, c *keywarden.Client, r *keyRec) {
	k, err := c.OpenID(ctx, r.id)
	if err != nil {
		h.finding("key %s (%s, acknowledged at event %d): does not open: %v", r.id, r.typ, r.acked, err)
		return
	}
	defer k.Close(ctx)
	msg := []byte("check")
	switch k.Type() {
	case keywarden.AES256GCM:
		ct, err := k.Encrypt(ctx, msg, aad)
		if err == nil {
			var pt []byte
			pt, err = k.Decrypt(ctx, ct, aad)
			if err == nil && !bytes.Equal(pt, msg) {
				err = errors.New("decrypts to something else")
			}
		}
		if err != nil {
			h.finding("key %s: encrypt and decrypt: %v", r.id, err)
		}
	case keywarden.Ed25519:
		sig, err := k.SignMessageContext(ctx, msg, nil)
		if err == nil {
			err = k.Verify(ctx, msg, sig, nil)
		}
		if err != nil {
			h.finding("key %s: sign and verify: %v", r.id, err)
		}
	case keywarden.HMACSHA256:
		tag, err := k.MAC(ctx, msg)
		if err == nil {
			err = k.VerifyMAC(ctx, msg, tag)
		}
		if err != nil {
			h.finding("key %s: MAC: %v", r.id, err)
		}
	}
	for _, s := range h.m.samplesOf(r) {
		var err error
		switch {
		case s.ct != nil:
			var pt []byte
			pt, err = k.Decrypt(ctx, s.ct, s.aad)
			if err == nil && !bytes.Equal(pt, s.pt) {
				err = errors.New("decrypts to something else")
			}
		case k.Type() == keywarden.Ed25519:
			err = k.Verify(ctx, s.pt, s.sig, nil)
		default:
			err = k.VerifyMAC(ctx, s.pt, s.sig)
		}
		if err != nil {
			h.finding("key %s (%s): a result given at event %d no longer checks: %v", r.id, r.typ, s.at, err)
		}
	}
}

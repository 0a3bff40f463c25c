package random

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"sync"
	"testing"
	"time"
)

// clones returns two sources in the same state, as two VMs restored from
// one snapshot have: same daemon key, kernels that return the same bytes.
// hw gives each clone's CPU random instruction (nil: none).
func clones(t *testing.T, hw [2]func([]byte) bool) [2]*Source {
	t.Helper()
	var out [2]*Source
	for i := range out {
		h := hw[i]
		if h == nil {
			h = func([]byte) bool { return false }
		}
		out[i] = New(Config{Kernel: StaleKernel(1), Hardware: h, Wait: 20 * time.Millisecond})
	}
	return out
}

func read(t *testing.T, s *Source, n int) []byte {
	t.Helper()
	b := make([]byte, n)
	if err := s.Read(b); err != nil {
		t.Fatalf("Read: %v", err)
	}
	return b
}

func cpuBytes(seed byte) func([]byte) bool {
	return func(b []byte) bool {
		for i := range b {
			b[i] = seed + byte(i)
		}
		return true
	}
}

// TestStaleClonesRepeat checks the model: two clones whose kernels repeat
// each other repeat each other too until something tells them apart.
func TestStaleClonesRepeat(t *testing.T) {
	c := clones(t, [2]func([]byte) bool{})
	if a, b := read(t, c[0], 12), read(t, c[1], 12); !bytes.Equal(a, b) {
		t.Fatalf("the model is wrong: clones in one state differ (%x, %x)", a, b)
	}
}

// TestChangeWithoutConfirmationRefuses: after a change nothing confirms
// (no CPU instruction, no unique input, the kernel not re-seeded), every
// read refuses rather than hand both clones the same bytes.
func TestChangeWithoutConfirmationRefuses(t *testing.T) {
	c := clones(t, [2]func([]byte) bool{})
	for _, s := range c {
		st := s.Change(Unconfirmed, "", []byte("generation 1"))
		if st.Level != Unconfirmed || st.Epoch != 1 {
			t.Fatalf("status after an unconfirmed change: %+v", st)
		}
		b := make([]byte, 12)
		start := time.Now()
		if err := s.Read(b); !errors.Is(err, ErrNotFresh) {
			t.Fatalf("Read after an unconfirmed change: %v, want ErrNotFresh", err)
		}
		if d := time.Since(start); d < 20*time.Millisecond {
			t.Errorf("Read gave up after %v, before its wait", d)
		}
		if err := s.ReadNow(b); !errors.Is(err, ErrNotFresh) {
			t.Fatalf("ReadNow: %v", err)
		}
		if s.Fresh() || s.Await() == nil || s.AwaitKernel() == nil {
			t.Fatal("the source says it is fresh")
		}
		s.ReadAny(b) // allowed: for values whose repetition is harmless
	}
}

// TestCloneUniqueInputs: each input that tells clones apart makes their
// bytes differ, while their kernels still repeat each other.
func TestCloneUniqueInputs(t *testing.T) {
	t.Run("cpu", func(t *testing.T) {
		c := clones(t, [2]func([]byte) bool{cpuBytes(1), cpuBytes(2)})
		for _, s := range c {
			if st := s.Change(Unconfirmed, "", []byte("generation 1")); st.Level != Unique {
				t.Fatalf("CPU bytes did not make the change unique: %+v", st)
			}
			if s.AwaitKernel() == nil {
				t.Fatal("the kernel counts as re-seeded")
			}
		}
		if a, b := read(t, c[0], 32), read(t, c[1], 32); bytes.Equal(a, b) {
			t.Fatalf("both clones read %x", a)
		}
	})
	t.Run("distrusted cpu", func(t *testing.T) {
		c := clones(t, [2]func([]byte) bool{cpuBytes(1), cpuBytes(2)})
		c[0].cfg.DistrustHardware = true
		if st := c[0].Change(Unconfirmed, "", nil); st.Level != Unconfirmed {
			t.Fatalf("distrusted CPU bytes confirmed the change: %+v", st)
		}
	})
	t.Run("generation id", func(t *testing.T) {
		c := clones(t, [2]func([]byte) bool{})
		c[0].Change(Unique, "a new VM generation ID", []byte("VM generation ID a -> b"))
		c[1].Change(Unique, "a new VM generation ID", []byte("VM generation ID a -> c"))
		if a, b := read(t, c[0], 12), read(t, c[1], 12); bytes.Equal(a, b) {
			t.Fatalf("both clones read %x", a)
		}
	})
	t.Run("kernel", func(t *testing.T) {
		c := clones(t, [2]func([]byte) bool{})
		for _, s := range c {
			s.Change(Unconfirmed, "", []byte("generation 1"))
		}
		// Clone 1's kernel re-seeds: its getrandom no longer repeats
		// clone 0's.
		c[1].cfg.Kernel = func(b []byte) { rand.Read(b) }
		for _, s := range c {
			if !s.Confirm(1, Kernel, "the kernel re-seeded") {
				t.Fatal("Confirm refused")
			}
			if err := s.AwaitKernel(); err != nil {
				t.Fatal(err)
			}
		}
		if a, b := read(t, c[0], 12), read(t, c[1], 12); bytes.Equal(a, b) {
			t.Fatalf("both clones read %x", a)
		}
	})
}

// TestReadWaitsForConfirmation: a read during the wait returns as soon as
// a confirmation arrives.
func TestReadWaitsForConfirmation(t *testing.T) {
	s := New(Config{Hardware: func([]byte) bool { return false }, Wait: time.Minute})
	st := s.Change(Unconfirmed, "", nil)
	done := make(chan error, 1)
	go func() { done <- s.Read(make([]byte, 16)) }()
	select {
	case err := <-done:
		t.Fatalf("Read returned before the confirmation: %v", err)
	case <-time.After(20 * time.Millisecond):
	}
	if s.Confirm(st.Epoch+1, Kernel, "wrong epoch") {
		t.Fatal("a confirmation of another epoch was taken")
	}
	s.Confirm(st.Epoch, Unique, "test")
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if s.Confirm(st.Epoch, Unique, "again") {
		t.Fatal("a confirmation at the same level re-keyed")
	}
	stop := make(chan struct{})
	if !s.WaitFresh(stop) {
		t.Fatal("WaitFresh")
	}
	s.Change(Unconfirmed, "", nil)
	close(stop)
	if s.WaitFresh(stop) {
		t.Fatal("WaitFresh said fresh")
	}
}

// TestKeyIsInEveryByte: every byte goes through the daemon's key, so what
// the kernel returns does not show through, and two sources with
// different keys give different bytes for the same kernel bytes.
func TestKeyIsInEveryByte(t *testing.T) {
	zeros := func(b []byte) { clear(b) }
	none := func([]byte) bool { return false }
	a := New(Config{Kernel: zeros, Hardware: none})
	b := New(Config{Kernel: zeros, Hardware: none}) // the same key: a clone
	for _, n := range []int{1, 12, 16, 20, 32, 100} {
		if x := read(t, a, n); bytes.Equal(x, make([]byte, n)) {
			t.Fatalf("%d bytes: the kernel's zeros show through", n)
		}
	}
	a.Change(Unique, "test", []byte("a"))
	b.Change(Unique, "test", []byte("b"))
	for _, n := range []int{1, 12, 16, 20, 32, 100} {
		if x, y := read(t, a, n), read(t, b, n); bytes.Equal(x, y) {
			t.Fatalf("%d bytes: sources re-keyed apart give the same bytes %x", n, x)
		}
	}
}

// TestReadsDiffer: with the real kernel, reads never repeat.
func TestReadsDiffer(t *testing.T) {
	s := New(Config{})
	seen := map[string]bool{}
	for range 1000 {
		b := read(t, s, 12)
		if seen[string(b)] {
			t.Fatalf("Read returned %x twice", b)
		}
		seen[string(b)] = true
	}
}

func TestConcurrentReadsAndChanges(t *testing.T) {
	s := New(Config{})
	var wg sync.WaitGroup
	var mu sync.Mutex
	seen := map[[16]byte]bool{}
	for range 4 {
		wg.Go(func() {
			for range 500 {
				var b [16]byte
				if err := s.Read(b[:]); err != nil {
					continue
				}
				mu.Lock()
				if seen[b] {
					t.Errorf("value %x twice", b)
				}
				seen[b] = true
				mu.Unlock()
			}
		})
	}
	for i := range 50 {
		st := s.Change(Unconfirmed, "", binary.BigEndian.AppendUint64(nil, uint64(i)))
		s.Confirm(st.Epoch, Kernel, "test")
	}
	wg.Wait()
}

func TestHardware(t *testing.T) {
	name := HardwareName()
	t.Logf("this CPU: %s", name)
	var a, b [32]byte
	if !Hardware(a[:]) {
		if hwName() != "" && !bytes.Contains([]byte(name), []byte("failed")) {
			t.Fatalf("the CPU has %s but Hardware failed", hwName())
		}
		t.Skip("no random instruction here")
	}
	Hardware(b[:])
	if a == b || a == [32]byte{} {
		t.Fatalf("the CPU's random instruction returned %x then %x", a, b)
	}
}

// TestSealLayout: Seal writes what the standard library's GCM with random
// nonces writes, nonce ‖ ciphertext ‖ tag.
func TestSealLayout(t *testing.T) {
	blk, _ := aes.NewCipher(make([]byte, 32))
	gcm, _ := cipher.NewGCM(blk)
	ct, err := Seal(gcm, []byte("hdr"), []byte("plaintext"), []byte("aad"))
	if err != nil {
		t.Fatal(err)
	}
	if string(ct[:3]) != "hdr" || len(ct) != 3+12+9+16 {
		t.Fatalf("Seal wrote %x", ct)
	}
	std, _ := cipher.NewGCMWithRandomNonce(blk)
	if pt, err := std.Open(nil, nil, ct[3:], []byte("aad")); err != nil || string(pt) != "plaintext" {
		t.Fatalf("the standard library opens it as %q, %v", pt, err)
	}
	if pt, err := Open(gcm, nil, ct[3:], []byte("aad")); err != nil || string(pt) != "plaintext" {
		t.Fatalf("Open: %q, %v", pt, err)
	}
	if _, err := Open(gcm, nil, ct[3:10], nil); err == nil {
		t.Fatal("Open took a short ciphertext")
	}
}

func TestReadAllocates(t *testing.T) {
	s := New(Config{})
	b := make([]byte, 12)
	if n := testing.AllocsPerRun(1000, func() { s.Read(b) }); n > 0 {
		t.Errorf("Read allocates %v times", n)
	}
}

// sealEachNonces runs SealEach of n messages on s, calling change before
// the message at changeAt is given, and returns each message's nonce (nil
// for a refused one).
func sealEachNonces(t *testing.T, s *Source, n, changeAt int, change func()) [][]byte {
	t.Helper()
	defer SetDefault(SetDefault(s))
	blk, _ := aes.NewCipher(make([]byte, 32))
	gcm, _ := cipher.NewGCM(blk)
	out := make([][]byte, n)
	given := make([]int, n)
	SealEach(gcm, n, func(i int) (pt, aad, dst []byte) {
		given[i]++
		if i == changeAt {
			change()
		}
		return []byte("pt"), nil, nil
	}, func(i int, ct []byte, err error) {
		if err == nil {
			out[i] = ct[:gcm.NonceSize()]
		}
	})
	for i, g := range given {
		if g != 1 {
			t.Fatalf("message %d given %d times", i, g)
		}
	}
	return out
}

// TestSealEachChangeWithinGroup: a change of the source in the middle of
// a group of nonces drawn together (a VM clone seen between two messages
// of a run) leaves the rest of the group unused: after a new generation
// the rest of the run is refused (two clones would otherwise seal it
// under the same nonces, and under a key version the change closed), and
// after a confirmation of the same generation it is sealed under nonces
// drawn again.
func TestSealEachChangeWithinGroup(t *testing.T) {
	const n, at = 40, 5
	c := clones(t, [2]func([]byte) bool{})
	for k, s := range c {
		// Each clone learns an input unique to it (a new VM generation id).
		got := sealEachNonces(t, s, n, at, func() { s.Change(Unique, "guid", []byte{byte(k)}) })
		for i, nc := range got {
			if (nc == nil) != (i >= at) {
				t.Errorf("clone %d: message %d after a new generation: nonce %x", k, i, nc)
			}
		}
	}
	s := New(Config{Kernel: StaleKernel(1), Hardware: func([]byte) bool { return false }, Wait: -1})
	nonces := sealEachNonces(t, s, n, at, func() { s.Change(Unconfirmed, "", []byte("generation 1")) })
	for i, nc := range nonces {
		if (nc == nil) != (i >= at) {
			t.Errorf("message %d after an unconfirmed change: nonce %x", i, nc)
		}
	}
	// A confirmation of the generation the run began in: nothing refused,
	// and the rest of the group is drawn from the confirmed state.
	s = New(Config{Kernel: StaleKernel(1), Hardware: func([]byte) bool { return false }, Wait: -1})
	st := s.Change(Unique, "guid", []byte("generation 1"))
	var before *state
	nonces = sealEachNonces(t, s, n, at, func() {
		before = s.cur.Load()
		s.Confirm(st.Epoch, Kernel, "kmsg", []byte("reseeded"))
	})
	if s.cur.Load() == before {
		t.Fatal("the confirmation made no new state")
	}
	for i, nc := range nonces {
		if nc == nil {
			t.Fatalf("message %d refused after a confirmation", i)
		}
	}
}

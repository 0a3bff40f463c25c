package genid

import (
	"bytes"
	"errors"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/random"
)

// attesting is a fake source that vouches for randomness like the real
// one of its name.
type attesting struct {
	*fakeSource
	fresh random.Freshness
}

func (a attesting) Attests() random.Freshness { return a.fresh }

// machine is one VM with a daemon: its tracker, sources and random
// source. A clone is a machine made with the same seed: the same daemon
// key, a kernel that returns the same bytes, no CPU random instruction.
type machine struct {
	tr                  *Tracker
	kmsg, guid, vmclock *fakeSource
	src                 *random.Source
	forced              bool // the daemon may make the kernel re-seed (CAP_SYS_ADMIN)
}

func newMachine(t *testing.T, clk *clock, interval time.Duration) *machine {
	t.Helper()
	m := &machine{kmsg: newFake("kmsg"), guid: newFake("guid"), vmclock: newFake("vmclock")}
	m.src = random.New(random.Config{Kernel: random.StaleKernel(42), Hardware: func([]byte) bool { return false },
		Wait: 5 * time.Millisecond})
	cfg := Config{Sources: []Source{attesting{m.kmsg, random.Kernel}, attesting{m.guid, random.Unique}, m.vmclock}}
	if clk != nil {
		cfg.Now = clk.now
	}
	m.tr = newTracker(t, cfg)
	h := NewRandomHook(RandomConfig{Source: m.src, KernelInterval: interval,
		Reseed: func(Change) (ReseedResult, error) { return ReseedResult{Mixed: true, Forced: m.forced}, nil }})
	t.Cleanup(h.Close)
	m.tr.Register("random generator", h)
	return m
}

func (m *machine) level() random.Freshness { return m.src.Status().Level }

func (m *machine) waitLevel(t *testing.T, want random.Freshness) {
	t.Helper()
	waitFor(t, func() bool { return m.level() == want })
}

// TestRandomnessConfirmation: what each way of learning of a change
// confirms about randomness, in the order the daemon meets them.
func TestRandomnessConfirmation(t *testing.T) {
	t.Run("kernel log", func(t *testing.T) {
		m := newMachine(t, nil, -1)
		m.kmsg.ch <- "random: crng reseeded due to virtual machine fork"
		waitGen(t, m.tr, 1)
		if m.level() != random.Kernel {
			t.Fatalf("after the kernel's own notice: %v", m.src.Status())
		}
	})
	t.Run("guid, then the kernel log", func(t *testing.T) {
		clk := &clock{t: time.Unix(1000, 0)}
		m := newMachine(t, clk, -1)
		m.guid.ch <- "VM generation ID a -> b"
		waitGen(t, m.tr, 1)
		if m.level() != random.Unique {
			t.Fatalf("after a new VM generation ID: %v", m.src.Status())
		}
		clk.add(100 * time.Millisecond)
		m.kmsg.ch <- "fork" // confirms the same change
		m.waitLevel(t, random.Kernel)
		if m.tr.Current() != 1 {
			t.Fatalf("the confirmation made generation %d", m.tr.Current())
		}
	})
	t.Run("vmclock, then the guid", func(t *testing.T) {
		clk := &clock{t: time.Unix(1000, 0)}
		m := newMachine(t, clk, -1)
		m.vmclock.ch <- "vm_generation_counter 1 -> 2"
		waitGen(t, m.tr, 1)
		if m.level() != random.Unconfirmed {
			t.Fatalf("vmclock confirmed randomness: %v", m.src.Status())
		}
		if err := m.src.Read(make([]byte, 12)); !errors.Is(err, random.ErrNotFresh) {
			t.Fatalf("Read after an unconfirmed change: %v", err)
		}
		m.guid.ch <- "VM generation ID a -> c"
		m.waitLevel(t, random.Unique)
	})
	t.Run("daemon with CAP_SYS_ADMIN", func(t *testing.T) {
		m := newMachine(t, nil, -1)
		m.forced = true
		m.tr.Bump("orchestrator")
		if m.level() != random.Kernel {
			t.Fatalf("after a forced reseed: %v", m.src.Status())
		}
	})
	t.Run("bumps", func(t *testing.T) {
		m := newMachine(t, nil, -1)
		for _, tc := range []struct {
			b    Bump
			want random.Freshness
		}{
			{Bump{Detail: "plain"}, random.Unconfirmed},
			{Bump{Detail: "short entropy", Entropy: make([]byte, MinBumpEntropy-1)}, random.Unconfirmed},
			{Bump{Detail: "entropy", Entropy: bytes.Repeat([]byte{7}, MinBumpEntropy)}, random.Unique},
			{Bump{Detail: "kernel", KernelReseeded: true}, random.Kernel},
		} {
			c := m.tr.BumpWith(tc.b)
			if m.level() != tc.want {
				t.Errorf("%s: %v, want %v", tc.b.Detail, m.src.Status(), tc.want)
			}
			if c.Fresh != tc.want {
				t.Errorf("%s: the change says %v", tc.b.Detail, c.Fresh)
			}
		}
		c := m.tr.BumpWith(Bump{Entropy: make([]byte, 100)})
		if len(c.Entropy) != MaxBumpEntropy {
			t.Errorf("a bump kept %d bytes of entropy", len(c.Entropy))
		}
	})
	t.Run("the kernel's scheduled reseed", func(t *testing.T) {
		m := newMachine(t, nil, 30*time.Millisecond)
		m.tr.Bump("first")
		m.tr.Bump("second") // the first change's timer must not confirm this one early
		if m.level() != random.Unconfirmed {
			t.Fatalf("confirmed at once: %v", m.src.Status())
		}
		m.waitLevel(t, random.Kernel)
		if st := m.src.Status(); st.Epoch != 2 {
			t.Fatalf("status %+v", st)
		}
	})
}

// TestClonesAfterRestore: two machines restored from one snapshot. Bumped
// by an orchestrator that cannot make their kernels re-seed, on machines
// without CPU random instructions, both refuse random bytes rather than
// hand out the same ones; told apart by their new VM generation IDs, they
// give different bytes, although their kernels still repeat each other.
func TestClonesAfterRestore(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	a, b := newMachine(t, clk, -1), newMachine(t, clk, -1)
	x, y := make([]byte, 16), make([]byte, 16)
	a.src.ReadAny(x)
	b.src.ReadAny(y)
	if !bytes.Equal(x, y) {
		t.Fatal("the model is wrong: clones differ before any change")
	}
	a.tr.Bump("restore")
	b.tr.Bump("restore")
	for _, m := range []*machine{a, b} {
		if err := m.src.Read(make([]byte, 12)); !errors.Is(err, random.ErrNotFresh) {
			t.Fatalf("Read after an unconfirmed change: %v", err)
		}
	}
	// (The change's time on the machines' clocks went into both keys:
	// it probably differs, but nothing guarantees it, so it confirms
	// nothing.)
	clk.add(100 * time.Millisecond)
	a.guid.ch <- "VM generation ID a -> b"
	b.guid.ch <- "VM generation ID a -> c"
	a.waitLevel(t, random.Unique)
	b.waitLevel(t, random.Unique)
	x, y = make([]byte, 12), make([]byte, 12)
	if err := a.src.Read(x); err != nil {
		t.Fatal(err)
	}
	if err := b.src.Read(y); err != nil {
		t.Fatal(err)
	}
	if bytes.Equal(x, y) {
		t.Fatalf("both clones drew the nonce %x", x)
	}
}

func TestKernelReseedInterval(t *testing.T) {
	if d := KernelReseedInterval(); d != time.Minute && d != 5*time.Minute {
		t.Fatalf("KernelReseedInterval() = %v", d)
	}
}

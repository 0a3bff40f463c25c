package secmem

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"unsafe"
)

// backings returns the backings this machine offers.
func backings(t *testing.T) []Backing {
	b := []Backing{BackingMlock}
	if SecretAvailable() {
		b = append(b, BackingSecret)
	} else {
		t.Log("memfd_secret not available: testing the mlock backing only")
	}
	return b
}

// newArena makes an arena with a limit that fits any test here.
func newArena(t *testing.T, b Backing, limit int64) *Arena {
	t.Helper()
	if limit == 0 && !CanLockAll() {
		limit = DefaultLimit()
	}
	a, err := New(Options{Backing: b, Limit: limit})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(a.Close)
	return a
}

func TestAllocFreeWipe(t *testing.T) {
	for _, b := range backings(t) {
		t.Run(string(b), func(t *testing.T) {
			a := newArena(t, b, 0)
			keep, _ := a.Alloc(32) // keeps the region mapped while we look at freed memory
			defer keep.Free()
			for _, n := range []int{1, 8, 32, 40, 100, 1000, 2400, MaxAlloc} {
				buf, err := a.Alloc(n)
				if err != nil {
					t.Fatalf("Alloc(%d): %v", n, err)
				}
				p := buf.Bytes()
				if len(p) != n || cap(p) != n {
					t.Fatalf("Alloc(%d): len %d cap %d", n, len(p), cap(p))
				}
				if !bytes.Equal(p, make([]byte, n)) {
					t.Fatalf("Alloc(%d) not zeroed", n)
				}
				for i := range p {
					p[i] = 0xA5
				}
				// Look at the slot after it is freed, through the region.
				slot := buf.r.mem[buf.i*buf.r.slot : (buf.i+1)*buf.r.slot]
				if err := buf.Free(); err != nil {
					t.Fatalf("Free: %v", err)
				}
				if bytes.ContainsAny(slot, "\xa5") {
					t.Fatalf("Free(%d) left data behind", n)
				}
			}
			if _, err := a.Alloc(MaxAlloc + 1); !errors.Is(err, ErrTooLarge) {
				t.Fatalf("oversized Alloc: %v", err)
			}
		})
	}
}

func TestCanary(t *testing.T) {
	for _, b := range backings(t) {
		t.Run(string(b), func(t *testing.T) {
			a := newArena(t, b, 0)
			buf, err := a.Alloc(32)
			if err != nil {
				t.Fatal(err)
			}
			// Write one byte past the end, as an overflow would.
			buf.r.mem[buf.i*buf.r.slot+32] ^= 0xFF
			if err := buf.Free(); !errors.Is(err, ErrCorrupted) {
				t.Fatalf("Free after an overflow: %v, want ErrCorrupted", err)
			}
			// The slot is wiped and reusable.
			buf2, err := a.Alloc(32)
			if err != nil {
				t.Fatal(err)
			}
			if err := buf2.Free(); err != nil {
				t.Fatalf("the reused slot's canary: %v", err)
			}
		})
	}
}

func TestLimit(t *testing.T) {
	for _, b := range backings(t) {
		t.Run(string(b), func(t *testing.T) {
			const limit = 256 << 10
			a := newArena(t, b, limit)
			var bufs []*Buf
			for {
				buf, err := a.Alloc(2000)
				if errors.Is(err, ErrExhausted) {
					break
				}
				if err != nil {
					t.Fatal(err)
				}
				bufs = append(bufs, buf)
				if len(bufs) > limit/2000 {
					t.Fatalf("%d allocations of 2000 bytes under a %d-byte limit", len(bufs), limit)
				}
			}
			if s := a.Stats(); s.Locked > limit || len(bufs) == 0 {
				t.Fatalf("locked %d of %d with %d allocations", s.Locked, limit, len(bufs))
			}
			bufs[0].Free()
			if buf, err := a.Alloc(2000); err != nil {
				t.Fatalf("after a free: %v", err)
			} else {
				buf.Free()
			}
			for _, buf := range bufs[1:] {
				buf.Free()
			}
		})
	}
}

// Freed regions are returned to the kernel when the class has room
// elsewhere, so memory freed in bulk does not stay locked.
func TestRegionsReleased(t *testing.T) {
	a := newArena(t, "", 0)
	var bufs []*Buf
	for range 20000 {
		buf, err := a.Alloc(32)
		if err != nil {
			t.Fatal(err)
		}
		bufs = append(bufs, buf)
	}
	peak := a.Stats().Locked
	for _, buf := range bufs {
		buf.Free()
	}
	s := a.Stats()
	if s.InUse != 0 || s.Allocations != 0 {
		t.Fatalf("after freeing all: %+v", s)
	}
	if s.Locked >= peak {
		t.Fatalf("locked %d after freeing everything, %d at the peak", s.Locked, peak)
	}
}

func TestConcurrent(t *testing.T) {
	a := newArena(t, "", 0)
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var mine []*Buf
			for i := range 2000 {
				buf, err := a.Alloc(16 + (g*i)%500)
				if err != nil {
					t.Error(err)
					return
				}
				p := buf.Bytes()
				for j := range p {
					p[j] = byte(g)
				}
				mine = append(mine, buf)
				if i%3 == 0 {
					victim := mine[0]
					mine = mine[1:]
					for _, c := range victim.Bytes() {
						if c != byte(g) {
							t.Error("another goroutine's write landed in this allocation")
							return
						}
					}
					if err := victim.Free(); err != nil {
						t.Error(err)
						return
					}
				}
			}
			for _, buf := range mine {
				buf.Free()
			}
		}()
	}
	wg.Wait()
}

// A million 32-byte keys fit in under 128 MiB of locked memory.
func TestMillionKeys(t *testing.T) {
	if testing.Short() {
		t.Skip("short")
	}
	if !CanLockAll() && DefaultLimit() < 64<<20 {
		t.Skipf("RLIMIT_MEMLOCK is %d bytes: not enough to lock a million keys", DefaultLimit())
	}
	a := newArena(t, "", 0)
	bufs := make([]*Buf, 1_000_000)
	for i := range bufs {
		var err error
		if bufs[i], err = a.Alloc(32); err != nil {
			t.Fatalf("key %d: %v", i, err)
		}
	}
	s := a.Stats()
	t.Logf("1,000,000 keys of 32 bytes: %d bytes locked (%.1f per key), backing %s", s.Locked, float64(s.Locked)/1e6, s.Backing)
	if s.Locked >= 128<<20 {
		t.Fatalf("%d bytes locked for a million keys", s.Locked)
	}
	for _, b := range bufs {
		b.Free()
	}
}

// The kernel sees the arena as intended: secretmem mappings for
// memfd_secret; locked, undumpable, wipe-on-fork memory for mlock.
func TestKernelView(t *testing.T) {
	for _, b := range backings(t) {
		t.Run(string(b), func(t *testing.T) {
			a := newArena(t, b, 0)
			buf, err := a.Alloc(32)
			if err != nil {
				t.Fatal(err)
			}
			defer buf.Free()
			start := uintptr(unsafe.Pointer(&buf.r.mem[0]))
			flags, name := vmaOf(t, start)
			switch b {
			case BackingSecret:
				if !strings.Contains(name, "secretmem") {
					t.Fatalf("mapping %q is not secretmem", name)
				}
			case BackingMlock:
				for _, f := range []string{"lo", "dd", "wf"} {
					if !strings.Contains(" "+flags+" ", " "+f+" ") {
						t.Fatalf("VmFlags %q lack %q", flags, f)
					}
				}
			}
			// The pages before and after are guard pages.
			before, _ := vmaOf(t, start-uintptr(a.page))
			after, _ := vmaOf(t, start+uintptr(len(buf.r.mem)))
			for _, g := range []string{before, after} {
				if strings.Contains(g, "rd") || strings.Contains(g, "wr") {
					t.Fatalf("guard page is accessible: VmFlags %q", g)
				}
			}
		})
	}
}

// vmaOf returns the VmFlags and name of the mapping holding addr, from
// /proc/self/smaps.
func vmaOf(t *testing.T, addr uintptr) (flags, name string) {
	t.Helper()
	b, err := os.ReadFile("/proc/self/smaps")
	if err != nil {
		t.Skip(err)
	}
	in := false
	for _, line := range strings.Split(string(b), "\n") {
		f := strings.Fields(line)
		if len(f) >= 5 && strings.Contains(f[0], "-") && !strings.HasSuffix(f[0], ":") {
			var lo, hi uintptr
			if _, err := fmtSscanRange(f[0], &lo, &hi); err == nil {
				in = addr >= lo && addr < hi
				if in && len(f) >= 6 {
					name = f[5]
				}
			}
			continue
		}
		if in && strings.HasPrefix(line, "VmFlags:") {
			return strings.TrimSpace(strings.TrimPrefix(line, "VmFlags:")), name
		}
	}
	t.Fatalf("no mapping holds %#x", addr)
	return
}

// Touching a guard page kills the process (in a child: the test binary
// re-executed).
func TestGuardPageFaults(t *testing.T) {
	if os.Getenv("SECMEM_GUARD_CHILD") != "" {
		a, _ := New(Options{})
		buf, _ := a.Alloc(32)
		r := buf.r
		p := (*byte)(unsafe.Add(unsafe.Pointer(&r.mem[0]), len(r.mem))) // first byte after the region
		*p = 1
		os.Exit(0) // not reached
	}
	self, _ := os.Executable()
	cmd := exec.Command(self, "-test.run=^TestGuardPageFaults$")
	cmd.Env = append(os.Environ(), "SECMEM_GUARD_CHILD=1")
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("writing to the guard page did not fault:\n%s", out)
	}
	if !strings.Contains(string(out), "fault") && !strings.Contains(string(out), "SIGSEGV") {
		t.Fatalf("unexpected failure: %v\n%s", err, out)
	}
}

func TestDo(t *testing.T) {
	ran := false
	Do(func() { ran = true })
	if !ran {
		t.Fatal("Do did not run its function")
	}
	t.Logf("runtime/secret in use: %v", RuntimeSecret)
}

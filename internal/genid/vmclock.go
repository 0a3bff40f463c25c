package genid

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/shm"
)

// The vmclock device's page: struct vmclock_abi of Linux's
// include/uapi/linux/vmclock-abi.h, little-endian.
const (
	vmclockMagic          = 0x4b4c4356 // "VCLK"
	vmclockOffMagic       = 0
	vmclockOffSize        = 4
	vmclockOffVersion     = 8 // __le16
	vmclockOffSeq         = 12
	vmclockOffFlags       = 24
	vmclockOffGeneration  = 104
	vmclockABISize        = 112
	vmclockFlagGenCounter = 1 << 8 // VMCLOCK_FLAG_VM_GEN_COUNTER_PRESENT
	vmclockFlagNotify     = 1 << 9 // VMCLOCK_FLAG_NOTIFICATION_PRESENT
)

// vmclockWords reads words of a vmclock page. The device's page is read
// with atomic loads; tests supply scripted values.
type vmclockWords interface {
	load32(off int) uint32
	load64(off int) uint64
}

type mappedWords []byte

func (m mappedWords) load32(off int) uint32 { return shm.LoadLE32(m, off) }
func (m mappedWords) load64(off int) uint64 { return shm.LoadLE64(m, off) }

// VMClockHeader is the constant part of a vmclock page.
type VMClockHeader struct {
	Size    uint32
	Version uint16
	Flags   uint64
}

// ParseVMClock checks the constant fields of a vmclock page and returns
// them. The page must carry a VM generation counter.
func ParseVMClock(w vmclockWords, length int) (VMClockHeader, error) {
	var h VMClockHeader
	if length < vmclockABISize {
		return h, fmt.Errorf("vmclock page of %d bytes is too short", length)
	}
	if m := w.load32(vmclockOffMagic); m != vmclockMagic {
		return h, fmt.Errorf("vmclock page has magic %#x, not %#x", m, vmclockMagic)
	}
	h.Size = w.load32(vmclockOffSize)
	h.Version = uint16(w.load32(vmclockOffVersion))
	h.Flags = w.load64(vmclockOffFlags)
	if h.Size < vmclockABISize {
		return h, fmt.Errorf("vmclock structure of %d bytes has no generation counter", h.Size)
	}
	if h.Version != 1 {
		return h, fmt.Errorf("vmclock version %d is unknown", h.Version)
	}
	if h.Flags&vmclockFlagGenCounter == 0 {
		return h, errors.New("this vmclock device has no VM generation counter")
	}
	return h, nil
}

// readVMClockGeneration reads vm_generation_counter under the page's
// sequence lock: retry while an update is in progress (odd count) or
// happened during the read (count changed). ok is false if the host kept
// the page busy for all of maxTries.
func readVMClockGeneration(w vmclockWords, maxTries int) (gen uint64, ok bool) {
	for range maxTries {
		s1 := w.load32(vmclockOffSeq)
		if s1&1 != 0 {
			runtime.Gosched()
			continue
		}
		gen = w.load64(vmclockOffGeneration)
		if w.load32(vmclockOffSeq) == s1 {
			return gen, true
		}
	}
	return 0, false
}

// VMClock is the vmclock device's VM generation counter as a source. The
// page is mapped, so Check is a few memory reads: the server runs it at
// the start of every request, and a goroutine polls it for watchers.
type VMClock struct {
	// Path is the device; empty means /dev/vmclock0.
	Path string
	// Interval is how often Run polls; 0 means 100ms.
	Interval time.Duration
	mem      []byte
	last     atomic.Uint64
}

func (v *VMClock) Name() string { return "vmclock" }

func (v *VMClock) Open() (string, error) {
	path := v.Path
	if path == "" {
		path = "/dev/vmclock0"
	}
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("no %s (no vmclock device, or no driver for it: Linux 6.13+, CONFIG_PTP_1588_CLOCK_VMCLOCK)", path)
		}
		return "", fmt.Errorf("cannot open %s: %v", path, err)
	}
	defer f.Close()
	mem, err := unix.Mmap(int(f.Fd()), 0, os.Getpagesize(), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return "", fmt.Errorf("cannot map %s: %v", path, err)
	}
	h, err := ParseVMClock(mappedWords(mem), len(mem))
	if err != nil {
		unix.Munmap(mem)
		return "", err
	}
	gen, ok := readVMClockGeneration(mappedWords(mem), 1<<20)
	if !ok {
		unix.Munmap(mem)
		return "", fmt.Errorf("%s: the host never finished updating the page", path)
	}
	v.mem = mem
	v.last.Store(gen)
	notify := "no"
	if h.Flags&vmclockFlagNotify != 0 {
		notify = "yes"
	}
	return fmt.Sprintf("%s vm_generation_counter, now %d (host notifications: %s)", path, gen, notify), nil
}

// Check reads the counter and reports a change once.
func (v *VMClock) Check() (bool, string) {
	gen, ok := readVMClockGeneration(mappedWords(v.mem), 1000)
	if !ok {
		return false, ""
	}
	old := v.last.Load()
	if gen == old || !v.last.CompareAndSwap(old, gen) {
		return false, ""
	}
	return true, fmt.Sprintf("vmclock vm_generation_counter %d -> %d", old, gen)
}

func (v *VMClock) Run(ctx context.Context, report func(string)) {
	d := v.Interval
	if d <= 0 {
		d = 100 * time.Millisecond
	}
	tick := time.NewTicker(d)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if changed, detail := v.Check(); changed {
				report(detail)
			}
		}
	}
}

func (v *VMClock) Close() error {
	if v.mem == nil {
		return nil
	}
	err := unix.Munmap(v.mem)
	v.mem = nil
	return err
}

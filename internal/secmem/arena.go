package secmem

import (
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"os"
	"strings"
	"sync"
	"unsafe"

	"golang.org/x/sys/unix"
)

// Backing names how key memory is obtained.
type Backing string

const (
	// BackingSecret is memfd_secret(2) memory (Linux 5.14+; on by default
	// since 6.5): locked, removed from the kernel's direct map, unreadable
	// through /proc/PID/mem and by the kernel itself.
	BackingSecret Backing = "memfd_secret"
	// BackingMlock is anonymous memory, locked with mlock(2), marked
	// MADV_DONTDUMP and MADV_WIPEONFORK.
	BackingMlock Backing = "mlock"
)

// Errors.
var (
	// ErrExhausted means the locked-memory limit is reached.
	ErrExhausted = errors.New("secmem: locked memory limit reached")
	// ErrTooLarge means an allocation is larger than the largest size class.
	ErrTooLarge = errors.New("secmem: allocation too large")
	// ErrCorrupted means an allocation's canary was overwritten: something
	// wrote past its end.
	ErrCorrupted = errors.New("secmem: canary overwritten (memory corruption)")
	// ErrClosed means the arena was closed.
	ErrClosed = errors.New("secmem: arena closed")
)

// canaryLen bytes follow every allocation.
const canaryLen = 8

// sizeClasses are the slot sizes, canary included. A 32-byte key takes a
// 48-byte slot, so a million of them need 48 MiB.
var sizeClasses = []int{16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048, 3072, 4096, 6144, 8192, 16384}

// MaxAlloc is the largest allocation.
var MaxAlloc = sizeClasses[len(sizeClasses)-1] - canaryLen

const (
	minRegion = 64 << 10
	maxRegion = 4 << 20
)

// Options configure an Arena. The zero value chooses the best backing and
// the limit the process's RLIMIT_MEMLOCK allows.
type Options struct {
	// Backing forces a backing; "" means memfd_secret when the kernel
	// offers it, else mlock.
	Backing Backing
	// Limit bounds the bytes of memory the arena maps and locks. 0 means
	// RLIMIT_MEMLOCK, or no limit when the process may lock any amount
	// (CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK).
	Limit int64
}

// Arena is a slab allocator over locked regions. It is safe for
// concurrent use.
type Arena struct {
	backing Backing
	limit   int64 // 0: none
	page    int
	canary  [canaryLen]byte

	// mu guards everything below. It is held only for bookkeeping, never
	// while bytes are copied in or out of allocations.
	mu      sync.Mutex
	classes []class
	locked  int64 // bytes of regions mapped
	inUse   int64 // bytes of live allocations (requested sizes)
	allocs  int64
	closed  bool
}

type class struct {
	size    int
	regions []*region // every region of this size class
	next    int       // size of the next region to map
}

// region is one mapping between two guard pages, cut into equal slots.
type region struct {
	base  unsafe.Pointer // start of the whole mapping, guard pages included
	total uintptr        // length of the whole mapping
	mem   []byte         // the usable part
	slot  int
	nslot int
	bump  int     // slots [0,bump) have been handed out at least once
	free  []int32 // slots freed since
	live  int
}

// Buf is one allocation. Its bytes live until Free.
type Buf struct {
	a *Arena
	r *region
	i int // slot index
	n int
}

// Stats describe an arena.
type Stats struct {
	Backing     Backing
	Locked      int64 // bytes mapped and locked
	InUse       int64 // bytes of live allocations
	Limit       int64 // 0: no limit
	Allocations int64
}

// SecretAvailable reports whether the kernel offers memfd_secret.
func SecretAvailable() bool {
	fd, err := unix.MemfdSecret(unix.O_CLOEXEC)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// New returns an empty arena.
func New(o Options) (*Arena, error) {
	a := &Arena{backing: o.Backing, page: os.Getpagesize()}
	switch a.backing {
	case "":
		a.backing = BackingMlock
		if SecretAvailable() {
			a.backing = BackingSecret
		}
	case BackingSecret:
		if !SecretAvailable() {
			return nil, errors.New("secmem: memfd_secret is not available (Linux 5.14+ with secretmem enabled)")
		}
	case BackingMlock:
	default:
		return nil, fmt.Errorf("secmem: unknown backing %q", o.Backing)
	}
	a.limit = o.Limit
	if a.limit == 0 {
		a.limit = DefaultLimit()
	}
	rand.Read(a.canary[:])
	a.classes = make([]class, len(sizeClasses))
	for i, s := range sizeClasses {
		a.classes[i] = class{size: s, next: minRegion}
	}
	return a, nil
}

// DefaultLimit is the locked-memory limit of this process: 0 (none) with
// CAP_IPC_LOCK or an unlimited RLIMIT_MEMLOCK, else RLIMIT_MEMLOCK.
func DefaultLimit() int64 {
	if CanLockAll() {
		return 0
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil {
		return 64 << 10 // the kernel's historical default
	}
	return int64(rl.Cur)
}

// CanLockAll reports whether the process may lock any amount of memory.
func CanLockAll() bool {
	var rl unix.Rlimit
	if unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl) == nil && rl.Cur == unix.RLIM_INFINITY {
		return true
	}
	return hasCapIPCLock()
}

// hasCapIPCLock reads the effective capabilities from /proc/self/status.
func hasCapIPCLock() bool {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return false
	}
	for _, line := range strings.Split(string(b), "\n") {
		if hex, ok := strings.CutPrefix(line, "CapEff:"); ok {
			var caps uint64
			fmt.Sscanf(strings.TrimSpace(hex), "%x", &caps)
			return caps&(1<<unix.CAP_IPC_LOCK) != 0
		}
	}
	return false
}

func classFor(n int) int {
	for i, s := range sizeClasses {
		if n+canaryLen <= s {
			return i
		}
	}
	return -1
}

// Alloc returns n zeroed bytes of locked memory.
func (a *Arena) Alloc(n int) (*Buf, error) {
	if n <= 0 {
		n = 1
	}
	ci := classFor(n)
	if ci < 0 {
		return nil, ErrTooLarge
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, ErrClosed
	}
	c := &a.classes[ci]
	var r *region
	for _, cand := range c.regions {
		if len(cand.free) > 0 || cand.bump < cand.nslot {
			r = cand
			break
		}
	}
	if r == nil {
		var err error
		if r, err = a.mapRegion(c); err != nil {
			return nil, err
		}
		c.regions = append(c.regions, r)
	}
	var i int
	if l := len(r.free); l > 0 {
		i = int(r.free[l-1])
		r.free = r.free[:l-1]
	} else {
		i = r.bump
		r.bump++
	}
	r.live++
	a.inUse += int64(n)
	a.allocs++
	b := &Buf{a: a, r: r, i: i, n: n}
	copy(r.mem[i*r.slot+n:], a.canary[:])
	return b, nil
}

// mapRegion maps a new region for class c, within the limit.
func (a *Arena) mapRegion(c *class) (*region, error) {
	size := c.next
	for size < c.size {
		size *= 2
	}
	if a.limit > 0 {
		// Shrink the region to what the limit leaves, down to one slot.
		for size > a.page && a.locked+int64(size) > a.limit {
			size /= 2
		}
		size = max(size, roundUp(c.size, a.page))
		if a.locked+int64(size) > a.limit {
			return nil, ErrExhausted
		}
	}
	r, err := mapLocked(a.backing, size, a.page)
	if err != nil {
		return nil, err
	}
	r.slot = c.size
	r.nslot = size / c.size
	a.locked += int64(size)
	c.next = min(c.next*2, maxRegion)
	return r, nil
}

func roundUp(n, to int) int { return (n + to - 1) / to * to }

// mapLocked maps size bytes of locked memory between two guard pages.
func mapLocked(b Backing, size, page int) (*region, error) {
	total := uintptr(size + 2*page)
	// Reserve the whole range inaccessible; the guard pages stay so.
	base, err := unix.MmapPtr(-1, 0, nil, total, unix.PROT_NONE, unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_NORESERVE)
	if err != nil {
		return nil, fmt.Errorf("secmem: reserve %d bytes: %w", total, err)
	}
	fail := func(err error) (*region, error) {
		unix.MunmapPtr(base, total)
		if errors.Is(err, unix.ENOMEM) || errors.Is(err, unix.EAGAIN) || errors.Is(err, unix.EPERM) {
			return nil, ErrExhausted
		}
		return nil, err
	}
	data := unsafe.Add(base, page)
	switch b {
	case BackingSecret:
		fd, err := unix.MemfdSecret(unix.O_CLOEXEC)
		if err != nil {
			return fail(fmt.Errorf("secmem: memfd_secret: %w", err))
		}
		err = unix.Ftruncate(fd, int64(size))
		if err == nil {
			// secretmem pages are locked and charged to RLIMIT_MEMLOCK by
			// the kernel; a failure here is the limit.
			_, err = unix.MmapPtr(fd, 0, data, uintptr(size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_FIXED)
		}
		unix.Close(fd)
		if err != nil {
			return fail(err)
		}
	default:
		if _, err := unix.MmapPtr(-1, 0, data, uintptr(size), unix.PROT_READ|unix.PROT_WRITE,
			unix.MAP_PRIVATE|unix.MAP_ANONYMOUS|unix.MAP_FIXED); err != nil {
			return fail(err)
		}
		mem := unsafe.Slice((*byte)(data), size)
		if err := unix.Mlock(mem); err != nil {
			return fail(fmt.Errorf("secmem: mlock: %w", err))
		}
		if err := unix.Madvise(mem, unix.MADV_WIPEONFORK); err != nil {
			return fail(fmt.Errorf("secmem: madvise(MADV_WIPEONFORK): %w", err))
		}
	}
	mem := unsafe.Slice((*byte)(data), size)
	if err := unix.Madvise(mem, unix.MADV_DONTDUMP); err != nil && b != BackingSecret {
		// secretmem mappings are never dumped anyway.
		return fail(fmt.Errorf("secmem: madvise(MADV_DONTDUMP): %w", err))
	}
	return &region{base: base, total: total, mem: mem}, nil
}

// Bytes returns the allocation's memory. It stays valid until Free; the
// caller must not keep it beyond, nor hand it to code that may keep it.
func (b *Buf) Bytes() []byte {
	off := b.i * b.r.slot
	return b.r.mem[off : off+b.n : off+b.n]
}

// Len returns the allocation's size.
func (b *Buf) Len() int { return b.n }

// Free wipes the allocation and returns it to the arena. It reports
// ErrCorrupted when the canary after the allocation was overwritten; the
// memory is wiped and reused regardless. Freeing twice panics.
func (b *Buf) Free() error {
	a := b.a
	if a == nil {
		panic("secmem: Buf freed twice")
	}
	off := b.i * b.r.slot
	slot := b.r.mem[off : off+b.r.slot]
	intact := subtle.ConstantTimeCompare(slot[b.n:b.n+canaryLen], a.canary[:]) == 1
	clear(slot)

	a.mu.Lock()
	r := b.r
	r.free = append(r.free, int32(b.i))
	r.live--
	a.inUse -= int64(b.n)
	a.allocs--
	if r.live == 0 && !a.closed {
		a.releaseIfSpare(r)
	}
	a.mu.Unlock()
	b.a, b.r = nil, nil
	if !intact {
		return ErrCorrupted
	}
	return nil
}

// releaseIfSpare unmaps an empty region when its class has another region
// with room, so that memory freed in bulk is given back. a.mu is held.
func (a *Arena) releaseIfSpare(r *region) {
	c := &a.classes[classFor(r.slot-canaryLen)]
	spare := false
	for _, o := range c.regions {
		if o != r && (len(o.free) > 0 || o.bump < o.nslot) {
			spare = true
			break
		}
	}
	if !spare {
		return
	}
	for i, o := range c.regions {
		if o == r {
			c.regions = append(c.regions[:i], c.regions[i+1:]...)
			break
		}
	}
	a.locked -= int64(len(r.mem))
	clear(r.mem)
	unix.MunmapPtr(r.base, r.total)
}

// Stats returns the arena's current figures.
func (a *Arena) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	return Stats{Backing: a.backing, Locked: a.locked, InUse: a.inUse, Limit: a.limit, Allocations: a.allocs}
}

// Backing returns the arena's backing.
func (a *Arena) Backing() Backing { return a.backing }

// Close wipes and unmaps every region. Allocations must not be used
// afterwards; freeing them is harmless.
func (a *Arena) Close() {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return
	}
	a.closed = true
	for ci := range a.classes {
		for _, r := range a.classes[ci].regions {
			clear(r.mem)
			unix.MunmapPtr(r.base, r.total)
			r.mem = make([]byte, len(r.mem)) // late Frees write here, harmlessly
		}
		a.classes[ci].regions = nil
	}
	a.locked, a.inUse, a.allocs = 0, 0, 0
}

package genid

import (
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/random"
)

// Randomness after a change (docs/genid.md, "Randomness"). Every random
// value the daemon uses comes from package random: getrandom's bytes
// encrypted under a key of the daemon's own. Two clones of one snapshot
// share that key and, until their kernels re-seed, getrandom's output. A
// change therefore (1) stirs values that differ between clones into the
// kernel's pool and, where the daemon may, makes the kernel re-seed at
// once; (2) re-keys the daemon's generator with new getrandom output, the
// CPU's random instructions and what the change brought; and (3) leaves it
// Unconfirmed, refusing to hand out bytes, until something confirms that
// this machine's bytes differ from a clone's: the kernel re-seeded (the
// daemon's own request succeeded, the kernel's log line or uevent, a bump
// from a sender that made it re-seed, or the kernel's scheduled re-seed
// being past), or an input unique to this machine went in (RDSEED or
// RDRAND, a new VM generation ID, bytes a bump carried).

// urandomPath is where ReseedKernel writes; a variable for tests.
var urandomPath = "/dev/urandom"

// ReseedResult says what ReseedKernel did.
type ReseedResult struct {
	// Mixed is set when values that differ between clones were written
	// into the kernel's input pool (any user may).
	Mixed bool
	// Forced is set when the kernel re-seeded its generator at once
	// (RNDRESEEDCRNG, which needs CAP_SYS_ADMIN); otherwise it does so at
	// its next scheduled reseed, within a minute.
	Forced bool
}

// ReseedKernel stirs values that differ between two clones of one
// snapshot (the time of the change on three clocks, what the source saw,
// such as the new VM generation ID, bytes a bump carried, the CPU's random
// instructions) into the kernel's entropy pool, and where allowed makes
// the kernel re-seed its generator from it at once. Writing to
// /dev/urandom credits no entropy; it can only add to it.
func ReseedKernel(c Change) (ReseedResult, error) {
	var res ReseedResult
	f, err := os.OpenFile(urandomPath, os.O_WRONLY, 0)
	if err != nil {
		return res, err
	}
	defer f.Close()
	b := changeInputs(c)
	var hw [32]byte
	if random.Hardware(hw[:]) {
		b = append(b, hw[:]...)
	}
	clear(hw[:])
	_, err = f.Write(b)
	clear(b)
	if err != nil {
		return res, fmt.Errorf("write %s: %w", urandomPath, err)
	}
	res.Mixed = true
	if err := unix.IoctlSetInt(int(f.Fd()), unix.RNDRESEEDCRNG, 0); err == nil {
		res.Forced = true
	}
	return res, nil
}

// changeInputs are the values of a change that may differ between clones:
// the time now on three clocks, and what the change says.
func changeInputs(c Change) []byte {
	var b []byte
	for _, clock := range []int32{unix.CLOCK_REALTIME, unix.CLOCK_MONOTONIC, unix.CLOCK_BOOTTIME} {
		var ts unix.Timespec
		if unix.ClockGettime(clock, &ts) == nil {
			b = binary.LittleEndian.AppendUint64(b, uint64(ts.Nano()))
		}
	}
	b = binary.LittleEndian.AppendUint64(b, c.To)
	b = binary.LittleEndian.AppendUint64(b, uint64(c.At.UnixNano()))
	b = append(b, c.Detail...)
	return append(b, c.Entropy...)
}

// KernelReseedInterval is the longest the kernel lets its generator run
// without re-seeding from its input pool: a minute since Linux 5.18,
// five minutes before (0 if the release cannot be read).
func KernelReseedInterval() time.Duration {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return 0
	}
	rel := unix.ByteSliceToString(u.Release[:])
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return 0
	}
	major, err1 := strconv.Atoi(parts[0])
	minor, err2 := strconv.Atoi(strings.TrimFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }))
	if err1 != nil || err2 != nil {
		return 0
	}
	if major > 5 || major == 5 && minor >= 18 {
		return time.Minute
	}
	return 5 * time.Minute
}

// kernelReseedMargin is added to KernelReseedInterval: the kernel counts in
// jiffies, and its scheduled work may run a little late.
const kernelReseedMargin = 5 * time.Second

// RandomConfig configures NewRandomHook.
type RandomConfig struct {
	Source *random.Source
	Logger *slog.Logger
	// Reseed does what ReseedKernel does; nil means ReseedKernel.
	Reseed func(Change) (ReseedResult, error)
	// KernelInterval is when, after a change, the kernel's scheduled
	// re-seed is surely past; 0 means KernelReseedInterval() plus a
	// margin, negative means never (only other confirmations count).
	KernelInterval time.Duration
}

// RandomHook re-keys the daemon's random generator at every change and
// says what confirmed it (see the comment at the top of this file). It is
// the first hook the daemon registers: the hooks after it (the audit log's
// new segment, key versions) may need random bytes.
type RandomHook struct {
	cfg RandomConfig
	log *slog.Logger

	mu    sync.Mutex
	timer *time.Timer // the kernel's scheduled re-seed of the last change
}

var _ Confirmer = (*RandomHook)(nil)

// NewRandomHook returns the hook for cfg.
func NewRandomHook(cfg RandomConfig) *RandomHook {
	if cfg.Reseed == nil {
		cfg.Reseed = ReseedKernel
	}
	if cfg.KernelInterval == 0 {
		if d := KernelReseedInterval(); d > 0 {
			cfg.KernelInterval = d + kernelReseedMargin
		} else {
			cfg.KernelInterval = -1
		}
	}
	h := &RandomHook{cfg: cfg, log: cfg.Logger}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	return h
}

// vouches says in words what a report from source vouching for fresh
// means.
func vouches(source string, fresh random.Freshness) string {
	switch {
	case fresh == random.Kernel && source == RequestSource:
		return "the kernel re-seeded its generator at the request of the bump's sender"
	case fresh == random.Kernel:
		return "the kernel re-seeded its generator (" + source + ")"
	case fresh == random.Unique && source == RequestSource:
		return "bytes sent with the bump"
	case fresh == random.Unique && source == "guid":
		return "the new VM generation ID"
	case fresh == random.Unique:
		return "an input unique to this machine (" + source + ")"
	}
	return ""
}

// GenerationChanged re-keys the generator for c.
func (h *RandomHook) GenerationChanged(c Change) {
	res, err := h.cfg.Reseed(c)
	level, by := c.Fresh, vouches(c.Sources[0], c.Fresh)
	if res.Forced {
		level, by = random.Kernel, "the kernel re-seeded its generator at the daemon's request (RNDRESEEDCRNG)"
	}
	st := h.cfg.Source.Change(level, by, changeInputs(c))
	h.mu.Lock()
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
	if st.Level < random.Kernel && h.cfg.KernelInterval > 0 {
		epoch := st.Epoch
		h.timer = time.AfterFunc(h.cfg.KernelInterval, func() {
			if h.cfg.Source.Confirm(epoch, random.Kernel, "the kernel's scheduled re-seed, now past") {
				h.log.Info("fresh randomness confirmed: the kernel's scheduled re-seed is past", "generation", c.To)
			}
		})
	}
	h.mu.Unlock()
	mixed := "stirred into the kernel's pool"
	if err != nil {
		mixed = "could not be stirred into the kernel's pool: " + err.Error()
	}
	switch st.Level {
	case random.Kernel:
		h.log.Info("random generator re-keyed after the generation change", "generation", c.To, "confirmed_by", st.By)
	case random.Unique:
		h.log.Info("random generator re-keyed after the generation change; RSA key generation waits for the kernel to re-seed (forcing it needs CAP_SYS_ADMIN)",
			"generation", c.To, "confirmed_by", st.By, "change_inputs", mixed)
	default:
		h.log.Warn("random generator re-keyed after the generation change, but nothing confirms that its bytes differ from a clone's: "+
			"keys, nonces and ids are refused until the kernel re-seeds (at its next scheduled re-seed, or at once after "+
			"`keywarden generation bump` run as root, or with CAP_SYS_ADMIN for the daemon)",
			"generation", c.To, "kernel_reseed_within", h.cfg.KernelInterval.String(), "change_inputs", mixed)
	}
}

// GenerationConfirmed takes what another source's report vouches for.
func (h *RandomHook) GenerationConfirmed(c Change, r Report) {
	if r.Fresh == random.Unconfirmed {
		return
	}
	st := h.cfg.Source.Status()
	if h.cfg.Source.Confirm(st.Epoch, r.Fresh, vouches(r.Source, r.Fresh), []byte(r.Detail)) {
		h.log.Info("fresh randomness confirmed", "generation", c.To, "confirmed_by", vouches(r.Source, r.Fresh))
	}
}

// Close stops the timer of the kernel's scheduled re-seed.
func (h *RandomHook) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.timer != nil {
		h.timer.Stop()
		h.timer = nil
	}
}

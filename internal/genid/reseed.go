package genid

import (
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"log/slog"
	"os"

	"golang.org/x/sys/unix"
)

// The daemon keeps no random state of its own: every random value it uses
// (key bytes, key ids, AES-GCM nonces, RSA and ECDSA randomness, salts)
// comes from crypto/rand at the moment it is needed, that is from the
// kernel's getrandom (through the vDSO where the kernel offers it), which
// the kernel re-seeds when its vmgenid driver reports a VM fork. What a
// change must still repair is the kernel generator itself when the kernel
// did not learn of the change (a vmclock-only machine, an orchestrator's
// bump): two clones would then draw the same bytes until the kernel's next
// scheduled reseed.

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
// such as the new VM generation ID) into the kernel's entropy pool, and
// where allowed makes the kernel re-seed its generator from it at once.
// Writing to /dev/urandom credits no entropy; it can only add to it.
func ReseedKernel(c Change) (ReseedResult, error) {
	var res ReseedResult
	f, err := os.OpenFile(urandomPath, os.O_WRONLY, 0)
	if err != nil {
		return res, err
	}
	defer f.Close()
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
	var fresh [32]byte
	rand.Read(fresh[:])
	b = append(b, fresh[:]...)
	if _, err := f.Write(b); err != nil {
		return res, fmt.Errorf("write %s: %w", urandomPath, err)
	}
	res.Mixed = true
	if err := unix.IoctlSetInt(int(f.Fd()), unix.RNDRESEEDCRNG, 0); err == nil {
		res.Forced = true
	}
	return res, nil
}

// ReseedHook is ReseedKernel as a Hook, logging what it did.
func ReseedHook(log *slog.Logger) Hook {
	return HookFunc(func(c Change) {
		res, err := ReseedKernel(c)
		switch {
		case err != nil:
			log.Error("cannot stir the kernel's entropy pool after a generation change", "err", err)
		case !res.Forced:
			log.Info("kernel entropy pool stirred; the kernel re-seeds from it at its next scheduled reseed (forcing it needs CAP_SYS_ADMIN)",
				"generation", c.To)
		default:
			log.Info("kernel random generator re-seeded", "generation", c.To)
		}
	})
}

package wire

import (
	"runtime"

	"github.com/keywarden/keywarden/internal/shm"
)

// The generation page (docs/genid.md): a read-only shared memory page the
// daemon hands out in reply to generation_map (SCM_RIGHTS), holding the
// current machine generation, so that a client can check it without a
// round trip. Every field is a native-endian word at a fixed offset,
// written by the daemon under a sequence lock.
const (
	// GenPageSize is the size of the mapping.
	GenPageSize = 4096
	// GenPageMagic is the first word: the bytes "KWGN" on a little-endian
	// machine.
	GenPageMagic = 0x4e47574b
	// GenPageLayout is the layout version this code reads and writes.
	GenPageLayout = 1

	// Offsets of the fields.
	GenPageOffMagic      = 0  // uint32: GenPageMagic
	GenPageOffLayout     = 4  // uint32: GenPageLayout
	GenPageOffSeq        = 8  // uint32: odd while the daemon updates the fields below
	GenPageOffFlags      = 12 // uint32: GenPageFlag* bits
	GenPageOffGeneration = 16 // uint64: the current generation
	GenPageOffChanged    = 24 // int64: when it last changed, Unix nanoseconds (0: never)
	GenPageOffStarted    = 32 // int64: when the daemon started, Unix nanoseconds

	// GenPageFlagLive is set while the daemon runs; a page whose daemon
	// stopped never changes again, so a client must map a new one.
	GenPageFlagLive = 1
)

// ReadGenPage reads a mapping of the generation page under its sequence
// lock: the generation, when it last changed (Unix nanoseconds, 0 for
// never), and whether its daemon still runs. ok is false when mem is not a
// generation page of a layout this code knows, or when the daemon stopped
// in the middle of an update.
func ReadGenPage(mem []byte) (gen uint64, changed int64, live, ok bool) {
	if len(mem) < GenPageSize || shm.Load32(mem, GenPageOffMagic) != GenPageMagic ||
		shm.Load32(mem, GenPageOffLayout) != GenPageLayout {
		return 0, 0, false, false
	}
	for range 1 << 16 {
		s1 := shm.Load32(mem, GenPageOffSeq)
		if s1&1 != 0 { // being written: a few stores, unless the writer was preempted
			runtime.Gosched()
			continue
		}
		gen = shm.Load64(mem, GenPageOffGeneration)
		changed = int64(shm.Load64(mem, GenPageOffChanged))
		live = shm.Load32(mem, GenPageOffFlags)&GenPageFlagLive != 0
		if shm.Load32(mem, GenPageOffSeq) == s1 {
			return gen, changed, live, true
		}
	}
	return 0, 0, false, false
}

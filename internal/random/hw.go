package random

import (
	"encoding/binary"
	"sync"
)

// hwRetries is how often one 64-bit read is retried: Intel documents that
// RDRAND may fail transiently and recommends 10 attempts.
const hwRetries = 10

var hwHealth struct {
	once sync.Once
	ok   bool
}

// Hardware fills b from the CPU's random instructions (RDSEED, else
// RDRAND, on x86-64) and reports whether it could. It reports false on
// CPUs without them, and on CPUs whose instruction failed the check made
// at first use (eight values, none 0 or all ones, no two alike): some
// CPUs have returned a constant after a firmware bug.
func Hardware(b []byte) bool {
	hwHealth.once.Do(func() { hwHealth.ok = hwCheck() })
	if !hwHealth.ok {
		return false
	}
	var w [8]byte
	for off := 0; off < len(b); off += len(w) {
		v, ok := hw64()
		if !ok {
			return false
		}
		binary.LittleEndian.PutUint64(w[:], v)
		copy(b[off:], w[:])
	}
	clear(w[:])
	return true
}

// HardwareName names the instruction Hardware uses, or says why there is
// none.
func HardwareName() string {
	if !Hardware(make([]byte, 8)) {
		if hwName() == "" {
			return "none (the CPU has no random instruction keywarden uses)"
		}
		return hwName() + " (failed its check: not used)"
	}
	return hwName()
}

func hw64() (uint64, bool) {
	for range hwRetries {
		if v, ok := hwRead(); ok {
			return v, true
		}
	}
	return 0, false
}

func hwCheck() bool {
	if hwName() == "" {
		return false
	}
	var seen [8]uint64
	for i := range seen {
		v, ok := hw64()
		if !ok || v == 0 || v == ^uint64(0) {
			return false
		}
		for _, p := range seen[:i] {
			if p == v {
				return false
			}
		}
		seen[i] = v
	}
	return true
}

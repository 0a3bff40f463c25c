package random

import "golang.org/x/sys/cpu"

func rdrand() (v uint64, ok bool)
func rdseed() (v uint64, ok bool)

func hwName() string {
	switch {
	case cpu.X86.HasRDSEED && cpu.X86.HasRDRAND:
		return "RDSEED, else RDRAND"
	case cpu.X86.HasRDSEED:
		return "RDSEED"
	case cpu.X86.HasRDRAND:
		return "RDRAND"
	}
	return ""
}

// hwRead makes one attempt: RDSEED (straight from the entropy source),
// else RDRAND (its DRBG), which fails less often.
func hwRead() (uint64, bool) {
	if cpu.X86.HasRDSEED {
		if v, ok := rdseed(); ok {
			return v, true
		}
	}
	if cpu.X86.HasRDRAND {
		return rdrand()
	}
	return 0, false
}

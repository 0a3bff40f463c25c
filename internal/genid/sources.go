package genid

import (
	"fmt"
	"slices"
	"strings"
)

// SourceNames are the sources that watch the machine, in the order status
// lists them.
var SourceNames = []string{"kmsg", "vmclock", "uevent", "guid"}

// NewSources returns the sources a --generation-sources value names:
// "auto" (every source, each active where this machine offers it), "none",
// or a comma-separated list of SourceNames. Naming "uevent" explicitly
// makes it listen on any kernel, not only on Linux 6.8.
func NewSources(spec string) ([]Source, error) {
	var names []string
	force := false
	switch spec {
	case "", "auto":
		names = SourceNames
	case "none":
	default:
		force = true
		for _, n := range strings.Split(spec, ",") {
			n = strings.TrimSpace(n)
			if !slices.Contains(SourceNames, n) {
				return nil, fmt.Errorf("unknown generation source %q (want %s, auto or none)", n, strings.Join(SourceNames, ", "))
			}
			if !slices.Contains(names, n) {
				names = append(names, n)
			}
		}
	}
	var srcs []Source
	for _, n := range names {
		switch n {
		case "kmsg":
			srcs = append(srcs, &Kmsg{})
		case "vmclock":
			srcs = append(srcs, &VMClock{})
		case "uevent":
			srcs = append(srcs, &Uevent{Force: force})
		case "guid":
			srcs = append(srcs, &GUID{})
		}
	}
	return srcs, nil
}

var (
	_ Attester = (*Kmsg)(nil)
	_ Checker  = (*VMClock)(nil)
	_ Attester = (*Uevent)(nil)
	_ Attester = (*GUID)(nil)
	_ Source   = requestSource{}
	_ Hook     = HookFunc(nil)
)

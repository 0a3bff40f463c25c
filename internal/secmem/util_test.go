package secmem

import "fmt"

func fmtSscanRange(s string, lo, hi *uintptr) (int, error) {
	return fmt.Sscanf(s, "%x-%x", lo, hi)
}

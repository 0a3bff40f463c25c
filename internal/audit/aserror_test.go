package audit

import (
	"errors"
	"fmt"
	"syscall"
	"testing"
)

// The writer turns any failure of a write into an *Error by errors.As: a
// wrapped *Error is found, and an error of another type becomes a write
// failure that still matches ErrUnavailable, where a type assertion would
// panic in the writer's goroutine.
func TestAsError(t *testing.T) {
	inner := &Error{Op: "fsync", Err: syscall.EIO}
	if e := asError(fmt.Errorf("rotate: %w", inner)); e != inner {
		t.Errorf("a wrapped *Error is not found: %v", e)
	}
	e := asError(syscall.ENOSPC)
	if e.Op != "write" || !errors.Is(e, syscall.ENOSPC) || !errors.Is(e, ErrUnavailable) {
		t.Errorf("another error is not a write failure: %#v", e)
	}
}

package audit

import (
	"errors"
	"time"
)

// Errors of Append and the other writing calls. Every error they return
// means the record is not in the log; every one matches ErrUnavailable
// (errors.Is), and the server answers it with UNAVAILABLE.
var (
	// ErrUnavailable: the log cannot be written now. The log keeps trying
	// in the background and serves again by itself once writing works.
	ErrUnavailable = errors.New("audit: the audit log cannot be written")
	// ErrClosed: the log was closed.
	ErrClosed = errors.New("audit: log closed")
	// ErrTooLarge: the record's encoding exceeds MaxLineBytes.
	ErrTooLarge = errors.New("audit: record too large")
	// ErrKind: Append takes only requests and events; the log writes
	// segments and checkpoints itself.
	ErrKind = errors.New("audit: Append takes KindRequest or KindEvent records")
	// ErrNoKeys: a checkpoint needs keys (see SetKeys).
	ErrNoKeys = errors.New("audit: the log has no keys")
)

// Error is a failure to write the log. It matches ErrUnavailable and its
// cause.
type Error struct {
	Op    string    // what failed: "write", "fsync", "rotate", "open", "append", ...
	Err   error     // the cause, e.g. syscall.ENOSPC or ErrClosed
	Since time.Time // when the log stopped being writable, if it has
}

func (e *Error) Error() string {
	return "audit log unavailable: " + e.Op + ": " + e.Err.Error()
}

// Unwrap makes errors.Is match both ErrUnavailable and the cause.
func (e *Error) Unwrap() []error { return []error{ErrUnavailable, e.Err} }

package wire

import (
	"errors"
	"fmt"
)

// ProtocolVersion is the only protocol version this code speaks.
const ProtocolVersion = 1

// Default limits. The daemon may be configured with others and advertises
// the ones in force in StatusResult.limits; clients must honour those.
const (
	// DefaultMaxMessageBytes bounds one encoded Request or Reply. Data larger
	// than this goes through a streaming session.
	DefaultMaxMessageBytes = 256 << 10
	// DefaultMaxInFlight bounds requests a connection may have sent and not
	// yet had answered.
	DefaultMaxInFlight = 64
	// DefaultMaxSessions bounds open streaming sessions per connection.
	DefaultMaxSessions = 64
	// DefaultMaxHandles bounds open key handles per connection.
	DefaultMaxHandles = 4096
	// DefaultMaxKeysPerUser bounds live keys (persistent and ephemeral) one
	// uid may own.
	DefaultMaxKeysPerUser = 10000
	// DefaultMaxBatchOps bounds operations in one Request.
	DefaultMaxBatchOps = 4096
)

// MessageOverhead is the room a client should leave in a message for
// everything but the payload of a single operation (ids, handles, tags,
// AAD up to 1 KiB). A one-shot payload of at most
// max_message_bytes-MessageOverhead always fits.
const MessageOverhead = 2 << 10

// Error is an error that carries a protocol Status.
//
// Public is what the client is told; it must never contain secrets and is
// deliberately vague where detail would help an attacker. Detail is for the
// daemon's own log and audit record and may be precise; it must never
// contain key bytes, plaintext or passphrases either.
type Error struct {
	Status Status
	Public string
	Detail string
}

func (e *Error) Error() string {
	if e.Detail != "" {
		return e.Public + ": " + e.Detail
	}
	return e.Public
}

// Errorf returns an *Error whose public message is the formatted text.
func Errorf(st Status, format string, args ...any) *Error {
	return &Error{Status: st, Public: fmt.Sprintf(format, args...)}
}

// WithDetail returns a copy of e carrying a precise reason for the log.
func (e *Error) WithDetail(format string, args ...any) *Error {
	c := *e
	c.Detail = fmt.Sprintf(format, args...)
	return &c
}

// StatusOf returns the Status carried by err: STATUS_OK for nil, the
// Error's status when err wraps one, STATUS_INTERNAL otherwise.
func StatusOf(err error) Status {
	if err == nil {
		return Status_STATUS_OK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Status
	}
	return Status_STATUS_INTERNAL
}

package keywarden

import (
	"errors"
	"fmt"

	"github.com/keywarden/keywarden/internal/wire"
)

// Code is the status class of a failed operation, as the daemon reports
// it. The values are those of the wire protocol's Status enum.
type Code int32

const (
	CodeOK                 = Code(wire.Status_STATUS_OK)
	CodeInvalidArgument    = Code(wire.Status_STATUS_INVALID_ARGUMENT)
	CodeNotFound           = Code(wire.Status_STATUS_NOT_FOUND)
	CodeAlreadyExists      = Code(wire.Status_STATUS_ALREADY_EXISTS)
	CodePermissionDenied   = Code(wire.Status_STATUS_PERMISSION_DENIED)
	CodePolicyViolation    = Code(wire.Status_STATUS_POLICY_VIOLATION)
	CodeVerificationFailed = Code(wire.Status_STATUS_VERIFICATION_FAILED)
	CodeGenerationChanged  = Code(wire.Status_STATUS_GENERATION_CHANGED)
	CodeResourceExhausted  = Code(wire.Status_STATUS_RESOURCE_EXHAUSTED)
	CodeUnavailable        = Code(wire.Status_STATUS_UNAVAILABLE)
	CodeUnimplemented      = Code(wire.Status_STATUS_UNIMPLEMENTED)
	CodeInternal           = Code(wire.Status_STATUS_INTERNAL)
)

var codeNames = map[Code]string{
	CodeOK:                 "ok",
	CodeInvalidArgument:    "invalid argument",
	CodeNotFound:           "not found",
	CodeAlreadyExists:      "already exists",
	CodePermissionDenied:   "permission denied",
	CodePolicyViolation:    "policy violation",
	CodeVerificationFailed: "verification failed",
	CodeGenerationChanged:  "generation changed",
	CodeResourceExhausted:  "resource exhausted",
	CodeUnavailable:        "unavailable",
	CodeUnimplemented:      "unimplemented",
	CodeInternal:           "internal error",
}

func (c Code) String() string {
	if n, ok := codeNames[c]; ok {
		return n
	}
	return fmt.Sprintf("code(%d)", int32(c))
}

// Error is an operation the daemon refused or could not perform.
type Error struct {
	Code Code
	// Op names the operation, e.g. "sign".
	Op string
	// Message is the daemon's reason. It is deliberately general: the
	// daemon's log holds the precise one.
	Message string
}

func (e *Error) Error() string {
	msg := e.Message
	if msg == "" {
		msg = e.Code.String()
	}
	if e.Op == "" {
		return "keywarden: " + msg
	}
	return "keywarden: " + e.Op + ": " + msg
}

// Is makes errors.Is(err, ErrNotFound) and the like match any *Error of
// the same code.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.Op == "" && t.Message == "" && t.Code == e.Code
}

// Sentinels for errors.Is.
var (
	ErrInvalidArgument   = &Error{Code: CodeInvalidArgument}
	ErrNotFound          = &Error{Code: CodeNotFound}
	ErrAlreadyExists     = &Error{Code: CodeAlreadyExists}
	ErrPermissionDenied  = &Error{Code: CodePermissionDenied}
	ErrPolicyViolation   = &Error{Code: CodePolicyViolation}
	ErrVerification      = &Error{Code: CodeVerificationFailed}
	ErrGenerationChanged = &Error{Code: CodeGenerationChanged}
	ErrResourceExhausted = &Error{Code: CodeResourceExhausted}
	ErrUnavailable       = &Error{Code: CodeUnavailable}
	ErrUnimplemented     = &Error{Code: CodeUnimplemented}
	ErrInternal          = &Error{Code: CodeInternal}
)

// ErrClosed is returned for calls on a closed Client or after the
// connection to the daemon was lost.
var ErrClosed = errors.New("keywarden: client closed")

// CodeOf returns the Code of err: CodeOK for nil, the code of an *Error,
// or CodeUnavailable for any other error (transport failures).
func CodeOf(err error) Code {
	if err == nil {
		return CodeOK
	}
	var e *Error
	if errors.As(err, &e) {
		return e.Code
	}
	return CodeUnavailable
}

func resultErr(op string, st wire.Status, msg string) error {
	if st == wire.Status_STATUS_OK {
		return nil
	}
	return &Error{Code: Code(st), Op: op, Message: msg}
}

func argError(op, format string, args ...any) error {
	return &Error{Code: CodeInvalidArgument, Op: op, Message: fmt.Sprintf(format, args...)}
}

package wrap

import "errors"

// ErrUnwrap is the only error an unwrap function returns for a blob it
// cannot open: wrong key, tampered or truncated data, bad padding, unknown
// format version, malformed attributes. It deliberately says nothing about
// which check failed.
var ErrUnwrap = errors.New("key unwrap failed")

// errorf makes the error of a wrapping function for input the caller got
// wrong (lengths, sizes, attributes). These errors describe the caller's
// own input; they are never returned for a blob being unwrapped.
func errorf(msg string) error { return errors.New("wrap: " + msg) }

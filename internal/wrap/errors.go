package wrap

import "errors"

// ErrUnwrap is the only error an unwrap function returns for a blob it
// cannot open: wrong key, tampered or truncated data, bad padding, unknown
// format version, malformed attributes. It deliberately says nothing about
// which check failed.
var ErrUnwrap = errors.New("key unwrap failed")

// ErrLegacyKeyword is returned for a blob in the first version of
// keywarden's format (KWW1), which sealed under the wrapping key itself,
// the same construction as encryption of data under it: such a blob may
// have been forged by anyone who could encrypt under the wrapping key, so
// its attributes vouch for nothing and it is not opened. Its header is in
// the clear, so saying so reveals nothing about the key.
var ErrLegacyKeyword = errors.New("the blob is in keywarden's first wrap format (KWW1), which is no longer opened: wrap the key again from its source")

// errorf makes the error of a wrapping function for input the caller got
// wrong (lengths, sizes, attributes). These errors describe the caller's
// own input; they are never returned for a blob being unwrapped.
func errorf(msg string) error { return errors.New("wrap: " + msg) }

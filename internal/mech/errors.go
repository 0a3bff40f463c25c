package mech

import "github.com/keywarden/keywarden/internal/wire"

// Errors. Every error this package returns is a *wire.Error whose public
// text is short, fixed and free of secrets. Each call returns a fresh value,
// so a caller that adds detail with WithDetail or edits a field cannot
// change what another caller sees.
//
// Decryption failures of every kind share one message (errDecrypt): saying
// why a ciphertext was refused would hand a client a padding or tag oracle.

func errDestroyed() error {
	return wire.Errorf(wire.Status_STATUS_NOT_FOUND, "key destroyed")
}

func errUnsupported() error {
	return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "operation not supported by this key type")
}

func errNeedPrivate() error {
	return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "operation requires a private key")
}

// ErrDecryption is the one error of every failed decryption. Each failure
// is a fresh copy of it (WithDetail), which errors.Is matches to it: a
// caller tells a failed decryption from other errors without reading the
// message.
var ErrDecryption = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "decryption failed")

func errDecrypt() error {
	return ErrDecryption.WithDetail("")
}

func errBadSignature() error {
	return wire.Errorf(wire.Status_STATUS_VERIFICATION_FAILED, "signature does not verify")
}

func errBadMAC() error {
	return wire.Errorf(wire.Status_STATUS_VERIFICATION_FAILED, "MAC does not verify")
}

func errHash() error {
	return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "hash not supported for this key type")
}

// invalid returns an INVALID_ARGUMENT error with a fixed public message.
func invalid(public string) *wire.Error {
	return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "%s", public)
}

// internal returns an INTERNAL error: a failure that valid input cannot
// cause (the random source failed, a library refused a key it made).
func internal(public string) *wire.Error {
	return wire.Errorf(wire.Status_STATUS_INTERNAL, "%s", public)
}

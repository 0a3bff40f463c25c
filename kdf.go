package keywarden

import (
	"bytes"
	"context"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// Argon2Params are Argon2id's cost parameters (RFC 9106, version 0x13).
// A zero field takes the daemon's default: Time 3, MemoryKiB 65536 (64
// MiB), Threads 4. Threads is part of the result: the same passphrase
// with other parameters gives another key or hash.
type Argon2Params struct {
	// Time is the number of passes over the memory (at least 1).
	Time uint32
	// MemoryKiB is the memory in KiB (at least 8 per thread, at most the
	// daemon's --kdf-max-memory).
	MemoryKiB uint32
	// Threads is the number of lanes (1 to 255).
	Threads uint8
}

func (p Argon2Params) wire() *wire.Argon2Params {
	return &wire.Argon2Params{Time: p.Time, MemoryKib: p.MemoryKiB, Threads: uint32(p.Threads)}
}

func argon2FromWire(w *wire.Argon2Params) Argon2Params {
	return Argon2Params{Time: w.GetTime(), MemoryKiB: w.GetMemoryKib(), Threads: uint8(min(w.GetThreads(), 255))}
}

// PassphraseKDF says how a key was derived from a passphrase. Nothing in
// it is secret; with the same passphrase it derives the same key again.
type PassphraseKDF struct {
	// Algorithm is "argon2id".
	Algorithm string
	// Version is the Argon2 version, 19 (0x13).
	Version uint32
	Params  Argon2Params
	Salt    []byte
}

// DeriveFromPassphrase creates a secret key (an AES or HMAC type) in the
// daemon whose bytes are Argon2id(passphrase, salt, params) of the type's
// key length, and opens it. The daemon runs Argon2id in a separate worker
// process and keeps the parameters and salt with the key (see
// Key.PassphraseKDF); the key leaves the daemon only if spec makes it
// exportable. The salt (8 to 256 bytes) is not secret but should be
// unique to the key. Keep the passphrase no longer than you must.
//
// Invalid parameters fail with ErrInvalidArgument before any work; a busy
// daemon with ErrResourceExhausted; a derivation that overruns the
// daemon's deadline, or whose worker stops, with ErrUnavailable.
func (c *Client) DeriveFromPassphrase(ctx context.Context, spec KeySpec, passphrase, salt []byte, params Argon2Params) (*Key, error) {
	if !spec.Type.Valid() {
		return nil, argError("derive-passphrase", "unknown key type %q", spec.Type)
	}
	return c.keyOp(ctx, "derive-passphrase", &wire.Op{Op: &wire.Op_DerivePassphrase{DerivePassphrase: &wire.DeriveFromPassphrase{
		Passphrase: passphrase, Salt: salt, Params: params.wire(), Template: spec.wire()}}})
}

// PassphraseKDF returns how the key was derived from a passphrase, or nil
// if it was made otherwise (the same as Info().KDF).
func (k *Key) PassphraseKDF() *PassphraseKDF { return k.Info().KDF }

func kdfFromWire(w *wire.PassphraseKdf) *PassphraseKDF {
	if w == nil {
		return nil
	}
	return &PassphraseKDF{Algorithm: w.Algorithm, Version: w.Version, Params: argon2FromWire(w.Params), Salt: bytes.Clone(w.Salt)}
}

// HashPassword hashes a password with Argon2id under a fresh random salt
// and returns the hash in the PHC string format,
// "$argon2id$v=19$m=65536,t=3,p=4$SALT$HASH", as the reference argon2
// tool writes it.
func (c *Client) HashPassword(ctx context.Context, password []byte, params Argon2Params) (string, error) {
	b, err := c.doData(ctx, "password-hash", &wire.Op{Op: &wire.Op_PasswordHash{PasswordHash: &wire.PasswordHash{
		Password: password, Params: params.wire()}}})
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// VerifyPassword checks a password against an Argon2id hash in the PHC
// string format (from HashPassword, the argon2 tool, or any other
// implementation of version 19). A password that does not match gives an
// error matching ErrVerification; a malformed hash, or one whose costs
// exceed the daemon's limits, ErrInvalidArgument.
func (c *Client) VerifyPassword(ctx context.Context, password []byte, phc string) error {
	_, err := c.do(ctx, "password-verify", &wire.Op{Op: &wire.Op_PasswordVerify{PasswordVerify: &wire.PasswordVerify{
		Password: password, Phc: phc}}})
	return err
}

// CalibrateOptions tune CalibrateKDF. The zero value is usable.
type CalibrateOptions struct {
	// MaxMemoryKiB caps the memory of the result; 0 leaves the daemon's
	// cap: min(--kdf-max-memory, half of RAM, half of available memory).
	MaxMemoryKiB uint32
	// Threads fixes the lanes; 0 means min(4, the daemon's CPUs).
	Threads uint8
	// Progress, if set, is called after each measurement.
	Progress func(CalibrationStep)
}

// CalibrationStep is one measurement of a calibration.
type CalibrationStep struct {
	// Step counts the measurements, from 1.
	Step int
	// Params were measured and took Elapsed (Argon2id alone, in the
	// daemon's worker).
	Params  Argon2Params
	Elapsed time.Duration
	// MemoryCapKiB is the memory cap in force.
	MemoryCapKiB uint32
	// Done is set on the last step: Params are the result.
	Done bool
}

// CalibrateKDF finds Argon2id parameters that take about target on the
// daemon's machine, as cryptsetup's --iter-time does: as much memory as
// the cap allows first (RFC 9106 prefers memory to passes), then more
// passes. Each step is one request that measures one candidate in a
// worker, so the calibration takes a few times target; the last step's
// parameters are returned.
func (c *Client) CalibrateKDF(ctx context.Context, target time.Duration, opts *CalibrateOptions) (CalibrationStep, error) {
	var o CalibrateOptions
	if opts != nil {
		o = *opts
	}
	ms := target.Milliseconds()
	if ms < 1 || ms > int64(time.Minute/time.Millisecond) {
		return CalibrationStep{}, argError("kdf-calibrate", "the target time must be 1 ms to 1 minute")
	}
	req := &wire.KdfCalibrate{TargetMs: uint32(ms), MaxMemoryKib: o.MaxMemoryKiB, Threads: uint32(o.Threads)}
	for {
		res, err := c.do(ctx, "kdf-calibrate", &wire.Op{Op: &wire.Op_KdfCalibrate{KdfCalibrate: req}})
		if err != nil {
			return CalibrationStep{}, err
		}
		w := res.GetKdfCalibration()
		if w == nil {
			return CalibrationStep{}, &Error{Code: CodeInternal, Op: "kdf-calibrate", Message: "the daemon sent no calibration"}
		}
		st := CalibrationStep{Step: int(w.Step), Params: argon2FromWire(w.Params), Elapsed: time.Duration(w.ElapsedNs),
			MemoryCapKiB: w.MemoryCapKib, Done: w.Done}
		if o.Progress != nil && (int(w.Step) != int(req.Step) || w.Done) {
			o.Progress(st)
		}
		if w.Done {
			return st, nil
		}
		req = &wire.KdfCalibrate{TargetMs: req.TargetMs, MaxMemoryKib: req.MaxMemoryKib, Threads: req.Threads,
			Previous: w.Params, PreviousNs: w.ElapsedNs, Step: w.Step}
	}
}

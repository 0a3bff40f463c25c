package kdf

import (
	"errors"
	"fmt"

	"github.com/keywarden/keywarden/internal/wire"
)

// Params are Argon2id's cost parameters (RFC 9106, version 0x13).
type Params struct {
	// Time is the number of passes over the memory.
	Time uint32
	// MemoryKiB is the memory size in KiB.
	MemoryKiB uint32
	// Threads is the number of lanes (the degree of parallelism). It is
	// part of the result: the same passphrase with other threads gives
	// another key.
	Threads uint8
}

// Defaults for fields left zero: RFC 9106's second recommended option
// (t=3, 64 MiB, 4 lanes), for machines where 2 GiB per derivation is too
// much. They are fixed rather than derived from the machine, so that a
// passphrase derives the same key everywhere.
const (
	DefaultTime      = 3
	DefaultMemoryKiB = 64 << 10
	DefaultThreads   = 4
)

// Bounds that hold whatever the daemon's configuration.
const (
	// MaxTime bounds the passes; the deadline bounds the time anyway.
	MaxTime = 1 << 20
	// MaxThreads is what golang.org/x/crypto/argon2 takes (a uint8).
	MaxThreads = 255
	// MinSaltLen and MaxSaltLen bound salts; 8 is RFC 9106's minimum
	// and the reference implementation's.
	MinSaltLen = 8
	MaxSaltLen = 256
	// MaxPasswordLen bounds passphrases and passwords.
	MaxPasswordLen = 64 << 10
	// DefaultHashLen is the length of a password hash's tag and
	// DefaultSaltLen of the random salt the daemon draws, as the
	// reference tool makes them.
	DefaultHashLen = 32
	DefaultSaltLen = 16
	// MinHashLen and MaxHashLen bound the tags the daemon makes.
	MinHashLen = 16
	MaxHashLen = 64
	// MinVerifyHashLen and MaxVerifyHashLen bound the tags of PHC strings
	// the daemon verifies (the reference implementation's minimum is 4).
	MinVerifyHashLen = 4
	MaxVerifyHashLen = 256
	// MaxKeyLen bounds what a derivation returns.
	MaxKeyLen = 1024
)

// WithDefaults fills the zero fields of p.
func (p Params) WithDefaults() Params {
	if p.Time == 0 {
		p.Time = DefaultTime
	}
	if p.MemoryKiB == 0 {
		p.MemoryKiB = DefaultMemoryKiB
	}
	if p.Threads == 0 {
		p.Threads = DefaultThreads
	}
	return p
}

// String formats p as the PHC parameter list does.
func (p Params) String() string {
	return fmt.Sprintf("m=%d,t=%d,p=%d", p.MemoryKiB, p.Time, p.Threads)
}

// Check validates p against a per-derivation memory maximum. It is the
// check every request passes before any worker starts.
func (p Params) Check(maxMemoryKiB uint32) error {
	switch {
	case p.Time < 1:
		return invalid("argon2: time must be at least 1")
	case p.Time > MaxTime:
		return invalid("argon2: time must be at most %d", MaxTime)
	case p.Threads < 1:
		return invalid("argon2: threads must be at least 1")
	case uint64(p.MemoryKiB) < 8*uint64(p.Threads):
		return invalid("argon2: memory must be at least 8 KiB per thread")
	case p.MemoryKiB > maxMemoryKiB:
		return invalid("argon2: memory exceeds the daemon's limit of %d KiB per derivation", maxMemoryKiB)
	}
	return nil
}

// FromWire converts wire parameters, filling defaults for zero fields,
// and checks them.
func FromWire(w *wire.Argon2Params, maxMemoryKiB uint32) (Params, error) {
	var p Params
	if w != nil {
		if w.Threads > MaxThreads {
			return Params{}, invalid("argon2: threads must be at most %d", MaxThreads)
		}
		p = Params{Time: w.Time, MemoryKiB: w.MemoryKib, Threads: uint8(w.Threads)}
	}
	p = p.WithDefaults()
	return p, p.Check(maxMemoryKiB)
}

// Wire returns p as the protocol carries it.
func (p Params) Wire() *wire.Argon2Params {
	return &wire.Argon2Params{Time: p.Time, MemoryKib: p.MemoryKiB, Threads: uint32(p.Threads)}
}

// CheckSalt validates a salt's length.
func CheckSalt(salt []byte) error {
	if len(salt) < MinSaltLen || len(salt) > MaxSaltLen {
		return invalid("argon2: a salt is %d to %d bytes", MinSaltLen, MaxSaltLen)
	}
	return nil
}

// CheckPassword validates a passphrase's or password's length.
func CheckPassword(pw []byte) error {
	switch {
	case len(pw) == 0:
		return invalid("empty passphrase")
	case len(pw) > MaxPasswordLen:
		return invalid("passphrase longer than %d bytes", MaxPasswordLen)
	}
	return nil
}

func invalid(format string, args ...any) *wire.Error {
	return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, format, args...)
}

// Errors of the supervisor, as the protocol reports them. The log gets
// the precise reason in Detail.
var (
	// ErrTimeout: the worker overran the deadline and was killed.
	ErrTimeout = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "key derivation timed out")
	// ErrStopped: the worker stopped answering the watchdog and was killed.
	ErrStopped = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "key derivation worker stopped responding")
	// ErrOutOfMemory: the worker was killed for memory (its cgroup's
	// limit, or the kernel's OOM killer).
	ErrOutOfMemory = wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "key derivation ran out of memory")
	// ErrKilled: the worker was killed by a signal that neither the
	// daemon nor the OOM killer sent (an administrator, another program).
	ErrKilled = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "key derivation worker was killed")
	// ErrQueueFull: the budget is taken and the queue is full.
	ErrQueueFull = wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too many key derivations waiting; try again later")
	// ErrClosed: the daemon is shutting down.
	ErrClosed = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the daemon is shutting down")
	// ErrFailed: the worker failed in a way that is the daemon's problem.
	ErrFailed = wire.Errorf(wire.Status_STATUS_INTERNAL, "key derivation failed")
	// ErrUnavailable: this daemon has no key derivation (no supervisor).
	ErrUnavailable = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "key derivation is not available in this daemon")
)

// IsError reports whether err is the error target, whatever detail was
// added to it: errors.Is(err, target), as a copy made by WithDetail matches
// the sentinel it was made from.
func IsError(err error, target *wire.Error) bool {
	return errors.Is(err, target)
}

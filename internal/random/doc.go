// Package random is the daemon's one source of random bytes: key bytes,
// key ids, AES-GCM nonces, data keys, salts, wrapping keys, RSA-OAEP seeds
// and audit segment nonces all come from it (docs/genid.md, "Randomness").
//
// Each read takes fresh bytes from the kernel (getrandom) and encrypts
// each block of 16 under AES-256 with a key of the daemon's own: a keyed
// permutation, so the output is as unpredictable as the kernel's bytes if
// the key is known, and as the key if the kernel's bytes are. The daemon's
// key is drawn from getrandom (and the CPU's RDSEED or RDRAND where
// present) at start, and re-keyed at every change of the machine's
// generation with new getrandom output, the CPU's random instructions and
// what the change itself brought (the new VM generation ID, bytes an
// orchestrator sent, the time): two clones of one snapshot then draw
// different bytes as soon as one of those inputs differs between them,
// even while their kernels still return the same bytes.
//
// Whether one does is not always known. After a change the source is
// Unconfirmed until something says it is not: the kernel re-seeded (a
// forced reseed succeeded, the kernel said so in its log, or its scheduled
// reseed is past), or an input unique to this machine was mixed in. Until
// then Read waits a moment and then fails with ErrNotFresh, which the
// daemon returns to the client as UNAVAILABLE: it would rather refuse than
// repeat a nonce or a key that a clone also made. The package knows
// nothing of generations itself: package genid decides what confirms
// what and calls Change and Confirm.
//
// Go's crypto/rsa generates keys from the standard library's own source
// whatever reader it is given (Go 1.26); callers generating RSA keys
// therefore wait for the kernel itself to be fresh (AwaitKernel).
package random

// Package shm reads and writes words of memory shared with another
// process (a mapping of a memfd or a device page) atomically: the
// generation page the daemon hands to clients (docs/genid.md) and the
// vmclock device page.
//
// It is one of the two packages allowed to import unsafe (with
// internal/secmem): sync/atomic needs a pointer, and a mapping is only a
// byte slice. Every access checks bounds and alignment. It holds no state
// and must never do I/O; both the client library and the daemon import it.
package shm

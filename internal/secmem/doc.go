// Package secmem holds key bytes outside the Go heap, in memory the kernel
// never swaps, never dumps and (where it can) never even maps for itself:
// a slab allocator over large regions of memfd_secret(2) memory, or, where
// the kernel lacks it, of anonymous memory that is mlock(2)ed, excluded
// from core dumps (MADV_DONTDUMP) and wiped in a forked child
// (MADV_WIPEONFORK). Each region sits between PROT_NONE guard pages; each
// allocation is followed by a canary checked when it is freed, and is wiped
// when it is freed.
//
// It also wraps runtime/secret.Do: code that touches key bytes runs inside
// Do, so that the registers, stack and heap it used are erased afterwards
// (when the program is built with GOEXPERIMENT=runtimesecret; without it,
// Do just calls its function).
//
// This is the only package of keywarden that uses unsafe or maps memory.
// It knows nothing of keys: it stores bytes.
package secmem

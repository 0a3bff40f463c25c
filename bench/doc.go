// Package bench compares keywarden with other libraries, measured in the
// same run (docs/performance.md): its secure memory with memguard's
// locked buffers. It is a module of its own, so that what keywarden is
// compared with is none of keywarden's dependencies.
package bench

//go:build goexperiment.runtimesecret

package secmem

import "runtime/secret"

// RuntimeSecret reports whether Do erases what its function used.
const RuntimeSecret = true

// Do runs f and then erases the registers and stack f used; heap memory f
// allocated is erased as soon as the garbage collector frees it.
func Do(f func()) { secret.Do(f) }

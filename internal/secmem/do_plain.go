//go:build !goexperiment.runtimesecret

package secmem

// RuntimeSecret reports whether Do erases what its function used. This
// build lacks GOEXPERIMENT=runtimesecret, so it does not.
const RuntimeSecret = false

// Do runs f. Built with GOEXPERIMENT=runtimesecret it would also erase the
// registers, stack and heap memory f used.
func Do(f func()) { f() }

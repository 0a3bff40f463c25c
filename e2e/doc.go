// Package e2e holds keywarden's end-to-end tests: they start the real
// daemon (the test binary re-executed as the keywarden command) on a
// temporary socket and drive it with the Go client, with the CLI, with
// raw protocol messages, and as other users.
//
// The package has no code of its own outside tests. Its subpackage
// vmguest is the program the snapshot test (vm_test.go) runs as init and
// as keywarden inside a QEMU guest.
package e2e

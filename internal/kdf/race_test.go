//go:build race

package kdf

// raceEnabled: workers are race-instrumented test binaries, which need
// several times the memory of a real worker.
const raceEnabled = true

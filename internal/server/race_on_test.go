//go:build race

package server

// raceEnabled: with the race detector, sync.Pool drops some of what it is
// given, so tests of what pools spare are skipped.
const raceEnabled = true

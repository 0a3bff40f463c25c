//go:build race

package policy

// raceEnabled: the race detector slows the model search tenfold, and it
// runs in one goroutine: the full search runs without it.
const raceEnabled = true

// Package bench measures keywarden against the Go standard library. It
// runs each operation in-process with the standard library and through a
// daemon in another process (one operation per round trip, pipelined, and
// batched), in one run, and reports throughput, latency and the ratio of
// each figure to the in-process one. It backs "keywarden bench" and this
// package's Go benchmarks.
//
// It owns the measurement: the operations and modes, the private daemon it
// starts as a separate process for a run, the timing loops and the
// statistics. It is an ordinary client: it reaches the daemon only through
// the client library, never through the daemon's packages, and it must
// never be imported by the daemon or its request path. Its keys are
// ephemeral, die with its connection, and are never exported or printed.
package bench

// Package bench measures keywarden against the Go standard library. It
// runs each operation in-process with the standard library and through a
// daemon in another process (one operation per round trip, pipelined, and
// batched), in one run, and reports throughput, latency and the ratio of
// each figure to the in-process one. It backs "keywarden bench" and this
// package's Go benchmarks.
//
// RunSSHAgent compares Ed25519 signatures through a daemon's ssh-agent
// socket with OpenSSH's own ssh-agent, started for the run, and with the
// daemon's own socket and the standard library.
//
// It also measures the persistent store through a daemon: the creation of
// persistent keys, durable before each reply, from several clients
// (RunCreate), and a daemon's start-up, unseal, memory and first key use
// on a large store (RunStartup). Their in-process baselines, and the
// generator of large stores, are the daemon's own code and live in
// package storebench; the caller passes them in as functions.
//
// It owns the measurement: the operations and modes, the private daemons
// it starts as separate processes, the timing loops and the statistics.
// It is an ordinary client: it reaches the daemon only through the client
// library, never through the daemon's packages, and it must never be
// imported by the daemon or its request path. Its keys are ephemeral, die
// with its connection, and are never exported or printed, except the
// persistent keys the store measurements make in stores of their own and
// RunSSHAgent's two Ed25519 keys, made in the measuring process and given
// to a development daemon and to OpenSSH's agent, both private to the
// run, which they die with.
package bench

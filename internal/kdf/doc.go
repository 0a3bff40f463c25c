// Package kdf runs Argon2id for the daemon without running it in the
// daemon: every derivation happens in a short-lived worker process, the
// keywarden binary itself started in worker mode (docs/kdf.md).
//
// The package owns both sides of that arrangement:
//
//   - the worker (WorkerMain): it hardens itself (not dumpable, no core
//     dumps, first in line for the OOM killer), reads exactly one request
//     on stdin, answers the daemon's watchdog challenges while Argon2id
//     runs, writes exactly one result on stdout, wipes its buffers and
//     exits;
//   - the Supervisor, in the daemon: it validates parameters before any
//     worker starts, admits derivations against a memory budget with a
//     bounded first-in-first-out queue, starts each worker with a clean
//     environment in its own memory cgroup where the machine allows it,
//     kills a worker that overruns its deadline or stops answering the
//     watchdog, and always reaps it;
//   - the PHC string format of password hashes, and the calibration of
//     parameters against a target time.
//
// The daemon never calls golang.org/x/crypto/argon2 itself: only the
// worker does, and the tests. Nothing here logs a passphrase, a password,
// a salt-and-hash pair or derived bytes; buffers that held them are wiped
// after use in both processes. Errors returned to the server are
// *wire.Error values whose public text is deliberately general.
package kdf

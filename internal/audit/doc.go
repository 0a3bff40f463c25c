// Package audit is keywarden's audit log: one record for every request,
// written before the reply is sent, in a chain that nobody can edit,
// delete from, reorder or cut unseen (docs/audit.md).
//
// A Log appends JSON lines in one canonical encoding. Each line carries
// a chain hash over its own bytes and the previous line's hash; while the
// daemon holds its audit keys, each line also carries an HMAC of that hash
// (the MAC key), and checkpoints signed with Ed25519 (the checkpoint key,
// whose public half the daemon publishes) vouch for everything before
// them. A run of the log signs only what it has verified: before its
// first checkpoint it checks what earlier runs wrote since the last one
// signed with its keys, and sets aside as evidence what it cannot verify
// (vouch.go). Verify checks a log, or a rotated series of log files, and
// names the first bad record or the missing tail. Scan, Last and Follow
// read records for `keywarden audit query` and `tail`.
//
// The log is fail-closed: when a record cannot be written, Append says so
// with an error that matches ErrUnavailable, the operation must not take
// effect, and the log keeps trying in the background and records, when it
// can write again, that it could not and for how long. Appends from many
// goroutines are grouped into one write (and, with SyncAlways, one fsync)
// without a lock held across I/O.
//
// Resolver reads the caller's executable and cgroup through the pidfd the
// kernel attaches to each message, so that a reused pid is never
// attributed to the original caller. Key-management records also go to
// the kernel's audit subsystem (package linuxaudit) when the daemon may
// send there.
//
// The package never sees key material of clients: records hold key ids,
// never key bytes, plaintext or passphrases. Its own keys (Keys) are
// derived from a secret the daemon keeps under its master key.
package audit

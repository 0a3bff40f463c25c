// Package seal keeps keywarden's master key: it creates it (init), seals
// it under a passphrase (Argon2id, run by a KDF worker) and/or splits it
// into k-of-n shares (package shamir), unseals it, wipes it (seal), and
// rotates it. It derives from the master key of each generation what the
// key store needs (keys.go): the blob keys that seal key blobs, the index
// key that authenticates records, the store header and the master record
// itself, the material key of fingerprints, and the audit secret, so that
// a rotation changes them all; the keyring holds the one secret that is
// not derived, the fingerprint key. It upgrades a master record of the
// previous format (Master.Upgrade). Every secret lives in locked memory as
// a mech.Key.
//
// # Sealed and unsealed: who owns the keys' lifetime
//
// Master is the one owner of the seal state and of the lifetime of
// everything derived from the master key. The protocol:
//
//   - An unseal (or init) publishes a Keys value under a new unsealed
//     epoch (Lease.Epoch). Unseals finish one at a time; the caller's state
//     of the epoch (the key store's, made by its check of the store) is
//     installed by Install atomically with the publication, so that a seal
//     sees both or neither. A seal that comes while an unseal checks the
//     store makes that unseal fail: nothing is published after a seal.
//   - Every use of the keys holds a Lease (Acquire ... Release), taken for
//     one operation and never kept: a store write, a load, a re-wrap
//     batch. Acquire fails with ErrSealed once a seal has begun.
//   - A seal (SealWith) withdraws the keys at once, with the caller's state
//     of the epoch (its drop function, under the same lock), then waits, up
//     to SealWait, for the leases held. A Keys value is wiped when it is
//     withdrawn (or replaced by a rotation) and its last lease is
//     released, never before: no secret is wiped under an operation.
//   - An unseal checks the store only once every lease on keys withdrawn
//     by a seal (or replaced by a rotation) is released, waiting up to
//     SealWait, else it fails as UNAVAILABLE: a write begun before the seal
//     may commit after it, and the check must see it.
//   - Objects made with the keys of one epoch carry it, and are refused in
//     any other (the key store's business).
//   - A rotation's re-wrap records its progress (RotationStep) only with
//     the keys still published, so a batch overtaken by a seal rolls back
//     whole; and FinishRotation retires the previous generation only if a
//     count of the records that still name it, made in the transaction
//     that retires it, finds none.
//
// Lock order: Master.unsealing, then Master.mu, then the key store's
// mutex; functions passed to Install and SealWith run under Master.mu and
// must not call back into the Master.
//
// The files follow the phases of the master key's life: state.go (the
// Master, its state, seal and the replacement of the store), init.go (a
// new master key), keyring.go (what the master record seals, and how),
// unseal.go (passphrase and shares), rotation.go (a new generation, the
// re-wrap's progress and its end, the upgrade from format 1); keys.go and
// lease.go hold the keys derived from the master key and their leases.
//
// The master key never touches a disk in the clear. The master record
// (persist.MasterRecord) holds it only sealed. docs/formats.md describes
// the record; docs/operations.md the operator's side.
package seal

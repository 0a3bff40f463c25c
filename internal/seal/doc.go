// Package seal keeps keywarden's master key: it creates it (init), seals
// it under a passphrase (Argon2id, run by a KDF worker) and/or splits it
// into k-of-n shares (package shamir), unseals it, wipes it (seal), and
// rotates it. It derives from the master key what the key store needs:
// the storage keys that seal key blobs (one per master-key generation)
// and, through the keyring, the index key that authenticates records and
// the audit key. Every secret lives in locked memory as a mech.Key.
//
// The master key never touches a disk in the clear. The master record
// (persist.MasterRecord) holds it only sealed. docs/formats.md describes
// the record; docs/operations.md the operator's side.
package seal

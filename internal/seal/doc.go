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
// The master key never touches a disk in the clear. The master record
// (persist.MasterRecord) holds it only sealed. docs/formats.md describes
// the record; docs/operations.md the operator's side.
package seal

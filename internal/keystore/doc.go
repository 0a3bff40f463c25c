// Package keystore holds the daemon's key objects: the index of persistent
// keys by id and by (owner, name), the count of live keys per owner that
// the quota is checked against, and each object's attributes and material.
//
// The store decides nothing about who may use a key (package policy does)
// and never touches key bytes itself (package mech does); it owns their
// lifetime: an object's material is wiped when the object is destroyed,
// and never while an operation is using it.
//
// The master key's keys are used only under a lease on the unsealed epoch
// (seal.Lease; the protocol is in package seal's doc): every operation
// that reads or writes records takes one (Store.lease) and holds it to its
// end, so that a seal waits for it rather than wiping the keys under it.
// The store's state of an epoch (the counts, the materials, the records
// seen) is installed by the check at unseal together with the keys, and
// dropped by the seal together with them; an object carries the epoch it
// was made or loaded in, and is refused in any other: a creation that
// completes after a seal began publishes no key, and a handle from before
// a seal destroys nothing. Key counts follow one source each, within the
// epoch they were counted in: a persistent key counts from its record
// (reserved before the record is written, given back if that fails, and
// removed when the transaction that deleted the record commits), an
// ephemeral key while the store holds it; the check at unseal counts them
// anew.
package keystore

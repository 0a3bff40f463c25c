// Package keystore holds the daemon's key objects: the index of persistent
// keys by id and by (owner, name), the count of live keys per owner that
// the quota is checked against, and each object's attributes and material.
//
// The store decides nothing about who may use a key (package policy does)
// and never touches key bytes itself (package mech does); it owns their
// lifetime: an object's material is wiped when the object is destroyed,
// and never while an operation is using it.
package keystore

// Package persist defines what keywarden keeps in its store and how it is
// protected (docs/formats.md): the key records, the store header, the
// master record, the associated data that binds a sealed key blob to its
// record, the record MAC, and the header's accumulator over every record.
//
// It holds no secrets: callers pass the keys (the master key's storage
// and index keys, held in locked memory by package mech) as MAC and seal
// functions.
package persist

// Package store is keywarden's durable storage: a small transactional
// key-value interface (buckets of ordered keys) with three
// implementations, a single bbolt file (the embedded default), an etcd
// cluster shared by the daemons of several machines, and memory
// (development mode and tests), and one conformance suite run against
// each.
//
// It stores bytes. What they mean (wrapped key blobs and non-secret
// metadata, never key material in the clear) is package keystore's and
// package seal's business.
package store

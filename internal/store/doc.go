// Package store is keywarden's durable storage: a small transactional
// key-value interface (buckets of ordered keys) with two implementations,
// a single bbolt file (the embedded default) and memory (development
// mode and tests), and one conformance suite run against both.
//
// It stores bytes. What they mean (wrapped key blobs and non-secret
// metadata, never key material in the clear) is package keystore's and
// package seal's business. The interface is small on purpose, so that a
// cluster backend can implement it later.
package store

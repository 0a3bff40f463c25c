package store

import (
	"errors"
	"time"
)

// Store is a transactional key-value store of named buckets, each an
// ordered map from byte keys to byte values.
type Store interface {
	// Update runs fn in a read-write transaction and returns once the
	// transaction is durable (or fn failed, and nothing changed).
	// Concurrent calls may be committed together, with one fsync; fn may
	// then be called more than once, so it must have no effect beyond tx.
	Update(fn func(Tx) error) error
	// View runs fn in a read-only transaction on a consistent snapshot.
	View(fn func(Tx) error) error
	// Close releases the store. Later calls fail with ErrClosed.
	Close() error
}

// Copier is a Store that keeps a consistent copy of itself in a new file:
// a restore keeps the store it replaces.
type Copier interface {
	// KeepCopy writes a copy beside the store, in a file named for its
	// purpose and the time (tag, now), that did not exist before, and
	// returns its path once the copy is durable.
	KeepCopy(tag string, now time.Time) (string, error)
}

// Bounded is implemented by a Store whose transactions hold at most
// MaxOps reads and at most MaxOps writes (etcd's --max-txn-ops). Work
// that writes in batches sizes them to it.
type Bounded interface {
	MaxOps() int
}

// ByteBounded is implemented by a Store whose transactions are bounded in
// bytes too (etcd's --max-request-bytes). Work that writes in batches
// sizes them to it as well: the sizes of its writes, each given by
// PutSize, add up to at most MaxBytes in one transaction, with a little
// room left for its guards.
type ByteBounded interface {
	MaxBytes() int
	// PutSize is what a Put of a value of n bytes under bucket and key
	// counts toward MaxBytes.
	PutSize(bucket, key []byte, n int) int
}

// ErrTooLarge: a transaction is larger than the store takes in one, and
// cannot be split (one write alone is too large).
var ErrTooLarge = errors.New("store: a transaction larger than the store takes")

// BatchSize is how many items a transaction that reads and writes about
// perItem keys for each item, plus overhead keys of its own, may take on
// s: want, or fewer where s bounds its transactions (at least 1).
func BatchSize(s Store, want, perItem, overhead int) int {
	b, ok := s.(Bounded)
	if !ok {
		return want
	}
	return max(1, min(want, (b.MaxOps()-overhead)/perItem))
}

// Isolating is implemented by a Store whose Update may commit concurrent
// calls together (Bolt). UpdateAlone is Update in a transaction of its
// own: no other call's fn runs in it, so when fn is called the commit
// functions (Tx.OnCommit) of every write before it have run. A check of
// the whole store against what those functions recorded needs that: in a
// shared transaction, the writes of the calls before fn are in the
// transaction, and their commit functions have not run.
type Isolating interface {
	UpdateAlone(fn func(Tx) error) error
}

// UpdateAlone runs fn in a transaction of its own: s.UpdateAlone, or
// s.Update where s commits every call alone.
func UpdateAlone(s Store, fn func(Tx) error) error {
	if i, ok := s.(Isolating); ok {
		return i.UpdateAlone(fn)
	}
	return s.Update(fn)
}

// Tx is a transaction. Slices it returns are valid only until the
// transaction ends; copy what must outlive it.
type Tx interface {
	// Get returns the value of key in bucket, or nil.
	Get(bucket, key []byte) []byte
	// Put sets key in bucket, creating the bucket if needed.
	Put(bucket, key, value []byte) error
	// Delete removes key from bucket; a missing key is not an error.
	Delete(bucket, key []byte) error
	// ForEach calls fn for the keys of bucket greater than after (all
	// keys when after is nil), in order, until fn returns an error or
	// ErrStop. fn must not modify bucket.
	ForEach(bucket, after []byte, fn func(k, v []byte) error) error
	// OnCommit registers fn to run once the transaction is durable, before
	// Update returns: the functions of successive transactions run in the
	// order the transactions committed, those of one transaction in the
	// order they were registered. They do not run if the transaction
	// rolls back (a failed fn, a failed commit, or a View). fn must be
	// quick and must not use the store.
	OnCommit(fn func())
}

// Errors.
var (
	// ErrClosed is returned after Close. An Update that was already
	// being committed when Close came may fail with it and still have
	// been committed (the etcd store's transaction may reach the cluster
	// before its answer is lost): ErrClosed from Update means "not known
	// to be written", not "not written".
	ErrClosed = errors.New("store: closed")
	// ErrStop ends a ForEach early without error.
	ErrStop = errors.New("store: stop iteration")
	// ErrReadOnly is returned by writes in a View transaction.
	ErrReadOnly = errors.New("store: write in a read-only transaction")
)

package store

import (
	"bytes"
	"errors"
	"fmt"
)

// Migrate copies buckets from one store to another that holds nothing in
// them (from one machine's bbolt file into an etcd cluster, or back),
// then reads both and checks that every key of every bucket has the same
// value in each. It writes at most chunk keys per transaction (an etcd
// transaction has a bounded number of operations), and no more bytes
// than the destination takes in one (ByteBounded), so a copy that fails
// half-way leaves part of it in to: the check then fails, and to must be
// emptied before a new try. Nothing may write either store meanwhile
// (every daemon on them stopped). It returns the number of keys copied.
func Migrate(from, to Store, buckets [][]byte, chunk int) (int, error) {
	if chunk <= 0 {
		chunk = 64
	}
	for _, b := range buckets {
		var any bool
		if err := to.View(func(tx Tx) error {
			return tx.ForEach(b, nil, func(k, v []byte) error { any = true; return ErrStop })
		}); err != nil {
			return 0, fmt.Errorf("the destination: %w", err)
		}
		if any {
			return 0, fmt.Errorf("the destination is not empty (bucket %q has keys): migrate only into a new store", b)
		}
	}
	type kv struct{ k, v []byte }
	n := 0
	for _, b := range buckets {
		var after []byte
		for {
			var batch []kv
			if err := from.View(func(tx Tx) error {
				size := 0
				return tx.ForEach(b, after, func(k, v []byte) error {
					if bb, ok := to.(ByteBounded); ok {
						// Within the destination's request size too (a
						// record alone too large fails in its Update).
						n := bb.PutSize(b, k, len(v))
						if len(batch) > 0 && size+n > bb.MaxBytes() {
							return ErrStop
						}
						size += n
					}
					batch = append(batch, kv{bytes.Clone(k), bytes.Clone(v)})
					if len(batch) == chunk {
						return ErrStop
					}
					return nil
				})
			}); err != nil {
				return n, fmt.Errorf("the source: %w", err)
			}
			if len(batch) == 0 {
				break
			}
			if err := to.Update(func(tx Tx) error {
				for _, e := range batch {
					if err := tx.Put(b, e.k, e.v); err != nil {
						return err
					}
				}
				return nil
			}); err != nil {
				return n, fmt.Errorf("the destination, after %d keys: %w", n, err)
			}
			n += len(batch)
			after = batch[len(batch)-1].k
		}
	}
	if err := Compare(from, to, buckets); err != nil {
		return n, err
	}
	return n, nil
}

// errDiffer: two stores differ.
var errDiffer = errors.New("store: the copy differs from the source")

// Compare reads buckets of a and b and fails unless every key has the
// same value in both.
func Compare(a, b Store, buckets [][]byte) error {
	read := func(s Store, bucket []byte) (map[string][]byte, error) {
		m := map[string][]byte{}
		err := s.View(func(tx Tx) error {
			return tx.ForEach(bucket, nil, func(k, v []byte) error { m[string(k)] = bytes.Clone(v); return nil })
		})
		return m, err
	}
	for _, bk := range buckets {
		ma, err := read(a, bk)
		if err != nil {
			return err
		}
		mb, err := read(b, bk)
		if err != nil {
			return err
		}
		if len(ma) != len(mb) {
			return fmt.Errorf("%w: bucket %q has %d keys in the source, %d in the copy", errDiffer, bk, len(ma), len(mb))
		}
		for k, v := range ma {
			if w, ok := mb[k]; !ok || !bytes.Equal(v, w) {
				return fmt.Errorf("%w: bucket %q, key %x", errDiffer, bk, k)
			}
		}
	}
	return nil
}

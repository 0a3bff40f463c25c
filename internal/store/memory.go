package store

import (
	"bytes"
	"errors"
	"slices"
	"sync"
)

// Memory is a Store in memory: development mode, where nothing may reach
// a disk, and tests. Transactions are serialized; a failed Update changes
// nothing.
type Memory struct {
	mu      sync.RWMutex
	buckets map[string]*memBucket
	closed  bool
}

type memBucket struct {
	keys []string // sorted
	vals map[string][]byte
}

// NewMemory returns an empty memory store.
func NewMemory() *Memory { return &Memory{buckets: make(map[string]*memBucket)} }

func (m *Memory) Update(fn func(Tx) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return ErrClosed
	}
	tx := &memTx{m: m, writable: true}
	if err := fn(tx); err != nil {
		tx.rollback()
		return err
	}
	for _, f := range tx.onCommit {
		f()
	}
	return nil
}

func (m *Memory) View(fn func(Tx) error) error {
	m.mu.RLock()
	defer m.mu.RUnlock()
	if m.closed {
		return ErrClosed
	}
	return fn(&memTx{m: m})
}

func (m *Memory) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	for _, b := range m.buckets {
		for _, v := range b.vals {
			clear(v)
		}
	}
	m.buckets = nil
	return nil
}

type memTx struct {
	m        *Memory
	writable bool
	undo     []memUndo // in order of the writes
	onCommit []func()
}

// memUndo restores one key (or removes a bucket the transaction created).
type memUndo struct {
	bucket, key string
	val         []byte
	existed     bool
	newBucket   bool
}

func (t *memTx) rollback() {
	for i := len(t.undo) - 1; i >= 0; i-- {
		u := t.undo[i]
		if u.newBucket {
			delete(t.m.buckets, u.bucket)
			continue
		}
		b := t.m.buckets[u.bucket]
		if u.existed {
			b.set(u.key, u.val)
		} else {
			b.del(u.key)
		}
	}
}

func (b *memBucket) set(k string, v []byte) {
	if _, exists := b.vals[k]; !exists {
		i, _ := slices.BinarySearch(b.keys, k)
		b.keys = slices.Insert(b.keys, i, k)
	}
	b.vals[k] = v
}

func (b *memBucket) del(k string) {
	delete(b.vals, k)
	if i, found := slices.BinarySearch(b.keys, k); found {
		b.keys = slices.Delete(b.keys, i, i+1)
	}
}

func (t *memTx) Get(bucket, key []byte) []byte {
	b := t.m.buckets[string(bucket)]
	if b == nil {
		return nil
	}
	return b.vals[string(key)]
}

func (t *memTx) Put(bucket, key, value []byte) error {
	if !t.writable {
		return ErrReadOnly
	}
	if len(key) == 0 {
		return errors.New("store: empty key")
	}
	name := string(bucket)
	b := t.m.buckets[name]
	if b == nil {
		b = &memBucket{vals: make(map[string][]byte)}
		t.m.buckets[name] = b
		t.undo = append(t.undo, memUndo{bucket: name, newBucket: true})
	}
	k := string(key)
	old, existed := b.vals[k]
	t.undo = append(t.undo, memUndo{bucket: name, key: k, val: old, existed: existed})
	b.set(k, bytes.Clone(value))
	return nil
}

func (t *memTx) Delete(bucket, key []byte) error {
	if !t.writable {
		return ErrReadOnly
	}
	name := string(bucket)
	b := t.m.buckets[name]
	if b == nil {
		return nil
	}
	k := string(key)
	old, exists := b.vals[k]
	if !exists {
		return nil
	}
	t.undo = append(t.undo, memUndo{bucket: name, key: k, val: old, existed: true})
	b.del(k)
	return nil
}

// OnCommit's functions run while Update still holds m.mu: no reader sees
// the transaction's writes before they have run.
func (t *memTx) OnCommit(fn func()) {
	if t.writable {
		t.onCommit = append(t.onCommit, fn)
	}
}

func (t *memTx) ForEach(bucket, after []byte, fn func(k, v []byte) error) error {
	b := t.m.buckets[string(bucket)]
	if b == nil {
		return nil
	}
	i := 0
	if after != nil {
		var found bool
		i, found = slices.BinarySearch(b.keys, string(after))
		if found {
			i++
		}
	}
	keys := b.keys[i:]
	for _, k := range keys {
		if err := fn([]byte(k), b.vals[k]); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

package keystore

import (
	"context"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
)

// groupingStore commits the next two Update calls in one transaction, in
// the order they came, as Bolt may (store.Store allows it): the second
// call's fn runs before the first call's commit functions. UpdateAlone
// runs alone, after the calls before it.
type groupingStore struct {
	store.Store
	mu      sync.Mutex
	armed   bool
	waiting *groupCall
	arrived chan struct{} // closed when the first call of the group waits
}

type groupCall struct {
	fn   func(store.Tx) error
	err  error
	done chan struct{}
}

func (g *groupingStore) Update(fn func(store.Tx) error) error {
	g.mu.Lock()
	if !g.armed {
		g.mu.Unlock()
		return g.Store.Update(fn)
	}
	if g.waiting == nil {
		c := &groupCall{fn: fn, done: make(chan struct{})}
		g.waiting = c
		close(g.arrived)
		g.mu.Unlock()
		<-c.done
		return c.err
	}
	first := g.waiting
	g.waiting, g.armed = nil, false
	g.mu.Unlock()
	// Both in one transaction; a failing fn alone fails (as Bolt retries
	// the others without it).
	var firstErr, err error
	terr := g.Store.Update(func(tx store.Tx) error {
		if firstErr = first.fn(tx); firstErr != nil {
			return firstErr
		}
		err = fn(tx)
		return err
	})
	switch {
	case firstErr != nil:
		first.err = firstErr
		close(first.done)
		return g.Store.Update(fn)
	case err != nil:
		first.err = g.Store.Update(first.fn)
		close(first.done)
		return err
	}
	first.err = terr
	close(first.done)
	return terr
}

func (g *groupingStore) UpdateAlone(fn func(store.Tx) error) error {
	g.mu.Lock()
	first := g.waiting
	g.waiting, g.armed = nil, false
	g.mu.Unlock()
	if first != nil {
		first.err = g.Store.Update(first.fn)
		close(first.done)
	}
	return g.Store.Update(fn)
}

// A master-key rotation committed in the same transaction as a key's
// creation (the store commits concurrent writers together) succeeds: the
// record written before it in the transaction is the daemon's own. Before,
// the rotation's check, made before the creation's commit functions ran,
// took it for a record changed behind the daemon's back and refused the
// rotation as INTERNAL ("a key record was changed while the daemon runs").
func TestRotationCommitGroupedWithWrite(t *testing.T) {
	db, err := store.OpenBolt(filepath.Join(t.TempDir(), "state"), time.Second)
	if err != nil {
		t.Fatal(err)
	}
	g := &groupingStore{Store: db}
	m, err := seal.Open(seal.Config{Store: g, KDF: inProcessKDF{}, InsecureKDF: true})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{MaxPerUser: 1000, DB: g, Master: m})
	t.Cleanup(func() { s.Close(); db.Close() })
	p, err := m.PrepareInit(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams}, false)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.CommitInit(p, func(k *seal.Keys) ([]byte, error) { return NewHeader(k, time.Now()) }); err != nil {
		t.Fatal(err)
	}
	k, _ := m.Keys()
	if err := s.Verify(k, false); err != nil {
		t.Fatal(err)
	}
	ids := addOwnerKeys(t, s, 3)

	rot, err := m.PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams})
	if err != nil {
		t.Fatal(err)
	}
	g.mu.Lock()
	g.armed, g.arrived = true, make(chan struct{})
	arrived := g.arrived
	g.mu.Unlock()
	o := obj(t, 1, "", false)
	added := make(chan error, 1)
	go func() { added <- s.Add(o) }()
	<-arrived // the creation's write waits for its group
	if err := s.CommitRotation(rot); err != nil {
		t.Fatalf("a rotation committed with a creation: %v", err)
	}
	if err := <-added; err != nil {
		t.Fatal(err)
	}
	ids = append(ids, o.ID)
	s.Release(o)
	finishRewrap(t, s)
	checkAll(t, s, ids)
}

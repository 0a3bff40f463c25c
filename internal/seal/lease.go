package seal

import (
	"time"
)

// The lifetime of the master key's secrets (see the package doc): a Keys
// value is published by an unseal (or init) and unpublished by a seal or
// replaced by a rotation; every user of it holds a Lease, and it is wiped
// once it is unpublished and its last lease is released, never before.

// DefaultSealWait bounds how long Seal waits for the operations that hold
// a lease on the keys it seals away (see Master.SealWait).
const DefaultSealWait = 10 * time.Second

// Lease is a hold on the Keys of one unsealed epoch: while it is held,
// nothing of them is wiped, and a seal waits for it (up to its bound).
// Release it promptly, once; a lease is for one operation, never kept.
type Lease struct {
	m *Master
	k *Keys
}

// Keys returns the leased keys.
func (l *Lease) Keys() *Keys { return l.k }

// Epoch returns the unsealed epoch the lease belongs to: every unseal
// (and init) starts a new one, never 0. Objects made from the keys of one
// epoch are refused in any other.
func (l *Lease) Epoch() uint64 { return l.k.epoch }

// Release gives the lease back. The last lease on keys that were sealed
// away or replaced wipes them.
func (l *Lease) Release() {
	if l == nil || l.k == nil {
		return
	}
	k := l.k
	l.k = nil
	l.m.mu.Lock()
	k.users--
	wipe := k.users == 0 && k.retired
	if wipe {
		if l.m.retiredBusy--; l.m.retiredBusy == 0 {
			close(l.m.drained)
			l.m.drained = nil
		}
	}
	l.m.mu.Unlock()
	if wipe {
		k.wipe()
		close(k.idle)
	}
}

// Acquire leases the published keys: ErrSealed or ErrNotInitialized when
// there are none (a seal has begun: operations that start then fail as
// sealed, never as "key destroyed").
func (m *Master) Acquire() (*Lease, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	k, err := m.keysLocked()
	if err != nil {
		return nil, err
	}
	k.users++
	return &Lease{m: m, k: k}, nil
}

// publish makes k the unsealed keys. m.mu is held; k.epoch is set (a new
// epoch by newEpoch, or, for a rotation's replacement, the epoch of the
// keys it replaces).
func (m *Master) publish(k *Keys) {
	k.idle = make(chan struct{})
	m.keys = k
	m.changes++
}

// newEpoch returns a fresh epoch number. m.mu is held.
func (m *Master) newEpoch() uint64 {
	m.epochs++
	return m.epochs
}

// retire marks k (unpublished or replaced) to be wiped once its last
// lease is released, at once if it has none; it returns a channel closed
// then. m.mu is held. The wipe itself runs without m.mu: the caller calls
// the returned function after unlocking.
func (m *Master) retire(k *Keys) (idle <-chan struct{}, wipeNow func()) {
	if k == nil {
		c := make(chan struct{})
		close(c)
		return c, func() {}
	}
	if k.idle == nil { // never published
		k.idle = make(chan struct{})
	}
	was := k.retired
	k.retired = true
	if k.users > 0 {
		if !was { // counted once, until its last lease is released
			if m.retiredBusy++; m.retiredBusy == 1 {
				m.drained = make(chan struct{})
			}
		}
		return k.idle, func() {}
	}
	return k.idle, func() {
		k.wipe()
		close(k.idle)
	}
}

// waitIdle waits for idle up to the seal bound; it reports whether the
// keys were wiped in time.
func (m *Master) waitIdle(idle <-chan struct{}) bool {
	wait := m.SealWait
	if wait <= 0 {
		wait = DefaultSealWait
	}
	t := time.NewTimer(wait)
	defer t.Stop()
	select {
	case <-idle:
		return true
	case <-t.C:
		return false
	}
}

// SetHookUnsealVerify sets, for tests only, a function that an unseal runs
// once it has made its keys and before it checks the store with them: a
// fault point where a test seals or unseals meanwhile. t's cleanup clears
// it.
func SetHookUnsealVerify(t interface{ Cleanup(func()) }, fn func()) {
	hookUnsealVerify = fn
	t.Cleanup(func() { hookUnsealVerify = nil })
}

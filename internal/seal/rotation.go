package seal

import (
	"bytes"
	"context"
	"errors"
	"fmt"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// Upgrade rewrites the master record of format 1 that k was unsealed from
// in today's format, in one transaction with the caller's header (fn,
// which writes it under k), and marks every record as to be re-written
// (a rotation without a new master key: Rotation.legacy). The caller
// (the store's check at unseal, before k is published) has checked the
// store under format 1's rules. total is the number of key records.
func (m *Master) Upgrade(k *Keys, total uint64, fn func(tx store.Tx) error) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys != nil || m.rec == nil || m.rec.Format != persist.FormatLegacy || !k.legacyHeader {
		return wire.Errorf(wire.Status_STATUS_INTERNAL, "no store of format %d to upgrade", persist.FormatLegacy)
	}
	r := m.rec.CloneVT()
	r.Format = persist.Format
	var err error
	if r.Keyring, err = sealKeyring(k.mk, r.StoreId, k.material, k.legacy); err != nil {
		return err
	}
	if r.Rotation == nil {
		r.Rotation = &persist.Rotation{StartedUnixNano: m.now().UnixNano()}
	}
	// Every record is of format 1: all are re-written, from the first.
	r.Rotation.Legacy, r.Rotation.Cursor, r.Rotation.Done, r.Rotation.Total = true, nil, 0, total
	b, err := marshalMaster(k, r)
	if err != nil {
		return err
	}
	k.legacyHeader = false // fn writes the header of format 2
	err = m.st.Update(func(tx store.Tx) error {
		if err := tx.Put(persist.BucketMeta, persist.MetaMaster, b); err != nil {
			return err
		}
		return fn(tx)
	})
	if err != nil {
		k.legacyHeader = true
		return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "upgrading the store from format %d failed: %v", persist.FormatLegacy, err)
	}
	m.rec = r
	m.log.Warn("store upgraded from format 1: every key record is re-written in the background, as in a master-key rotation", "records", total)
	return nil
}

// PrepareRotation makes the next master-key generation, sealed as s says:
// every secret derived from the master key is new (the index key, the
// blob and material keys, the audit secret), and the current master key
// is sealed under the new one, so that records not yet re-wrapped still
// open.
func (m *Master) PrepareRotation(ctx context.Context, s Sealing) (*Pending, error) {
	m.mu.Lock()
	keys, err := m.keysLocked()
	rec := m.rec
	m.mu.Unlock()
	if err != nil {
		clear(s.Passphrase)
		return nil, err
	}
	if rec.Rotation != nil {
		clear(s.Passphrase)
		return nil, ErrRotating
	}
	return m.prepare(ctx, s, rec.StoreId, rec.Generation+1, keys)
}

// CommitRotation writes the new generation; total is the number of key
// records to re-wrap. header, called in the same transaction (one of its
// own: store.UpdateAlone) with the current keys and the new ones, rewrites the store header under the new
// ones. From then on new blobs are sealed under the new generation, and
// the caller re-wraps the others (RotationStep, then FinishRotation).
func (m *Master) CommitRotation(p *Pending, total uint64, header func(tx store.Tx, old, next *Keys) error) error {
	defer p.wipeShares()
	p.rec.Rotation.Total = total
	recBytes, err := marshalMaster(p.keys, p.rec)
	if err != nil {
		p.Discard()
		return err
	}
	m.mu.Lock()
	if m.keys == nil || m.rec.Generation != p.replaces {
		m.mu.Unlock()
		p.Discard()
		return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the master key changed or was sealed meanwhile")
	}
	old := m.keys
	// Alone: header checks the records against what the commit functions
	// of earlier writes recorded, which would not have run for writes
	// committed together with this one.
	err = store.UpdateAlone(m.st, func(tx store.Tx) error {
		if err := tx.Put(persist.BucketMeta, persist.MetaMaster, recBytes); err != nil {
			return err
		}
		return header(tx, old, p.keys)
	})
	if err != nil {
		m.mu.Unlock()
		p.Discard()
		var we *wire.Error
		if errors.As(err, &we) {
			return err
		}
		return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "writing the master record failed: %v", err)
	}
	// The new keys belong to the same unsealed epoch; the old ones are
	// wiped once the operations that hold them end.
	m.rec = p.rec
	p.keys.epoch = old.epoch
	_, wipe := m.retire(old)
	m.publish(p.keys)
	m.mu.Unlock()
	wipe()
	m.log.Info("master key rotated; re-wrapping keys", "generation", p.rec.Generation, "keys", total)
	return nil
}

// RotationStep records re-wrapping progress inside the caller's
// transaction, made with keys k (leased): cursor is the last record the
// rotation has passed, done how many it has passed. It fails with
// ErrSealed if k is no longer the unsealed keys (the caller's transaction
// then rolls back, and nothing is skipped). It returns the master record
// written, which the caller hands to RotationCommitted once the
// transaction is durable.
func (m *Master) RotationStep(tx store.Tx, k *Keys, cursor []byte, done uint64) (*persist.MasterRecord, error) {
	m.mu.Lock()
	rec, cur := m.rec.CloneVT(), m.keys
	m.mu.Unlock()
	if rec.Rotation == nil {
		return nil, nil
	}
	if cur != k {
		return nil, ErrSealed
	}
	rec.Rotation.Cursor = bytes.Clone(cursor)
	rec.Rotation.Done = done
	b, err := marshalMaster(k, rec)
	if err != nil {
		return nil, err
	}
	if err := tx.Put(persist.BucketMeta, persist.MetaMaster, b); err != nil {
		return nil, err
	}
	return rec, nil
}

// RotationCommitted makes rec, written by RotationStep in a transaction
// that committed, the master record in memory: with its MAC, which an
// unseal checks.
func (m *Master) RotationCommitted(rec *persist.MasterRecord) {
	if rec == nil {
		return
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rec.Rotation != nil && m.rec.Generation == rec.Generation {
		m.rec = rec
	}
}

// ErrRecordsLeft is FinishRotation's error when key records still name a
// master-key generation other than the current one.
type ErrRecordsLeft struct{ N uint64 }

func (e *ErrRecordsLeft) Error() string {
	return fmt.Sprintf("%d key records are not yet under the current master-key generation: the previous one is kept", e.N)
}

// FinishRotation ends a rotation once every record is re-wrapped: the
// previous master key's sealed copy is deleted and its keys wiped (and,
// after an upgrade, format 1's index key). It never assumes: left, run in
// the transaction that writes the master record, counts the key records
// that still need the previous generation (or format 1), and if there is
// any, nothing changes and the error is *ErrRecordsLeft. k are the
// caller's (leased) keys; ErrSealed if they are no longer the unsealed
// ones. The previous generation's keys are wiped once the leases on them
// are released.
func (m *Master) FinishRotation(k *Keys, left func(tx store.Tx) (uint64, error)) error {
	m.mu.Lock()
	if m.rec == nil || m.rec.Rotation == nil {
		m.mu.Unlock()
		return nil
	}
	if m.keys == nil || m.keys != k {
		m.mu.Unlock()
		return ErrSealed
	}
	r := m.rec.CloneVT()
	prev, legacy := r.Rotation.PreviousGeneration, r.Rotation.Legacy
	r.Rotation = nil
	var err error
	if legacy {
		if r.Keyring, err = sealKeyring(k.mk, r.StoreId, k.material, nil); err != nil {
			m.mu.Unlock()
			return err
		}
	}
	b, err := marshalMaster(k, r)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	next, err := k.without(prev)
	if err != nil {
		m.mu.Unlock()
		return err
	}
	err = m.st.Update(func(tx store.Tx) error {
		n, err := left(tx)
		if err != nil {
			return err
		}
		if n > 0 {
			return &ErrRecordsLeft{N: n}
		}
		return tx.Put(persist.BucketMeta, persist.MetaMaster, b)
	})
	if err != nil {
		m.mu.Unlock()
		next.wipe()
		return err
	}
	m.rec = r
	// New Keys without the previous generation are published, sharing
	// nothing with the old ones, which are wiped once unused.
	next.epoch = k.epoch
	_, wipe := m.retire(k)
	m.publish(next)
	m.mu.Unlock()
	wipe()
	m.log.Info("master-key rotation finished", "generation", r.Generation)
	return nil
}

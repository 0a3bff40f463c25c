package seal

import (
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
	"google.golang.org/protobuf/proto"
)

// KeyLen is the master key's length.
const KeyLen = 32

// Errors, as the wire reports them.
var (
	ErrSealed         = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the daemon is sealed: run \"keywarden unseal\"")
	ErrNotInitialized = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the daemon has no master key yet: run \"keywarden init\"")
	ErrInitialized    = wire.Errorf(wire.Status_STATUS_ALREADY_EXISTS, "the store already has a master key")
	ErrWrongSecret    = wire.Errorf(wire.Status_STATUS_PERMISSION_DENIED, "unseal failed: wrong passphrase or shares")
	ErrUnsealed       = wire.Errorf(wire.Status_STATUS_ALREADY_EXISTS, "the daemon is already unsealed")
	ErrNoSlot         = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the master key is not sealed with a passphrase")
	ErrNoShares       = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the master key is not split into shares")
	ErrRotating       = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "a master-key rotation is still re-wrapping keys")
)

// State describes the master key for Status.
type State struct {
	Initialized bool
	Sealed      bool
	Generation  uint64
	Passphrase  bool // a passphrase slot exists
	Threshold   int  // shares needed (0: not split)
	Shares      int  // shares made
	// SharesHeld counts the shares submitted toward the next unseal.
	SharesHeld int
	// RetryAfter is how long unseal attempts are refused after failures.
	RetryAfter time.Duration
	// Rotation progress (Rotating false when none is under way).
	Rotating             bool
	RotationDone, RotTot uint64
}

// Master keeps the master key of one store.
type Master struct {
	st  store.Store
	kdf Deriver
	log *slog.Logger
	now func() time.Time
	// rand makes the store id and passphrase salts, which a clone may
	// repeat harmlessly (docs/genid.md): it does not wait for fresh bytes.
	rand func([]byte)
	// insecureKDF: passphrase slots below MinParams are made (tests only).
	insecureKDF bool

	// SealWait bounds how long Seal waits for in-flight users of the keys
	// it seals away (0: DefaultSealWait); they are wiped when the last
	// one is done, however long that takes.
	SealWait time.Duration

	// unsealing serializes the end of unseals (the check of the store
	// and the publication of the keys): one finishes before the next
	// begins, and the second finds the daemon unsealed. Taken before mu.
	unsealing sync.Mutex

	// mu guards the fields below; it is never held across a KDF run.
	mu   sync.Mutex
	rec  *persist.MasterRecord // nil until initialized
	keys *Keys                 // the published keys; nil while sealed
	// retiredBusy counts the keys withdrawn by a seal or replaced by a
	// rotation that still have leases; drained is closed when it falls to
	// 0. An unseal checks the store only then, so that its check sees
	// every write made under them.
	retiredBusy int
	drained     chan struct{}
	// epochs numbers the unsealed epochs (newEpoch); changes counts
	// publications and seals: an unseal publishes only if none happened
	// since it began.
	epochs, changes uint64
	// pending is the unseal being finished (keys not yet published), and
	// install what its check of the store installs along with them.
	pending *Keys
	install func()
	held    []heldShare // shares submitted toward an unseal
	lim     limiter
	// recs counts the master records made or read in (init, restore),
	// but not the upgrade of one: an unseal begun on one finishes only on
	// it.
	recs uint64
}

type heldShare struct {
	split shamir.SplitID
	k     int
	x     byte
	y     *secmem.Buf
}

// Config configures a Master.
type Config struct {
	Store  store.Store
	KDF    Deriver // nil: passphrase slots are refused
	Logger *slog.Logger
	Now    func() time.Time
	// InsecureKDF, for tests only, lets init and rotation seal the master
	// key under a passphrase with Argon2id costs below MinParams (tests
	// derive in milliseconds). Never set it for keys that matter.
	InsecureKDF bool
}

// Open reads the master record, if any. The master key starts sealed.
func Open(cfg Config) (*Master, error) {
	m := &Master{st: cfg.Store, kdf: cfg.KDF, log: cfg.Logger, now: cfg.Now, rand: random.ReadAny, insecureKDF: cfg.InsecureKDF}
	if m.log == nil {
		m.log = slog.New(slog.DiscardHandler)
	}
	if m.now == nil {
		m.now = time.Now
	}
	err := m.st.View(func(tx store.Tx) error {
		v := tx.Get(persist.BucketMeta, persist.MetaMaster)
		if v == nil {
			return nil
		}
		rec := &persist.MasterRecord{}
		if err := rec.UnmarshalVT(v); err != nil {
			return fmt.Errorf("master record: %w", persist.ErrCorrupt)
		}
		if (rec.Format != persist.Format && rec.Format != persist.FormatLegacy) || len(rec.StoreId) != persist.IDSize || rec.Generation == 0 {
			return fmt.Errorf("master record of an unknown format (%d): a newer keywarden wrote it", rec.Format)
		}
		m.rec = rec
		return nil
	})
	if err != nil {
		return nil, err
	}
	return m, nil
}

// Reload re-reads the master record (after a restore replaced the store);
// the master key must be sealed.
func (m *Master) Reload() error {
	n, err := Open(Config{Store: m.st, KDF: m.kdf, Logger: m.log, Now: m.now, InsecureKDF: m.insecureKDF})
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys != nil {
		return ErrUnsealed
	}
	m.rec = n.rec
	m.recs++
	m.dropShares()
	m.lim.reset()
	return nil
}

// Refresh re-reads the master record while the master key is sealed, and
// takes it if it changed: a store that the daemons of several machines
// share (docs/cluster.md) is initialized, or its master key rotated, by
// one of them, and the others learn of it when they next unseal. A
// record that did not change leaves everything as it was (shares held
// toward an unseal are kept).
func (m *Master) Refresh() error {
	n, err := Open(Config{Store: m.st, KDF: m.kdf, Logger: m.log, Now: m.now, InsecureKDF: m.insecureKDF})
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys != nil || n.rec == nil || (m.rec != nil && proto.Equal(m.rec, n.rec)) {
		return nil
	}
	m.rec = n.rec
	m.recs++
	m.dropShares()
	return nil
}

// errReplaceDraining: a replacement of the store waited in vain for the
// operations begun before its seal.
var errReplaceDraining = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "operations begun before the seal still run: nothing replaced; try again")

// Replace replaces the store under the master key: it seals (sealAll, the
// caller's seal, which calls SealWith), waits up to SealWait for every
// lease on keys sealed away (or replaced by a rotation), then runs
// replace, which rewrites the store, and re-reads the master record (see
// Reload). No unseal finishes from the seal to the end: one under way
// fails, as the master record it read was replaced. If leases are still
// held after the wait, replace is not run: a write begun before the seal
// would otherwise commit on top of the new store. The daemon is left
// sealed either way.
func (m *Master) Replace(sealAll, replace func() error) error {
	m.unsealing.Lock()
	defer m.unsealing.Unlock()
	if err := sealAll(); err != nil {
		return err
	}
	m.mu.Lock()
	away := m.drained
	m.mu.Unlock()
	if away != nil && !m.waitIdle(away) {
		return errReplaceDraining
	}
	if err := replace(); err != nil {
		return err
	}
	return m.Reload()
}

// ReplaceInit commits p, a new master key, over the current one, as
// Replace replaces the store: under the lock that ends unseals (and that
// a restore holds), it seals (sealAll), waits up to SealWait for the
// operations begun before the seal, then asks check whether the store may
// take a new master key, and commits. Any refusal discards p and leaves
// the daemon sealed.
func (m *Master) ReplaceInit(p *Pending, sealAll, check func() error, header func(k *Keys) ([]byte, error)) error {
	m.unsealing.Lock()
	defer m.unsealing.Unlock()
	if err := sealAll(); err != nil {
		p.Discard()
		return err
	}
	m.mu.Lock()
	away := m.drained
	m.mu.Unlock()
	if away != nil && !m.waitIdle(away) {
		p.Discard()
		return errReplaceDraining
	}
	if err := check(); err != nil {
		p.Discard()
		return err
	}
	return m.CommitInit(p, header)
}

// Keys returns the unsealed keys, or ErrSealed / ErrNotInitialized.
func (m *Master) Keys() (*Keys, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.keysLocked()
}

func (m *Master) keysLocked() (*Keys, error) {
	switch {
	case m.keys != nil:
		return m.keys, nil
	case m.rec == nil:
		return nil, ErrNotInitialized
	}
	return nil, ErrSealed
}

// State returns the master key's state.
//
// A master key not found is looked for again (Refresh): in a store that
// several daemons share, another may have initialized it since.
func (m *Master) State() State {
	m.mu.Lock()
	uninit := m.rec == nil
	m.mu.Unlock()
	if uninit {
		m.Refresh()
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	s := State{Initialized: m.rec != nil, Sealed: m.keys == nil, SharesHeld: len(m.held), RetryAfter: m.lim.wait(m.now())}
	if r := m.rec; r != nil {
		s.Generation = r.Generation
		s.Passphrase = r.Passphrase != nil
		if r.Shares != nil {
			s.Threshold, s.Shares = int(r.Shares.Threshold), int(r.Shares.Shares)
		}
		if rot := r.Rotation; rot != nil {
			s.Rotating, s.RotationDone, s.RotTot = true, rot.Done, rot.Total
		}
	}
	return s
}

// Record returns a copy of the master record (nil if none).
func (m *Master) Record() *persist.MasterRecord {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rec == nil {
		return nil
	}
	return m.rec.CloneVT()
}

// Seal wipes the master key and everything derived from it. It reports
// whether the daemon was unsealed. See SealWith.
func (m *Master) Seal() bool { return m.SealWith(nil, nil) }

// SealWith seals. At once: the keys are unpublished (new leases fail with
// ErrSealed), an unseal still checking the store will not publish its
// own, and drop runs, under the lock that publication takes (the caller's
// state of the epoch goes with the keys; drop must not call m). Then then
// runs (the caller wipes what it dropped), and SealWith waits, up to
// SealWait, for the leases still held; the keys are wiped as the last one
// is released. It reports whether the daemon was unsealed.
func (m *Master) SealWith(drop, then func()) bool {
	m.mu.Lock()
	k := m.keys
	m.keys = nil
	m.changes++
	m.pending, m.install = nil, nil
	m.dropShares()
	if drop != nil {
		drop()
	}
	idle, wipe := m.retire(k)
	m.mu.Unlock()
	if then != nil {
		then()
	}
	wipe()
	if k == nil {
		return false
	}
	if !m.waitIdle(idle) {
		m.log.Warn("sealed: operations begun before the seal still run; the master key is wiped as they end")
		return true
	}
	m.log.Info("sealed: the master key is wiped")
	return true
}

// Install runs fn, which installs the caller's state of k's epoch (the
// key store's, after its check), atomically with k's publication: at once
// if k's epoch is the unsealed one, along with k if k is the unseal being
// finished. It returns ErrSealed (and fn is not run) if k was sealed away.
// fn must not call m.
func (m *Master) Install(k *Keys, fn func()) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.keys != nil && m.keys.epoch == k.epoch:
		fn()
	case m.pending == k:
		m.install = fn
	default:
		return ErrSealed
	}
	return nil
}

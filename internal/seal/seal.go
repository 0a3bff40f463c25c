package seal

import (
	"bytes"
	"context"
	"crypto/hmac"
	"encoding/binary"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// KeyLen is the master key's length.
const KeyLen = 32

// Derivation labels of the master record (HKDF-SHA-256 info strings; the
// salt is the store id). keys.go has those of the store's keys.
const (
	labelCheck    = "keywarden master check v1"
	labelKeyring  = "keywarden keyring v1"
	labelPrevious = "keywarden previous master v1"
	slotAAD       = "keywarden passphrase slot v1"
)

// DefaultParams are the Argon2id costs of a new passphrase slot: RFC 9106's
// second recommended option with four times its memory (t=3, 256 MiB, 4
// lanes), about a second on a current server core.
var DefaultParams = kdf.Params{Time: 3, MemoryKiB: 256 << 10, Threads: 4}

// MinParams is the floor of a passphrase slot's Argon2id costs: RFC 9106's
// second recommended option (§4), 3 passes over 64 MiB. Its memory must be
// at least MinParams.MemoryKiB, and its passes times its memory at least
// MinParams' (3 × 64 MiB: so 1 pass needs 192 MiB, 2 passes 96 MiB; RFC
// 9106's first option, 1 pass over 2 GiB, is well above). Lanes do not
// count: they change how fast the defender computes, not how much memory
// and work each guess costs. Init and master-key rotation refuse less.
var MinParams = kdf.Params{Time: 3, MemoryKiB: 64 << 10, Threads: 1}

// CheckFloor reports whether p, a passphrase slot's Argon2id parameters,
// meets MinParams; its error says what is missing and what to give.
func CheckFloor(p kdf.Params) error {
	minWork := uint64(MinParams.Time) * uint64(MinParams.MemoryKiB)
	if p.MemoryKiB >= MinParams.MemoryKiB && uint64(p.Time)*uint64(p.MemoryKiB) >= minWork {
		return nil
	}
	return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
		"the master passphrase's Argon2id costs (%d passes over %d KiB) are below the floor: at least %d KiB of memory, and passes × memory at least %d (RFC 9106: 3 passes over 64 MiB); give, say, --time %d --memory %d, or leave the defaults (--time %d --memory %d)",
		p.Time, p.MemoryKiB, MinParams.MemoryKiB, minWork, MinParams.Time, MinParams.MemoryKiB, DefaultParams.Time, DefaultParams.MemoryKiB)
}

// slotDefaults fills the zero fields of p, the costs asked for a new
// passphrase slot, with DefaultParams.
func slotDefaults(p kdf.Params) kdf.Params {
	if p.Time == 0 {
		p.Time = DefaultParams.Time
	}
	if p.MemoryKiB == 0 {
		p.MemoryKiB = DefaultParams.MemoryKiB
	}
	if p.Threads == 0 {
		p.Threads = DefaultParams.Threads
	}
	return p
}

// Deriver runs Argon2id (a kdf.Supervisor: in a worker process).
type Deriver interface {
	Derive(ctx context.Context, p kdf.Params, password, salt []byte, keyLen int) ([]byte, error)
}

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
func (m *Master) State() State {
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

// Sealing says how a new master key is sealed.
type Sealing struct {
	// Passphrase, if not empty, seals the master key under Argon2id of it.
	// Sealing wipes it.
	Passphrase []byte
	// Params are the passphrase's Argon2id costs; zero fields take
	// DefaultParams. Less than MinParams (CheckFloor) is refused.
	Params kdf.Params
	// Shares and Threshold, if Shares > 0, split the master key into
	// Shares shares, any Threshold of which unseal it.
	Shares, Threshold int
	// Ephemeral allows neither: a development-mode master key that lives
	// only as long as the process.
	Ephemeral bool
}

// Pending is a master key made by Prepare and not yet committed. Its
// shares must reach their holders before Commit; Discard forgets it.
type Pending struct {
	rec    *persist.MasterRecord
	keys   *Keys
	Shares []shamir.Share
	// rotation: the generation this replaces (0 for init).
	replaces uint64
}

// StoreID and Generation identify the pending master key.
func (p *Pending) StoreID() []byte    { return p.rec.StoreId }
func (p *Pending) Generation() uint64 { return p.rec.Generation }

// Discard wipes a pending master key and its shares.
func (p *Pending) Discard() {
	if p == nil {
		return
	}
	p.keys.wipe()
	p.keys = nil
	p.wipeShares()
}

func (p *Pending) wipeShares() {
	for _, s := range p.Shares {
		clear(s.Y)
	}
	p.Shares = nil
}

// PrepareInit makes a new master key sealed as s says, for a store that
// has none (or, with force, has one but holds no keys: the caller checks).
func (m *Master) PrepareInit(ctx context.Context, s Sealing, force bool) (*Pending, error) {
	m.mu.Lock()
	initialized := m.rec != nil
	m.mu.Unlock()
	if initialized && !force {
		clear(s.Passphrase)
		return nil, ErrInitialized
	}
	storeID := make([]byte, persist.IDSize)
	m.rand(storeID)
	return m.prepare(ctx, s, storeID, 1, nil)
}

// prepare makes master key generation gen for store storeID. With prev
// (rotation), the previous master key is sealed under the new one, and
// the fingerprint key carried over; every other secret is derived anew
// from the new master key.
func (m *Master) prepare(ctx context.Context, s Sealing, storeID []byte, gen uint64, prev *Keys) (p *Pending, err error) {
	defer clear(s.Passphrase)
	if len(s.Passphrase) == 0 && s.Shares == 0 && !s.Ephemeral {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "seal the master key with a passphrase, shares, or both")
	}
	if s.Shares > 0 && (s.Threshold < shamir.MinThreshold || s.Threshold > s.Shares || s.Shares > shamir.MaxShares) {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "shares: need 2 <= threshold <= shares <= 255 (have threshold %d of %d)", s.Threshold, s.Shares)
	}
	if len(s.Passphrase) > 0 && !m.insecureKDF {
		if err := CheckFloor(slotDefaults(s.Params)); err != nil {
			return nil, err
		}
	}
	mk, err := newSecret()
	if err != nil {
		return nil, err
	}
	var material *mech.Key
	if prev == nil {
		material, err = newSecret()
	} else {
		material, err = clone(prev.material)
	}
	if err != nil {
		mk.Destroy()
		return nil, err
	}
	keys, err := newKeys(mk, storeID, gen, material)
	if err != nil {
		return nil, err
	}
	p = &Pending{keys: keys, replaces: 0}
	defer func() {
		if err != nil {
			p.Discard()
			p = nil
		}
	}()
	rec := &persist.MasterRecord{Format: persist.Format, StoreId: storeID, Generation: gen}
	if rec.Check, err = checkValue(mk, storeID, gen); err != nil {
		return nil, err
	}
	if prev != nil {
		p.replaces = prev.Generation
		pg, err := prev.gen(prev.Generation)
		if err != nil {
			return nil, err
		}
		if keys.gens[prev.Generation], err = pg.clone(); err != nil {
			return nil, err
		}
		sealedPrev, err := sealPrevious(mk, prev.mk, storeID, prev.Generation)
		if err != nil {
			return nil, err
		}
		rec.Rotation = &persist.Rotation{PreviousGeneration: prev.Generation, PreviousSealed: sealedPrev, StartedUnixNano: m.now().UnixNano()}
	}
	if rec.Keyring, err = sealKeyring(mk, storeID, material, nil); err != nil {
		return nil, err
	}
	if len(s.Passphrase) > 0 {
		if rec.Passphrase, err = m.sealPassphrase(ctx, mk, storeID, gen, s.Passphrase, s.Params); err != nil {
			return nil, err
		}
	}
	if s.Shares > 0 {
		err = mk.Canonical(func(b []byte) error {
			var err error
			p.Shares, err = shamir.Split(b, s.Threshold, s.Shares, random.Reader)
			return err
		})
		if err != nil {
			return nil, wire.Errorf(wire.Status_STATUS_INTERNAL, "splitting the master key failed")
		}
		rec.Shares = &persist.ShareSet{SplitId: p.Shares[0].SplitID[:], Threshold: uint32(s.Threshold), Shares: uint32(s.Shares)}
		for _, sh := range p.Shares {
			c := shamir.Commit(sh)
			rec.Shares.Commitments = append(rec.Shares.Commitments, c[:])
		}
	}
	p.rec = rec
	return p, nil
}

// marshalMaster sets r's MAC under k and encodes it.
func marshalMaster(k *Keys, r *persist.MasterRecord) ([]byte, error) {
	var err error
	r.Mac = nil
	if r.Mac, err = k.masterMAC(r); err != nil {
		return nil, err
	}
	return r.MarshalVT()
}

// CommitInit writes a prepared master key (and an empty store header)
// and leaves the daemon unsealed with it. With force it replaces the
// master key of a store that holds no key records, which the caller has
// checked; header is the new store header, made by the caller's function.
func (m *Master) CommitInit(p *Pending, header func(k *Keys) ([]byte, error)) error {
	defer p.wipeShares()
	hdr, err := header(p.keys)
	if err != nil {
		p.Discard()
		return err
	}
	recBytes, err := marshalMaster(p.keys, p.rec)
	if err != nil {
		p.Discard()
		return err
	}
	err = m.st.Update(func(tx store.Tx) error {
		if err := tx.Put(persist.BucketMeta, persist.MetaMaster, recBytes); err != nil {
			return err
		}
		return tx.Put(persist.BucketMeta, persist.MetaHeader, hdr)
	})
	if err != nil {
		p.Discard()
		return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "writing the master record failed: %v", err)
	}
	m.mu.Lock()
	_, wipe := m.retire(m.keys)
	m.rec = p.rec
	p.keys.epoch = m.newEpoch()
	m.publish(p.keys)
	m.pending, m.install = nil, nil
	m.recs++
	m.dropShares()
	m.lim.reset()
	m.mu.Unlock()
	wipe()
	m.log.Info("master key created", "generation", p.rec.Generation, "passphrase", p.rec.Passphrase != nil, "shares", len(p.Shares))
	return nil
}

func (m *Master) sealPassphrase(ctx context.Context, mk *mech.Key, storeID []byte, gen uint64, pass []byte, params kdf.Params) (*persist.PassphraseSlot, error) {
	if m.kdf == nil {
		return nil, kdf.ErrUnavailable
	}
	params = slotDefaults(params)
	salt := make([]byte, 16)
	m.rand(salt)
	kek, err := m.passphraseKEK(ctx, params, pass, salt)
	if err != nil {
		return nil, err
	}
	defer kek.Destroy()
	var sealed []byte
	err = mk.Canonical(func(b []byte) error {
		var err error
		sealed, err = kek.Encrypt(b, slotAD(storeID, gen), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &persist.PassphraseSlot{Time: params.Time, MemoryKib: params.MemoryKiB, Threads: uint32(params.Threads), Salt: salt, Sealed: sealed}, nil
}

// slotParams returns the Argon2id parameters a passphrase slot records,
// and refuses values that no slot can have. The record keeps them as
// 32-bit integers and Argon2id takes at most 255 lanes (kdf.Params.Threads
// is a uint8): a count above 255 is refused, never truncated into another
// (260 lanes read as 4 would derive with parameters the slot does not
// name).
func slotParams(sl *persist.PassphraseSlot) (kdf.Params, error) {
	damaged := func(what string, args ...any) (kdf.Params, error) {
		return kdf.Params{}, wire.Errorf(wire.Status_STATUS_INTERNAL,
			"the master record's passphrase slot is damaged: "+what+"; restore the store from a backup", args...)
	}
	if sl.Threads < 1 || sl.Threads > kdf.MaxThreads {
		return damaged("it records %d Argon2id lanes (1 to %d are possible)", sl.Threads, kdf.MaxThreads)
	}
	p := kdf.Params{Time: sl.Time, MemoryKiB: sl.MemoryKib, Threads: uint8(sl.Threads)}
	if err := p.Check(^uint32(0)); err != nil {
		return damaged("its Argon2id parameters (%v) are invalid", p)
	}
	if kdf.CheckSalt(sl.Salt) != nil {
		return damaged("its salt is %d bytes", len(sl.Salt))
	}
	return p, nil
}

func (m *Master) passphraseKEK(ctx context.Context, p kdf.Params, pass, salt []byte) (*mech.Key, error) {
	out, err := m.kdf.Derive(ctx, p, pass, salt, KeyLen)
	if err != nil {
		return nil, err
	}
	return mech.FromSecret(key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM), out)
}

func slotAD(storeID []byte, gen uint64) []byte {
	ad := append([]byte(slotAAD), storeID...)
	return binary.BigEndian.AppendUint64(ad, gen)
}

// derive derives a key of type t from the master key by HKDF-SHA-256.
func derive(mk *mech.Key, storeID []byte, label string, t wire.KeyType) (*mech.Key, error) {
	return mk.Derive(nil, wire.HashAlg_HASH_ALG_SHA256, storeID, []byte(label), key.Lookup(t))
}

// clone copies a key's material into a new key.
func clone(k *mech.Key) (*mech.Key, error) {
	var c *mech.Key
	err := k.Canonical(func(b []byte) error {
		var err error
		c, err = mech.FromCanonical(k.Spec(), k.Class(), bytes.Clone(b))
		return err
	})
	return c, err
}

// checkValue tells a right master key from a wrong one (shares combine to
// some value whatever they are).
func checkValue(mk *mech.Key, storeID []byte, gen uint64) ([]byte, error) {
	ck, err := derive(mk, storeID, labelCheck, wire.KeyType_KEY_TYPE_HMAC_SHA256)
	if err != nil {
		return nil, err
	}
	defer ck.Destroy()
	return ck.MAC(binary.BigEndian.AppendUint64(bytes.Clone(storeID), gen), nil)
}

// sealKeyring seals the keyring (material, the fingerprint key, and while
// records of format 1 remain, legacy, their index key) under mk.
func sealKeyring(mk *mech.Key, storeID []byte, material, legacy *mech.Key) ([]byte, error) {
	kk, err := derive(mk, storeID, labelKeyring, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return nil, err
	}
	defer kk.Destroy()
	var out []byte
	err = material.Canonical(func(fb []byte) error {
		kr := &persist.Keyring{FingerprintKey: fb}
		seal := func() error {
			var err error
			secmem.Do(func() {
				var pt []byte
				if pt, err = kr.MarshalVT(); err != nil {
					return
				}
				out, err = kk.Encrypt(pt, []byte(labelKeyring), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
				clear(pt)
			})
			return err
		}
		if legacy == nil {
			return seal()
		}
		return legacy.Canonical(func(lb []byte) error {
			kr.IndexKey = lb
			return seal()
		})
	})
	return out, err
}

// openKeyring opens the keyring of a master record of the given format:
// it returns the fingerprint key and format 1's index key (the same key,
// in a record of format 1; nil in one of format 2 that has none).
func openKeyring(mk *mech.Key, storeID, sealed []byte, format uint32) (material, legacy *mech.Key, err error) {
	kk, err := derive(mk, storeID, labelKeyring, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return nil, nil, err
	}
	defer kk.Destroy()
	hm := key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256)
	secmem.Do(func() {
		var pt []byte
		if pt, err = kk.Decrypt(sealed, []byte(labelKeyring), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil); err != nil {
			return
		}
		defer clear(pt)
		kr := &persist.Keyring{}
		if err = kr.UnmarshalVT(pt); err != nil {
			return
		}
		fk := kr.FingerprintKey
		if format == persist.FormatLegacy {
			fk = kr.IndexKey // format 1 made fingerprints under its index key
		}
		if material, err = mech.FromCanonical(hm, key.Secret, bytes.Clone(fk)); err != nil {
			return
		}
		if len(kr.IndexKey) > 0 {
			legacy, err = mech.FromCanonical(hm, key.Secret, bytes.Clone(kr.IndexKey))
		}
	})
	if err != nil {
		if material != nil {
			material.Destroy()
		}
		return nil, nil, fmt.Errorf("the keyring does not open under this master key: %w", err)
	}
	return material, legacy, nil
}

func sealPrevious(mk, prev *mech.Key, storeID []byte, prevGen uint64) ([]byte, error) {
	pk, err := derive(mk, storeID, labelPrevious, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return nil, err
	}
	defer pk.Destroy()
	var out []byte
	err = prev.Canonical(func(b []byte) error {
		var err error
		out, err = pk.Encrypt(b, binary.BigEndian.AppendUint64([]byte(labelPrevious), prevGen), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
		return err
	})
	return out, err
}

func openPrevious(mk *mech.Key, storeID []byte, rot *persist.Rotation) (*mech.Key, error) {
	pk, err := derive(mk, storeID, labelPrevious, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return nil, err
	}
	defer pk.Destroy()
	b, err := pk.Decrypt(rot.PreviousSealed, binary.BigEndian.AppendUint64([]byte(labelPrevious), rot.PreviousGeneration), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
	if err != nil {
		return nil, errors.New("the previous master key does not open")
	}
	return mech.FromCanonical(key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256), key.Secret, b)
}

// errMasterChanged: a master record of format 2 whose MAC fails under
// the right master key.
var errMasterChanged = errors.New("it fails its integrity check (it was changed outside the daemon): restore a backup")

// unlock builds the Keys of master key mk for record rec, after checking
// that mk is the right one and, in format 2, that the record is intact.
// It takes ownership of mk.
func unlock(mk *mech.Key, rec *persist.MasterRecord) (k *Keys, err error) {
	check, err := checkValue(mk, rec.StoreId, rec.Generation)
	if err != nil {
		mk.Destroy()
		return nil, err
	}
	if !hmac.Equal(check, rec.Check) {
		mk.Destroy()
		return nil, ErrWrongSecret
	}
	material, legacy, err := openKeyring(mk, rec.StoreId, rec.Keyring, rec.Format)
	if err != nil {
		mk.Destroy()
		return nil, err
	}
	if k, err = newKeys(mk, rec.StoreId, rec.Generation, material); err != nil {
		if legacy != nil {
			legacy.Destroy()
		}
		return nil, err
	}
	k.legacy = legacy
	defer func() {
		if err != nil {
			k.wipe()
			k = nil
		}
	}()
	rot := rec.Rotation
	switch {
	case rec.Format == persist.FormatLegacy:
		// Its records and header are of format 1, until Upgrade.
		k.legacyHeader = true
	default:
		mac, err := k.masterMAC(rec)
		if err != nil {
			return nil, err
		}
		if !hmac.Equal(mac, rec.Mac) {
			return nil, errMasterChanged
		}
		if rot == nil || !rot.Legacy {
			if k.legacy != nil {
				k.legacy.Destroy()
			}
			k.legacy = nil
		}
	}
	if rot != nil && len(rot.PreviousSealed) > 0 {
		prev, err := openPrevious(mk, rec.StoreId, rot)
		if err != nil {
			return nil, err
		}
		defer prev.Destroy()
		if k.gens[rot.PreviousGeneration], err = deriveGen(prev, rec.StoreId); err != nil {
			return nil, err
		}
	}
	return k, nil
}

// UnsealPassphrase unseals with the passphrase (which it wipes). verify,
// called with the new keys before they are published, checks the store
// against them (the caller's full scan); its error leaves the daemon
// sealed.
func (m *Master) UnsealPassphrase(ctx context.Context, pass []byte, verify func(*Keys) error) error {
	defer clear(pass)
	m.mu.Lock()
	rec, err := m.beginUnseal()
	recs := m.recs
	m.mu.Unlock()
	if err != nil {
		return err
	}
	if rec.Passphrase == nil {
		return ErrNoSlot
	}
	if m.kdf == nil {
		return kdf.ErrUnavailable
	}
	sl := rec.Passphrase
	p, err := slotParams(sl)
	if err != nil {
		m.log.Error("unseal refused: the passphrase slot is damaged", "err", err)
		return err
	}
	kek, err := m.passphraseKEK(ctx, p, pass, sl.Salt)
	if err != nil {
		return err
	}
	b, err := kek.Decrypt(sl.Sealed, slotAD(rec.StoreId, rec.Generation), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
	kek.Destroy()
	if err != nil {
		return m.failed("wrong passphrase")
	}
	mk, err := mech.FromCanonical(key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256), key.Secret, b)
	if err != nil {
		return err
	}
	if err := m.finishUnseal(mk, rec, recs, verify); err != nil {
		return err
	}
	if !m.insecureKDF && CheckFloor(p) != nil {
		m.log.Warn("the master passphrase's Argon2id costs are below the floor (made before it existed): run \"keywarden master rotate\" to seal the master key anew",
			"params", p.String(), "floor", fmt.Sprintf("m>=%d,t*m>=%d", MinParams.MemoryKiB, uint64(MinParams.Time)*uint64(MinParams.MemoryKiB)))
	}
	return nil
}

// ceilSecond rounds d up to a whole second: a wait is never said to be
// shorter than it is ("try again in 0s").
func ceilSecond(d time.Duration) time.Duration {
	return (d + time.Second - 1).Truncate(time.Second)
}

// beginUnseal checks that an unseal may be attempted now. m.mu is held.
func (m *Master) beginUnseal() (*persist.MasterRecord, error) {
	if m.rec == nil {
		return nil, ErrNotInitialized
	}
	if m.keys != nil {
		return nil, ErrUnsealed
	}
	if w := m.lim.wait(m.now()); w > 0 {
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
			"too many failed unseal attempts: try again in %s", ceilSecond(w))
	}
	return m.rec, nil
}

func (m *Master) failed(what string) error {
	m.mu.Lock()
	m.lim.fail(m.now())
	n, w := m.lim.failures, m.lim.wait(m.now())
	m.dropShares()
	m.mu.Unlock()
	m.log.Warn("unseal failed", "reason", what, "failures", n, "next_attempt_in", ceilSecond(w).String())
	return ErrWrongSecret
}

// errRecordReplaced: a restore replaced the master record while an unseal
// of the one it replaced was under way.
var errRecordReplaced = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the store was replaced (restored) during this unseal: the daemon stays sealed; unseal again")

// errSealDraining: operations begun before the last seal still run.
var errSealDraining = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "operations begun before the last seal still run: try the unseal again")

func (m *Master) finishUnseal(mk *mech.Key, rec *persist.MasterRecord, recs uint64, verify func(*Keys) error) error {
	// One unseal finishes at a time; one that finds the daemon unsealed
	// (by an unseal that finished first) or the master record replaced
	// stops before checking the store.
	m.unsealing.Lock()
	defer m.unsealing.Unlock()
	m.mu.Lock()
	busy, replaced := m.keys != nil, m.recs != recs
	away := m.drained
	m.mu.Unlock()
	if busy || replaced {
		mk.Destroy()
		if !busy {
			return errRecordReplaced
		}
		return ErrUnsealed
	}
	// The operations begun before the last seal (or rotation) end
	// first: a write under the keys it withdrew may commit after a check
	// that began earlier, which would then count the store without it.
	if away != nil && !m.waitIdle(away) {
		mk.Destroy()
		return errSealDraining
	}
	keys, err := unlock(mk, rec)
	if errors.Is(err, ErrWrongSecret) {
		return m.failed("the master key check does not match")
	}
	if err != nil {
		m.log.Error("unseal failed: the master record does not open under a correct master key", "err", err)
		return wire.Errorf(wire.Status_STATUS_INTERNAL, "the master record is damaged: %v", err)
	}
	m.mu.Lock()
	keys.epoch = m.newEpoch()
	m.pending, m.install = keys, nil
	changes := m.changes
	m.mu.Unlock()
	if hookUnsealVerify != nil {
		hookUnsealVerify()
	}
	if verify != nil {
		if err := verify(keys); err != nil {
			m.mu.Lock()
			if m.pending == keys {
				m.pending, m.install = nil, nil
			}
			m.mu.Unlock()
			keys.wipe()
			return err
		}
	}
	m.mu.Lock()
	install := m.install
	if m.pending == keys {
		m.pending, m.install = nil, nil
	}
	if m.keys != nil || m.recs != recs || m.changes != changes || keys.legacyHeader {
		sealed := m.changes != changes && m.keys == nil
		m.mu.Unlock()
		keys.wipe()
		switch {
		case keys.legacyHeader:
			return wire.Errorf(wire.Status_STATUS_INTERNAL, "the store of format %d was not upgraded", persist.FormatLegacy)
		case sealed:
			return errSealedMeanwhile
		}
		return ErrUnsealed
	}
	// The caller's state of this epoch (the key store's, installed by its
	// check) and the keys are published together: a seal sees both or
	// neither.
	if install != nil {
		install()
	}
	m.publish(keys)
	m.lim.reset()
	m.dropShares()
	m.mu.Unlock()
	m.log.Info("unsealed", "generation", rec.Generation)
	return nil
}

// CheckShare checks a share against the master record without taking
// it: its split, threshold and number, and, where the record keeps
// commitments to the shares (splits made since they exist), that it is
// the share that was issued. The daemon checks every share of a request
// this way before submitting any, so that a bad share is named and the
// good ones are not spent.
func (m *Master) CheckShare(sh shamir.Share) error {
	m.mu.Lock()
	rec, unsealed := m.rec, m.keys != nil
	m.mu.Unlock()
	switch {
	case rec == nil:
		return ErrNotInitialized
	case unsealed:
		return ErrUnsealed
	}
	if rec.Shares == nil {
		return ErrNoShares
	}
	return m.checkShare(rec.Shares, sh)
}

// checkShare checks sh against the share set of the master record.
func (m *Master) checkShare(set *persist.ShareSet, sh shamir.Share) error {
	if !bytes.Equal(sh.SplitID[:], set.SplitId) {
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"this share belongs to another split (%s) than the master key's (%x)", sh.SplitID, set.SplitId)
	}
	if sh.Threshold != int(set.Threshold) || sh.X == 0 || len(sh.Y) != KeyLen {
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "malformed share")
	}
	if uint32(sh.X) > set.Shares {
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"share %d of split %s: the split has only %d shares, so no share %d was issued", sh.X, sh.SplitID, set.Shares, sh.X)
	}
	if len(set.Commitments) == int(set.Shares) && !matches(sh, set.Commitments[sh.X-1]) {
		m.log.Warn("unseal: a share is not the one issued (its commitment does not match)", "share", sh.X, "split", sh.SplitID.String())
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"share %d of split %s is not the share that was issued: it does not match the commitment the store keeps for it (damaged or altered; a typo would have failed its checksum): get a good copy from its holder",
			sh.X, sh.SplitID)
	}
	return nil
}

// matches reports whether sh is the share of commitment c, hashing it
// inside secmem.Do so that no copy of its state is left behind.
func matches(sh shamir.Share, c []byte) bool {
	var ok bool
	secmem.Do(func() { ok = sh.Matches(c) })
	return ok
}

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

// UnsealShare submits one share, after the checks of CheckShare. Once the
// threshold is reached it combines the shares and unseals (see
// UnsealPassphrase for verify). It returns how many shares are held and
// needed; unsealed reports success.
func (m *Master) UnsealShare(sh shamir.Share, verify func(*Keys) error) (held, need int, unsealed bool, err error) {
	defer clear(sh.Y)
	m.mu.Lock()
	rec, err := m.beginUnseal()
	recs := m.recs
	if err != nil {
		m.mu.Unlock()
		return 0, 0, false, err
	}
	set := rec.Shares
	if set == nil {
		m.mu.Unlock()
		return 0, 0, false, ErrNoShares
	}
	need = int(set.Threshold)
	if err := m.checkShare(set, sh); err != nil {
		m.mu.Unlock()
		return len(m.held), need, false, err
	}
	for _, h := range m.held {
		if h.x == sh.X {
			m.mu.Unlock()
			return len(m.held), need, false, wire.Errorf(wire.Status_STATUS_ALREADY_EXISTS, "share %d was already submitted", sh.X)
		}
	}
	a, err := mech.Arena()
	if err != nil {
		m.mu.Unlock()
		return 0, need, false, err
	}
	buf, err := a.Alloc(len(sh.Y))
	if err != nil {
		m.mu.Unlock()
		return len(m.held), need, false, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "key memory exhausted")
	}
	copy(buf.Bytes(), sh.Y)
	m.held = append(m.held, heldShare{split: sh.SplitID, k: sh.Threshold, x: sh.X, y: buf})
	held = len(m.held)
	if held < need {
		m.mu.Unlock()
		return held, need, false, nil
	}
	var secret []byte
	secmem.Do(func() {
		shares := make([]shamir.Share, len(m.held))
		for i, h := range m.held {
			shares[i] = shamir.Share{SplitID: h.split, Threshold: h.k, X: h.x, Y: bytes.Clone(h.y.Bytes())}
		}
		secret, err = shamir.Combine(shares)
		for _, s := range shares {
			clear(s.Y)
		}
	})
	m.dropShares()
	m.mu.Unlock()
	if err != nil {
		return 0, need, false, m.failed("shares do not combine")
	}
	mk, err := mech.FromCanonical(key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256), key.Secret, secret)
	if err != nil {
		return 0, need, false, m.failed("shares do not combine")
	}
	if err := m.finishUnseal(mk, rec, recs, verify); err != nil {
		return 0, need, false, err
	}
	return need, need, true, nil
}

// dropShares wipes the shares held. m.mu is held.
func (m *Master) dropShares() {
	for _, h := range m.held {
		h.y.Free()
	}
	m.held = nil
}

// errSealedMeanwhile: a seal came while an unseal was checking the store.
var errSealedMeanwhile = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the daemon was sealed while this unseal was checking the store: it stays sealed")

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

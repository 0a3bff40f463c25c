package seal

import (
	"context"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
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

package seal

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/rand"
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

// Derivation labels (HKDF-SHA-256 info strings; the salt is the store id).
const (
	labelStorage  = "keywarden storage v1"
	labelCheck    = "keywarden master check v1"
	labelKeyring  = "keywarden keyring v1"
	labelPrevious = "keywarden previous master v1"
	slotAAD       = "keywarden passphrase slot v1"
)

// DefaultParams are the Argon2id costs of a new passphrase slot: RFC 9106's
// second recommended option with four times its memory (t=3, 256 MiB, 4
// lanes), about a second on a current server core.
var DefaultParams = kdf.Params{Time: 3, MemoryKiB: 256 << 10, Threads: 4}

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

// Keys are the secrets of an unsealed master key. A Keys value never
// changes once published; Seal wipes it (operations still running then
// fail as if the key were destroyed) and rotation replaces it.
type Keys struct {
	StoreID    []byte
	Generation uint64 // the current master-key generation
	// storage seals and opens key blobs, by master-key generation: the
	// current one, and during a rotation the previous one.
	storage map[uint64]*mech.Key
	// Index authenticates key records and the store header (HMAC-SHA-256).
	Index *mech.Key
	// Audit keys the audit log's chain (HMAC-SHA-256).
	Audit *mech.Key
	mk    *mech.Key
}

// SealBlob seals canonical key bytes pt under the current generation's
// storage key with associated data aad: nonce || ciphertext || tag.
func (k *Keys) SealBlob(aad, pt []byte) ([]byte, error) {
	return k.storage[k.Generation].Encrypt(pt, aad, wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
}

// OpenBlob opens a blob sealed under generation gen's storage key. The
// caller wipes the result.
func (k *Keys) OpenBlob(gen uint64, aad, blob []byte) ([]byte, error) {
	s := k.storage[gen]
	if s == nil {
		return nil, fmt.Errorf("blob sealed under unknown master-key generation %d", gen)
	}
	return s.Decrypt(blob, aad, wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
}

// MAC returns HMAC-SHA-256 of data under the index key, appended to dst.
func (k *Keys) MAC(dst, data []byte) ([]byte, error) { return k.Index.MAC(data, dst) }

// MACEach computes n MACs under the index key with one entry into its
// secret state: in(i) gives the i-th data and the slice to append its MAC
// to, done(i, mac) receives it. A destination with room for the MAC (32
// bytes) spares an allocation. The error concerns the key (wiped); then
// done is not called.
func (k *Keys) MACEach(n int, in func(i int) (data, dst []byte), done func(i int, mac []byte)) error {
	return k.Index.MACEach(n, in, func(i int, out []byte, _ error) { done(i, out) })
}

// FingerprintSize is the length of a material fingerprint.
const FingerprintSize = 16

// fingerprintLabel starts the input of every material fingerprint: no
// record or header MAC input (protobuf encodings) starts with it.
const fingerprintLabel = "keywarden material v1\x00"

// Fingerprint returns the fingerprint of key material under the index key:
// the first 16 bytes of HMAC-SHA-256 of fingerprintLabel, the byte class
// and data. Without the index key it says nothing about data; with it, it
// tells the daemon that two key objects hold the same material. data may
// be secret: Fingerprint copies it only inside secmem.Do and wipes the
// copy.
func (k *Keys) Fingerprint(class byte, data []byte) (fp [FingerprintSize]byte, err error) {
	secmem.Do(func() {
		in := make([]byte, 0, len(fingerprintLabel)+1+len(data))
		in = append(append(append(in, fingerprintLabel...), class), data...)
		var mac []byte
		mac, err = k.Index.MAC(in, make([]byte, 0, 32))
		clear(in)
		if err == nil {
			copy(fp[:], mac)
		}
	})
	return fp, err
}

// Generations returns the master-key generations whose blobs can be opened.
func (k *Keys) Generations() []uint64 {
	var g []uint64
	for gen := range k.storage {
		g = append(g, gen)
	}
	return g
}

func (k *Keys) wipe() {
	if k == nil {
		return
	}
	for _, s := range k.storage {
		s.Destroy()
	}
	k.Index.Destroy()
	k.Audit.Destroy()
	k.mk.Destroy()
}

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
	st   store.Store
	kdf  Deriver
	log  *slog.Logger
	now  func() time.Time
	rand func([]byte)

	mu   sync.Mutex
	rec  *persist.MasterRecord // nil until initialized
	keys *Keys                 // nil while sealed
	held []heldShare           // shares submitted toward an unseal
	lim  limiter
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
}

// Open reads the master record, if any. The master key starts sealed.
func Open(cfg Config) (*Master, error) {
	m := &Master{st: cfg.Store, kdf: cfg.KDF, log: cfg.Logger, now: cfg.Now, rand: func(b []byte) { rand.Read(b) }}
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
		if rec.Format != persist.Format || len(rec.StoreId) != persist.IDSize || rec.Generation == 0 {
			return fmt.Errorf("master record of an unknown format (%d)", rec.Format)
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
	n, err := Open(Config{Store: m.st, KDF: m.kdf, Logger: m.log, Now: m.now})
	if err != nil {
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys != nil {
		return ErrUnsealed
	}
	m.rec = n.rec
	m.dropShares()
	m.lim.reset()
	return nil
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
	Params     kdf.Params // zero fields: DefaultParams
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
// (rotation), the previous master key is sealed under the new one and
// the keyring carried over.
func (m *Master) prepare(ctx context.Context, s Sealing, storeID []byte, gen uint64, prev *Keys) (p *Pending, err error) {
	defer clear(s.Passphrase)
	if len(s.Passphrase) == 0 && s.Shares == 0 && !s.Ephemeral {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "seal the master key with a passphrase, shares, or both")
	}
	if s.Shares > 0 && (s.Threshold < shamir.MinThreshold || s.Threshold > s.Shares || s.Shares > shamir.MaxShares) {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "shares: need 2 <= threshold <= shares <= 255 (have threshold %d of %d)", s.Threshold, s.Shares)
	}
	hmacSpec := key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256)
	mk, err := mech.Generate(hmacSpec)
	if err != nil {
		return nil, err
	}
	keys := &Keys{StoreID: storeID, Generation: gen, storage: map[uint64]*mech.Key{}, mk: mk}
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
	if keys.storage[gen], err = derive(mk, storeID, labelStorage, wire.KeyType_KEY_TYPE_AES256_GCM); err != nil {
		return nil, err
	}
	// The keyring: new at init, carried over at rotation.
	if prev == nil {
		hm := key.Lookup(wire.KeyType_KEY_TYPE_HMAC_SHA256)
		if keys.Index, err = mech.Generate(hm); err != nil {
			return nil, err
		}
		if keys.Audit, err = mech.Generate(hm); err != nil {
			return nil, err
		}
	} else {
		if keys.Index, err = clone(prev.Index); err != nil {
			return nil, err
		}
		if keys.Audit, err = clone(prev.Audit); err != nil {
			return nil, err
		}
		p.replaces = prev.Generation
		for g, st := range prev.storage {
			if keys.storage[g], err = clone(st); err != nil {
				return nil, err
			}
		}
		sealedPrev, err := sealPrevious(mk, prev.mk, storeID, prev.Generation)
		if err != nil {
			return nil, err
		}
		rec.Rotation = &persist.Rotation{PreviousGeneration: prev.Generation, PreviousSealed: sealedPrev, StartedUnixNano: m.now().UnixNano()}
	}
	if rec.Keyring, err = sealKeyring(mk, storeID, keys); err != nil {
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
	recBytes, err := p.rec.MarshalVT()
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
	old := m.keys
	m.rec, m.keys = p.rec, p.keys
	m.dropShares()
	m.lim.reset()
	m.mu.Unlock()
	old.wipe()
	m.log.Info("master key created", "generation", p.rec.Generation, "passphrase", p.rec.Passphrase != nil, "shares", len(p.Shares))
	return nil
}

func (m *Master) sealPassphrase(ctx context.Context, mk *mech.Key, storeID []byte, gen uint64, pass []byte, params kdf.Params) (*persist.PassphraseSlot, error) {
	if m.kdf == nil {
		return nil, kdf.ErrUnavailable
	}
	if params.Time == 0 {
		params.Time = DefaultParams.Time
	}
	if params.MemoryKiB == 0 {
		params.MemoryKiB = DefaultParams.MemoryKiB
	}
	if params.Threads == 0 {
		params.Threads = DefaultParams.Threads
	}
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

func sealKeyring(mk *mech.Key, storeID []byte, k *Keys) ([]byte, error) {
	kk, err := derive(mk, storeID, labelKeyring, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return nil, err
	}
	defer kk.Destroy()
	var out []byte
	err = k.Index.Canonical(func(ib []byte) error {
		return k.Audit.Canonical(func(ab []byte) error {
			var err error
			secmem.Do(func() {
				kr := &persist.Keyring{IndexKey: ib, AuditKey: ab}
				var pt []byte
				if pt, err = kr.MarshalVT(); err != nil {
					return
				}
				out, err = kk.Encrypt(pt, []byte(labelKeyring), wire.HashAlg_HASH_ALG_UNSPECIFIED, nil)
				clear(pt)
			})
			return err
		})
	})
	return out, err
}

func openKeyring(mk *mech.Key, storeID, sealed []byte, k *Keys) error {
	kk, err := derive(mk, storeID, labelKeyring, wire.KeyType_KEY_TYPE_AES256_GCM)
	if err != nil {
		return err
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
		if k.Index, err = mech.FromCanonical(hm, key.Secret, kr.IndexKey); err != nil {
			return
		}
		k.Audit, err = mech.FromCanonical(hm, key.Secret, kr.AuditKey)
	})
	if err != nil {
		return fmt.Errorf("the keyring does not open under this master key: %w", err)
	}
	return nil
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

// unlock builds the Keys of master key mk for record rec, after checking
// that mk is the right one. It takes ownership of mk.
func unlock(mk *mech.Key, rec *persist.MasterRecord) (k *Keys, err error) {
	k = &Keys{StoreID: rec.StoreId, Generation: rec.Generation, storage: map[uint64]*mech.Key{}, mk: mk}
	defer func() {
		if err != nil {
			k.wipe()
			k = nil
		}
	}()
	check, err := checkValue(mk, rec.StoreId, rec.Generation)
	if err != nil {
		return nil, err
	}
	if !hmac.Equal(check, rec.Check) {
		return nil, ErrWrongSecret
	}
	if k.storage[rec.Generation], err = derive(mk, rec.StoreId, labelStorage, wire.KeyType_KEY_TYPE_AES256_GCM); err != nil {
		return nil, err
	}
	if err := openKeyring(mk, rec.StoreId, rec.Keyring, k); err != nil {
		return nil, err
	}
	if rot := rec.Rotation; rot != nil {
		prev, err := openPrevious(mk, rec.StoreId, rot)
		if err != nil {
			return nil, err
		}
		defer prev.Destroy()
		if k.storage[rot.PreviousGeneration], err = derive(prev, rec.StoreId, labelStorage, wire.KeyType_KEY_TYPE_AES256_GCM); err != nil {
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
	p := kdf.Params{Time: sl.Time, MemoryKiB: sl.MemoryKib, Threads: uint8(sl.Threads)}
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
	return m.finishUnseal(mk, rec, verify)
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
			"too many failed unseal attempts: try again in %s", w.Round(time.Second))
	}
	return m.rec, nil
}

func (m *Master) failed(what string) error {
	m.mu.Lock()
	m.lim.fail(m.now())
	n, w := m.lim.failures, m.lim.wait(m.now())
	m.dropShares()
	m.mu.Unlock()
	m.log.Warn("unseal failed", "reason", what, "failures", n, "next_attempt_in", w.Round(time.Second).String())
	return ErrWrongSecret
}

func (m *Master) finishUnseal(mk *mech.Key, rec *persist.MasterRecord, verify func(*Keys) error) error {
	keys, err := unlock(mk, rec)
	if errors.Is(err, ErrWrongSecret) {
		return m.failed("the master key check does not match")
	}
	if err != nil {
		m.log.Error("unseal failed: the master record does not open under a correct master key", "err", err)
		return wire.Errorf(wire.Status_STATUS_INTERNAL, "the master record is damaged: %v", err)
	}
	if verify != nil {
		if err := verify(keys); err != nil {
			keys.wipe()
			return err
		}
	}
	m.mu.Lock()
	if m.keys != nil || m.rec != rec {
		m.mu.Unlock()
		keys.wipe()
		return ErrUnsealed
	}
	m.keys = keys
	m.lim.reset()
	m.dropShares()
	m.mu.Unlock()
	m.log.Info("unsealed", "generation", rec.Generation)
	return nil
}

// UnsealShare submits one share. Once the threshold is reached it combines
// them and unseals (see UnsealPassphrase for verify). It returns how many
// shares are held and needed; unsealed reports success.
func (m *Master) UnsealShare(sh shamir.Share, verify func(*Keys) error) (held, need int, unsealed bool, err error) {
	defer clear(sh.Y)
	m.mu.Lock()
	rec, err := m.beginUnseal()
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
	if !bytes.Equal(sh.SplitID[:], set.SplitId) {
		m.mu.Unlock()
		return len(m.held), need, false, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
			"this share belongs to another split (%s) than the master key's (%x)", sh.SplitID, set.SplitId)
	}
	if sh.Threshold != need || sh.X == 0 || len(sh.Y) != KeyLen {
		m.mu.Unlock()
		return len(m.held), need, false, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "malformed share")
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
	if err := m.finishUnseal(mk, rec, verify); err != nil {
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

// Seal wipes the master key and everything derived from it. It reports
// whether the daemon was unsealed.
func (m *Master) Seal() bool {
	m.mu.Lock()
	k := m.keys
	m.keys = nil
	m.dropShares()
	m.mu.Unlock()
	k.wipe()
	if k != nil {
		m.log.Info("sealed: the master key is wiped")
	}
	return k != nil
}

// PrepareRotation makes the next master-key generation, sealed as s says;
// it carries the keyring over and seals the current master key under the
// new one, so that blobs not yet re-wrapped still open.
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
// records to re-wrap. From then on new blobs are sealed under the new
// generation, and the caller re-wraps the others (Progress, then
// FinishRotation).
func (m *Master) CommitRotation(p *Pending, total uint64) error {
	defer p.wipeShares()
	p.rec.Rotation.Total = total
	recBytes, err := p.rec.MarshalVT()
	if err != nil {
		p.Discard()
		return err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.keys == nil || m.rec.Generation != p.replaces {
		p.Discard()
		return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the master key changed or was sealed meanwhile")
	}
	err = m.st.Update(func(tx store.Tx) error {
		return tx.Put(persist.BucketMeta, persist.MetaMaster, recBytes)
	})
	if err != nil {
		p.Discard()
		return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "writing the master record failed: %v", err)
	}
	old := m.keys
	m.rec, m.keys = p.rec, p.keys
	old.wipe()
	m.log.Info("master key rotated; re-wrapping keys", "generation", p.rec.Generation, "keys", total)
	return nil
}

// RotationStep records re-wrapping progress inside the caller's
// transaction: cursor is the last re-wrapped record's id.
func (m *Master) RotationStep(tx store.Tx, cursor []byte, done uint64) error {
	m.mu.Lock()
	rec := m.rec.CloneVT()
	m.mu.Unlock()
	if rec.Rotation == nil {
		return nil
	}
	rec.Rotation.Cursor = bytes.Clone(cursor)
	rec.Rotation.Done = done
	b, err := rec.MarshalVT()
	if err != nil {
		return err
	}
	return tx.Put(persist.BucketMeta, persist.MetaMaster, b)
}

// RotationCommitted publishes progress after the caller's transaction
// committed.
func (m *Master) RotationCommitted(cursor []byte, done uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rec.Rotation != nil {
		r := m.rec.CloneVT()
		r.Rotation.Cursor = bytes.Clone(cursor)
		r.Rotation.Done = done
		m.rec = r
	}
}

// FinishRotation ends a rotation once every record is re-wrapped: the
// previous master key's sealed copy is deleted and its storage key wiped.
func (m *Master) FinishRotation() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.rec == nil || m.rec.Rotation == nil {
		return nil
	}
	r := m.rec.CloneVT()
	prev := r.Rotation.PreviousGeneration
	r.Rotation = nil
	b, err := r.MarshalVT()
	if err != nil {
		return err
	}
	if err := m.st.Update(func(tx store.Tx) error { return tx.Put(persist.BucketMeta, persist.MetaMaster, b) }); err != nil {
		return err
	}
	m.rec = r
	if m.keys != nil {
		// Publish new Keys without the previous generation rather than
		// changing the published value.
		k := *m.keys
		k.storage = map[uint64]*mech.Key{}
		for g, s := range m.keys.storage {
			if g == prev {
				s.Destroy()
				continue
			}
			k.storage[g] = s
		}
		m.keys = &k
	}
	m.log.Info("master-key rotation finished", "generation", r.Generation)
	return nil
}

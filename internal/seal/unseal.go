package seal

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"fmt"
	"time"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/wire"
)

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
	if err := m.Refresh(); err != nil {
		return err
	}
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

// UnsealShare submits one share, after the checks of CheckShare. Once the
// threshold is reached it combines the shares and unseals (see
// UnsealPassphrase for verify). It returns how many shares are held and
// needed; unsealed reports success.
func (m *Master) UnsealShare(sh shamir.Share, verify func(*Keys) error) (held, need int, unsealed bool, err error) {
	defer clear(sh.Y)
	if err := m.Refresh(); err != nil {
		return 0, 0, false, err
	}
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

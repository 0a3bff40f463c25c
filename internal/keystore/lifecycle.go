package keystore

import (
	"bytes"
	"slices"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

// SetAttrs changes o's attributes to what decide makes of the current
// ones, durably first for a persistent key.
func (s *Store) SetAttrs(o *Object, decide func(old *key.Attrs) (*key.Attrs, error)) error {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	old := o.Attrs()
	next, err := decide(old)
	if err != nil {
		return err
	}
	if !o.Ephemeral {
		err := s.update(o, func(r *persist.KeyRecord) error {
			r.Usage = uint32(next.Usage)
			r.Exportable, r.Wrappable = next.Exportable, next.Wrappable
			// Once wrappable, it was extractable (Meta.EverWrappable), in
			// a record written before the field too.
			r.EverWrappable = r.EverWrappable || old.Wrappable
			r.Acl = nil
			for _, e := range next.ACL {
				r.Acl = append(r.Acl, &persist.AclEntry{Group: e.Group, Id: e.ID, Usage: uint32(e.Usage)})
			}
			return nil
		}, nil, nil)
		if err != nil {
			return err
		}
	}
	if old.Wrappable && !o.Meta().EverWrappable {
		m := *o.Meta()
		m.EverWrappable = true
		o.meta.Store(&m)
	}
	s.mu.Lock()
	o.attrs.Store(next)
	if !o.removed.Load() {
		s.mats.addObject(o) // the copy rule sees the new attributes
	}
	s.mu.Unlock()
	return nil
}

// MarkWrappedOut records, durably first for a persistent key, that o's
// material has left the daemon wrapped: o is never again trusted to wrap
// (policy.TrustedWrapping).
func (s *Store) MarkWrappedOut(o *Object) error {
	if o.Meta().WrappedOut {
		return nil
	}
	o.wmu.Lock()
	defer o.wmu.Unlock()
	m := *o.Meta()
	if m.WrappedOut {
		return nil
	}
	m.WrappedOut = true
	if !o.Ephemeral {
		err := s.update(o, func(r *persist.KeyRecord) error {
			r.WrappedOut = true
			return nil
		}, nil, nil)
		if err != nil {
			return err
		}
	}
	o.meta.Store(&m)
	return nil
}

// MaxVersions bounds the live versions of one key, not counting the
// automatic versions that generation changes made (MaxAutoVersions).
const MaxVersions = 64

var errPublicRotate = wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION, "a public key cannot be rotated: import the new key instead")

// Rotate adds a new version of o, made fresh (a key of the same type
// from the daemon's random source), and makes it the newest.
func (s *Store) Rotate(o *Object) (*Version, error) {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	return s.rotateLocked(o, false)
}

// rotateLocked adds a new version. auto marks one made because a
// generation change closed the newest (budget.go): it is counted against
// MaxAutoVersions rather than MaxVersions.
func (s *Store) rotateLocked(o *Object, auto bool) (*Version, error) {
	nAuto, nOthers := countVersions(o.Versions())
	switch {
	case o.Class == key.Public:
		return nil, errPublicRotate
	case o.Meta().Origin == persist.Origin_ORIGIN_PASSPHRASE:
		return nil, wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION, "a key derived from a passphrase cannot be rotated: derive a new one")
	case !auto && nOthers >= MaxVersions:
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "a key has at most %d live versions: trim old ones first", MaxVersions)
	case auto && nAuto >= MaxAutoVersions:
		return nil, errTooManyAuto
	}
	if err := o.Gone(); err != nil {
		return nil, err
	}
	l, err := s.lease()
	if err != nil {
		return nil, err
	}
	defer l.Release()
	k := l.Keys()
	epoch, err := s.openEpoch(!o.Ephemeral)
	if err != nil {
		return nil, err
	}
	mat, err := mech.Generate(o.Spec)
	if err != nil {
		return nil, err
	}
	m := *o.Meta()
	v := &Version{N: m.NextVersion, Created: s.now(), Mat: mat, epoch: epoch, auto: auto}
	if v.fp, v.hasFP, err = fingerprintOf(k, mat); err != nil {
		mat.Destroy()
		return nil, err
	}
	v.limit.Store(DefaultEncryptionLimit)
	m.NextVersion++
	next := append(slices.Clone(o.Versions()), v)
	// install puts the version in o, then its material in the index,
	// unless o was removed meanwhile: Remove marks o removed before it
	// takes s.mu and drops the material of the versions o has then. s.mu
	// is held. A persistent key's runs as its record is noted.
	install := func() {
		o.meta.Store(&m)
		o.vers.Store(&next)
		if !o.removed.Load() {
			s.mats.add(v.fp, holderOf(o.ID, o.Owner, o.Spec, o.Class, o.Attrs(), key.Origin(m.Origin), len(m.Programs) > 0))
		}
	}
	if !o.Ephemeral {
		plain := func(i int, fn func([]byte) error) error {
			if i == len(next)-1 {
				return mat.Canonical(fn)
			}
			return o.UseVersion(next[i], func(k *mech.Key) error { return k.Canonical(fn) })
		}
		err := s.update(o, func(r *persist.KeyRecord) error {
			r.NextVersion = m.NextVersion
			nv := &persist.KeyVersion{
				Version: v.N, CreatedUnixNano: v.Created.UnixNano(), EncryptionsLimit: v.limit.Load(),
				BudgetEpoch: v.epoch, Automatic: v.auto,
			}
			if v.hasFP {
				// As every later write of the record has it (record):
				// another daemon's reservation then changes nothing
				// else (reservedOnly).
				nv.Fingerprint = bytes.Clone(v.fp[:])
			}
			r.Versions = append(r.Versions, nv)
			return nil
		}, plain, install)
		if err != nil {
			mat.Destroy()
			return nil, err
		}
		if hookRotated != nil {
			hookRotated(o)
		}
		// Wiped since the version was installed (destroyed, changed
		// elsewhere, sealed): its material goes too.
		o.setVersions(next)
	} else {
		s.mu.Lock()
		install()
		s.mu.Unlock()
		o.setVersions(next)
	}
	if auto {
		s.log.Info("key given a new version: a machine generation change closed the last one", "key", o.ID.String(), "version", v.N)
	} else {
		s.log.Info("key rotated", "key", o.ID.String(), "version", v.N)
	}
	return v, nil
}

// Lifecycle is a change of o's version and rotation settings; nil fields
// stay as they are.
type Lifecycle struct {
	MinVersion  *uint32
	TrimBelow   *uint32
	RotateAfter *time.Duration
	Refuse      *bool
	Trusted     *bool
	// DeletionAllowed lets Destroy delete the key, or stops it.
	DeletionAllowed *bool
	// Programs, when not nil, replaces the executables that may use the
	// key (empty: any).
	Programs *[]key.Program
	// SSH, when not nil, marks the key for the ssh-agent socket or
	// unmarks it.
	SSH *bool
}

// SetLifecycle applies c to o.
func (s *Store) SetLifecycle(o *Object, c Lifecycle) error {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	m := *o.Meta()
	vs := o.Versions()
	newest := vs[len(vs)-1].N
	if c.MinVersion != nil {
		switch {
		case *c.MinVersion < m.MinVersion:
			return wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION, "the minimum version can only be raised (it is %d)", m.MinVersion)
		case *c.MinVersion > newest:
			return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the minimum version cannot exceed the newest version, %d", newest)
		}
		m.MinVersion = *c.MinVersion
	}
	next := vs
	if c.TrimBelow != nil {
		if *c.TrimBelow > m.MinVersion {
			return wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION, "only retired versions can be trimmed: raise the minimum version to %d first", *c.TrimBelow)
		}
		next = slices.DeleteFunc(slices.Clone(vs), func(v *Version) bool { return v.N < *c.TrimBelow })
	}
	if c.RotateAfter != nil {
		if *c.RotateAfter < 0 {
			return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "negative rotation period")
		}
		if *c.RotateAfter > 0 && o.KDF != nil {
			return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a key derived from a passphrase cannot rotate: give it no rotation period")
		}
		m.RotateAfter = *c.RotateAfter
	}
	if c.Refuse != nil {
		m.Budget = persist.BudgetPolicy_BUDGET_POLICY_ROTATE
		if *c.Refuse {
			m.Budget = persist.BudgetPolicy_BUDGET_POLICY_REFUSE
		}
	}
	if c.Trusted != nil {
		if *c.Trusted {
			if err := policy.CheckTrust(o.Policy()).Err(); err != nil {
				return err
			}
		}
		m.Trusted = *c.Trusted
	}
	if c.DeletionAllowed != nil {
		m.DeletionAllowed = *c.DeletionAllowed
	}
	if c.SSH != nil {
		m.SSH = *c.SSH
	}
	restrict := false
	if c.Programs != nil {
		if err := policy.CheckPrograms(*c.Programs).Err(); err != nil {
			return err
		}
		restrict = len(*c.Programs) > 0 && len(m.Programs) == 0
		m.Programs = slices.Clone(*c.Programs)
		if len(m.Programs) == 0 {
			m.Programs = nil
		}
	}
	if restrict {
		// Marked restricted in the index before the record is written, so
		// that no copy made meanwhile escapes; unmarked if it fails.
		if err := s.restrictMaterial(o); err != nil {
			return err
		}
	}
	if !o.Ephemeral {
		keep := map[uint32]bool{}
		for _, v := range next {
			keep[v.N] = true
		}
		plain := func(i int, fn func([]byte) error) error {
			return o.UseVersion(next[i], func(k *mech.Key) error { return k.Canonical(fn) })
		}
		err := s.update(o, func(r *persist.KeyRecord) error {
			r.MinVersion, r.Trusted, r.BudgetPolicy, r.DeletionAllowed = m.MinVersion, m.Trusted, m.Budget, m.DeletionAllowed
			r.RotateAfterSeconds = int64(m.RotateAfter / time.Second)
			r.AllowedPrograms = programsToRecord(m.Programs)
			r.Ssh = m.SSH
			r.Versions = slices.DeleteFunc(r.Versions, func(v *persist.KeyVersion) bool { return !keep[v.Version] })
			return nil
		}, plain, nil)
		if err != nil {
			if restrict {
				s.mu.Lock()
				if !o.removed.Load() {
					s.mats.addObject(o)
				}
				s.mu.Unlock()
			}
			return err
		}
	}
	s.mu.Lock()
	o.meta.Store(&m)
	if c.Programs != nil && !o.removed.Load() {
		s.mats.addObject(o) // the copy rule sees whether it is restricted
	}
	s.mu.Unlock()
	if len(next) != len(vs) {
		s.mu.Lock()
		s.mats.removeObject(o, slices.DeleteFunc(slices.Clone(vs), func(v *Version) bool { return slices.Contains(next, v) }))
		s.mu.Unlock()
		if err := o.setVersions(next); err != nil {
			s.log.Error("key memory corrupted: something wrote past the end of a key", "key", o.ID.String(), "err", err)
		}
	}
	return nil
}

// reserveBlock is how many encryptions a durable reservation covers.
const reserveBlock = 1 << 20

// ErrSpent refuses encryptions that the newest version's budget has no
// room for, under the key's refuse-when-spent policy.
var ErrSpent = wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
	"the key's newest version has made as many encryptions as it may (random nonces: NIST SP 800-38D): rotate the key")

// Current returns the version new signatures, MACs and RSA encryptions
// use: the newest, after a rotation if the key's rotation period passed.
func (s *Store) Current(o *Object) (*Version, error) {
	v := o.Newest()
	if !s.tooOld(o, v) {
		return v, nil
	}
	o.wmu.Lock()
	defer o.wmu.Unlock()
	if v = o.Newest(); !s.tooOld(o, v) {
		return v, nil
	}
	return s.rotateLocked(o, false)
}

// Encrypting returns the version that n more AES-GCM encryptions must use
// and counts them: the newest, unless the newest is older than the key's
// rotation period, has spent its budget, or was made before the last
// machine generation change (budget.go), in which case a new version is
// made first (or, by the key's policy, the encryptions are refused). The
// count is durable before it is used: reservations of reserveBlock
// encryptions are written ahead.
func (s *Store) Encrypting(o *Object, n uint64) (*Version, error) {
	v := o.Newest()
	if s.open(v) && !s.tooOld(o, v) && v.count(n) {
		return v, nil
	}
	return s.encryptingSlow(o, n)
}

// count counts n encryptions of v if they fit in its reservation and its
// limit, and reports whether they did. The count is checked and raised in
// one step (compare and swap): a count raised past the bounds, even for a
// moment, would let another goroutine's check pass on a number that is no
// longer true, and the sum of the encryptions exceed what is reserved.
func (v *Version) count(n uint64) bool {
	for {
		u := v.used.Load()
		if u&closedCount != 0 {
			return n == 0
		}
		// Both bounds only rise but when the version is closed, and that
		// changes u first (close), so counting against what they were
		// when u was read stays within them.
		if !fits(u, n, min(v.reserved.Load(), v.limit.Load())) {
			return false
		}
		if v.used.CompareAndSwap(u, u+n) {
			return true
		}
	}
}

// fits reports whether n more on top of u stay within bound b (without
// overflow).
func fits(u, n, b uint64) bool { return u <= b && n <= b-u }

// raiseUsed raises v's count to at least g.
func (v *Version) raiseUsed(g uint64) {
	for {
		u := v.used.Load()
		if u&^closedCount >= g || v.used.CompareAndSwap(u, g|u&closedCount) {
			return
		}
	}
}

func (s *Store) tooOld(o *Object, v *Version) bool {
	m := o.Meta()
	// A key derived from a passphrase cannot rotate: a period it was given
	// before periods were refused for it is ignored.
	return m.RotateAfter > 0 && s.now().Sub(v.Created) > m.RotateAfter && o.Class != key.Public && o.KDF == nil
}

func (s *Store) encryptingSlow(o *Object, n uint64) (*Version, error) {
	o.wmu.Lock()
	defer o.wmu.Unlock()
	for {
		v, err := s.encryptingLocked(o, n)
		if err != nil {
			return nil, err
		}
		if hookCounting != nil {
			hookCounting(o)
		}
		// The fast path of other goroutines, which does not wait for
		// o.wmu, may have spent what the checks found left: then the
		// checks run again (a reservation, a rotation, a refusal).
		if v.count(n) {
			return v, nil
		}
	}
}

// encryptingLocked returns the version that n more encryptions of o must
// use, with room for them when it returns, rotating o or reserving
// encryptions first if needed; it counts nothing. o.wmu is held.
func (s *Store) encryptingLocked(o *Object, n uint64) (*Version, error) {
	v := o.Newest()
	if g := v.elsewhere.Load(); g > v.reserved.Load() {
		// Another daemon of a shared store reserved encryptions past this
		// one's reservation: this one gives up what it has left of its
		// own (as a crash would) and counts from the other's end. The
		// count is raised, never lowered: encryptions counted meanwhile
		// stay counted (some twice, which only spends budget).
		v.raiseUsed(g)
		v.reserved.Store(g)
	}
	if !s.open(v) {
		if o.Meta().Budget == persist.BudgetPolicy_BUDGET_POLICY_REFUSE {
			return nil, errClosedByChange
		}
		var err error
		if v, err = s.rotateLocked(o, true); err != nil {
			return nil, err
		}
	}
	if s.tooOld(o, v) {
		var err error
		if v, err = s.rotateLocked(o, false); err != nil {
			return nil, err
		}
	}
	if !fits(v.Used(), n, v.limit.Load()) || (n > 0 && v.closed()) {
		if o.Meta().Budget == persist.BudgetPolicy_BUDGET_POLICY_REFUSE || n > DefaultEncryptionLimit/2 {
			return nil, ErrSpent
		}
		var err error
		if v, err = s.rotateLocked(o, false); err != nil {
			return nil, err
		}
	}
	if u := v.Used(); !fits(u, n, v.reserved.Load()) {
		res := min(u+n+reserveBlock, v.limit.Load())
		if o.Ephemeral {
			res = v.limit.Load()
		} else {
			idx := slices.Index(o.Versions(), v)
			if hookReserving != nil {
				hookReserving(o)
			}
			err := s.update(o, func(r *persist.KeyRecord) error {
				// r is o's state now. Another daemon's reservation that
				// the follower applied after the count above was raised to
				// the others' (elsewhere) would be overlapped by this one:
				// refused, as a change from a superseded state is.
				if r.Versions[idx].EncryptionsReserved > v.reserved.Load() {
					return errRaced
				}
				r.Versions[idx].EncryptionsReserved = res
				return nil
			}, nil, nil)
			if err != nil {
				return nil, err
			}
		}
		v.reserved.Store(res)
	}
	return v, nil
}

// Uncount gives back n encryptions counted by Encrypting that did not
// happen (the operation failed before encrypting).
func (s *Store) Uncount(v *Version, n uint64) { v.used.Add(-n) }

// restrictMaterial marks o restricted to some programs in the index of
// materials, unless another key of its owner holds its material and any
// program may use that one: restricting o would then restrict nothing
// (the copy rule keeps copies made from now on restricted, not those made
// before). Public keys hide nothing and do not count; nor do other
// owners' keys, which their owners could use anyway and which this
// owner's restriction is not about (a refusal would tell of them).
func (s *Store) restrictMaterial(o *Object) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if o.removed.Load() {
		return errDestroyed
	}
	var held []holder
	for _, v := range o.Versions() {
		if v.hasFP {
			held = s.mats.holders(held, v.fp)
		}
	}
	for _, h := range held {
		if h.id != o.ID && h.owner == o.Owner && h.flags&holderRestricted == 0 && key.Class(h.class) != key.Public {
			return wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION,
				"key %s holds the same key bytes and any program may use it: destroy it first, or this restriction would restrict nothing",
				h.id.String())
		}
	}
	h := holderOf(o.ID, o.Owner, o.Spec, o.Class, o.Attrs(), key.Origin(o.Meta().Origin), true)
	for _, v := range o.Versions() {
		if v.hasFP {
			s.mats.add(v.fp, h)
		}
	}
	return nil
}

package keywarden

import (
	"context"
	"errors"
	"io"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// Admin is a Client seen by the daemon's administrators: the calls that
// manage the master key, the store and the machine generation
// (docs/operations.md, "Administrators"). The daemon allows them to root,
// its own uid and the uids it was given with --admin (BumpGeneration: root
// and --generation-admin); anyone else gets ErrPermissionDenied. They keep
// apart from the application calls on Client, which an application that
// only uses keys never needs.
type Admin struct{ c *Client }

// Admin returns the administrator calls, on c's connection.
func (c *Client) Admin() *Admin { return &Admin{c: c} }

// MasterSealing says how a new master key is sealed: under a passphrase
// (Argon2id, run by the daemon in a worker process), split into shares,
// or both.
type MasterSealing struct {
	// Passphrase, if not empty, seals the master key. The call wipes it.
	Passphrase []byte
	// Argon2 are the passphrase's costs; zero fields take the daemon's
	// defaults for master keys (t=3, 256 MiB, 4 lanes).
	Argon2 Argon2Params
	// Shares, if not 0, splits the master key into this many shares, any
	// Threshold of which unseal it (2 <= Threshold <= Shares <= 255).
	Shares, Threshold int
	// KeepShares is called with the new shares before anything is stored:
	// it must put them somewhere safe (one share per holder), and only if
	// it returns nil does the daemon store the new master key. It is
	// needed when Shares is not 0.
	KeepShares func([]Share) error
}

func (s MasterSealing) wire() (pass []byte, p *wire.Argon2Params, n, k uint32) {
	return s.Passphrase, s.Argon2.wire(), uint32(s.Shares), uint32(s.Threshold)
}

// Share is one share of a master key split k-of-n. Whoever holds
// Threshold shares of a split holds the master key: keep them apart.
type Share struct {
	SplitID   [8]byte
	Threshold int
	X         byte   // 1 to 255, unique within the split
	Y         []byte // secret
}

func sharesFromWire(ws []*wire.Share) []Share {
	out := make([]Share, 0, len(ws))
	for _, w := range ws {
		var s Share
		copy(s.SplitID[:], w.SplitId)
		s.Threshold, s.X, s.Y = int(w.Threshold), byte(w.X), w.Y
		out = append(out, s)
	}
	return out
}

func sharesToWire(ss []Share) []*wire.Share {
	out := make([]*wire.Share, 0, len(ss))
	for _, s := range ss {
		out = append(out, &wire.Share{SplitId: s.SplitID[:], Threshold: uint32(s.Threshold), X: uint32(s.X), Y: s.Y})
	}
	return out
}

// MasterKeyInfo identifies a master key.
type MasterKeyInfo struct {
	StoreID    [16]byte
	Generation uint64
}

// InitOptions are the options of Init; nil means the zero value.
type InitOptions struct {
	// Force replaces the master key of a store that holds no keys.
	Force bool
}

// Init creates the daemon's master key, sealed as s says (its shares
// handed to s.KeepShares first), and leaves the daemon unsealed.
func (a *Admin) Init(ctx context.Context, s MasterSealing, opts *InitOptions) (MasterKeyInfo, error) {
	c := a.c
	var force bool
	if opts != nil {
		force = opts.Force
	}
	pass, p, n, k := s.wire()
	defer clear(pass)
	res, err := c.do(ctx, "init", &wire.Op{Op: &wire.Op_Init{Init: &wire.Init{Passphrase: pass, Params: p, Shares: n, Threshold: k, Force: force}}})
	clear(pass)
	if err != nil {
		return MasterKeyInfo{}, err
	}
	ir := res.GetInit()
	shares := sharesFromWire(ir.GetShares())
	defer func() {
		for _, s := range shares {
			clear(s.Y)
		}
	}()
	if s.KeepShares != nil {
		if err := s.KeepShares(shares); err != nil {
			return MasterKeyInfo{}, err
		}
	} else if len(shares) > 0 {
		return MasterKeyInfo{}, argError("init", "shares were asked for but nothing keeps them")
	}
	res, err = c.do(ctx, "init", &wire.Op{Op: &wire.Op_Init{Init: &wire.Init{Commit: ir.GetToken(), Force: force}}})
	if err != nil {
		return MasterKeyInfo{}, err
	}
	var info MasterKeyInfo
	copy(info.StoreID[:], res.GetInit().GetStoreId())
	info.Generation = res.GetInit().GetGeneration()
	return info, nil
}

// UnsealProgress says how far an unseal with shares has come.
type UnsealProgress struct {
	Unsealed   bool
	SharesHeld int
	Threshold  int
}

// UnsealOptions are the options of Unseal and UnsealShares; nil means the
// zero value.
type UnsealOptions struct {
	// AcceptStore accepts a store whose records no longer add up to what
	// the daemon last wrote; see docs/operations.md.
	AcceptStore bool
}

func (o *UnsealOptions) acceptStore() bool { return o != nil && o.AcceptStore }

// Unseal unseals the daemon with the master key's passphrase, which it
// wipes. After failed attempts the daemon refuses more for a while
// (ErrResourceExhausted).
func (a *Admin) Unseal(ctx context.Context, passphrase []byte, opts *UnsealOptions) error {
	defer clear(passphrase)
	_, err := a.c.do(ctx, "unseal", &wire.Op{Op: &wire.Op_Unseal{Unseal: &wire.Unseal{Passphrase: passphrase, AcceptStore: opts.acceptStore()}}})
	return err
}

// UnsealShares submits shares of the master key; the daemon unseals once
// it holds as many as the threshold (they may come from several callers,
// one at a time).
func (a *Admin) UnsealShares(ctx context.Context, shares []Share, opts *UnsealOptions) (UnsealProgress, error) {
	res, err := a.c.do(ctx, "unseal", &wire.Op{Op: &wire.Op_Unseal{Unseal: &wire.Unseal{Shares: sharesToWire(shares), AcceptStore: opts.acceptStore()}}})
	if err != nil {
		return UnsealProgress{}, err
	}
	u := res.GetUnseal()
	return UnsealProgress{Unsealed: u.GetUnsealed(), SharesHeld: int(u.GetSharesHeld()), Threshold: int(u.GetThreshold())}, nil
}

// Seal wipes the master key and every key from the daemon's memory; key
// operations are refused until the next unseal.
func (a *Admin) Seal(ctx context.Context) error {
	_, err := a.c.do(ctx, "seal", &wire.Op{Op: &wire.Op_Seal{Seal: &wire.Seal{}}})
	return err
}

// RotateMaster makes a new master key, sealed as s says (its shares
// handed to s.KeepShares first), and returns its generation. The daemon then re-wraps every key
// under it in the background, resuming after a crash;
// ServerStatus.Seal reports progress.
func (a *Admin) RotateMaster(ctx context.Context, s MasterSealing) (uint64, error) {
	c := a.c
	pass, p, n, k := s.wire()
	defer clear(pass)
	res, err := c.do(ctx, "master-rotate", &wire.Op{Op: &wire.Op_MasterRotate{MasterRotate: &wire.MasterRotate{Passphrase: pass, Params: p, Shares: n, Threshold: k}}})
	clear(pass)
	if err != nil {
		return 0, err
	}
	ir := res.GetInit()
	shares := sharesFromWire(ir.GetShares())
	defer func() {
		for _, s := range shares {
			clear(s.Y)
		}
	}()
	if s.KeepShares != nil {
		if err := s.KeepShares(shares); err != nil {
			return 0, err
		}
	} else if len(shares) > 0 {
		return 0, argError("master-rotate", "shares were asked for but nothing keeps them")
	}
	res, err = c.do(ctx, "master-rotate", &wire.Op{Op: &wire.Op_MasterRotate{MasterRotate: &wire.MasterRotate{Commit: ir.GetToken()}}})
	if err != nil {
		return 0, err
	}
	return res.GetInit().GetGeneration(), nil
}

// Backup writes a consistent copy of the daemon's whole store to w. It
// holds only ciphertext and the sealed master key: a daemon restored from
// it unseals with the same passphrase or shares.
func (a *Admin) Backup(ctx context.Context, w io.Writer) (int64, error) {
	c := a.c
	var n int64
	var token []byte
	for {
		res, err := c.do(ctx, "backup", &wire.Op{Op: &wire.Op_Backup{Backup: &wire.Backup{Token: token}}})
		if err != nil {
			return n, err
		}
		b := res.GetBackup()
		m, err := w.Write(b.GetData())
		n += int64(m)
		if err != nil {
			return n, err
		}
		if b.GetLast() {
			return n, nil
		}
		token = b.GetToken()
	}
}

// RestoreOptions are the options of Restore; nil means the zero value.
type RestoreOptions struct {
	// Force replaces a store that holds keys. Without it such a restore
	// is refused (ErrPolicyViolation, with a message that says what it would
	// lose) and nothing changes.
	Force bool
}

// RestoreResult describes a restore.
type RestoreResult struct {
	// Bytes of backup sent.
	Bytes int64
	// Key records in the store replaced and in the backup.
	KeysBefore, KeysInBackup uint64
	// Keys the store replaced held that the backup does not: made since
	// the backup, rotated since (their newer versions), changed since in
	// another way (attributes, ACL, lifecycle, versions retired or
	// trimmed). Returning keys were destroyed since the backup and are
	// back.
	Created, Rotated, Changed, Returning uint64
	// The caller's keys of each kind, by name (hex id if unnamed; at most
	// 256 of each).
	YoursCreated, YoursRotated, YoursChanged, YoursReturning []string
	// The master key's generation before and in the backup.
	GenerationBefore, GenerationInBackup uint64
	// Replaced is the file on the daemon's machine that keeps the store
	// replaced, until an administrator removes it ("" if it held no keys).
	Replaced string
}

// Restore replaces the daemon's whole store with a backup read from r,
// and leaves the daemon sealed: unsealing checks the restored store. A
// daemon with a master key takes only a backup of its own store, and only
// if it holds no keys, unless opts.Force. The result says what the
// restore replaced.
func (a *Admin) Restore(ctx context.Context, r io.Reader, opts *RestoreOptions) (RestoreResult, error) {
	c := a.c
	force := opts != nil && opts.Force
	chunk := make([]byte, min(c.MaxData(), 256<<10))
	var out RestoreResult
	var token []byte
	for {
		m, err := io.ReadFull(r, chunk)
		last := errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF)
		if err != nil && !last {
			return out, err
		}
		res, derr := c.do(ctx, "restore", &wire.Op{Op: &wire.Op_Restore{Restore: &wire.Restore{Token: token, Data: chunk[:m], Last: last, Force: last && force}}})
		if derr != nil {
			return out, derr
		}
		out.Bytes += int64(m)
		if last {
			if w := res.GetBackup().GetReport(); w != nil {
				out.KeysBefore, out.KeysInBackup = w.KeysBefore, w.KeysInBackup
				out.Created, out.Rotated, out.Changed, out.Returning = w.Created, w.Rotated, w.Changed, w.Returning
				out.YoursCreated, out.YoursRotated = cloneStrings(w.YoursCreated), cloneStrings(w.YoursRotated)
				out.YoursChanged, out.YoursReturning = cloneStrings(w.YoursChanged), cloneStrings(w.YoursReturning)
				out.GenerationBefore, out.GenerationInBackup = w.GenerationBefore, w.GenerationInBackup
				out.Replaced = strings.Clone(w.Replaced)
			}
			return out, nil
		}
		token = res.GetBackup().GetToken()
	}
}

// cloneStrings copies strings that may point into a reply's buffer.
func cloneStrings(ss []string) []string {
	var out []string
	for _, s := range ss {
		out = append(out, strings.Clone(s))
	}
	return out
}

// SealStatus describes the daemon's master key and store.
type SealStatus struct {
	// Initialized: a master key exists. Sealed: it is not in memory, and
	// key operations are refused.
	Initialized, Sealed bool
	Generation          uint64
	Passphrase          bool // sealed under a passphrase
	Threshold, Shares   int  // split into shares (0: not)
	SharesHeld          int  // submitted toward the next unseal
	// RetryAfter: unseal attempts are refused for this long after failures.
	RetryAfter time.Duration
	// A master-key rotation is re-wrapping keys.
	Rotating                    bool
	RotationDone, RotationTotal uint64
	// The store: a file in StateDir, or memory (development mode).
	StateDir    string
	Persistent  bool
	Quarantined int // key records refused for failing their integrity check
	// Cluster describes the etcd cluster of a store that several daemons
	// share; nil for a store of one machine.
	Cluster *ClusterStatus
}

// ClusterStatus describes the etcd cluster of a shared store and how
// closely the daemon follows it.
type ClusterStatus struct {
	Prefix    string
	Endpoints []ClusterEndpoint
	Leader    uint64 // member id of the leader; 0: none known
	Revision  int64  // the highest revision a member reported
	// Following: the daemon (unsealed) follows the store's changes, every
	// one up to FollowedRevision, confirmed Lag ago; past Bound, keys are
	// refused, and Refused says why.
	Following        bool
	FollowedRevision int64
	Lag, Bound       time.Duration
	Refused          string
}

// ClusterEndpoint is one etcd endpoint's answer.
type ClusterEndpoint struct {
	URL      string
	MemberID uint64
	Version  string
	Revision int64
	Leader   bool
	Err      string
}

func clusterStatusFromWire(c *wire.ClusterStatus) *ClusterStatus {
	if c == nil {
		return nil
	}
	st := &ClusterStatus{Prefix: c.GetPrefix(), Leader: c.GetLeader(), Revision: c.GetRevision(),
		Following: c.GetFollowing(), FollowedRevision: c.GetFollowedRevision(),
		Lag: time.Duration(c.GetLagMs()) * time.Millisecond, Bound: time.Duration(c.GetBoundMs()) * time.Millisecond,
		Refused: c.GetRefused()}
	for _, e := range c.GetEndpoints() {
		st.Endpoints = append(st.Endpoints, ClusterEndpoint{URL: e.GetUrl(), MemberID: e.GetMemberId(), Version: e.GetVersion(),
			Revision: e.GetRevision(), Leader: e.GetLeader(), Err: e.GetError()})
	}
	return st
}

func sealStatusFromWire(s *wire.SealStatus) SealStatus {
	return SealStatus{
		Initialized: s.GetInitialized(), Sealed: s.GetSealed(), Generation: s.GetGeneration(),
		Passphrase: s.GetPassphrase(), Threshold: int(s.GetThreshold()), Shares: int(s.GetShares()),
		SharesHeld: int(s.GetSharesHeld()), RetryAfter: time.Duration(s.GetRetryAfterMs()) * time.Millisecond,
		Rotating: s.GetRotating(), RotationDone: s.GetRotationDone(), RotationTotal: s.GetRotationTotal(),
		StateDir: s.GetStateDir(), Persistent: s.GetPersistent(), Quarantined: int(s.GetQuarantined()),
		Cluster: clusterStatusFromWire(s.GetCluster()),
	}
}

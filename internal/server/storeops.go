package server

import (
	"bytes"
	"context"
	"crypto/hmac"
	"errors"
	"io"
	"os"
	"sync"
	"time"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/shamir"
	"github.com/keywarden/keywarden/internal/wire"
)

// The master-key and store operations (docs/operations.md): init,
// unseal, seal, master rotation, backup and restore are for
// administrators: root, the daemon's own uid, and the uids of --admin.

// Who may run them is the operation table's (accessAdmin), checked by
// dispatch before they run.

// connStore is a connection's state for the multi-step store operations.
type connStore struct {
	mu      sync.Mutex
	pending *seal.Pending // made by init or master_rotate, awaiting commit
	token   []byte
	rotate  bool // pending is a rotation
	backup  *backupStream
	restore *restoreFile
}

func (cs *connStore) cleanup() {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	cs.pending.Discard()
	cs.pending = nil
	if cs.backup != nil {
		cs.backup.close()
		cs.backup = nil
	}
	if cs.restore != nil {
		cs.restore.discard()
		cs.restore = nil
	}
}

// newToken returns a session token. It is only ever compared within this
// daemon, so a clone repeating it does no harm: it does not wait for
// fresh randomness after a generation change.
func newToken() []byte {
	t := make([]byte, 16)
	random.ReadAny(t)
	return t
}

func sealingFrom(pass []byte, p *wire.Argon2Params, shares, threshold uint32, maxMem uint32) (seal.Sealing, error) {
	s := seal.Sealing{Passphrase: bytes.Clone(pass), Shares: int(shares), Threshold: int(threshold)}
	if p != nil {
		s.Params = kdf.Params{Time: p.Time, MemoryKiB: p.MemoryKib, Threads: uint8(min(p.Threads, 255))}
		if p.Threads > 255 {
			return s, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "Argon2id threads: 1 to 255")
		}
	}
	if len(pass) > 0 {
		full := s.Params
		if full.Time == 0 {
			full.Time = seal.DefaultParams.Time
		}
		if full.MemoryKiB == 0 {
			full.MemoryKiB = seal.DefaultParams.MemoryKiB
		}
		if full.Threads == 0 {
			full.Threads = seal.DefaultParams.Threads
		}
		if maxMem > 0 && full.MemoryKiB > maxMem {
			return s, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT,
				"the passphrase's Argon2id memory (%d KiB) exceeds the daemon's --kdf-max-memory (%d KiB)", full.MemoryKiB, maxMem)
		}
		if err := full.Check(max(maxMem, full.MemoryKiB)); err != nil {
			return s, err
		}
		s.Params = full
	}
	if len(pass) > kdf.MaxPasswordLen {
		return s, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "passphrase longer than %d bytes", kdf.MaxPasswordLen)
	}
	return s, nil
}

func (ss *Session) kdfMaxMemory() uint32 {
	if ss.s.cfg.KDF == nil {
		return 0
	}
	return ss.s.cfg.KDF.Limits().MaxMemoryKiB
}

func sharesToWire(ss []shamir.Share) []*wire.Share {
	out := make([]*wire.Share, len(ss))
	for i, s := range ss {
		out[i] = &wire.Share{SplitId: bytes.Clone(s.SplitID[:]), Threshold: uint32(s.Threshold), X: uint32(s.X), Y: bytes.Clone(s.Y)}
	}
	return out
}

func (ss *Session) opInit(in *wire.Init, id Identity) (*wire.Result, error) {
	defer clear(in.Passphrase)
	st, m := ss.s.store, ss.s.store.Master()
	cs := &ss.st
	if len(in.Commit) > 0 {
		cs.mu.Lock()
		p, tok, rot := cs.pending, cs.token, cs.rotate
		if p == nil || rot || !hmac.Equal(tok, in.Commit) {
			cs.mu.Unlock()
			return nil, wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no pending init with this token on this connection")
		}
		cs.pending, cs.token = nil, nil
		cs.mu.Unlock()
		header := func(k *seal.Keys) ([]byte, error) { return keystore.NewHeader(k, ss.s.cfg.Now()) }
		commit := m.CommitInit
		if m.State().Initialized {
			commit = st.Reinit
		}
		if err := commit(p, header); err != nil {
			return nil, err
		}
		k, err := m.Keys()
		if err == nil {
			err = st.Verify(k, false)
		}
		if err != nil {
			return nil, err
		}
		ss.log.Info("master key created and committed", "uid", id.UID, "pid", id.PID)
		return &wire.Result{Value: &wire.Result_Init{Init: &wire.InitResult{StoreId: k.StoreID, Generation: k.Generation}}}, nil
	}
	if m.State().Initialized {
		if !in.Force {
			return nil, seal.ErrInitialized
		}
		if empty, err := st.Empty(); err != nil || !empty {
			return nil, wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION, "the store holds keys: its master key cannot be replaced")
		}
	}
	s, err := sealingFrom(in.Passphrase, in.Params, in.Shares, in.Threshold, ss.kdfMaxMemory())
	if err != nil {
		return nil, err
	}
	p, err := m.PrepareInit(kdf.Priority(ss.ctxOf(id)), s, in.Force)
	if err != nil {
		return nil, err
	}
	return ss.holdPending(p, false, p.StoreID(), p.Generation())
}

// holdPending keeps p for the commit call and returns its shares and token.
func (ss *Session) holdPending(p *seal.Pending, rotate bool, storeID []byte, gen uint64) (*wire.Result, error) {
	cs := &ss.st
	tok := newToken()
	res := &wire.InitResult{Token: tok, Shares: sharesToWire(p.Shares), StoreId: storeID, Generation: gen}
	cs.mu.Lock()
	cs.pending.Discard()
	cs.pending, cs.token, cs.rotate = p, tok, rotate
	cs.mu.Unlock()
	return &wire.Result{Value: &wire.Result_Init{Init: res}}, nil
}

func (ss *Session) opUnseal(u *wire.Unseal, id Identity) (*wire.Result, error) {
	defer clear(u.Passphrase)
	st, m := ss.s.store, ss.s.store.Master()
	verify := func(k *seal.Keys) error {
		err := st.Verify(k, u.AcceptStore)
		var ie *keystore.IntegrityError
		if errors.As(err, &ie) {
			return wire.Errorf(wire.Status_STATUS_INTERNAL, "%s; the daemon stays sealed (restore a backup, or unseal with --accept-store if you know why)", ie.Error())
		}
		return err
	}
	res := &wire.UnsealResult{}
	switch {
	case len(u.Passphrase) > 0 && len(u.Shares) > 0:
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unseal with a passphrase or with shares, not both")
	case len(u.Passphrase) > 0:
		if err := m.UnsealPassphrase(kdf.Priority(ss.ctxOf(id)), bytes.Clone(u.Passphrase), verify); err != nil {
			ss.log.Warn("unseal refused", "uid", id.UID, "pid", id.PID, "err", err)
			return nil, err
		}
		res.Unsealed = true
	case len(u.Shares) > 0:
		shares, err := sharesFromRequest(m, u.Shares)
		if err != nil {
			ss.log.Warn("unseal refused", "uid", id.UID, "pid", id.PID, "err", err)
			return nil, err
		}
		defer func() {
			for _, sh := range shares {
				clear(sh.Y) // those not submitted (UnsealShare wipes its own)
			}
		}()
		for _, sh := range shares {
			held, need, done, err := m.UnsealShare(sh, verify)
			if err != nil {
				ss.log.Warn("unseal refused", "uid", id.UID, "pid", id.PID, "err", err)
				return nil, err
			}
			res.SharesHeld, res.Threshold, res.Unsealed = uint32(held), uint32(need), done
			if done {
				break
			}
		}
	default:
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "unseal needs a passphrase or shares")
	}
	if res.Unsealed {
		ss.log.Info("unsealed", "uid", id.UID, "pid", id.PID)
		ss.s.resumeRotation()
	}
	return &wire.Result{Value: &wire.Result_Unseal{Unseal: res}}, nil
}

// sharesFromRequest decodes the shares of an unseal request (wiping the
// request's copies) and checks each against the master record before any
// is submitted: a bad share (another split, a number the split does not
// have, one that is not the share issued) is named, and the good shares
// of the request are not spent on an unseal that cannot succeed.
func sharesFromRequest(m *seal.Master, ws []*wire.Share) ([]shamir.Share, error) {
	shares := make([]shamir.Share, 0, len(ws))
	var err error
	for _, w := range ws {
		var sh shamir.Share
		if len(w.SplitId) != len(sh.SplitID) || w.X == 0 || w.X > 255 || w.Threshold > 255 {
			err = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "malformed share")
		} else if err == nil {
			copy(sh.SplitID[:], w.SplitId)
			sh.Threshold, sh.X, sh.Y = int(w.Threshold), byte(w.X), bytes.Clone(w.Y)
			shares = append(shares, sh)
			err = m.CheckShare(sh)
		}
		clear(w.Y)
	}
	if err != nil {
		for _, sh := range shares {
			clear(sh.Y)
		}
		return nil, err
	}
	return shares, nil
}

var errSealEphemeral = wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION,
	"not sealed: this daemon runs in development mode (--dev), its master key exists only in memory and nothing could unseal it again, "+
		"so sealing would destroy every key; stop the daemon to end it, or run one with --state to seal and unseal")

func (ss *Session) opSeal(id Identity) (*wire.Result, error) {
	if st := ss.s.store.Master().State(); st.Initialized && !st.Sealed && !st.Passphrase && st.Shares == 0 {
		// A development-mode master key: made in memory, sealed under
		// nothing. Sealing would wipe it for good, and every key with it.
		return nil, errSealEphemeral
	}
	if !ss.s.store.SealAll() {
		return nil, seal.ErrSealed
	}
	ss.log.Info("sealed on request", "uid", id.UID, "pid", id.PID)
	return ok(), nil
}

func (ss *Session) opMasterRotate(r *wire.MasterRotate, id Identity) (*wire.Result, error) {
	defer clear(r.Passphrase)
	st, m := ss.s.store, ss.s.store.Master()
	cs := &ss.st
	if len(r.Commit) > 0 {
		cs.mu.Lock()
		p, tok, rot := cs.pending, cs.token, cs.rotate
		if p == nil || !rot || !hmac.Equal(tok, r.Commit) {
			cs.mu.Unlock()
			return nil, wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no pending master-key rotation with this token on this connection")
		}
		cs.pending, cs.token = nil, nil
		cs.mu.Unlock()
		if err := st.CommitRotation(p); err != nil {
			return nil, err
		}
		ss.log.Info("master key rotated", "uid", id.UID, "pid", id.PID, "generation", m.State().Generation)
		ss.s.resumeRotation()
		return &wire.Result{Value: &wire.Result_Init{Init: &wire.InitResult{Generation: m.State().Generation}}}, nil
	}
	if err := st.Ready(); err != nil {
		return nil, err
	}
	s, err := sealingFrom(r.Passphrase, r.Params, r.Shares, r.Threshold, ss.kdfMaxMemory())
	if err != nil {
		return nil, err
	}
	p, err := m.PrepareRotation(kdf.Priority(ss.ctxOf(id)), s)
	if err != nil {
		return nil, err
	}
	return ss.holdPending(p, true, p.StoreID(), p.Generation())
}

// resumeRotation re-wraps the key records of a master-key rotation in the
// background, if one is under way and none is running.
func (s *Server) resumeRotation() {
	if st := s.store.Master().State(); !st.Rotating || st.Sealed {
		return
	}
	if !s.rewrapping.CompareAndSwap(false, true) {
		return
	}
	go func() {
		start := time.Now()
		err := s.store.RewrapAll(func(done, total uint64) {
			s.log.Debug("master-key rotation: re-wrapping", "done", done, "total", total)
		})
		s.rewrapping.Store(false)
		if errors.Is(err, seal.ErrSealed) && s.store.Ready() == nil {
			// Sealed under this batch and unsealed again since: the
			// unseal found this run still going, so it goes on now.
			s.resumeRotation()
			return
		}
		if err != nil {
			s.log.Error("master-key rotation stopped; it resumes at the next unseal", "err", err)
			return
		}
		s.log.Info("master-key rotation: every key re-wrapped", "took", time.Since(start).Round(time.Millisecond).String())
	}()
}

func (ss *Session) opRotate(r *wire.Rotate, id Identity) (*wire.Result, error) {
	o, err := ss.authorized(r.Handle, id, policy.Manage, 0)
	if err != nil {
		return nil, err
	}
	if _, err := ss.s.store.Rotate(o); err != nil {
		return nil, err
	}
	info := o.Info(id.caller())
	return &wire.Result{KeyVersion: info.Version, Value: &wire.Result_Info{Info: info}}, nil
}

func (ss *Session) opSetLifecycle(sl *wire.SetLifecycle, id Identity) (*wire.Result, error) {
	var o *keystore.Object
	var err error
	if sl.Trusted != nil && sl.MinVersion == nil && sl.TrimBelow == nil && sl.RotateAfterSeconds == nil && sl.RefuseWhenSpent == nil &&
		sl.DeletionAllowed == nil && sl.AllowedPrograms == nil && sl.Ssh == nil && ss.s.roles.Load().Admin(id.UID) {
		// Trust is the administrators' to give, whoever owns the key.
		o, err = ss.object(sl.Handle)
	} else {
		o, err = ss.authorized(sl.Handle, id, policy.Manage, 0)
	}
	if err != nil {
		return nil, err
	}
	c := keystore.Lifecycle{MinVersion: sl.MinVersion, TrimBelow: sl.TrimBelow, Refuse: sl.RefuseWhenSpent, Trusted: sl.Trusted,
		DeletionAllowed: sl.DeletionAllowed, SSH: sl.Ssh}
	if sl.RotateAfterSeconds != nil {
		d := time.Duration(*sl.RotateAfterSeconds) * time.Second
		c.RotateAfter = &d
	}
	var before []key.Program
	if sl.AllowedPrograms != nil {
		ps := keystore.ProgramsFromWire(sl.AllowedPrograms.Programs)
		c.Programs = &ps
		before = o.Meta().Programs
	}
	if sl.Trusted != nil {
		if err := ss.s.roles.Load().CheckAdmin(id.caller()).Err(); err != nil {
			return nil, err
		}
	}
	if err := ss.s.store.SetLifecycle(o, c); err != nil {
		return nil, err
	}
	if sl.DeletionAllowed != nil {
		ss.log.Info("key deletion allowed changed", "key", o.ID.String(), "deletion_allowed", *sl.DeletionAllowed, "uid", id.UID, "pid", id.PID)
	}
	if sl.Ssh != nil {
		ss.log.Info("key's ssh-agent mark changed", "key", o.ID.String(), "ssh", *sl.Ssh, "uid", id.UID, "pid", id.PID)
	}
	if sl.AllowedPrograms != nil {
		ss.log.Info("key's allowed programs changed", "key", o.ID.String(), "before", programsText(before),
			"after", programsText(o.Meta().Programs), "uid", id.UID, "pid", id.PID)
	}
	if sl.Trusted != nil {
		ss.log.Info("wrapping-key trust changed", "key", o.ID.String(), "trusted", *sl.Trusted, "uid", id.UID, "pid", id.PID)
	}
	return &wire.Result{Value: &wire.Result_Info{Info: o.Info(id.caller())}}, nil
}

// --- backup and restore ----------------------------------------------------

// backupStream runs a backup into a pipe that Backup calls drain.
type backupStream struct {
	token []byte
	r     *io.PipeReader
	done  chan error
}

func (b *backupStream) close() { b.r.CloseWithError(errors.New("backup abandoned")) }

// backupChunk is the most backup data one reply carries.
func (ss *Session) backupChunk() int { return ss.s.lims().MaxMessageBytes - 1024 }

func (ss *Session) opBackup(b *wire.Backup, id Identity) (*wire.Result, error) {
	cs := &ss.st
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if len(b.Token) == 0 {
		if cs.backup != nil {
			cs.backup.close()
		}
		pr, pw := io.Pipe()
		bs := &backupStream{token: newToken(), r: pr, done: make(chan error, 1)}
		go func() {
			err := ss.s.store.Backup(pw)
			pw.CloseWithError(err)
			bs.done <- err
		}()
		cs.backup = bs
		ss.log.Info("backup started", "uid", id.UID, "pid", id.PID)
	}
	bs := cs.backup
	if bs == nil || (len(b.Token) > 0 && !hmac.Equal(bs.token, b.Token)) {
		return nil, wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no backup with this token on this connection")
	}
	buf := make([]byte, ss.backupChunk())
	n, err := io.ReadFull(bs.r, buf)
	res := &wire.BackupChunk{Token: bs.token, Data: buf[:n]}
	switch {
	case errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF):
		if berr := <-bs.done; berr != nil {
			cs.backup = nil
			return nil, berr
		}
		res.Last = true
		cs.backup = nil
	case err != nil:
		cs.backup = nil
		bs.close()
		if berr := <-bs.done; berr != nil {
			return nil, berr
		}
		return nil, wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "backup failed: %v", err)
	}
	return &wire.Result{Value: &wire.Result_Backup{Backup: res}}, nil
}

// restoreFile collects a restore's chunks in a private temporary file.
type restoreFile struct {
	token []byte
	f     *os.File
	n     int64
}

func (r *restoreFile) discard() {
	r.f.Close()
	os.Remove(r.f.Name())
}

// maxRestore bounds a backup's size.
const maxRestore = 64 << 30

func (ss *Session) opRestore(r *wire.Restore, id Identity) (*wire.Result, error) {
	cs := &ss.st
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if len(r.Token) == 0 {
		if cs.restore != nil {
			cs.restore.discard()
		}
		dir := ss.s.cfg.StateDir
		if dir == "" {
			dir = os.TempDir()
		}
		f, err := os.CreateTemp(dir, ".restore-*")
		if err != nil {
			return nil, wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "cannot make the restore's temporary file: %v", err)
		}
		cs.restore = &restoreFile{token: newToken(), f: f}
		ss.log.Info("restore started", "uid", id.UID, "pid", id.PID)
	}
	rf := cs.restore
	if rf == nil || (len(r.Token) > 0 && !hmac.Equal(rf.token, r.Token)) {
		return nil, wire.Errorf(wire.Status_STATUS_NOT_FOUND, "no restore with this token on this connection")
	}
	if rf.n+int64(len(r.Data)) > maxRestore {
		rf.discard()
		cs.restore = nil
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "a backup is at most %d bytes", int64(maxRestore))
	}
	if _, err := rf.f.Write(r.Data); err != nil {
		rf.discard()
		cs.restore = nil
		return nil, wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "writing the restore's temporary file: %v", err)
	}
	rf.n += int64(len(r.Data))
	res := &wire.BackupChunk{Token: rf.token}
	if !r.Last {
		return &wire.Result{Value: &wire.Result_Backup{Backup: res}}, nil
	}
	cs.restore = nil
	defer rf.discard()
	if err := rf.f.Sync(); err != nil {
		return nil, wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "writing the restore's temporary file: %v", err)
	}
	rep, err := ss.s.store.Restore(rf.f.Name(), keystore.RestoreOptions{Force: r.Force, Caller: id.UID})
	if err != nil {
		return nil, err
	}
	ss.log.Warn("store restored from a backup; the daemon is sealed", "uid", id.UID, "pid", id.PID, "bytes", rf.n,
		"keys_before", rep.KeysNow, "keys_in_backup", rep.KeysInBackup, "created", rep.Created, "rotated", rep.Rotated,
		"changed", rep.Changed, "returning", rep.Returning, "replaced", rep.Replaced)
	res.Last = true
	res.Report = &wire.RestoreReport{
		KeysBefore: rep.KeysNow, KeysInBackup: rep.KeysInBackup,
		Created: rep.Created, Rotated: rep.Rotated, Changed: rep.Changed, Returning: rep.Returning,
		YoursCreated: firstNames(rep.YoursCreated), YoursRotated: firstNames(rep.YoursRotated),
		YoursChanged: firstNames(rep.YoursChanged), YoursReturning: firstNames(rep.YoursReturning),
		GenerationBefore: rep.GenerationNow, GenerationInBackup: rep.GenerationInBackup, Replaced: rep.Replaced,
	}
	return &wire.Result{Value: &wire.Result_Backup{Backup: res}}, nil
}

// firstNames bounds the names of a restore report's reply (its counts
// are complete): the reply must fit in one message.
func firstNames(names []string) []string { return names[:min(len(names), 256)] }

// sealStatus describes the master key and the store for Status.
func (s *Server) sealStatus() *wire.SealStatus {
	st := s.store.Master().State()
	return &wire.SealStatus{
		Initialized: st.Initialized, Sealed: st.Sealed || s.store.Ready() != nil, Generation: st.Generation,
		Passphrase: st.Passphrase, Threshold: uint32(st.Threshold), Shares: uint32(st.Shares),
		SharesHeld: uint32(st.SharesHeld), RetryAfterMs: uint32(st.RetryAfter / time.Millisecond),
		Rotating: st.Rotating, RotationDone: st.RotationDone, RotationTotal: st.RotTot,
		StateDir: s.cfg.StateDir, Persistent: s.cfg.StateDir != "", Quarantined: uint32(s.store.Quarantined()),
		Cluster: s.clusterStatus(),
	}
}

// clusterStatus asks the cluster of a shared store how it is, within a
// bound: status answers even when the cluster does not.
func (s *Server) clusterStatus() *wire.ClusterStatus {
	if s.cfg.Cluster == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	return s.cfg.Cluster(ctx)
}

// SealState returns the master key's state.
func (s *Server) SealState() seal.State { return s.store.Master().State() }

// UnsealWith unseals with a passphrase (which it wipes), as the unseal
// operation does: the daemon's own start with --unseal-passphrase-file.
func (s *Server) UnsealWith(ctx context.Context, pass []byte) error {
	err := s.store.Master().UnsealPassphrase(kdf.Priority(ctx), pass, func(k *seal.Keys) error {
		err := s.store.Verify(k, false)
		var ie *keystore.IntegrityError
		if errors.As(err, &ie) {
			return wire.Errorf(wire.Status_STATUS_INTERNAL, "%s; the daemon stays sealed", ie.Error())
		}
		return err
	})
	if err == nil {
		s.resumeRotation()
	}
	s.syncAuditKeys()
	return err
}

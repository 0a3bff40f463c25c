package keystore

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// The backup format (docs/formats.md): the magic line, then entries
//
//	0x01 || bucket length (1) || bucket || key length (4) || key ||
//	value length (4) || value
//
// and a trailer 0x02 || entry count (8) || SHA-256 of every byte before
// the trailer's digest. Lengths are big-endian. The checksum catches a
// damaged or truncated file; the store's own MACs, checked at unseal,
// catch a forged one.
const backupMagic = "keywarden-backup-v1\n"

var backupBuckets = [][]byte{persist.BucketMeta, persist.BucketKeys, persist.BucketNames, persist.BucketQuarantine}

// unsealable reports whether a master record can ever be unsealed: it is
// sealed under a passphrase or split into shares. A development-mode
// master key is neither: it lives in one process's memory only.
func unsealable(m *persist.MasterRecord) bool { return m.Passphrase != nil || m.Shares != nil }

var (
	errBackupEphemeral = wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION,
		"no backup made: this daemon runs in development mode (--dev), its master key exists only in memory, "+
			"and a backup of its store could never be unsealed; keep keys you need in a daemon with --state")
	errRestoreEphemeral = wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION,
		"nothing restored: the backup's master key is sealed under neither a passphrase nor shares "+
			"(a backup of a development-mode daemon, whose master key existed only in its memory): it could never be unsealed")
)

// Backup writes a consistent copy of the whole store to w. It needs no
// master key: the store holds only ciphertext and the sealed master key.
//
// The copy is made first into a file of its own, which has no name and
// lives beside the store, and w gets it from there: the read transaction
// that makes the copy consistent ends as soon as the file is written,
// whatever w does. (Held while a client reads the backup at its own pace,
// it would stop every write that grows the store's mapping, which waits
// for the readers to end: the daemon's writes, and through them whatever
// waits for a write, stop with it.)
func (s *Store) Backup(w io.Writer) error {
	f, err := backupSnapshotFile(s.db)
	if err != nil {
		return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "no room for the backup's copy: %v", err)
	}
	defer f.Close()
	if err := s.backupTo(f); err != nil {
		return err
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return err
	}
	_, err = io.Copy(w, f)
	return err
}

// backupSnapshotFile opens a file with no name (O_TMPFILE, else one
// removed as soon as it is made), mode 0600, in the store's directory if
// it has one.
func backupSnapshotFile(db store.Store) (*os.File, error) {
	dir := os.TempDir()
	if d, ok := db.(interface{ Dir() string }); ok && d.Dir() != "" {
		dir = d.Dir()
	}
	if fd, err := unix.Open(dir, unix.O_TMPFILE|unix.O_RDWR|unix.O_CLOEXEC, 0o600); err == nil {
		return os.NewFile(uintptr(fd), filepath.Join(dir, "backup (no name)")), nil
	}
	f, err := os.CreateTemp(dir, ".backup-*")
	if err != nil {
		return nil, err
	}
	os.Remove(f.Name())
	return f, nil
}

// backupTo writes the backup to w inside one read transaction.
func (s *Store) backupTo(w io.Writer) error {
	bw := bufio.NewWriterSize(w, 64<<10)
	h := sha256.New()
	out := io.MultiWriter(bw, h)
	var n uint64
	err := s.db.View(func(tx store.Tx) error {
		mv := tx.Get(persist.BucketMeta, persist.MetaMaster)
		if mv == nil {
			return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the store has no master key: nothing to back up")
		}
		var m persist.MasterRecord
		if err := m.UnmarshalVT(mv); err != nil {
			return wire.Errorf(wire.Status_STATUS_INTERNAL, "the store's master record is malformed")
		}
		if !unsealable(&m) {
			return errBackupEphemeral
		}
		if _, err := io.WriteString(out, backupMagic); err != nil {
			return err
		}
		var hdr [9]byte
		for _, b := range backupBuckets {
			err := tx.ForEach(b, nil, func(k, v []byte) error {
				n++
				e := append([]byte{1, byte(len(b))}, b...)
				e = binary.BigEndian.AppendUint32(e, uint32(len(k)))
				e = append(e, k...)
				e = binary.BigEndian.AppendUint32(e, uint32(len(v)))
				if _, err := out.Write(e); err != nil {
					return err
				}
				_, err := out.Write(v)
				return err
			})
			if err != nil {
				return err
			}
		}
		hdr[0] = 2
		binary.BigEndian.PutUint64(hdr[1:], n)
		if _, err := out.Write(hdr[:]); err != nil {
			return err
		}
		_, err := bw.Write(h.Sum(nil))
		return err
	})
	if err != nil {
		return err
	}
	return bw.Flush()
}

type backupEntry struct {
	bucket, key, val []byte
}

// readBackup checks a backup file and calls fn for each entry.
func readBackup(path string, fn func(e backupEntry) error) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return err
	}
	return parseBackup(f, st.Size(), fn)
}

// parseBackup reads a backup of the given size from f: it checks the
// checksum first, then calls fn for each entry in order.
func parseBackup(f io.ReaderAt, total int64, fn func(e backupEntry) error) error {
	bad := func(what string) error {
		return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "not a keywarden backup, or a damaged one: %s", what)
	}
	size := total - sha256.Size
	if size < int64(len(backupMagic))+9 {
		return bad("too short")
	}
	h := sha256.New()
	if _, err := io.Copy(h, io.NewSectionReader(f, 0, size)); err != nil {
		return err
	}
	sum := make([]byte, sha256.Size)
	if _, err := f.ReadAt(sum, size); err != nil {
		return err
	}
	if !bytes.Equal(h.Sum(nil), sum) {
		return bad("checksum mismatch")
	}
	r := bufio.NewReaderSize(io.NewSectionReader(f, 0, size), 64<<10)
	magic := make([]byte, len(backupMagic))
	if _, err := io.ReadFull(r, magic); err != nil || string(magic) != backupMagic {
		return bad("no backup header")
	}
	var n uint64
	for {
		kind, err := r.ReadByte()
		if err != nil {
			return bad("truncated")
		}
		if kind == 2 {
			var cnt [8]byte
			if _, err := io.ReadFull(r, cnt[:]); err != nil {
				return bad("truncated")
			}
			if binary.BigEndian.Uint64(cnt[:]) != n {
				return bad("entry count mismatch")
			}
			if _, err := r.ReadByte(); err != io.EOF {
				return bad("data after the trailer")
			}
			return nil
		}
		if kind != 1 {
			return bad("unknown entry")
		}
		n++
		e, err := readEntry(r)
		if err != nil {
			return bad(err.Error())
		}
		if err := fn(e); err != nil {
			return err
		}
	}
}

func readEntry(r *bufio.Reader) (backupEntry, error) {
	var e backupEntry
	bl, err := r.ReadByte()
	if err != nil {
		return e, errors.New("truncated")
	}
	read := func(n int) ([]byte, error) {
		if n > 16<<20 {
			return nil, errors.New("entry too large")
		}
		b := make([]byte, n)
		if _, err := io.ReadFull(r, b); err != nil {
			return nil, errors.New("truncated")
		}
		return b, nil
	}
	if e.bucket, err = read(int(bl)); err != nil {
		return e, err
	}
	var l [4]byte
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return e, errors.New("truncated")
	}
	if e.key, err = read(int(binary.BigEndian.Uint32(l[:]))); err != nil {
		return e, err
	}
	if _, err := io.ReadFull(r, l[:]); err != nil {
		return e, errors.New("truncated")
	}
	e.val, err = read(int(binary.BigEndian.Uint32(l[:])))
	return e, err
}

// Restore replaces the whole store with the backup in file path, and
// leaves the daemon sealed: unsealing checks the restored store. A store
// with a master key accepts only a backup of the same store (same id),
// and a backup is refused that nothing could unseal. A store that holds
// keys is replaced only with opts.Force; it is then first copied beside
// itself (store.Copier), where it stays until an administrator removes
// it. The report says what the restore replaced or, with an error, what
// it would have; a refused restore changes nothing.
func (s *Store) Restore(path string, opts RestoreOptions) (*RestoreReport, error) {
	var master *persist.MasterRecord
	known := map[string]bool{}
	for _, b := range backupBuckets {
		known[string(b)] = true
	}
	records := map[string]recordSummary{}
	err := readBackup(path, func(e backupEntry) error {
		if !known[string(e.bucket)] {
			return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the backup holds an unknown bucket")
		}
		if bytes.Equal(e.bucket, persist.BucketMeta) && bytes.Equal(e.key, persist.MetaMaster) {
			master = &persist.MasterRecord{}
			if err := master.UnmarshalVT(e.val); err != nil {
				return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the backup's master record is malformed")
			}
		}
		if bytes.Equal(e.bucket, persist.BucketKeys) || bytes.Equal(e.bucket, persist.BucketQuarantine) {
			records[string(e.key)] = summarize(e.val)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if master == nil {
		return nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the backup holds no master key")
	}
	if !unsealable(master) {
		return nil, errRestoreEphemeral
	}
	cur := s.master.Record()
	if cur != nil && !bytes.Equal(cur.StoreId, master.StoreId) {
		return nil, wire.Errorf(wire.Status_STATUS_PERMISSION_DENIED,
			"the backup is of another store (%x, this one is %x): restore it into a daemon with a new state directory", master.StoreId, cur.StoreId)
	}
	rep := &RestoreReport{GenerationInBackup: master.Generation}
	if cur != nil {
		rep.GenerationNow = cur.Generation
	}
	if err := s.compare(records, opts.Caller, rep); err != nil {
		return nil, err
	}
	if rep.KeysNow > 0 && !opts.Force {
		return rep, wire.Errorf(wire.Status_STATUS_POLICY_VIOLATION,
			"nothing restored: %s; to replace the store anyway, restore with --force (the store replaced is kept beside it)", rep)
	}
	var plan []int
	if _, shared := s.db.(store.Shared); shared {
		// Every transaction of the restore is planned, and checked to
		// fit the cluster, before the first one deletes anything.
		if plan, err = s.planRestore(path); err != nil {
			return rep, err
		}
	}
	var epoch uint64
	written := false // the backup's records replaced the store's
	err = s.master.Replace(func() error {
		s.SealAll()
		return nil
	}, func() error {
		// Sealed, and every write begun before the seal has ended: no key
		// changes from here on, so the copy holds them all, and nothing
		// commits on top of the backup's records.
		if c, ok := s.db.(store.Copier); ok && rep.KeysNow > 0 {
			var err error
			if rep.Replaced, err = c.KeepCopy("replaced", s.now()); err != nil {
				return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "nothing restored: cannot keep a copy of the store it would replace: %v", err)
			}
		}
		s.mu.Lock()
		s.used = make(map[key.ID]map[uint32]usedCount) // the backup's records say what was reserved then
		s.mu.Unlock()
		if hookRestoreWriting != nil {
			hookRestoreWriting()
		}
		if _, shared := s.db.(store.Shared); shared {
			hw, err := s.readHighWater(master.StoreId)
			if err != nil {
				return wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "nothing restored: cannot read the high-water mark: %v", err)
			}
			floor, header, err := s.restoreInChunks(path, plan, &epoch, hw.epoch)
			if err != nil {
				return storeErr(err)
			}
			written = true
			if err := s.restoredHighWater(master.StoreId, floor, header); err != nil {
				// Without it the next unseal here refuses the restored
				// store as older than the mark: it says what to do.
				s.log.Error("the store was restored, but the high-water mark could not be updated", "err", err)
			}
			s.epoch.cur.Store(epoch)
			s.epoch.saved.Store(epoch)
			return nil
		}
		err := s.db.Update(func(tx store.Tx) error {
			for _, b := range backupBuckets {
				var keys [][]byte
				if err := tx.ForEach(b, nil, func(k, v []byte) error {
					keys = append(keys, bytes.Clone(k))
					return nil
				}); err != nil {
					return err
				}
				for _, k := range keys {
					if err := tx.Delete(b, k); err != nil {
						return err
					}
				}
			}
			if err := readBackup(path, func(e backupEntry) error { return tx.Put(e.bucket, e.key, e.val) }); err != nil {
				return err
			}
			// The backup's keys may be in use elsewhere too (where the backup
			// was made, or restored before): like a clone, the restore closes
			// every version for encryption (budget.go).
			epoch = restoredEpoch(readBudgetEpoch(tx), s.epoch.cur.Load())
			return putBudgetEpoch(tx, epoch)
		})
		if err != nil {
			if rep.Replaced != "" {
				os.Remove(rep.Replaced)
				rep.Replaced = ""
			}
			return storeErr(err)
		}
		written = true
		s.resetHighWater()
		s.epoch.cur.Store(epoch)
		s.epoch.saved.Store(epoch)
		return nil
	})
	if err != nil {
		if !written {
			return nil, err
		}
		return rep, err
	}
	s.log.Warn("store restored from a backup; the daemon is sealed", "store", fmt.Sprintf("%x", master.StoreId), "replaced", rep.Replaced)
	return rep, nil
}

// restoreChunk is how many keys a transaction of restoreInChunks writes
// at most: well within etcd's default limit of 128 operations, fewer on a
// cluster whose --max-txn-ops is lower, and fewer where the records are
// large (store.ByteBounded: etcd's --max-request-bytes).
const restoreChunk = 48

// restoreEntry reports whether restoreInChunks writes e among the records
// (the master record goes first, the header last, the floor its own).
func restoreEntry(e backupEntry) bool {
	return !bytes.Equal(e.bucket, persist.BucketMeta) || !(persist.IsHeaderKey(e.key) ||
		bytes.Equal(e.key, persist.MetaMaster) || bytes.Equal(e.key, persist.MetaRestoreFloor))
}

// planRestore returns how many entries of the backup at path each
// transaction of restoreInChunks writes, in order: at most restoreChunk
// (fewer on a cluster of fewer operations per transaction), and no more
// bytes than the store takes in one. A backup that holds an entry too
// large for one transaction is refused, before anything is changed.
func (s *Store) planRestore(path string) ([]int, error) {
	chunk := store.BatchSize(s.db, restoreChunk, 1, 8)
	bb, _ := s.db.(store.ByteBounded)
	var plan []int
	n, size := 0, 0
	err := readBackup(path, func(e backupEntry) error {
		es := 0
		if bb != nil {
			es = bb.PutSize(e.bucket, e.key, len(e.val))
			if es > bb.MaxBytes()/2 && !restoreEntry(e) {
				// The master record and the header share their
				// transactions with a few small writes.
				return wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
					"nothing restored: the backup's %s record is %d bytes, more than the etcd cluster takes with it in one request (%d bytes: raise the cluster's --max-request-bytes and --etcd-max-request-bytes)", e.key, es, bb.MaxBytes())
			}
			if es > bb.MaxBytes() {
				return wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
					"nothing restored: a record of the backup is %d bytes, more than the etcd cluster takes in one request (%d bytes: raise the cluster's --max-request-bytes and --etcd-max-request-bytes)", es, bb.MaxBytes())
			}
		}
		if !restoreEntry(e) {
			return nil
		}
		if n == chunk || (bb != nil && n > 0 && size+es > bb.MaxBytes()) {
			plan = append(plan, n)
			n, size = 0, 0
		}
		n++
		size += es
		return nil
	})
	if err != nil {
		return nil, err
	}
	if n > 0 {
		plan = append(plan, n)
	}
	return plan, nil
}

// restoreInChunks replaces a shared store's contents with the backup at
// path in several transactions, none beyond the cluster's limits, and
// sets *epoch to the budget epoch it gives the store. The first puts the
// backup's master record and a mark (persist.MetaRestoring) and deletes
// the header: from there every write of any daemon fails (each reads the
// header), the other daemons refuse keys (the master record changed) and
// no unseal accepts the store; the last puts the backup's header and
// removes the mark. A restore that stops between them (a crash, the
// cluster lost) leaves a store that says so at unseal; the restore is
// run again.
//
// The header is the backup's, with the backup's epoch, below those of the
// headers the store had since (which etcd's history keeps, under the same
// master key): the first transaction records the highest epoch the store
// had, hw (this daemon's high-water mark) aside, as persist.MetaRestoreFloor,
// and restoreInChunks returns it with the header written; the first unseal
// raises the header's epoch above it (raiseAfterRestore).
//
// plan is how many of the backup's records each transaction writes
// (planRestore).
func (s *Store) restoreInChunks(path string, plan []int, epoch *uint64, hw uint64) (uint64, []byte, error) {
	chunk := store.BatchSize(s.db, restoreChunk, 1, 8)
	var master []byte
	var headers [persist.MaxShards][]byte // by shard
	if err := readBackup(path, func(e backupEntry) error {
		if bytes.Equal(e.bucket, persist.BucketMeta) {
			if i, ok := persist.HeaderKeyShard(e.key); ok {
				headers[i] = bytes.Clone(e.val)
			} else if persist.IsHeaderKey(e.key) {
				return wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the backup holds a malformed store header key")
			} else if bytes.Equal(e.key, persist.MetaMaster) {
				master = bytes.Clone(e.val)
			}
		}
		return nil
	}); err != nil {
		return 0, nil, err
	}
	header := joinHeaders(headers[:])
	if master == nil || headers[0] == nil {
		return 0, nil, wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the backup holds no master record or no store header")
	}
	var floor uint64
	if err := s.db.Update(func(tx store.Tx) error {
		floor = max(hw, readRestoreFloor(tx))
		var old [][]byte
		if err := tx.ForEach(persist.BucketMeta, persist.MetaHeader, func(k, v []byte) error {
			if !persist.IsHeaderKey(k) {
				return nil
			}
			old = append(old, bytes.Clone(k))
			// Read without its MAC (the daemon is sealed): a header
			// forged higher only raises the floor.
			var h persist.StoreHeader
			if h.UnmarshalVT(v) == nil {
				floor = max(floor, h.Epoch)
			}
			return nil
		}); err != nil {
			return err
		}
		// Every shard's header goes: every write of every daemon reads
		// the header of the shard it writes in, and fails.
		for _, k := range old {
			if err := tx.Delete(persist.BucketMeta, k); err != nil {
				return err
			}
		}
		if err := tx.Put(persist.BucketMeta, persist.MetaRestoreFloor, binary.BigEndian.AppendUint64(nil, floor)); err != nil {
			return err
		}
		if err := tx.Put(persist.BucketMeta, persist.MetaRestoring, []byte{1}); err != nil {
			return err
		}
		return tx.Put(persist.BucketMeta, persist.MetaMaster, master)
	}); err != nil {
		return 0, nil, err
	}
	// What the store held goes, the mark and the master record aside.
	for _, b := range backupBuckets {
		for {
			var keys [][]byte
			err := s.db.Update(func(tx store.Tx) error {
				keys = keys[:0]
				if err := tx.ForEach(b, nil, func(k, _ []byte) error {
					if bytes.Equal(b, persist.BucketMeta) && (bytes.Equal(k, persist.MetaRestoring) || bytes.Equal(k, persist.MetaMaster) || bytes.Equal(k, persist.MetaRestoreFloor)) {
						return nil
					}
					keys = append(keys, bytes.Clone(k))
					if len(keys) == chunk {
						return store.ErrStop
					}
					return nil
				}); err != nil {
					return err
				}
				for _, k := range keys {
					if err := tx.Delete(b, k); err != nil {
						return err
					}
				}
				return nil
			})
			if err != nil {
				return 0, nil, err
			}
			if len(keys) < chunk {
				break
			}
		}
	}
	// The backup's records, the header last.
	var batch []backupEntry
	put := func() error {
		if hookRestoreChunk != nil {
			if err := hookRestoreChunk(); err != nil {
				return err
			}
		}
		err := s.db.Update(func(tx store.Tx) error {
			for _, e := range batch {
				if err := tx.Put(e.bucket, e.key, e.val); err != nil {
					return err
				}
			}
			return nil
		})
		batch = batch[:0]
		return err
	}
	if err := readBackup(path, func(e backupEntry) error {
		if !restoreEntry(e) {
			return nil
		}
		if len(plan) == 0 {
			return errors.New("the backup changed while it was restored")
		}
		batch = append(batch, backupEntry{bucket: e.bucket, key: bytes.Clone(e.key), val: bytes.Clone(e.val)})
		if len(batch) == plan[0] {
			plan = plan[1:]
			return put()
		}
		return nil
	}); err != nil {
		return 0, nil, err
	}
	if len(batch) > 0 {
		if err := put(); err != nil {
			return 0, nil, err
		}
	}
	err := s.db.Update(func(tx store.Tx) error {
		for i, h := range headers {
			if h != nil {
				if err := tx.Put(persist.BucketMeta, persist.ShardHeaderKey(uint32(i)), h); err != nil {
					return err
				}
			}
		}
		if err := tx.Put(persist.BucketMeta, persist.MetaRestoreFloor, binary.BigEndian.AppendUint64(nil, floor)); err != nil {
			return err
		}
		// As in Restore: every version closed for encryption.
		*epoch = restoredEpoch(readBudgetEpoch(tx), s.epoch.cur.Load())
		if err := putBudgetEpoch(tx, *epoch); err != nil {
			return err
		}
		return tx.Delete(persist.BucketMeta, persist.MetaRestoring)
	})
	if err != nil {
		return 0, nil, err
	}
	return floor, header, nil
}

// joinHeaders returns the headers of every shard, in shard order, each
// after its length (one header alone: itself): what the high-water mark
// of a restore names (restoredHighWater).
func joinHeaders(hs [][]byte) []byte {
	if len(hs) > 0 && !slices.ContainsFunc(hs[1:], func(h []byte) bool { return h != nil }) {
		return hs[0]
	}
	var b []byte
	for _, h := range hs {
		if h != nil {
			b = binary.BigEndian.AppendUint32(b, uint32(len(h)))
			b = append(b, h...)
		}
	}
	return b
}

// readRestoreFloor reads persist.MetaRestoreFloor (0: absent).
func readRestoreFloor(tx store.Tx) uint64 {
	if v := tx.Get(persist.BucketMeta, persist.MetaRestoreFloor); len(v) == 8 {
		return binary.BigEndian.Uint64(v)
	}
	return 0
}

// RewrapAll re-writes every key record not of the current format and
// master-key generation, a batch per transaction, recording progress in
// the master record so that it resumes after a crash: after a master-key
// rotation, or after the upgrade of a store of format 1. It calls
// progress after each batch.
//
// Each batch holds a lease on the keys it re-wraps with: a seal waits for
// it, and a batch whose keys were sealed away meanwhile does not commit
// (seal.Master.RotationStep). A record is passed over only if it fails its
// check under keys that are held (it is quarantined) or is not the one the
// daemon last wrote (refused on use); nothing is passed over because the
// keys went away. The rotation ends only when a count, in the transaction
// that ends it, finds no record left under another generation or format
// (seal.Master.FinishRotation): if some are (passed over), the records
// are walked once more from the first, and if some still are, the
// rotation stays open, keeping the previous generation.
func (s *Store) RewrapAll(progress func(done, total uint64)) error {
	// Each record is read and written once; the master record, the
	// header and the names around them take a few operations more.
	batch := store.BatchSize(s.db, 256, 1, 8)
	bb, _ := s.db.(store.ByteBounded) // and fewer records where they are large
	rescanned := false
	for {
		l, err := s.lease()
		if err != nil {
			return err
		}
		k := l.Keys()
		rec := s.master.Record()
		if rec == nil || rec.Rotation == nil {
			l.Release()
			return nil
		}
		cursor, done := rec.Rotation.Cursor, rec.Rotation.Done
		var last []byte
		var n uint64
		var stepped *persist.MasterRecord
		err = s.db.Update(func(tx store.Tx) error {
			last, n, stepped = nil, 0, nil
			if hookRewrapBatch != nil {
				hookRewrapBatch()
			}
			var ids [][]byte
			size := 0
			if err := tx.ForEach(persist.BucketKeys, cursor, func(id, v []byte) error {
				if bb != nil {
					// A record re-written may grow a little (a record of
					// format 1 gains its fingerprints).
					n := bb.PutSize(persist.BucketKeys, id, len(v)+len(v)/8+1024)
					if len(ids) > 0 && size+n > bb.MaxBytes()-rewrapOverhead {
						return store.ErrStop
					}
					size += n
				}
				ids = append(ids, bytes.Clone(id))
				if len(ids) == batch {
					return store.ErrStop
				}
				return nil
			}); err != nil {
				return err
			}
			st := newShardSet(s.shardCount())
			for _, id := range ids {
				v := tx.Get(persist.BucketKeys, id)
				r, err := checkRecord(k, id, v)
				switch {
				case errors.Is(err, errRecord):
					// Fails its check under the keys held: quarantined,
					// left as it is (and counted at the end).
				case err != nil:
					return err // nothing is passed over for want of keys
				default:
					var kid key.ID
					copy(kid[:], id)
					if err := s.current(k, kid, v); errors.Is(err, errReplaced) {
						// Replaced while the daemon runs (refused on use;
						// counted at the end), or written by a writer
						// committed with this batch, and so already of the
						// current generation.
						break
					} else if err != nil {
						return err // sealed: nothing is passed over
					}
					if c, err := kindOf(k, r); err != nil {
						return err
					} else if !c.legacy && c.gen == k.Generation {
						break
					}
					if err := s.rewrapRecord(tx, k, st, r.CloneVT()); err != nil {
						return err
					}
				}
				last = id
				n++
			}
			if last == nil {
				return nil
			}
			if err := s.writeShards(tx, k, st); err != nil {
				return err
			}
			var err error
			stepped, err = s.master.RotationStep(tx, k, last, done+n)
			return err
		})
		if err != nil {
			l.Release()
			return storeErr(err)
		}
		if last != nil {
			l.Release()
			s.master.RotationCommitted(stepped)
			if progress != nil {
				progress(done+n, rec.Rotation.Total)
			}
			continue
		}
		err = s.master.FinishRotation(k, func(tx store.Tx) (uint64, error) { return recordsNotCurrent(tx, k), nil })
		var left *seal.ErrRecordsLeft
		if errors.As(err, &left) && !rescanned {
			// Walk the records once more from the first.
			rescanned = true
			s.log.Warn("master-key rotation: records left under the previous generation; walking the records again", "records", left.N)
			err = s.db.Update(func(tx store.Tx) error {
				var err error
				stepped, err = s.master.RotationStep(tx, k, nil, 0)
				return err
			})
			l.Release()
			if err != nil {
				return storeErr(err)
			}
			s.master.RotationCommitted(stepped)
			continue
		}
		l.Release()
		return err
	}
}

// rewrapOverhead is what a batch of RewrapAll writes besides the records,
// at most: the header and the master record.
const rewrapOverhead = 16 << 10

// recordsNotCurrent counts the key records that name a master-key
// generation other than k's current one, or are of format 1: those that
// still need the previous generation's keys (or format 1's). What a
// record names is read without checking it: a record is counted whatever
// else is wrong with it.
func recordsNotCurrent(tx store.Tx, k *seal.Keys) uint64 {
	var n uint64
	tx.ForEach(persist.BucketKeys, nil, func(id, v []byte) error {
		_, rb, err := persist.SplitValue(v)
		if err != nil {
			return nil
		}
		r := &persist.KeyRecord{}
		if r.UnmarshalVT(rb) != nil {
			return nil
		}
		if g, ok := persist.Generation(r); r.Format != persist.Format || !ok || g != k.Generation {
			n++
		}
		return nil
	})
	return n
}

// rewrapRecord re-writes r, a checked record of an older generation or
// format, under the current generation: its blobs opened under the old
// rules and sealed anew, its fingerprints re-encrypted (the inner values
// need no material), its MAC made anew.
func (s *Store) rewrapRecord(tx store.Tx, k *seal.Keys, st *shardSet, r *persist.KeyRecord) error {
	old := r.CloneVT()
	if err := openFingerprints(k, r); err != nil {
		return err
	}
	toTodaysRules(r) // narrowing only, as every load of it did already
	plain := func(i int, fn func([]byte) error) error {
		return openVersions(k, old, i, func(_ int, b []byte) error { return fn(b) })
	}
	return s.putRecordIn(tx, k, st, r, true, plain, nil)
}

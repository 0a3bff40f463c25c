package audit

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/linuxaudit"
	"github.com/keywarden/keywarden/internal/random"
)

// Sequencing: everything here that ends in Locked runs with l.mu held.

func (l *Log) stateLocked() chainState { return chainState{seq: l.seq, h: l.h, keys: l.keys} }

func (l *Log) usableLocked() error {
	if l.closed {
		return &Error{Op: "append", Err: ErrClosed}
	}
	if l.failure != nil {
		l.refused.Add(1)
		return l.failure
	}
	return nil
}

func (l *Log) now() (time.Time, time.Duration) {
	t := time.Now()
	return t, time.Duration(l.monoBase) + t.Sub(l.openTime)
}

// sequenceLocked gives the next seq to a record whose body (the fields
// after "kind") is already encoded, extends the chain and queues the line.
func (l *Log) sequenceLocked(kind Kind, body []byte, r *Record, w *waiter) {
	q := l.queue
	start := len(q.buf)
	l.seq++
	t, mono := l.now()
	q.buf = appendHeader(q.buf, l.seq, t, mono, kind)
	q.buf = append(q.buf, body...)
	l.finishLocked(q, start)
	if r != nil {
		r.Seq, r.Time, r.Mono, r.Hash = l.seq, t, mono, l.h
	}
	if w != nil {
		q.waiters = append(q.waiters, w)
		if l.gatherWant > 0 && len(q.waiters) >= l.gatherWant {
			// The writer gathering a group for its fsync has it.
			l.gatherWant = 0
			select {
			case l.gather <- struct{}{}:
			default:
			}
		}
	}
}

// finishLocked hashes the line begun at q.buf[start:] into the chain and
// closes it.
func (l *Log) finishLocked(q *batch, start int) {
	chainHash(l.digest, &l.h, q.buf[start:], &l.h)
	if l.keys != nil {
		mac := l.keys.macOf(&l.h)
		q.buf = appendTail(q.buf, &l.h, &mac)
	} else {
		q.buf = appendTail(q.buf, &l.h, nil)
	}
	l.sinceCP++
	q.last = l.stateLocked()
}

func (l *Log) eventLocked(op, msg string) {
	r := Record{Kind: KindEvent, Op: op, Msg: msg}
	l.sequenceLocked(KindEvent, appendBody(nil, &r), nil, nil)
}

func (l *Log) segmentLocked(reason string) {
	s := Segment{Reason: reason, Prev: l.h, Boot: l.boot, Host: l.host, PID: os.Getpid(),
		Software: l.opts.Software}
	// The segment the server starts after a generation change waits until
	// fresh randomness is confirmed, so that two clones' logs diverge
	// there; a segment that cannot wait (a new file) takes what the
	// source gives.
	if random.ReadNow(s.Nonce[:]) != nil {
		random.ReadAny(s.Nonce[:])
	}
	if l.keys != nil {
		s.PublicKey, s.MACKeyID = l.keys.pub, l.keys.macID
	}
	l.sequenceLocked(KindSegment, appendSegment(nil, &s), nil, nil)
}

// checkpointLocked queues a checkpoint signed and MACed with l.keys, which
// must be set. next names the keys that follow (a rekey).
func (l *Log) checkpointLocked(reason string, next *Keys, keysOff, final bool) Checkpoint {
	k := l.keys
	q := l.queue
	start := len(q.buf)
	c := CheckpointInfo{Reason: reason, Upto: l.seq, UptoHash: l.h, PublicKey: k.pub,
		MACKeyID: k.macID, KeysOff: keysOff, Final: final}
	if next != nil {
		c.NextPublicKey, c.NextMACKeyID = next.pub, next.macID
	}
	l.seq++
	t, mono := l.now()
	q.buf = appendHeader(q.buf, l.seq, t, mono, KindCheckpoint)
	q.buf = appendCheckpoint(q.buf, &c)
	var sig [ed25519SignatureSize]byte
	q.buf = appendSignature(q.buf, k.sign(sig[:0], q.buf[start:], &l.sigBuf))
	l.finishLocked(q, start)
	l.sinceCP = 0
	cp := Checkpoint{Seq: l.seq, Hash: l.h, Time: t}
	q.checkpoints = append(q.checkpoints, cp)
	return cp
}

// forwardLocked queues the Linux audit messages for r.
func (l *Log) forwardLocked(r *Record) {
	if l.opts.Linux == nil {
		return
	}
	ev := func(op, alg string, key KeyID, status string) linuxaudit.Event {
		e := linuxaudit.Event{Type: linuxaudit.CryptoKeyUser, Op: op, Kind: alg,
			PID: r.Caller.PID, UID: r.Caller.UID, Success: status == "OK" || status == ""}
		if !key.IsZero() {
			e.Fingerprint = key.String()
		}
		if r.Kind == KindEvent {
			e.PID, e.UID = -1, ^uint32(0)
		}
		if op == OpSelfTestFailure {
			e.Type, e.Success = linuxaudit.CryptoFailureUser, false
		}
		return e
	}
	q := l.queue
	if r.Op != OpBatch {
		q.linux = append(q.linux, ev(r.Op, r.Alg, r.Key, r.Status))
	}
	for i := range r.Ops {
		if e := &r.Ops[i]; IsKeyManagement(e.Op) {
			q.linux = append(q.linux, ev(e.Op, e.Alg, e.Key, e.Status))
		}
	}
}

// gatherGroup, with SyncAlways, waits briefly before a write and its
// fsync until as many records wait as the last fsync covered: clients
// that were just answered need a moment to send their next requests, and
// an fsync started without them makes them wait for a whole next one. It
// waits at most a quarter of the last write's time, and at most a
// millisecond; a lone writer (a group of one) never waits.
func (l *Log) gatherGroup() {
	l.mu.Lock()
	want := l.lastGroup
	if want <= 1 || len(l.queue.waiters) >= want || l.failure != nil || l.closed {
		l.mu.Unlock()
		return
	}
	l.gatherWant = want
	l.mu.Unlock()
	if l.gatherTimer == nil {
		l.gatherTimer = time.NewTimer(time.Hour)
	}
	l.gatherTimer.Reset(min(l.lastSync/4, time.Millisecond))
	select {
	case <-l.gather:
	case <-l.gatherTimer.C:
	}
	l.gatherTimer.Stop()
	l.mu.Lock()
	l.gatherWant = 0
	l.mu.Unlock()
	select { // a signal sent after the timer fired
	case <-l.gather:
	default:
	}
}

// The writer role. One goroutine at a time holds it (l.writing): it takes
// the queue, writes it, tells the waiters, and passes the role on.

// commit waits until w's record is written, or writes it. It is called
// with l.mu held and returns with it released.
func (l *Log) commit(w *waiter) error {
	if l.writing {
		l.mu.Unlock()
		err := <-w.ch
		if err != errLead {
			putWaiter(w)
			return err
		}
	} else {
		l.writing = true
		l.mu.Unlock()
	}
	err := l.runWriter(w)
	putWaiter(w)
	return err
}

// runWriter writes what is queued, by the goroutine holding the writer
// role, and then passes the role on. It returns the result for self's
// record, which is in the queue.
func (l *Log) runWriter(self *waiter) error {
	var result error
	for {
		if l.opts.Sync == SyncAlways {
			// Let the writers just told that their records are on disk
			// queue their next ones, so that they join this fsync rather
			// than wait for the next (two half-size groups alternating).
			runtime.Gosched()
			l.gatherGroup()
		}
		l.mu.Lock()
		b := l.queue
		l.queue, l.spare = l.spare, nil
		l.mu.Unlock()

		t0 := time.Now()
		err := l.writeBatch(b, true)
		if l.opts.Sync == SyncAlways {
			l.lastGroup, l.lastSync = len(b.waiters), time.Since(t0)
		}
		l.mu.Lock()
		var failed []*waiter
		if err != nil {
			failed = l.failLocked(asError(err), true)
		} else {
			l.written = b.last
			if n := len(b.checkpoints); n > 0 {
				l.lastCP = b.checkpoints[n-1]
			}
		}
		l.mu.Unlock()
		if l.finishBatch(b, err, self) {
			result = err
		}
		for _, w := range failed {
			w.ch <- err
		}

		l.mu.Lock()
		b.reset()
		l.spare = b
		// No rotation while the records of earlier runs are unchecked:
		// they must stay where the check looks for them.
		rotate := err == nil && l.opts.RotateBytes > 0 && l.off >= l.opts.RotateBytes && !l.closed && l.earlier == nil
		l.mu.Unlock()
		if rotate {
			l.rotate()
		}

		l.mu.Lock()
		if l.handOffLocked() {
			return result
		}
		if len(l.queue.buf) == 0 || l.failure != nil {
			if len(l.queue.buf) > 0 {
				// Records nobody waits for, on a log that has failed
				// meanwhile: drop them, and take the chain back.
				l.failLocked(l.failure, true)
			}
			l.writing = false
			l.mu.Unlock()
			return result
		}
		// Records nobody waits for (the segment that starts a new file):
		// write them now.
		l.mu.Unlock()
	}
}

// finishBatch tells b's waiters, other than self, how the write went, and
// runs the callbacks of a written batch. It reports whether self was in b.
func (l *Log) finishBatch(b *batch, err error, self *waiter) bool {
	mine := false
	for _, w := range b.waiters {
		if w == self {
			mine = true
			continue
		}
		w.ch <- err
	}
	if err == nil {
		if f := l.opts.OnCheckpoint; f != nil {
			for _, cp := range b.checkpoints {
				f(cp)
			}
		}
		if s := l.opts.Linux; s != nil {
			for _, e := range b.linux {
				s.Send(e)
			}
		}
	}
	return mine
}

// writeBatch writes b at the end of the active file, and fsyncs with
// SyncAlways. On failure the file is cut back to where b began.
func (l *Log) writeBatch(b *batch, reserve bool) error {
	if len(b.buf) == 0 {
		return nil
	}
	if l.fd < 0 {
		return &Error{Op: "write", Err: errors.New("no open file")}
	}
	var err error
	if l.hookWrite != nil {
		err = l.hookWrite(l.fd, b.buf, l.off)
	} else {
		err = pwriteAll(l.fd, b.buf, l.off)
	}
	if err != nil {
		unix.Ftruncate(l.fd, l.off)
		l.reservedTo = l.off
		return &Error{Op: "write", Err: err}
	}
	if l.opts.Sync == SyncAlways {
		if err := l.timedSync(l.fd); err != nil {
			unix.Ftruncate(l.fd, l.off)
			l.reservedTo = l.off
			return &Error{Op: "fsync", Err: err}
		}
	} else if !l.dirty.Swap(true) {
		l.dirtySince.Store(time.Now().UnixNano())
		// The first write since the last fsync arms it; later ones do not
		// wake the background goroutine again (a wake-up per request costs
		// more than the write).
		select {
		case l.kick <- struct{}{}:
		default:
		}
	}
	l.off += int64(len(b.buf))
	l.size.Store(l.off)
	if reserve && l.opts.Reserve > 0 && !l.noReserve && l.ready.Load() == nil && l.reservedTo-l.off < l.opts.Reserve/2 {
		l.extendReserve()
	}
	return nil
}

// extendReserve allocates Reserve bytes past the end of the log's records.
// It runs in the writer role.
//
// With SyncGrouped the space is allocated beyond the end of the file
// (FALLOC_FL_KEEP_SIZE), which stays exactly the records. With SyncAlways
// the file is extended over the space with zeros, written and made
// durable now: records then overwrite blocks that are already allocated,
// written and within the file, so the fsync before each reply has their
// data to write and nothing else (no new file size, no extent to convert
// from unwritten, no journal commit). On the disk of docs/performance.md
// that halves its cost under load, for writing the file's blocks twice
// (and an overwrite that costs more than an append). Readers take a
// log file's trailing zeros as its end (see zeroTail), and the zeros are
// cut off when the file is closed or rotated, and at the next start after
// a crash.
func (l *Log) extendReserve() bool {
	var err error
	if l.opts.Sync == SyncAlways {
		err = l.extendWithZeros()
	} else {
		err = retryEINTR(func() error {
			return unix.Fallocate(l.fd, unix.FALLOC_FL_KEEP_SIZE, l.off, l.opts.Reserve)
		})
	}
	switch err {
	case nil:
		l.reservedTo = l.off + l.opts.Reserve
		return true
	case unix.EOPNOTSUPP, unix.ENOSYS, unix.EINVAL:
		l.noReserve = true
		return true
	}
	l.mu.Lock()
	if l.failure == nil && l.ready.Load() == nil {
		l.log.Warn("audit log: no room for its reserve; refusing new work", "err", err)
		l.refusedFrom = l.refused.Load()
		l.ready.Store(&Error{Op: "reserve", Err: err, Since: time.Now()})
	}
	l.mu.Unlock()
	l.arm()
	return false
}

// extendWithZeros extends the file with zeros up to Reserve bytes past the
// records, and fsyncs them (see extendReserve).
func (l *Log) extendWithZeros() error {
	from, to := max(l.reservedTo, l.off), l.off+l.opts.Reserve
	for off := from; off < to; {
		n := min(to-off, int64(len(zeroBlock)))
		if err := pwriteAll(l.fd, zeroBlock[:n], off); err != nil {
			// What was written stays: zeros past the records.
			l.reservedTo = off
			return err
		}
		off += n
	}
	l.reservedTo = to
	return retryEINTR(func() error { return unix.Fdatasync(l.fd) })
}

// zeroBlock is zeros, never written to.
var zeroBlock [64 << 10]byte

// asError returns the *Error in err's chain. writeBatch and newFile return
// only those; anything else they might come to return is a write failure
// still, never a panic.
func asError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Op: "write", Err: err}
}

// failLocked puts the log in the failed state. With rollback, the chain
// goes back to the last record written and everything queued is dropped;
// the waiters of the dropped records are returned, to be told.
func (l *Log) failLocked(e *Error, rollback bool) []*waiter {
	if l.failure == nil {
		e.Since = time.Now()
		l.failure = e
		l.refusedFrom = l.refused.Load()
		l.ready.Store(e)
		l.log.Error("audit log cannot be written; refusing work until it can", "op", e.Op, "err", e.Err)
		l.arm()
	}
	if !rollback {
		return nil
	}
	l.seq, l.h, l.keys = l.written.seq, l.written.h, l.written.keys
	failed := append([]*waiter(nil), l.queue.waiters...)
	l.queue.reset()
	return failed
}

// arm asks the background goroutine to retry soon.
func (l *Log) arm() {
	select {
	case l.retryCh <- struct{}{}:
	default:
	}
}

// rotate moves the active file aside and starts a new one. It runs in the
// writer role, after a write.
func (l *Log) rotate() {
	l.mu.Lock()
	if l.failure != nil || l.closed {
		l.mu.Unlock()
		return
	}
	// The old file ends with a checkpoint and the new one starts with a
	// segment; they are sequenced together, so nothing comes between.
	if l.keys != nil {
		l.checkpointLocked("rotate", nil, false, false)
	}
	old := l.queue
	l.queue, l.spare = l.spare, nil
	l.segmentLocked("rotate")
	l.mu.Unlock()

	err := l.writeBatch(old, false)
	if err == nil {
		// The file is complete: it gives back its reserve before it is
		// made durable, so that it ends with its last record.
		l.giveBackReserve()
		if e := retryEINTR(func() error { return unix.Fdatasync(l.fd) }); e != nil {
			unix.Ftruncate(l.fd, l.off-int64(len(old.buf)))
			l.off -= int64(len(old.buf))
			err = &Error{Op: "fsync", Err: e}
		}
	}
	if err != nil {
		// Nothing of old is in the file.
		l.mu.Lock()
		failed := l.failLocked(asError(err), true)
		l.mu.Unlock()
		l.finishBatch(old, err, nil)
		for _, w := range failed {
			w.ch <- err
		}
		l.recycle(old)
		return
	}
	l.mu.Lock()
	l.written = old.last
	if n := len(old.checkpoints); n > 0 {
		l.lastCP = old.checkpoints[n-1]
	}
	l.mu.Unlock()
	next := old.last.seq + 1
	l.finishBatch(old, nil, nil)
	l.recycle(old)
	if l.curName == l.opts.Path {
		name := rotatedName(l.opts.Path, l.fileFirstSeq)
		if e := os.Rename(l.opts.Path, name); e != nil {
			err = &Error{Op: "rotate", Err: e}
		} else {
			l.curName = name
			if e := syncDir(filepath.Dir(l.opts.Path)); e != nil {
				err = &Error{Op: "rotate", Err: e}
			}
		}
	}
	if err == nil {
		err = l.newFile(next)
	}
	if err != nil {
		// The old file is complete; the segment and whatever followed it
		// are dropped, and the log retries.
		l.mu.Lock()
		failed := l.failLocked(asError(err), true)
		l.mu.Unlock()
		for _, w := range failed {
			w.ch <- err
		}
	}
}

// giveBackReserve frees the space allocated past the records of the
// active file (with SyncAlways, zeros the file was extended over), so
// that the file ends with its last record. It runs in the writer role.
func (l *Log) giveBackReserve() {
	if l.reservedTo > l.off {
		unix.Ftruncate(l.fd, l.off)
		l.reservedTo = l.off
	}
}

func (l *Log) recycle(b *batch) {
	l.mu.Lock()
	b.reset()
	if l.spare == nil {
		l.spare = b
	}
	l.mu.Unlock()
}

// newFile creates a new active file, whose first record will have seq
// first, and makes it current.
func (l *Log) newFile(first uint64) error {
	fd, err := openOwn(l.opts.Path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL, 0o600)
	if err != nil {
		return &Error{Op: "rotate", Err: err}
	}
	if err := syncDir(filepath.Dir(l.opts.Path)); err != nil {
		unix.Close(fd)
		return &Error{Op: "rotate", Err: err}
	}
	if l.fd >= 0 {
		l.giveBackReserve()
	}
	l.fmu.Lock()
	if l.fd >= 0 {
		unix.Close(l.fd)
	}
	l.fd = fd
	l.fmu.Unlock()
	l.curName, l.off, l.reservedTo, l.fileFirstSeq = l.opts.Path, 0, 0, first
	l.size.Store(0)
	return nil
}

// writeOpen writes what Open queued, durably.
func (l *Log) writeOpen() error {
	l.mu.Lock()
	b := l.queue
	l.queue, l.spare = l.spare, nil
	l.mu.Unlock()
	err := l.writeBatch(b, true)
	if err == nil {
		if e := retryEINTR(func() error { return unix.Fdatasync(l.fd) }); e != nil {
			err = &Error{Op: "fsync", Err: e}
		} else if e := syncDir(filepath.Dir(l.opts.Path)); e != nil {
			err = &Error{Op: "open", Err: e}
		}
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if err == nil {
		l.written = b.last
		l.dirty.Store(false)
	}
	b.reset()
	l.spare = b
	l.writing = false
	return err
}

// The background goroutine: grouped fsyncs, interval checkpoints, and
// retries while the log cannot write.

func (l *Log) run() {
	defer l.bg.Done()
	syncT := time.NewTimer(time.Hour)
	syncT.Stop()
	retryT := time.NewTimer(time.Hour)
	retryT.Stop()
	cpT := time.NewTicker(l.opts.CheckpointInterval)
	defer func() {
		syncT.Stop()
		retryT.Stop()
		cpT.Stop()
		l.syncNow()
	}()
	syncArmed, retryArmed := false, false
	for {
		select {
		case <-l.done:
			return
		case <-l.kick:
			if !syncArmed {
				syncT.Reset(l.opts.GroupInterval)
				syncArmed = true
			}
		case <-syncT.C:
			syncArmed = false
			l.syncNow()
		case <-l.retryCh:
			if !retryArmed {
				retryT.Reset(l.opts.RetryInterval)
				retryArmed = true
			}
		case <-retryT.C:
			retryArmed = false
			if !l.maintain() {
				retryT.Reset(l.opts.RetryInterval)
				retryArmed = true
			}
		case <-cpT.C:
			l.intervalCheckpoint()
		}
	}
}

// timedSync is fdatasync of the records written, timed for OnSync.
func (l *Log) timedSync(fd int) error {
	if l.opts.OnSync == nil {
		return retryEINTR(func() error { return unix.Fdatasync(fd) })
	}
	t := time.Now()
	err := retryEINTR(func() error { return unix.Fdatasync(fd) })
	l.opts.OnSync(time.Since(t))
	return err
}

// syncNow fsyncs what was written since the last fsync (SyncGrouped).
func (l *Log) syncNow() {
	if !l.dirty.Swap(false) {
		return
	}
	l.fmu.Lock()
	var err error
	if l.fd >= 0 {
		err = l.timedSync(l.fd)
	}
	l.fmu.Unlock()
	if err != nil {
		l.dirty.Store(true)
		l.mu.Lock()
		l.failLocked(&Error{Op: "fsync", Err: err}, false)
		l.mu.Unlock()
	}
}

func (l *Log) intervalCheckpoint() {
	w := getWaiter()
	l.mu.Lock()
	if l.closed || l.failure != nil || l.keys == nil || l.sinceCP == 0 {
		l.mu.Unlock()
		putWaiter(w)
		return
	}
	l.checkpointLocked("interval", nil, false, false)
	l.queue.waiters = append(l.queue.waiters, w)
	l.commit(w)
}

// maintain tries to bring a failed log back, or to extend the reserve of
// one short of space. It reports whether all is well again.
func (l *Log) maintain() bool {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return true
	}
	failed := l.failure != nil
	if !failed && l.ready.Load() == nil {
		l.mu.Unlock()
		return true
	}
	if l.writing {
		l.mu.Unlock()
		return false
	}
	l.writing = true
	l.mu.Unlock()
	ok := false
	if failed {
		ok = l.recover()
	} else if l.extendReserve() {
		l.mu.Lock()
		if e := l.ready.Load(); e != nil && l.failure == nil && !l.closed {
			// Refusals for want of room are recorded nowhere else: say
			// what happened, then accept work again.
			l.eventLocked(OpAuditResumed, fmt.Sprintf("the audit log takes records again; it had no room for its reserve since %s (%s: %v), "+
				"and %d requests were refused meanwhile", e.Since.UTC().Format(time.RFC3339Nano), e.Op, e.Err,
				l.refused.Load()-l.refusedFrom))
			l.ready.Store(nil)
			l.log.Info("audit log: room for its reserve again; accepting work")
			l.mu.Unlock()
			l.runWriter(nil) // writes the event, and hands the writer role on
			return true
		}
		l.mu.Unlock()
		ok = true
	}
	l.mu.Lock()
	if l.handOffLocked() {
		return ok
	}
	l.writing = false
	l.mu.Unlock()
	return ok
}

// handOffLocked passes the writer role to the goroutine that asked for
// it (leadLocked), else to the first waiter of the queue, if any: it then
// releases l.mu and reports true. It is called with l.mu held, by the
// writer.
func (l *Log) handOffLocked() bool {
	next := l.leader
	l.leader = nil
	if next == nil && len(l.queue.waiters) > 0 {
		next = l.queue.waiters[0]
	}
	if next == nil {
		return false
	}
	l.mu.Unlock()
	next.ch <- errLead
	return true
}

// leadLocked takes the writer role for w's goroutine: called with l.mu
// held, it returns with l.mu held once the role is its own. Records
// queued meanwhile stay queued. One leader at a time (SetKeys, under
// keysMu).
func (l *Log) leadLocked(w *waiter) {
	if !l.writing {
		l.writing = true
		return
	}
	l.leader = w
	l.mu.Unlock()
	<-w.ch // errLead
	l.mu.Lock()
}

// releaseLead gives up the writer role taken with leadLocked, writing
// what is queued first. It is called with l.mu held and releases it.
func (l *Log) releaseLead() {
	if len(l.queue.buf) > 0 || len(l.queue.waiters) > 0 || l.leader != nil {
		l.mu.Unlock()
		l.runWriter(nil)
		return
	}
	l.writing = false
	l.mu.Unlock()
}

// recover tries to write again after a failure, in the writer role: it
// cuts off anything a failed write left, and writes (and fsyncs) an event
// saying that the log was unavailable, from when, and how many requests
// were refused meanwhile. Only then are appends accepted again.
func (l *Log) recover() bool {
	fail := func(e *Error) bool {
		l.mu.Lock()
		// A new value: the old one may be in the hands of callers.
		l.failure = &Error{Op: e.Op, Err: e.Err, Since: l.failure.Since}
		l.ready.Store(l.failure)
		l.mu.Unlock()
		return false
	}
	if l.fd < 0 {
		if err := l.newFile(l.written.seq + 1); err != nil {
			return fail(asError(err))
		}
	}
	if err := unix.Ftruncate(l.fd, l.off); err != nil {
		return fail(&Error{Op: "truncate", Err: err})
	}
	l.reservedTo = l.off
	l.mu.Lock()
	f := l.failure
	if l.off == 0 {
		l.segmentLocked("rotate")
	}
	l.eventLocked(OpAuditResumed, fmt.Sprintf("the audit log is written again; it could not be since %s (%s: %v), "+
		"and %d requests were refused meanwhile", f.Since.UTC().Format(time.RFC3339Nano), f.Op, f.Err,
		l.refused.Load()-l.refusedFrom))
	b := l.queue
	l.queue, l.spare = l.spare, nil
	l.mu.Unlock()
	err := l.writeBatch(b, false)
	if err == nil {
		if e := retryEINTR(func() error { return unix.Fdatasync(l.fd) }); e != nil {
			l.off -= int64(len(b.buf))
			unix.Ftruncate(l.fd, l.off)
			l.size.Store(l.off)
			err = &Error{Op: "fsync", Err: e}
		}
	}
	last := b.last
	l.recycle(b)
	if err != nil {
		l.mu.Lock()
		l.failLocked(asError(err), true)
		l.mu.Unlock()
		return fail(asError(err))
	}
	l.mu.Lock()
	l.written = last
	l.dirty.Store(false)
	l.failure = nil
	l.recoveries++
	if !l.closed {
		l.ready.Store(nil)
	}
	seq := l.seq
	l.mu.Unlock()
	if l.opts.Reserve > 0 && !l.noReserve {
		l.extendReserve()
	}
	l.log.Info("audit log is written again", "seq", seq)
	return true
}

// resume positions the log at the end of an existing log, or at the start
// of a new one. It returns the reason for the segment record Open writes
// and notes about any recovery, which Open records as events; it sets
// l.earlier to where the records of earlier runs end, and l.damaged to
// where the valid records of a damaged active file end (Open sets the rest
// aside).
func (l *Log) resume() (reason string, notes []string, err error) {
	path := l.opts.Path
	fd, err := openOwn(path, unix.O_RDWR|unix.O_CREAT, 0o600)
	if err != nil {
		return "", nil, err
	}
	l.fd, l.curName = fd, path
	size, err := fileSize(fd)
	if err != nil {
		return "", nil, err
	}
	var last *Record
	var end int64
	file := path
	if size > 0 {
		t, err := readTail(fd, size)
		switch {
		case errors.Is(err, errDamaged):
			good, goodEnd, gerr := lastGood(path)
			if gerr != nil {
				return "", nil, gerr
			}
			if good != nil {
				l.damaged = &cut{off: goodEnd, seq: good.Seq, h: good.Hash, bad: good.Seq + 1, why: err.Error()}
				l.off, last, end = goodEnd, good, goodEnd
				l.fileFirstSeq = firstSeq(fd, good.Seq)
				break
			}
			// Not one valid record: the file is set aside whole, and the
			// log goes on as from an empty one.
			aside := asideName(path, "damaged")
			if err := os.Rename(path, aside); err != nil {
				return "", nil, err
			}
			unix.Close(l.fd)
			l.fd = -1
			if err := l.newFile(0); err != nil {
				return "", nil, asError(err).Err
			}
			notes = append(notes, fmt.Sprintf("%s was set aside as %s: it holds no valid record (%v)",
				filepath.Base(path), filepath.Base(aside), err))
		case err != nil:
			return "", nil, err
		default:
			if t.goodSize < size {
				// A torn record, or zeros past the records (see extendReserve).
				if err := unix.Ftruncate(fd, t.goodSize); err != nil {
					return "", nil, err
				}
			}
			if t.tornBytes > 0 {
				notes = append(notes, fmt.Sprintf("cut off %d bytes of an incomplete record at the end of %s, "+
					"left by a crash during a write", t.tornBytes, filepath.Base(path)))
			}
			l.off, last, end = t.goodSize, t.last, t.goodSize
			if last != nil {
				l.fileFirstSeq = firstSeq(fd, last.Seq)
			}
		}
	}
	if last == nil {
		// An empty file: continue from the newest rotated file, if any.
		prev, err := latestRotated(path)
		if err != nil {
			return "", nil, err
		}
		if prev != "" {
			last, end, err = lastRecordOf(prev)
			if err != nil {
				return "", nil, err
			}
			if last == nil {
				notes = append(notes, fmt.Sprintf("%s holds no valid record; a new chain starts", filepath.Base(prev)))
			}
			file = prev
		}
	}
	l.size.Store(l.off)
	if last == nil {
		l.fileFirstSeq = 1
		return "new log", notes, nil
	}
	l.seq, l.h = last.Seq, last.Hash
	if l.off == 0 {
		l.fileFirstSeq = l.seq + 1
	}
	l.earlier = &earlier{file: file, end: end, seq: last.Seq, h: last.Hash}
	return "start", notes, nil
}

// firstSeq reads the seq of the first record of the file at fd, or
// returns fallback.
func firstSeq(fd int, fallback uint64) uint64 {
	buf := make([]byte, 64<<10)
	n, _ := unix.Pread(fd, buf, 0)
	if n <= 0 {
		return fallback
	}
	i := bytes.IndexByte(buf[:n], '\n')
	if i < 0 {
		return fallback
	}
	r, err := ParseRecord(buf[:i])
	if err != nil {
		return fallback
	}
	return r.Seq
}

// lastRecordOf returns the last valid record of the file at path, and
// where its line ends.
func lastRecordOf(path string) (*Record, int64, error) {
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, 0, err
	}
	defer unix.Close(fd)
	size, err := fileSize(fd)
	if err != nil {
		return nil, 0, err
	}
	t, err := readTail(fd, size)
	if err == nil && t.last != nil {
		return t.last, t.goodSize, nil
	}
	return lastGood(path)
}

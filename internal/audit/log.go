package audit

import (
	"crypto/ed25519"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/linuxaudit"
	"github.com/keywarden/keywarden/internal/random"
)

// SyncMode says when a record is forced to stable storage.
type SyncMode uint8

const (
	// SyncGrouped (the default): Append returns once the record is written
	// to the file, so it survives a crash of the daemon; an fsync follows
	// within GroupInterval, one for every record written meanwhile. A
	// power failure can lose the records of the last GroupInterval.
	SyncGrouped SyncMode = iota
	// SyncAlways: Append returns once the record is fsynced. Concurrent
	// appends share one write and one fsync.
	SyncAlways
)

func (m SyncMode) String() string {
	if m == SyncAlways {
		return "always"
	}
	return "grouped"
}

// ParseSyncMode parses "grouped" (or "default", or "") and "always".
func ParseSyncMode(s string) (SyncMode, error) {
	switch s {
	case "", "default", "grouped":
		return SyncGrouped, nil
	case "always":
		return SyncAlways, nil
	}
	return 0, fmt.Errorf("audit: unknown sync mode %q (want grouped or always)", s)
}

// Options configure a Log. The zero value of every field but Path means
// its default.
type Options struct {
	// Path is the active file. Rotated files sit beside it.
	Path string
	Sync SyncMode
	// GroupInterval is how long SyncGrouped waits before the fsync that
	// covers what was written meanwhile. Default 5ms.
	GroupInterval time.Duration
	// RotateBytes starts a new file once the active one reaches this size.
	// Default 64 MiB; negative: never.
	RotateBytes int64
	// Reserve is how much disk space the log keeps allocated ahead of its
	// end (fallocate), so that Ready can refuse work before a full disk
	// makes a record impossible to write. Default 1 MiB; negative: none.
	Reserve int64
	// A checkpoint is written after CheckpointEvery records (default 4096)
	// or CheckpointInterval (default 30s) if records were written since
	// the last one, and when the log is closed or rotated. Checkpoints
	// need keys.
	CheckpointEvery    int
	CheckpointInterval time.Duration
	// RetryInterval is how often a log that cannot write tries again.
	// Default 250ms.
	RetryInterval time.Duration
	// Keys, if the daemon has them already; else see SetKeys. The log owns
	// the keys it is given and destroys them when it no longer uses them.
	Keys *Keys
	// Software names the program, recorded in segment records.
	Software string
	// OnCheckpoint, if set, is called after each checkpoint is written,
	// from the goroutine that wrote it: keep it short. Publishing
	// checkpoints somewhere an attacker of the log cannot reach (a remote
	// log) is what makes a cut tail detectable.
	OnCheckpoint func(Checkpoint)
	// OnSync, if set, is told how long each fsync of records took
	// (metrics), from the goroutine that made it: keep it short.
	OnSync func(time.Duration)
	// Linux, if set, receives key-management records and self-test
	// failures once they are written (see package linuxaudit).
	Linux *linuxaudit.Sender
	// Logger receives warnings about the log itself. Default: discard.
	Logger *slog.Logger
}

const (
	defaultGroupInterval      = 5 * time.Millisecond
	defaultRotateBytes        = 64 << 20
	defaultReserve            = 1 << 20
	defaultCheckpointEvery    = 4096
	defaultCheckpointInterval = 30 * time.Second
	defaultRetryInterval      = 250 * time.Millisecond
)

func (o Options) withDefaults() Options {
	def := func(p *time.Duration, v time.Duration) {
		if *p <= 0 {
			*p = v
		}
	}
	def(&o.GroupInterval, defaultGroupInterval)
	def(&o.CheckpointInterval, defaultCheckpointInterval)
	def(&o.RetryInterval, defaultRetryInterval)
	if o.RotateBytes == 0 {
		o.RotateBytes = defaultRotateBytes
	}
	if o.Reserve == 0 {
		o.Reserve = defaultReserve
	}
	if o.CheckpointEvery <= 0 {
		o.CheckpointEvery = defaultCheckpointEvery
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	return o
}

// Checkpoint identifies one record by its seq and chain hash. Whoever
// holds a checkpoint of a log can tell whether a copy of the log still
// reaches it (VerifyOptions.Expect): a log cut before it is detected.
type Checkpoint struct {
	Seq  uint64
	Hash [32]byte
	Time time.Time
}

// String formats c as SEQ:HASH, the form ParseCheckpoint and
// `keywarden audit verify --expect` read.
func (c Checkpoint) String() string {
	return strconv.FormatUint(c.Seq, 10) + ":" + hex.EncodeToString(c.Hash[:])
}

// ParseCheckpoint parses SEQ:HASH.
func ParseCheckpoint(s string) (Checkpoint, error) {
	var c Checkpoint
	seq, h, ok := strings.Cut(strings.TrimSpace(s), ":")
	n, err := strconv.ParseUint(seq, 10, 64)
	if !ok || err != nil || n == 0 {
		return c, fmt.Errorf("audit: checkpoint %q: want SEQ:HASH", s)
	}
	if err := decodeHex(c.Hash[:], h, "hash"); err != nil {
		return c, fmt.Errorf("audit: checkpoint %q: %v", s, err)
	}
	c.Seq = n
	return c, nil
}

// chainState is where the chain stands after some record.
type chainState struct {
	seq  uint64
	h    [32]byte
	keys *Keys
}

// batch is records sequenced but not yet written, and who waits for them.
type batch struct {
	buf         []byte
	waiters     []*waiter
	last        chainState // after the last record in buf
	checkpoints []Checkpoint
	linux       []linuxaudit.Event
}

func (b *batch) reset() {
	b.buf = b.buf[:0]
	clear(b.waiters)
	b.waiters = b.waiters[:0]
	b.checkpoints = b.checkpoints[:0]
	clear(b.linux)
	b.linux = b.linux[:0]
}

// A waiter is one goroutine waiting for its record to be written.
type waiter struct {
	ch   chan error // nil: written; errLead: write the next batch; else the failure
	body []byte
}

var errLead = errors.New("audit: lead")

var waiterPool = sync.Pool{New: func() any {
	return &waiter{ch: make(chan error, 1), body: make([]byte, 0, 512)}
}}

func getWaiter() *waiter { return waiterPool.Get().(*waiter) }

func putWaiter(w *waiter) {
	if cap(w.body) > 64<<10 {
		w.body = make([]byte, 0, 512)
	}
	waiterPool.Put(w)
}

// Log is an append-only, tamper-evident audit log. Its methods may be
// called from any number of goroutines.
//
// Appends are grouped: each caller encodes its record, then, under a short
// lock, gets the next seq, extends the chain and queues the line; one of
// the waiting callers writes everything queued with one write (and, with
// SyncAlways, one fsync) while the others wait, and the first caller that
// queued meanwhile writes the next group. No lock is held across I/O.
type Log struct {
	opts     Options
	log      *slog.Logger
	boot     string
	host     string
	openTime time.Time
	monoBase int64

	// mu guards the chain, the queue and the state below. It is held to
	// sequence records (encode the header, hash, MAC, sign a checkpoint)
	// and to hand batches between appenders and the writer; never across
	// I/O.
	mu      sync.Mutex
	seq     uint64
	h       [32]byte
	keys    *Keys
	digest  hash.Hash
	sigBuf  []byte
	sinceCP int        // records since the last checkpoint
	queue   *batch     // sequenced, waiting for the writer
	spare   *batch     // the batch the writer returns, reused
	writing bool       // some goroutine holds the writer role
	written chainState // after the last record written to the file
	failure *Error     // non-nil: the log cannot write; appends fail at once
	closed  bool
	lastCP  Checkpoint
	// earlier is where the records of earlier runs end, until the log
	// has checked them under its keys (see vouch.go); damaged is where a
	// damaged file's valid records end, found by Open.
	earlier *earlier
	damaged *cut
	// chainKeys are the public keys this run's chain has used, oldest
	// first; freshChain: the chain began in this run (a new log, or a new
	// chain after a set-aside kept nothing). PublishPublicKeys reads them.
	chainKeys  []ed25519.PublicKey
	freshChain bool
	// leader waits to take the writer role (leadLocked).
	leader      *waiter
	recoveries  int
	refusedFrom uint64 // refused counter when the failure began
	gatherWant  int    // SyncAlways: the writer waits for this many records (gatherGroup)

	// Writer state, used only by the goroutine that holds the writer role
	// (and by Open and Close, which hold it too).
	fd           int                                     // the active file, or -1
	curName      string                                  // its name: Options.Path, or its rotated name after a half-done rotation
	off          int64                                   // its size: where the next batch goes
	reservedTo   int64                                   // space allocated up to here
	fileFirstSeq uint64                                  // seq of its first record
	noReserve    bool                                    // the file system does not support fallocate
	hookWrite    func(fd int, b []byte, off int64) error // tests: replaces the write
	hookRename   func(old, new string) error             // tests: replaces the last rename of a set-aside
	// With SyncAlways: how many records the last write covered and how
	// long it took with its fsync, and the timer of gatherGroup.
	lastGroup   int
	lastSync    time.Duration
	gatherTimer *time.Timer

	// fmu guards fd against the background fsync while the writer swaps
	// files.
	fmu sync.Mutex

	// keysMu serializes SetKeys and ClearKeys.
	keysMu sync.Mutex

	ready   atomic.Pointer[Error] // nil: Ready returns nil
	refused atomic.Uint64         // appends refused while failed
	dirty   atomic.Bool           // written but not yet fsynced (SyncGrouped)
	// dirtySince is when dirty was last set (unix nanoseconds).
	dirtySince atomic.Int64
	size       atomic.Int64  // mirror of off, for Status
	kick       chan struct{} // wakes the background goroutine to fsync
	gather     chan struct{} // tells a gathering writer its group is there
	retryCh    chan struct{} // asks it to retry a failed log soon
	done       chan struct{}
	bg         sync.WaitGroup
}

// Open opens the log at o.Path, creating it if needed. An existing log is
// continued: the chain resumes from its last record, after checking that
// record's hash. An incomplete last line left by a crash is cut off and
// the cut recorded; a file whose end is damaged otherwise is kept aside
// as evidence, and the chain continues from its last valid record. With
// keys, Open checks what earlier runs wrote since the last checkpoint
// signed with them, and sets aside what it cannot verify (see SetKeys).
// Every Open writes a segment record, and returns once it is on disk.
func Open(o Options) (*Log, error) {
	if o.Path == "" {
		return nil, errors.New("audit: Options.Path is empty")
	}
	o = o.withDefaults()
	l := &Log{
		opts:     o,
		log:      o.Logger,
		boot:     readBootID(),
		openTime: time.Now(),
		monoBase: monotonicNow(),
		keys:     o.Keys,
		digest:   newDigest(),
		queue:    &batch{},
		spare:    &batch{},
		fd:       -1,
		kick:     make(chan struct{}, 1),
		retryCh:  make(chan struct{}, 1),
		gather:   make(chan struct{}, 1),
		done:     make(chan struct{}),
	}
	l.host, _ = os.Hostname()
	if err := os.MkdirAll(filepath.Dir(o.Path), 0o700); err != nil {
		return nil, &Error{Op: "open", Err: err}
	}
	reason, notes, err := l.resume()
	if err != nil {
		l.closeFile()
		return nil, &Error{Op: "open", Err: err}
	}
	l.mu.Lock()
	l.writing = true
	l.written = l.stateLocked()
	l.freshChain = reason == "new log"
	l.addChainKeyLocked(l.keys)
	if err := l.vouchAtOpenLocked(); err != nil {
		l.mu.Unlock()
		l.closeFile()
		return nil, &Error{Op: "open", Err: err}
	}
	l.segmentLocked(reason)
	for _, n := range notes {
		l.log.Warn("audit log recovered", "detail", n)
		l.eventLocked(OpAuditRecovered, n)
	}
	l.mu.Unlock()
	if err := l.writeOpen(); err != nil {
		l.closeFile()
		return nil, err
	}
	l.bg.Add(1)
	go l.run()
	return l, nil
}

// Append writes r to the log and returns once it is written (SyncGrouped)
// or on stable storage (SyncAlways). A nil error means the record is in
// the log; any error means it is not, and matches ErrUnavailable: the
// operation it records must not take effect, and the client gets
// UNAVAILABLE. r must be a KindRequest or KindEvent record; Append sets
// its Seq, Time, Mono and Hash, and does not keep r.
func (l *Log) Append(r *Record) error {
	if r.Kind != KindRequest && r.Kind != KindEvent {
		return ErrKind
	}
	w := getWaiter()
	w.body = appendBody(w.body[:0], r)
	if len(w.body) > MaxLineBytes-512 {
		putWaiter(w)
		return &Error{Op: "append", Err: ErrTooLarge}
	}
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		putWaiter(w)
		return err
	}
	l.sequenceLocked(r.Kind, w.body, r, w)
	if IsKeyManagement(r.Op) || r.Op == OpSelfTestFailure || r.Op == OpBatch {
		l.forwardLocked(r)
	}
	if l.keys != nil && l.sinceCP >= l.opts.CheckpointEvery {
		l.checkpointLocked("count", nil, false, false)
	}
	return l.commit(w)
}

// AppendAll writes rs to the log as Append does, one after the other with
// nothing between them, in one write (and, with SyncAlways, one fsync):
// the records of requests answered together. A nil error means every
// record is in the log; any error means none is.
func (l *Log) AppendAll(rs []*Record) error {
	if len(rs) == 0 {
		return nil
	}
	bodies := getWaiter() // its body holds every record's body, back to back
	defer putWaiter(bodies)
	bodies.body = bodies.body[:0]
	ends := make([]int, 0, len(rs))
	for _, r := range rs {
		if r.Kind != KindRequest && r.Kind != KindEvent {
			return ErrKind
		}
		start := len(bodies.body)
		bodies.body = appendBody(bodies.body, r)
		if len(bodies.body)-start > MaxLineBytes-512 {
			return &Error{Op: "append", Err: ErrTooLarge}
		}
		ends = append(ends, len(bodies.body))
	}
	w := getWaiter()
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		putWaiter(w)
		return err
	}
	start := 0
	for i, r := range rs {
		var wi *waiter
		if i == len(rs)-1 {
			wi = w // the last record's write covers them all
		}
		l.sequenceLocked(r.Kind, bodies.body[start:ends[i]], r, wi)
		start = ends[i]
		if IsKeyManagement(r.Op) || r.Op == OpSelfTestFailure || r.Op == OpBatch {
			l.forwardLocked(r)
		}
		if l.keys != nil && l.sinceCP >= l.opts.CheckpointEvery {
			l.checkpointLocked("count", nil, false, false)
		}
	}
	return l.commit(w)
}

// Ready reports whether the log can take records: nil, or an error that
// matches ErrUnavailable when the log is failing or the disk has no room
// left for the reserve. It costs one atomic load. The server calls it
// before performing an operation, and refuses with UNAVAILABLE if it
// fails: an operation that passed Ready is then almost never lost for
// want of space, because its record goes into space already allocated.
func (l *Log) Ready() error {
	if e := l.ready.Load(); e != nil {
		// Counted: the audit-resumed event says how many were refused.
		l.refused.Add(1)
		return e
	}
	return nil
}

// SetKeys gives the log its keys, typically when the daemon is unsealed.
// If the log had none, it writes a checkpoint signed with the new keys
// (which covers, and so authenticates, the records written without keys
// before it); if it had others, a checkpoint signed with the old keys that
// names the new ones. Records from then on carry a MAC. The log owns k.
//
// The first keys of a run check, before anything is signed, what earlier
// runs wrote since the last checkpoint signed with them: whatever cannot
// be verified is set aside (kept as evidence, out of the chain), and the
// records of this run follow a recovery segment that says so (see
// vouch.go). If that fails, SetKeys fails and the log goes on without
// keys.
func (l *Log) SetKeys(k *Keys) error {
	if k == nil {
		return errors.New("audit: SetKeys(nil); use ClearKeys")
	}
	l.keysMu.Lock()
	defer l.keysMu.Unlock()
	w := getWaiter()
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		putWaiter(w)
		return err
	}
	old := l.keys
	if old == k {
		l.mu.Unlock()
		putWaiter(w)
		return nil
	}
	if old == nil && l.earlier != nil {
		if done, err := l.vouchLocked(w, k); done || err != nil {
			putWaiter(w)
			return err
		}
	}
	if old == nil {
		l.keys = k
		l.checkpointLocked("keys", nil, false, false)
	} else {
		l.checkpointLocked("rekey", k, false, false)
		l.keys = k
	}
	l.addChainKeyLocked(k)
	l.queue.waiters = append(l.queue.waiters, w)
	l.queue.last = l.stateLocked()
	err := l.commit(w)
	if err == nil && old != nil {
		old.Destroy()
	}
	return err
}

// ClearKeys writes a checkpoint signed with the current keys saying that
// the log drops them (the daemon is sealed again), destroys them, and
// goes on without MACs or checkpoints until SetKeys.
func (l *Log) ClearKeys(reason string) error {
	l.keysMu.Lock()
	defer l.keysMu.Unlock()
	w := getWaiter()
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		putWaiter(w)
		return err
	}
	old := l.keys
	if old == nil {
		l.mu.Unlock()
		putWaiter(w)
		return nil
	}
	if reason == "" {
		reason = "keys-off"
	}
	l.checkpointLocked(reason, nil, true, false)
	l.keys = nil
	l.queue.waiters = append(l.queue.waiters, w)
	l.queue.last = l.stateLocked()
	err := l.commit(w)
	if err == nil {
		old.Destroy()
	}
	return err
}

// Checkpoint writes a checkpoint now and returns it.
func (l *Log) Checkpoint() (Checkpoint, error) {
	w := getWaiter()
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		putWaiter(w)
		return Checkpoint{}, err
	}
	if l.keys == nil {
		l.mu.Unlock()
		putWaiter(w)
		return Checkpoint{}, ErrNoKeys
	}
	cp := l.checkpointLocked("request", nil, false, false)
	l.queue.waiters = append(l.queue.waiters, w)
	if err := l.commit(w); err != nil {
		return Checkpoint{}, err
	}
	return cp, nil
}

// NewSegment writes a segment record, with a fresh random nonce, for an
// event after which two copies of this log must not continue alike: a VM
// generation change (a restored snapshot or a clone). reason says why.
// While the nonce cannot be fresh (package random has not confirmed fresh
// randomness since the change) it writes nothing and returns
// random.ErrNotFresh: call it again once random says it is.
func (l *Log) NewSegment(reason string) error {
	if !random.Default().Fresh() {
		return random.ErrNotFresh
	}
	w := getWaiter()
	l.mu.Lock()
	if err := l.usableLocked(); err != nil {
		l.mu.Unlock()
		putWaiter(w)
		return err
	}
	l.segmentLocked(reason)
	l.queue.waiters = append(l.queue.waiters, w)
	return l.commit(w)
}

// Status describes the log.
type Status struct {
	Path        string
	Sync        SyncMode
	Healthy     bool      // the log is writing
	Err         error     // why not, if not
	FailedSince time.Time // since when
	Refused     uint64    // appends refused since the log stopped writing
	LowSpace    bool      // Ready refuses: no room for the reserve
	Seq         uint64    // the last record's seq
	FileBytes   int64     // the active file's size
	Keyed       bool      // records carry MACs and checkpoints are written
	PublicKey   ed25519.PublicKey
	// LastCheckpoint is the last checkpoint written by this process (zero
	// if none).
	LastCheckpoint Checkpoint
	Recoveries     int // times the log started writing again after a failure
	// Lag is how long records written have waited for their fsync
	// (SyncGrouped; 0 when every record written is durable).
	Lag time.Duration
}

// Status returns the log's state.
func (l *Log) Status() Status {
	l.mu.Lock()
	defer l.mu.Unlock()
	s := Status{Path: l.opts.Path, Sync: l.opts.Sync, Healthy: l.failure == nil,
		Seq: l.written.seq, FileBytes: l.size.Load(), Keyed: l.keys != nil,
		LastCheckpoint: l.lastCP, Recoveries: l.recoveries}
	if l.dirty.Load() {
		s.Lag = max(0, time.Duration(time.Now().UnixNano()-l.dirtySince.Load()))
	}
	if l.keys != nil {
		s.PublicKey = l.keys.pub
	}
	if l.failure != nil {
		s.Err, s.FailedSince = l.failure.Err, l.failure.Since
		s.Refused = l.refused.Load() - l.refusedFrom
	} else if r := l.ready.Load(); r != nil {
		s.LowSpace = true
	}
	return s
}

// Close writes a final record (a checkpoint marked final, or a stop event
// if the log has no keys), fsyncs, and closes the file. Appends after
// Close fail with ErrClosed.
func (l *Log) Close() error {
	w := getWaiter()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		putWaiter(w)
		return nil
	}
	l.closed = true
	l.ready.Store(&Error{Op: "append", Err: ErrClosed})
	failed := l.failure
	if failed == nil {
		if l.keys != nil {
			l.checkpointLocked("close", nil, false, true)
		} else {
			l.eventLocked(OpAuditClose, "the log was closed")
		}
		l.queue.waiters = append(l.queue.waiters, w)
	}
	var err error
	if failed == nil {
		err = l.commit(w)
	} else {
		l.mu.Unlock()
		putWaiter(w)
		err = failed
	}
	close(l.done)
	l.bg.Wait()
	// Every appender has returned or fails at once now: take the writer
	// role for good and release the file.
	l.mu.Lock()
	for l.writing {
		l.mu.Unlock()
		time.Sleep(time.Millisecond)
		l.mu.Lock()
	}
	l.writing = true
	keys := l.keys
	l.keys = nil
	l.mu.Unlock()
	if l.fd >= 0 {
		l.giveBackReserve() // before the fsync, which makes the size durable too
		if serr := retryEINTR(func() error { return unix.Fdatasync(l.fd) }); serr != nil && err == nil {
			err = &Error{Op: "fsync", Err: serr}
		}
	}
	l.closeFile()
	if keys != nil {
		keys.Destroy()
	}
	return err
}

// addChainKeyLocked notes that the chain uses k from now on.
func (l *Log) addChainKeyLocked(k *Keys) {
	if k == nil || len(l.chainKeys) > 0 && l.chainKeys[len(l.chainKeys)-1].Equal(k.pub) {
		return
	}
	l.chainKeys = append(l.chainKeys, k.pub)
}

func (l *Log) closeFile() {
	l.fmu.Lock()
	defer l.fmu.Unlock()
	if l.fd >= 0 {
		unix.Close(l.fd)
		l.fd = -1
	}
}

package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// FileName is the bbolt file in a state directory.
const FileName = "keywarden.db"

// Bolt is a Store in one bbolt file.
//
// Update commits by group: a writer that finds no commit in progress
// commits at once; writers that arrive while a commit (and its fsync) is
// in progress are committed together in the next transaction, with one
// fsync. A lone client pays one fsync per write and no added delay; many
// concurrent clients share fsyncs.
//
// Concurrent writers do not all arrive while a commit is in progress:
// those whose last write was just committed come back a little later
// (a client receives its reply and sends its next request). So when the
// last transaction committed several writers and fewer are waiting, the
// next one waits for as many as the last one had, but no longer than a
// quarter of the last commit's time (at most maxGather): groups stay
// large, and each write waits a small fraction of an fsync at most. A
// lone writer (the last group held one) never waits.
type Bolt struct {
	db   *bolt.DB
	path string

	mu      sync.Mutex
	pending []*boltCall
	running bool // the committer goroutine is draining pending
	// The last group committed: its writers, when its commit ended, and
	// how long it took.
	lastN   int
	lastEnd time.Time
	lastDur time.Duration
	// The committer's wait for more writers (gather).
	waiters

	// mappedSize is the file's size when its mapping was last unpinned
	// (used by the committer goroutine only, after OpenBolt).
	mappedSize int64
}

type boltCall struct {
	fn    func(Tx) error
	alone bool // committed in a transaction of its own (UpdateAlone)
	err   error
	done  chan struct{}
}

// OpenBolt opens (creating it if needed) the store in directory dir, which
// it creates with mode 0700; the file is created with mode 0600. Only one
// process may have it open: a second gets an error after timeout.
func OpenBolt(dir string, timeout time.Duration) (*Bolt, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create state directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("state directory %s is accessible to others (mode %04o); it must be 0700", dir, fi.Mode().Perm())
	}
	path, err := filepath.Abs(filepath.Join(dir, FileName))
	if err != nil {
		return nil, err
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: timeout})
	if errors.Is(err, bolt.ErrTimeout) {
		return nil, fmt.Errorf("%s is in use by another process", path)
	}
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	b := &Bolt{db: db, path: path}
	b.unpin()
	return b, nil
}

// Dir is the directory the store's file is in.
func (b *Bolt) Dir() string { return filepath.Dir(b.path) }

// unpin unlocks the file's mapping if the daemon locked all its memory
// (mlockall with MCL_FUTURE locks every new mapping, this one too): the
// file holds only ciphertext, and a store of a million keys would keep
// hundreds of MiB locked in memory for nothing. The mapping is replaced
// when the file grows, so a commit that grew it calls unpin again.
func (b *Bolt) unpin() {
	fi, err := os.Stat(b.path)
	if err != nil {
		return
	}
	b.mappedSize = fi.Size()
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return
	}
	for line := range strings.Lines(string(maps)) {
		f := strings.Fields(line)
		if len(f) < 6 || f[len(f)-1] != b.path {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		unix.Syscall(unix.SYS_MUNLOCK, uintptr(start), uintptr(end-start), 0)
	}
}

// Path returns the file's path.
func (b *Bolt) Path() string { return b.path }

func (b *Bolt) Update(fn func(Tx) error) error { return b.update(fn, false) }

// UpdateAlone is Update in a transaction of its own (see Isolating): the
// groups before it and after it are cut at it.
func (b *Bolt) UpdateAlone(fn func(Tx) error) error { return b.update(fn, true) }

func (b *Bolt) update(fn func(Tx) error, alone bool) error {
	c := &boltCall{fn: fn, alone: alone, done: make(chan struct{})}
	b.mu.Lock()
	b.pending = append(b.pending, c)
	start := !b.running
	b.running = true
	b.arrived(len(b.pending))
	b.mu.Unlock()
	if start {
		go b.commitLoop()
	}
	<-c.done
	if errors.Is(c.err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return c.err
}

// maxGroup bounds the writers committed in one transaction.
const maxGroup = 1024

// maxGather bounds how long a transaction waits for more writers.
const maxGather = time.Millisecond

func (b *Bolt) commitLoop() {
	for {
		b.mu.Lock()
		if len(b.pending) == 0 {
			b.running = false
			b.mu.Unlock()
			return
		}
		b.gather()
		n := min(len(b.pending), maxGroup)
		for i, c := range b.pending[:n] {
			if c.alone { // in a group of its own
				n = max(i, 1)
				break
			}
		}
		group := b.pending[:n:n]
		b.pending = b.pending[n:]
		b.mu.Unlock()
		t0 := time.Now()
		b.commitGroup(group)
		t1 := time.Now()
		if fi, err := os.Stat(b.path); err == nil && fi.Size() != b.mappedSize {
			b.unpin() // the file grew: bolt mapped it anew
		}
		b.mu.Lock()
		b.lastN, b.lastEnd, b.lastDur = n, t1, t1.Sub(t0)
		b.mu.Unlock()
	}
}

// gather waits a little for more writers if the last group had more than
// are pending and was committed just now (see Bolt). b.mu is held; it is
// released while waiting.
func (b *Bolt) gather() {
	wait := min(b.lastDur/4, maxGather)
	if b.lastN <= 1 || len(b.pending) >= b.lastN || wait <= 0 || time.Since(b.lastEnd) > b.lastDur {
		return
	}
	b.waitFor(&b.mu, min(b.lastN, maxGroup), wait, nil)
}

// waiters is a committer's wait, before a transaction, for more writers
// to be pending: the committer waits (waitFor) and the writers that add
// themselves tell it (arrived), both with the store's mutex held.
type waiters struct {
	// want, if not 0, is the number of pending writers the committer
	// waits for; enough is closed when they are there.
	want   int
	enough chan struct{}
}

// arrived tells the committer that n writers are pending now.
func (w *waiters) arrived(n int) {
	if w.want > 0 && n >= w.want {
		close(w.enough)
		w.want = 0
	}
}

// waitFor releases mu, which is held, and waits until want writers are
// pending, d has passed or done is closed (nil: never); then it takes mu
// again.
func (w *waiters) waitFor(mu *sync.Mutex, want int, d time.Duration, done <-chan struct{}) {
	w.want, w.enough = want, make(chan struct{})
	enough := w.enough
	mu.Unlock()
	t := time.NewTimer(d)
	select {
	case <-enough:
	case <-t.C:
	case <-done:
	}
	t.Stop()
	mu.Lock()
	w.want = 0
}

// failedCall identifies the writer whose fn failed a group transaction.
type failedCall struct {
	i   int
	err error
}

func (f *failedCall) Error() string { return f.err.Error() }

// commitGroup runs every call's fn in one transaction. If one fails, the
// transaction is rolled back, that call gets its error, and the others are
// tried again without it: each call's effect is committed exactly once or
// not at all.
func (b *Bolt) commitGroup(group []*boltCall) {
	for len(group) > 0 {
		err := b.db.Update(func(tx *bolt.Tx) error {
			for i, c := range group {
				if err := c.fn(boltTx{tx}); err != nil {
					return &failedCall{i, err}
				}
			}
			return nil
		})
		var f *failedCall
		if errors.As(err, &f) {
			group[f.i].err = f.err
			close(group[f.i].done)
			group = append(group[:f.i:f.i], group[f.i+1:]...)
			continue
		}
		for _, c := range group {
			c.err = err
			close(c.done)
		}
		return
	}
}

func (b *Bolt) View(fn func(Tx) error) error {
	err := b.db.View(func(tx *bolt.Tx) error { return fn(boltTx{tx}) })
	if errors.Is(err, bolt.ErrDatabaseNotOpen) {
		return ErrClosed
	}
	return err
}

func (b *Bolt) Close() error { return b.db.Close() }

// KeepCopy writes a consistent copy of the file beside it, as
// keywarden.db.TAG-TIME (TIME in UTC, to the second; -2, -3 ... added if
// that name is taken), mode 0600, and syncs it and the directory.
func (b *Bolt) KeepCopy(tag string, now time.Time) (string, error) {
	base := b.path + "." + tag + "-" + now.UTC().Format("20060102T150405Z")
	var f *os.File
	var err error
	for i := 1; i < 100; i++ {
		path := base
		if i > 1 {
			path = fmt.Sprintf("%s-%d", base, i)
		}
		f, err = os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
		if !errors.Is(err, os.ErrExist) {
			break
		}
	}
	if err != nil {
		return "", err
	}
	err = b.db.View(func(tx *bolt.Tx) error {
		_, err := tx.WriteTo(f)
		return err
	})
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(f.Name())
		return "", err
	}
	if d, err := os.Open(filepath.Dir(b.path)); err == nil {
		d.Sync()
		d.Close()
	}
	return f.Name(), nil
}

// Prefetch asks the kernel to read the whole file into its page cache,
// before a scan of all of it (the check of every key at unseal). The
// scan walks the file in key order, which is not the file's order, and
// faults its pages in one at a time: from a cold cache, a million keys
// took seconds that way, where reading the file in order takes a
// fraction of one. Prefetch returns once the reads are under way; it is
// only advice, and its failure is not an error.
func (b *Bolt) Prefetch() {
	f, err := os.Open(b.path)
	if err != nil {
		return
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return
	}
	// The kernel starts at most a few MiB of reads per call.
	const chunk = 4 << 20
	for off := int64(0); off < fi.Size(); off += chunk {
		if unix.Fadvise(int(f.Fd()), off, chunk, unix.FADV_WILLNEED) != nil {
			return
		}
	}
}

type boltTx struct{ tx *bolt.Tx }

func (t boltTx) Get(bucket, key []byte) []byte {
	bk := t.tx.Bucket(bucket)
	if bk == nil {
		return nil
	}
	return bk.Get(key)
}

func (t boltTx) Put(bucket, key, value []byte) error {
	if !t.tx.Writable() {
		return ErrReadOnly
	}
	bk, err := t.tx.CreateBucketIfNotExists(bucket)
	if err != nil {
		return err
	}
	return bk.Put(key, value)
}

func (t boltTx) Delete(bucket, key []byte) error {
	if !t.tx.Writable() {
		return ErrReadOnly
	}
	bk := t.tx.Bucket(bucket)
	if bk == nil {
		return nil
	}
	return bk.Delete(key)
}

// OnCommit uses bbolt's commit handlers, which run after the commit,
// in the committing goroutine: commitLoop, the only writer, so that
// transactions' handlers run in commit order.
func (t boltTx) OnCommit(fn func()) { t.tx.OnCommit(fn) }

func (t boltTx) ForEach(bucket, after []byte, fn func(k, v []byte) error) error {
	bk := t.tx.Bucket(bucket)
	if bk == nil {
		return nil
	}
	c := bk.Cursor()
	var k, v []byte
	if after == nil {
		k, v = c.First()
	} else {
		k, v = c.Seek(after)
		if k != nil && bytes.Equal(k, after) {
			k, v = c.Next()
		}
	}
	for ; k != nil; k, v = c.Next() {
		if err := fn(k, v); err != nil {
			if errors.Is(err, ErrStop) {
				return nil
			}
			return err
		}
	}
	return nil
}

package store

import (
	"context"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/keywarden/keywarden/internal/ownfile"
)

// Etcd is a Store in an etcd cluster, shared by the daemons of several
// machines.
//
// Layout, under the configured prefix P: the value of key K in bucket B
// is at P + "b/" + hex(B) + "/" + K, so a bucket is a contiguous range of
// etcd keys in the order of its keys; P + "d/" + hex(B) is the bucket's
// deletion mark, written by every transaction that deletes a key of B.
//
// Every transaction reads from one etcd revision (the snapshot it began
// at) and commits as one etcd transaction guarded by what it read: each
// key read must have the modification revision it had then (0 for a key
// that was absent), each bucket walked with ForEach must hold no key
// modified since and its deletion mark must be unchanged (a key deleted
// since leaves nothing in the range to compare; the mark does). A guard
// that fails means another writer (another daemon, or this one) changed
// what the transaction read: the transaction runs again on a newer
// snapshot. So the transactions of all the daemons sharing a prefix are
// serializable, and a commit is durable on a quorum of etcd members when
// Update returns.
//
// Update commits by group, as Bolt does: the calls that arrive while a
// transaction is being committed go together in the next one, within
// the cluster's limit of operations per transaction (the calls beyond it
// wait for the next). A group reads what its calls read in one request
// to the cluster per round of prefetch rather than one per read, and
// begins at the snapshot of this store's own last commit when it can
// (prefetch): the guards are the same, so a group that another writer
// overtook runs again on a snapshot read anew. A group begun there that
// writes nothing still sends its guards (a transaction of compares
// alone): what it read is then what is, not what this store last wrote.
type Etcd struct {
	cli     *clientv3.Client
	prefix  string
	timeout time.Duration
	maxOps  int
	// maxBytes is what the writes and guards of one transaction may
	// take: the cluster's --max-request-bytes, less room for the
	// request's own encoding (requestMargin).
	maxBytes int

	// ctx is cancelled by Close, ending every request in flight.
	ctx    context.Context
	cancel context.CancelFunc

	// txnMu is held across each commit, the recording of its revision
	// in own and its commit functions (Tx.OnCommit): a follower that
	// takes it knows of every commit of this store up to the revisions
	// it has seen, and their commit functions have run.
	txnMu sync.Mutex
	own   map[int64]struct{} // revisions this store committed, not yet followed

	// snap is where the next group begins (prefetch): the values of
	// the keys the last commit of this store wrote, or those the last
	// transaction that conflicted read, as they were when it failed;
	// used by the committer only.
	snap *etcdSnap

	// folMu guards fol.
	folMu sync.Mutex
	// fol is what Follow has passed on of late, for the committer to
	// begin a group at the newest revision this store knows of rather
	// than at its own last commit (prefetch).
	fol etcdFollowed

	// foreign counts the commits of other writers that Follow has passed
	// on that wrote a key this store's last commit read (its rivals: a
	// key store's header; not another shard's); each is signalled on
	// turn too (buffered, one at most).
	foreign atomic.Int64
	turn    chan struct{}
	// lastRead holds the keys this store's last commit read (set by the
	// committer, read by Follow).
	lastRead atomic.Pointer[map[string]int64]
	// lastForeign is foreign as this store's last commit returned; used
	// by the committer only.
	lastForeign int64

	// reads counts the requests that read (tests).
	reads atomic.Int64
	// commits, conflicts and calls count the transactions that wrote,
	// those that lost to another writer, and the Update calls committed;
	// tried counts each call once per transaction sent with it, and
	// sent the bytes of the transactions sent (etcdTx.size) (Counts).
	commits, conflicts, calls, tried, sent atomic.Int64

	// mu guards the fields below.
	mu      sync.Mutex
	pending []*boltCall
	running bool // the committer goroutine is draining pending
	closed  bool
	// The committer's wait for more calls (gather).
	waiters
	// last is what the last group committed, for gather; used by the
	// committer only (one at a time: running).
	last afterCommit
}

// EtcdConfig configures an etcd store.
type EtcdConfig struct {
	// Endpoints are the cluster's client URLs (https://host:2379).
	Endpoints []string
	// Prefix is the etcd key prefix under which the store lives.
	Prefix string
	// CertFile and KeyFile are the client certificate and key, and
	// CAFile the CA that signs the members' certificates; all empty for
	// plain http (tests).
	CertFile, KeyFile, CAFile string
	// Timeout bounds each request to the cluster (0: 5 s).
	Timeout time.Duration
	// MaxTxnOps is the cluster's --max-txn-ops (0: etcd's default, 128).
	MaxTxnOps int
	// MaxRequestBytes is the cluster's --max-request-bytes (0: etcd's
	// default, 1.5 MiB): a transaction is kept within it, less a margin.
	MaxRequestBytes int
}

// DefaultMaxRequestBytes is etcd's default --max-request-bytes.
const DefaultMaxRequestBytes = 1536 * 1024

// requestMargin is the part of --max-request-bytes left for what a
// transaction's size (etcdTx.size) does not count: the encoding of the
// request around its keys and values.
func requestMargin(limit int) int { return max(4096, limit/16) }

// opSize is what one operation of a transaction counts besides its key
// and value: its encoding (tags, lengths, revisions).
const opSize = 32

// ErrUnavailable wraps the errors of a cluster that cannot be reached or
// has no quorum.
var ErrUnavailable = errors.New("store: the etcd cluster is unavailable")

// errPrefetching: a read of a range while prefetch finds out what a
// function reads.
var errPrefetching = errors.New("store: a range read while prefetching")

// errConflict: a transaction's guard failed, another writer came first.
var errConflict = errors.New("store: concurrent change")

// OpenEtcd connects to the cluster cfg names. It does not wait for it: a
// cluster that cannot be reached fails the first transaction, with
// ErrUnavailable.
func OpenEtcd(cfg EtcdConfig) (*Etcd, error) {
	if len(cfg.Endpoints) == 0 {
		return nil, errors.New("etcd store: no endpoints")
	}
	if cfg.Prefix == "" {
		return nil, errors.New("etcd store: an empty prefix; name one, such as /keywarden/")
	}
	ccfg := clientv3.Config{
		Endpoints:            cfg.Endpoints,
		Logger:               zap.NewNop(),
		DialKeepAliveTime:    5 * time.Second,
		DialKeepAliveTimeout: 2 * time.Second,
		AutoSyncInterval:     0,
		MaxCallSendMsgSize:   8 << 20,
		MaxCallRecvMsgSize:   etcdRecvMax,
	}
	if cfg.CertFile != "" || cfg.KeyFile != "" || cfg.CAFile != "" {
		if cfg.CAFile == "" {
			return nil, errors.New("etcd store: a client certificate without a CA (--etcd-ca) to check the members' certificates")
		}
		if (cfg.CertFile == "") != (cfg.KeyFile == "") {
			return nil, errors.New("etcd store: a client certificate needs both --etcd-cert and --etcd-key")
		}
		caPEM, err := ownfile.ReadTrusted("etcd store: CA file", cfg.CAFile,
			"another user could add a CA of theirs and stand in for the etcd members")
		if err != nil {
			return nil, err
		}
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(caPEM) {
			return nil, fmt.Errorf("etcd store: CA file %s: no PEM certificate", cfg.CAFile)
		}
		tc, err := transport.TLSInfo{CertFile: cfg.CertFile, KeyFile: cfg.KeyFile}.ClientConfig()
		if err != nil {
			return nil, fmt.Errorf("etcd store: TLS: %w", err)
		}
		// The CAs read from the file checked, not from a second open.
		tc.RootCAs = roots
		ccfg.TLS = tc
	} else {
		for _, e := range cfg.Endpoints {
			if strings.HasPrefix(e, "https://") {
				return nil, fmt.Errorf("etcd store: endpoint %s is https but no CA (--etcd-ca) is given", e)
			}
		}
	}
	if cfg.MaxRequestBytes <= 0 {
		cfg.MaxRequestBytes = DefaultMaxRequestBytes
	}
	if cfg.MaxRequestBytes < 64<<10 {
		return nil, fmt.Errorf("etcd store: a --max-request-bytes of %d is too small for a key record; give at least 64 KiB", cfg.MaxRequestBytes)
	}
	ccfg.MaxCallSendMsgSize = max(ccfg.MaxCallSendMsgSize, cfg.MaxRequestBytes+(1<<20))
	cli, err := clientv3.New(ccfg)
	if err != nil {
		return nil, fmt.Errorf("etcd store: %w", err)
	}
	e := &Etcd{cli: cli, prefix: cfg.Prefix, timeout: cfg.Timeout, maxOps: cfg.MaxTxnOps, own: make(map[int64]struct{}), turn: make(chan struct{}, 1),
		maxBytes: cfg.MaxRequestBytes - requestMargin(cfg.MaxRequestBytes)}
	if e.timeout <= 0 {
		e.timeout = 5 * time.Second
	}
	if e.maxOps <= 0 {
		e.maxOps = 128
	}
	e.ctx, e.cancel = context.WithCancel(context.Background())
	return e, nil
}

// Client is the cluster's client (status, watches).
func (e *Etcd) Client() *clientv3.Client { return e.cli }

// Prefix is the etcd key prefix of the store.
func (e *Etcd) Prefix() string { return e.prefix }

// BucketPrefix is the etcd key prefix of bucket's keys: a key's etcd key
// is BucketPrefix(bucket) + key.
func (e *Etcd) BucketPrefix(bucket []byte) string {
	return e.prefix + "b/" + hex.EncodeToString(bucket) + "/"
}

func (e *Etcd) markKey(bucket []byte) string { return e.prefix + "d/" + hex.EncodeToString(bucket) }

// bucketEnd is the end of bucket's range: "/" + 1 is "0".
func (e *Etcd) bucketEnd(bucket []byte) string {
	return e.prefix + "b/" + hex.EncodeToString(bucket) + "0"
}

func (e *Etcd) Update(fn func(Tx) error) error { return e.update(fn, false) }

// UpdateAlone is Update in a transaction of its own (see Isolating).
func (e *Etcd) UpdateAlone(fn func(Tx) error) error { return e.update(fn, true) }

func (e *Etcd) update(fn func(Tx) error, alone bool) error {
	c := &boltCall{fn: fn, alone: alone, done: make(chan struct{})}
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return ErrClosed
	}
	e.pending = append(e.pending, c)
	start := !e.running
	e.running = true
	e.arrived(len(e.pending))
	e.mu.Unlock()
	if start {
		go e.commitLoop()
	}
	<-c.done
	return c.err
}

func (e *Etcd) commitLoop() {
	for {
		e.mu.Lock()
		if len(e.pending) == 0 {
			e.running = false
			e.mu.Unlock()
			return
		}
		e.gather()
		n := min(len(e.pending), maxGroup)
		for i, c := range e.pending[:n] {
			if c.alone {
				n = max(i, 1)
				break
			}
		}
		group := e.pending[:n:n]
		e.pending = e.pending[n:]
		closed := e.closed
		e.mu.Unlock()
		if closed {
			for _, c := range group {
				c.err = ErrClosed
				close(c.done)
			}
			continue
		}
		t0 := time.Now()
		w := e.commitGroup(group)
		if w.others > 0 {
			e.waitTurn(w)
		} else if w.took > 0 {
			e.linger(w.took)
		}
		w.cycle, w.end = time.Since(t0), time.Now()
		if group[0].alone {
			// Its writer (a rotation) does not call again at once:
			// the next group waits for those that waited.
			w.calls = 0
		}
		e.last = w
	}
}

// maxEtcdGather bounds how long the committer waits for more calls before a
// transaction (gather).
const maxEtcdGather = 10 * time.Millisecond

// gatherFloor, zero outside tests, is the least that gather waits for
// the writers of the last transaction.
var gatherFloor atomic.Int64 // a time.Duration

// gather waits a little, before a transaction, for the calls of the
// writers that the last one committed to come back. Writers that each
// wait for their last creation before they make the next (a daemon's
// clients) otherwise split into two groups that take turns: those whose
// calls arrived while the last transaction was committing, sent at once
// when it ends, and those it committed, which arrive while the next one
// is. Each transaction costs the cluster about as much whatever it
// carries (a proposal, its log entry on each member and their fsyncs,
// the watches' events), so one group of all of them costs it half as
// much. gather waits, if fewer calls are pending than the last
// transaction carried and found waiting when it committed, until that
// many are, for at most as long as the last group took from its start to
// its end (and maxEtcdGather): on a loaded machine a writer's turn from
// its answer to its next call takes a good part of a commit. A writer
// that does not come back holds the others back once, by that time at
// most, and the next transaction waits only for those that did; one that
// keeps coming back late holds back every transaction, by that time at
// most. A call alone (UpdateAlone) neither waits nor is waited for. e.mu
// is held; it is released while waiting. e.last is the last group's.
func (e *Etcd) gather() {
	last := e.last
	want := min(last.calls+last.waiting, maxGroup)
	wait := max(min(last.cycle, maxEtcdGather), time.Duration(gatherFloor.Load()))
	// A call alone (UpdateAlone) at the head goes in a transaction of
	// its own whatever arrives: nothing to wait for.
	if want <= 1 || len(e.pending) >= want || wait <= 0 || time.Since(last.end) > last.cycle || e.closed || e.pending[0].alone {
		return
	}
	e.waitFor(&e.mu, want, wait, e.ctx.Done())
}

// maxLinger bounds how long the committer waits after a group that won
// over other writers (linger).
const maxLinger = 20 * time.Millisecond

// hookLinger, nil outside tests, is told of each wait of linger.
var hookLinger atomic.Pointer[func(time.Duration)]

// linger waits d before the committer's next transaction. Every
// transaction of a key store writes its header, so when several daemons
// write at once one transaction wins each round and the others run again
// at once, from the values their failed transactions read. A group that
// lost and then won waits about one commit's time (d) before the next:
// the others' groups commit meanwhile without racing this store's, and
// this store's calls gather into one larger group (those that arrive
// meanwhile wait at most d more).
func (e *Etcd) linger(d time.Duration) {
	if h := hookLinger.Load(); h != nil {
		(*h)(d)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
	case <-e.ctx.Done():
	}
}

// maxTurns bounds the commits of other writers that the committer waits
// for after its own (waitTurn).
const maxTurns = 4

// turnWaitFloor, zero outside tests, is the least that waitTurn waits
// for other writers' commits.
var turnWaitFloor atomic.Int64 // a time.Duration

// hookTurn, nil outside tests, is told of each wait of waitTurn: the
// commits of other writers waited for, and for how long at most.
var hookTurn atomic.Pointer[func(others int, timeout time.Duration)]

// afterCommit is what the committer does after a group: wait for its turn
// if other writers committed since its last commit (others > 0), else
// linger for took if not zero.
type afterCommit struct {
	others int           // the commits of other writers followed since the store's last commit
	from   int64         // foreign as the commit returned
	took   time.Duration // how long the commit took (at most maxLinger)

	// For gather: the calls the transaction committed, those pending
	// when it had committed, how long the group took from its start to
	// its end (with any wait after it), and when it ended.
	calls, waiting int
	cycle          time.Duration
	end            time.Time
}

// waitTurn waits, after a commit of this store that other writers'
// commits preceded, for as many commits of theirs (at most maxTurns) as
// came between this store's last two, or at most four times as long as
// this store's commit took for each (and twice maxLinger), before the
// committer's next transaction. Every transaction writes the store
// header, so transactions sent at once by several daemons all but one
// fail and are sent again, each costing the cluster and the daemon as
// much as one that commits: with one daemon's turn after another's, the
// daemons that write at once commit in turn, each with the calls that
// gathered meanwhile, rather than race. The waits are bounded: a writer
// that stops writing holds the others back by one wait at most.
func (e *Etcd) waitTurn(w afterCommit) {
	n := min(w.others, maxTurns)
	timeout := max(min(time.Duration(4*n)*w.took, time.Duration(2*n)*maxLinger), time.Duration(turnWaitFloor.Load()))
	if h := hookTurn.Load(); h != nil {
		(*h)(n, timeout)
	}
	t := time.NewTimer(timeout)
	defer t.Stop()
	for e.foreign.Load() < w.from+int64(n) {
		select {
		case <-e.turn:
		case <-t.C:
			return
		case <-e.ctx.Done():
			return
		}
	}
}

// join adds to a group that runs again after a conflict the calls that
// have arrived since, as many as a group takes: while another writer
// holds the store header, the calls of this store wait in one group
// rather than in line behind it, and the next commit carries all of them.
func (e *Etcd) join(group []*boltCall) []*boltCall {
	if group[0].alone {
		return group
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	n := 0
	for n < len(e.pending) && len(group)+n < maxGroup && !e.pending[n].alone {
		n++
	}
	if n == 0 {
		return group
	}
	group = append(group[:len(group):len(group)], e.pending[:n]...)
	e.pending = e.pending[n:]
	return group
}

// maxOwn bounds the revisions remembered for a follower (Follow).
const maxOwn = 1 << 16

// maxTries bounds how often a transaction runs again after a conflict.
const maxTries = 64

// commitGroup commits every call's fn in one etcd transaction: each call's
// effect is committed exactly once or not at all, as in Bolt. It returns
// what the committer should wait for before its next transaction: its
// turn (waitTurn) if it committed after other writers' commits that Follow
// passed on; else, if it committed after losing to another writer at
// least once, the time the commit took (at most maxLinger) (linger).
func (e *Etcd) commitGroup(group []*boltCall) (after afterCommit) {
	finish := func(c *boltCall, err error) {
		c.err = err
		close(c.done)
	}
	fresh := false // begin at a snapshot read anew, not at the last commit's
	lost := false  // a transaction of the group lost to another writer's
	for tries := 0; len(group) > 0; {
		tx := e.newTx(true)
		if !group[0].alone {
			e.prefetch(tx, group, fresh)
		}
		var failed = -1
		var ferr error
		fits := 0 // the calls whose transaction is within the cluster's limit
		for i, c := range group {
			if err := c.fn(tx); err != nil {
				failed, ferr = i, err
				break
			}
			if !tx.tooBig() {
				fits = i + 1
			}
		}
		if tx.err != nil {
			// The store failed, not the calls (a Get that failed gave
			// nil, whatever a call made of it).
			if errors.Is(tx.err, errConflict) {
				e.snap = nil // its revision was compacted
				if tries++; tries < maxTries {
					continue
				}
			}
			for _, c := range group {
				finish(c, e.wrapErr(tx.err))
			}
			return
		}
		if failed >= 0 && tx.fromLast && !fresh {
			// The call may have failed on what this store last wrote
			// or read where another writer has written since, and
			// which this daemon may have followed: it fails only on a
			// snapshot of now.
			fresh = true
			continue
		}
		if failed >= 0 {
			finish(group[failed], ferr)
			group = append(group[:failed:failed], group[failed+1:]...)
			continue
		}
		if tx.tooBig() && len(group) > 1 {
			// Commit the calls that fit (one at least: a call too big
			// alone fails in commit) and give the others back to the
			// committer, first in line.
			n := max(fits, 1)
			e.mu.Lock()
			e.pending = append(group[n:len(group):len(group)], e.pending...)
			e.mu.Unlock()
			group = group[:n:n]
			continue
		}
		sent := time.Now()
		e.tried.Add(int64(len(group)))
		e.sent.Add(int64(tx.size()))
		err := e.commit(tx)
		took := time.Since(sent)
		if errors.Is(err, errConflict) {
			lost = true
			fresh = false // the next try begins where this one failed
			group = e.join(group)
			if tries++; tries >= maxTries {
				for _, c := range group {
					finish(c, fmt.Errorf("%w: a transaction conflicted with other writers %d times", ErrUnavailable, tries))
				}
				return
			}
			if e.snap != nil {
				// The failed transaction read where the winner left
				// the keys: try again from there at once. Among
				// writers that all do, one wins each round.
				continue
			}
			// Back off a little, more each time: another writer is
			// committing the keys this group reads.
			d := time.Duration(rand.Int64N(int64(time.Millisecond) << min(tries, 6)))
			select {
			case <-time.After(d):
			case <-e.ctx.Done():
			}
			continue
		}
		if err != nil {
			for _, c := range group {
				finish(c, err)
			}
			return
		}
		// The commit functions ran in commit, in the calls' order.
		e.mu.Lock()
		waiting := len(e.pending)
		e.mu.Unlock()
		e.calls.Add(int64(len(group)))
		for _, c := range group {
			finish(c, nil)
		}
		f := e.foreign.Load()
		after = afterCommit{others: int(f - e.lastForeign), from: f, took: min(took, maxLinger), calls: len(group), waiting: waiting}
		e.lastForeign = f
		if after.others == 0 && !lost {
			after.took = 0
		}
		return after
	}
	return after
}

// prefetchRounds bounds the rounds of prefetch.
const prefetchRounds = 3

// prefetch fills tx's prefetched values, for a group of calls, with what
// their functions read, in a few requests to the cluster rather than one
// per read. In each round it runs every call's fn in a transaction of its
// own that is never committed and that answers a read of a key not yet
// fetched with nothing (an absent key), noting the key; then it reads
// every key noted, in one etcd transaction, at tx's snapshot (the first
// round's sets it). A function that reads a key named by what an earlier
// read gave (a record named by an index) names it in the next round.
// The functions then run one after the other in tx, finding what they
// read there; a read that no round foresaw (a key named by what an
// earlier call of the group wrote) goes to the cluster then, at the same
// snapshot, and so does every read if the cluster cannot be reached now.
// A prefetched value becomes a read of tx (guarded at commit) only when a
// function of tx reads it.
//
// Every fn runs more than once: the contract of Update (fn has no effect
// beyond its transaction) allows it.
func (e *Etcd) prefetch(tx *etcdTx, group []*boltCall, fresh bool) {
	tx.pre = map[string]etcdRead{}
	if sn := e.snap; sn != nil && !fresh {
		// Begin at the snapshot of this store's last commit, whose
		// writes it knows: a store that is the only writer of late
		// (the usual case between two commits of its own) reads none
		// of them again. Had another writer come in between, the guard
		// fails and the group runs again, from the values its failed
		// transaction read as it failed (commit). Either is one
		// revision of the cluster.
		tx.rev, tx.fromLast = sn.rev, true
		maps.Copy(tx.pre, sn.vals)
		// Commits of other writers that Follow has passed on since
		// move the snapshot to the newest revision followed, with
		// their values: a group that would begin where another
		// writer's commit has since changed the store header is not
		// sent to fail its guard.
		if rev := e.followedSince(sn.rev, tx.pre); rev > sn.rev {
			tx.rev = rev
			e.snap = &etcdSnap{rev: rev, vals: maps.Clone(tx.pre)}
		}
		// A key it does not know is taken to be absent, without a
		// request: what such a group reads of late is the new keys of
		// creations (their ids and names), which are. The guard of a
		// key read as absent is that it is absent when the transaction
		// commits; one that is not fails the guard, and the group runs
		// again from the values its failed transaction read (commit),
		// or, if a function failed on it, from a snapshot read anew.
		tx.absent = true
		return
	}
	for range prefetchRounds {
		want := map[string]struct{}{}
		for _, c := range group {
			t := e.newTx(true)
			t.rev, t.pre, t.missing = tx.rev, tx.pre, want
			c.fn(t)
		}
		if len(want) == 0 {
			return
		}
		keys := slices.Sorted(maps.Keys(want))
		for len(keys) > 0 {
			n := min(len(keys), e.maxOps)
			if err := e.fetch(tx, keys[:n]); err != nil {
				return
			}
			keys = keys[n:]
		}
	}
}

// fetch reads keys in one etcd transaction at tx's snapshot (setting it
// if tx has none) into tx's prefetched values.
func (e *Etcd) fetch(tx *etcdTx, keys []string) error {
	read := func(serializable bool) (*clientv3.TxnResponse, error) {
		ops := make([]clientv3.Op, len(keys))
		for i, k := range keys {
			switch {
			case tx.rev == 0:
				ops[i] = clientv3.OpGet(k)
			case serializable:
				ops[i] = clientv3.OpGet(k, clientv3.WithRev(tx.rev), clientv3.WithSerializable())
			default:
				ops[i] = clientv3.OpGet(k, clientv3.WithRev(tx.rev))
			}
		}
		ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
		defer cancel()
		e.reads.Add(1)
		return e.cli.Txn(ctx).Then(ops...).Commit()
	}
	// What was at a revision never changes: any member that has it may
	// answer, without asking the leader. One that does not have it yet
	// says so, and the leader is asked.
	resp, err := read(tx.rev != 0)
	if errors.Is(err, rpctypes.ErrFutureRev) {
		resp, err = read(false)
	}
	if err != nil {
		return err
	}
	if len(resp.Responses) != len(keys) {
		return errors.New("store: etcd answered a read of a different length")
	}
	if tx.rev == 0 {
		tx.rev = resp.Header.Revision
	}
	for i, k := range keys {
		var r etcdRead
		if kvs := resp.Responses[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
			r = etcdRead{value: nonNil(kvs[0].Value), rev: kvs[0].ModRevision}
		}
		tx.pre[k] = r
	}
	return nil
}

// etcdFollowed is what Follow has passed on since it began at from: the
// newest change of each key changed by a commit after from, up to rev
// (every commit after from up to rev is in it).
type etcdFollowed struct {
	session int64 // the Follow call recording, if changes is not nil
	from    int64
	rev     int64
	changes map[string]etcdChange
}

// etcdChange is a key's value after a followed commit at rev.
type etcdChange struct {
	etcdRead
	at int64
}

// maxFollowed bounds the changes kept for the committer (fol): past it,
// they are dropped and kept again from the last revision followed.
const maxFollowed = 1024

// followedSince sets in vals, the values of keys at revision rev, the
// newest value of every key that a commit followed after rev changed,
// and returns the revision vals are then at: the newest followed, or
// rev if nothing newer was followed without a gap since rev. The changes
// at or before rev are dropped: the committer's snapshots only move
// forward.
func (e *Etcd) followedSince(rev int64, vals map[string]etcdRead) int64 {
	e.folMu.Lock()
	defer e.folMu.Unlock()
	f := &e.fol
	if f.changes == nil || f.from > rev || f.rev <= rev {
		return rev
	}
	for k, c := range f.changes {
		if c.at <= rev {
			delete(f.changes, k)
			continue
		}
		vals[k] = c.etcdRead
	}
	f.from = rev
	return f.rev
}

// followed records the changes of commit c, passed on by the Follow call
// of session, for the committer (followedSince).
func (e *Etcd) followed(session int64, c *Commit, keys []string) {
	e.folMu.Lock()
	defer e.folMu.Unlock()
	f := &e.fol
	if f.session != session || f.changes == nil || c.Rev <= f.rev {
		return
	}
	if len(f.changes)+len(keys) > maxFollowed {
		clear(f.changes)
		f.from = f.rev
	}
	for i, k := range keys {
		ch := c.Changes[i]
		r := etcdChange{at: c.Rev}
		if !ch.Deleted {
			r.etcdRead = etcdRead{value: ch.Value, rev: c.Rev}
		}
		f.changes[k] = r
	}
	f.rev = c.Rev
}

// EtcdCounts counts what an etcd store has committed since it was opened.
type EtcdCounts struct {
	// Commits is the transactions that wrote, Conflicts those that
	// failed their guard (another writer changed what they read first)
	// and ran again, Calls the Update calls committed: Calls/Commits is
	// the mean group a transaction carried. Tried counts each call once
	// per transaction sent with it: Tried/Calls is how many times a call
	// was sent before it committed. Sent is the bytes of the
	// transactions sent (their keys, values and guards), Reads the
	// requests that read.
	Commits, Conflicts, Calls, Tried, Sent, Reads int64
}

// Counts returns what the store has committed, for measurements.
func (e *Etcd) Counts() EtcdCounts {
	return EtcdCounts{Commits: e.commits.Load(), Conflicts: e.conflicts.Load(), Calls: e.calls.Load(), Tried: e.tried.Load(),
		Sent: e.sent.Load(), Reads: e.reads.Load()}
}

// MaxOps is the most reads, and the most writes, one transaction may
// hold: the cluster's --max-txn-ops as configured.
func (e *Etcd) MaxOps() int { return e.maxOps }

// MaxBytes is the most bytes one transaction's writes and guards may
// take (see PutSize): the cluster's --max-request-bytes as configured,
// less a margin.
func (e *Etcd) MaxBytes() int { return e.maxBytes }

// PutSize is what a Put of a value of n bytes under bucket and key counts
// toward MaxBytes.
func (e *Etcd) PutSize(bucket, key []byte, n int) int {
	return opSize + len(e.BucketPrefix(bucket)) + len(key) + n
}

// commit sends tx's writes guarded by its reads.
func (e *Etcd) commit(tx *etcdTx) error {
	readOnly := len(tx.writes) == 0
	if readOnly && (!tx.fromLast || len(tx.reads)+len(tx.ranges) == 0) {
		// Nothing to write: what was read was a snapshot read for it.
		tx.committed()
		return nil
	}
	// A transaction that writes nothing but began at the snapshot of this
	// store's last commit (prefetch) read what was then, which other
	// writers may have changed since: its reads are checked against now
	// by a transaction of guards alone, and it runs again if one fails.
	if readOnly && tx.tooBig() {
		// Too many guards for one transaction: it runs again on a
		// snapshot read for it.
		e.snap = nil
		return errConflict
	}
	if tx.tooBig() {
		if n := tx.size(); n > e.maxBytes {
			return fmt.Errorf("%w: a transaction of %d bytes is more than the etcd cluster takes in one request (%d bytes with its --max-request-bytes, set with --etcd-max-request-bytes)",
				ErrTooLarge, n, e.maxBytes)
		}
		return fmt.Errorf("%w: a transaction of %d reads and %d writes is more than the etcd cluster's limit of %d operations (its --max-txn-ops)",
			ErrTooLarge, len(tx.reads)+len(tx.ranges), len(tx.writes), e.maxOps)
	}
	cmps := make([]clientv3.Cmp, 0, len(tx.reads)+len(tx.ranges))
	for k, rev := range tx.reads {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(k), "=", rev))
	}
	for start, end := range tx.ranges {
		cmps = append(cmps, clientv3.Compare(clientv3.ModRevision(start).WithRange(end), "<", tx.rev+1))
	}
	ops := make([]clientv3.Op, 0, len(tx.writes))
	for k, w := range tx.writes {
		if w.deleted {
			ops = append(ops, clientv3.OpDelete(k))
		} else {
			ops = append(ops, clientv3.OpPut(k, w.value))
		}
	}
	ctx, cancel := context.WithTimeout(e.ctx, e.timeout)
	defer cancel()
	e.txnMu.Lock()
	defer e.txnMu.Unlock()
	// Failing, the transaction reads what it read: the next try begins
	// there, without a round trip of its own.
	var reread []string
	var orElse []clientv3.Op
	for k := range tx.reads {
		reread = append(reread, k)
		orElse = append(orElse, clientv3.OpGet(k))
	}
	resp, err := e.cli.Txn(ctx).If(cmps...).Then(ops...).Else(orElse...).Commit()
	if err != nil {
		e.snap = nil
		return e.wrapErr(err)
	}
	if !resp.Succeeded {
		e.conflicts.Add(1)
		e.snap = nil
		if len(resp.Responses) == len(reread) {
			sn := &etcdSnap{rev: resp.Header.Revision, vals: make(map[string]etcdRead, len(reread))}
			for i, k := range reread {
				var r etcdRead
				if kvs := resp.Responses[i].GetResponseRange().GetKvs(); len(kvs) > 0 {
					r = etcdRead{value: nonNil(kvs[0].Value), rev: kvs[0].ModRevision}
				}
				sn.vals[k] = r
			}
			e.snap = sn
		}
		return errConflict
	}
	if readOnly {
		// Nothing committed: the snapshot to begin at stays.
		tx.committed()
		return nil
	}
	e.commits.Add(1)
	e.lastRead.Store(&tx.reads)
	sn := &etcdSnap{rev: resp.Header.Revision, vals: make(map[string]etcdRead, len(tx.writes))}
	for k, w := range tx.writes {
		if w.deleted {
			sn.vals[k] = etcdRead{}
		} else {
			sn.vals[k] = etcdRead{value: []byte(w.value), rev: resp.Header.Revision}
		}
	}
	e.snap = sn
	if len(e.own) >= maxOwn {
		clear(e.own) // no one follows: keep no more
	}
	e.own[resp.Header.Revision] = struct{}{}
	// The commit functions run under txnMu too: a follower passes this
	// revision, and so reaches any later commit of another writer, only
	// once they have run. What they record of this commit is never
	// recorded after (over) what the follower applies of a later one.
	tx.committed()
	return nil
}

// committed runs tx's commit functions, in the order they were
// registered.
func (t *etcdTx) committed() {
	for _, f := range t.onCommit {
		f()
	}
}

// wrapErr names what went wrong with the cluster.
func (e *Etcd) wrapErr(err error) error {
	if err == nil || errors.Is(err, ErrUnavailable) || errors.Is(err, ErrClosed) {
		return err
	}
	if e.ctx.Err() != nil {
		return ErrClosed
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, rpctypes.ErrNoLeader) ||
		errors.Is(err, rpctypes.ErrTimeout) || errors.Is(err, rpctypes.ErrTimeoutDueToLeaderFail) ||
		errors.Is(err, rpctypes.ErrTimeoutDueToConnectionLost) || errors.Is(err, rpctypes.ErrLeaderChanged) ||
		isUnavailable(err) {
		return fmt.Errorf("%w (no answer with a quorum within %s): %v", ErrUnavailable, e.timeout, err)
	}
	return fmt.Errorf("store: etcd: %w", err)
}

func (e *Etcd) View(fn func(Tx) error) error {
	e.mu.Lock()
	closed := e.closed
	e.mu.Unlock()
	if closed {
		return ErrClosed
	}
	tx := e.newTx(false)
	err := fn(tx)
	if tx.err != nil {
		return e.wrapErr(tx.err)
	}
	return err
}

// Close ends the connection to the cluster. Later calls fail with
// ErrClosed.
func (e *Etcd) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	e.mu.Unlock()
	e.cancel()
	return e.cli.Close()
}

// etcdWrite is a pending write: a value, or a deletion.
type etcdWrite struct {
	value   string
	deleted bool
}

// etcdSnap is the values of some keys at revision rev: written by this
// store's commit at rev, or read there.
type etcdSnap struct {
	rev  int64
	vals map[string]etcdRead
}

// etcdRead is a key's value (nil: absent) and modification revision (0:
// absent) at a transaction's snapshot.
type etcdRead struct {
	value []byte
	rev   int64
}

// etcdTx is a transaction on the snapshot at rev (set by its first read).
// Its reads are remembered for the guard, its writes kept until commit.
// A failure to reach the cluster is kept in err: Get cannot return one,
// so the transaction fails at its end.
type etcdTx struct {
	e        *Etcd
	writable bool
	rev      int64 // 0 until the first read
	reads    map[string]int64
	ranges   map[string]string // start → end, walked by ForEach
	cache    map[string][]byte // values read (nil: absent)
	writes   map[string]etcdWrite
	// pre holds values prefetched at rev (prefetch): a Get takes its
	// value from there rather than from the cluster.
	pre map[string]etcdRead
	// fromLast: the snapshot was not read for this transaction: it is
	// that of this store's last commit, or of its last transaction that
	// failed (prefetch); the daemon may have followed commits since.
	fromLast bool
	// absent: a key that pre does not hold is read as absent, with no
	// request (prefetch); the guard checks it at commit.
	absent bool
	// missing, in a transaction that only finds out what a function
	// reads (prefetch), collects the keys read that pre lacks: such a
	// read gives nothing, and a read of a range fails.
	missing  map[string]struct{}
	onCommit []func()
	err      error
}

func (e *Etcd) newTx(writable bool) *etcdTx {
	return &etcdTx{e: e, writable: writable, reads: map[string]int64{}, ranges: map[string]string{},
		cache: map[string][]byte{}, writes: map[string]etcdWrite{}}
}

// tooBig reports whether tx needs more operations, or more bytes, than a
// transaction may have.
func (t *etcdTx) tooBig() bool {
	ops := t.e.maxOps
	return len(t.reads)+len(t.ranges) > ops || len(t.writes) > ops || t.size() > t.e.maxBytes
}

// size is what tx's commit request holds: the keys and values it writes,
// the keys it guards (each read is compared, and read again if the guard
// fails), and the ranges.
func (t *etcdTx) size() int {
	n := 0
	for k, w := range t.writes {
		n += opSize + len(k) + len(w.value)
	}
	for k := range t.reads {
		n += 2 * (opSize + len(k))
	}
	for start, end := range t.ranges {
		n += opSize + len(start) + len(end)
	}
	return n
}

// get reads keys [key, end) (end "": key alone) at the snapshot, with
// opts; it sets the snapshot if it is the first read.
func (t *etcdTx) get(key string, opts ...clientv3.OpOption) (*clientv3.GetResponse, error) {
	if t.err != nil {
		return nil, t.err
	}
	if t.missing != nil {
		t.err = errPrefetching
		return nil, t.err
	}
	if t.rev != 0 {
		opts = append(opts, clientv3.WithRev(t.rev))
	}
	ctx, cancel := context.WithTimeout(t.e.ctx, t.e.timeout)
	defer cancel()
	t.e.reads.Add(1)
	resp, err := t.e.cli.Get(ctx, key, opts...)
	if err != nil {
		if errors.Is(err, rpctypes.ErrCompacted) {
			err = fmt.Errorf("%w: the snapshot it read was compacted", errConflict)
		}
		t.err = err
		return nil, err
	}
	if t.rev == 0 {
		t.rev = resp.Header.Revision
	}
	return resp, nil
}

// Revision is the etcd revision of the snapshot the transaction read (0
// before its first read).
func (t *etcdTx) Revision() int64 { return t.rev }

func (t *etcdTx) Get(bucket, key []byte) []byte {
	k := t.e.BucketPrefix(bucket) + string(key)
	if w, ok := t.writes[k]; ok {
		if w.deleted {
			return nil
		}
		return []byte(w.value)
	}
	if v, ok := t.cache[k]; ok {
		return v
	}
	if p, ok := t.pre[k]; ok {
		t.cache[k] = p.value
		if _, ok := t.reads[k]; !ok {
			t.reads[k] = p.rev
		}
		return p.value
	}
	if t.missing != nil {
		t.missing[k] = struct{}{}
		return nil
	}
	if t.absent {
		t.cache[k] = nil
		if _, ok := t.reads[k]; !ok {
			t.reads[k] = 0
		}
		return nil
	}
	resp, err := t.get(k)
	if err != nil {
		return nil
	}
	var v []byte
	var rev int64
	if len(resp.Kvs) > 0 {
		v, rev = resp.Kvs[0].Value, resp.Kvs[0].ModRevision
		if v == nil {
			v = []byte{}
		}
	}
	t.cache[k] = v
	if _, ok := t.reads[k]; !ok {
		t.reads[k] = rev
	}
	return v
}

func (t *etcdTx) Put(bucket, key, value []byte) error {
	if !t.writable {
		return ErrReadOnly
	}
	t.writes[t.e.BucketPrefix(bucket)+string(key)] = etcdWrite{value: string(value)}
	return nil
}

func (t *etcdTx) Delete(bucket, key []byte) error {
	if !t.writable {
		return ErrReadOnly
	}
	t.writes[t.e.BucketPrefix(bucket)+string(key)] = etcdWrite{deleted: true}
	// The mark tells ForEach's guard of other transactions that a key of
	// the bucket went (see Etcd). Its value is nothing: only its
	// revision counts.
	t.writes[t.e.markKey(bucket)] = etcdWrite{}
	return nil
}

func (t *etcdTx) OnCommit(fn func()) {
	if t.writable {
		t.onCommit = append(t.onCommit, fn)
	}
}

// etcdPage is how many keys ForEach reads at a time, at most: fewer
// where the values are large, so that a page stays well within what the
// client takes in one answer (etcdRecvMax).
const etcdPage = 512

// etcdRecvMax is the largest answer the client takes from the cluster.
var etcdRecvMax = 64 << 20

// nextPage is how many keys the next page of a walk asks for, after one
// of n keys and size bytes: a quarter of etcdRecvMax at that size.
func nextPage(n, size int) int {
	if n == 0 {
		return etcdPage
	}
	avg := max(1, size/n)
	return max(1, min(etcdPage, etcdRecvMax/4/avg))
}

func (t *etcdTx) ForEach(bucket, after []byte, fn func(k, v []byte) error) error {
	bp := t.e.BucketPrefix(bucket)
	end := t.e.bucketEnd(bucket)
	start := bp
	if after != nil {
		start = bp + string(after) + "\x00"
	}
	// The transaction's own writes in the range, in order.
	var own []string
	for k := range t.writes {
		if k >= start && k < end {
			own = append(own, k)
		}
	}
	slices.Sort(own)
	if t.writable {
		// Guard the range and the bucket's deletion mark (see Etcd).
		mk := t.e.markKey(bucket)
		if _, ok := t.reads[mk]; !ok {
			if _, written := t.writes[mk]; !written {
				resp, err := t.get(mk)
				if err != nil {
					return err
				}
				var rev int64
				if len(resp.Kvs) > 0 {
					rev = resp.Kvs[0].ModRevision
				}
				t.reads[mk] = rev
			}
		}
		t.ranges[bp] = end
	}
	emit := func(k string, v []byte) error {
		return fn([]byte(k[len(bp):]), v)
	}
	// emitOwn emits the transaction's own values of the keys before
	// limit ("" for all of them).
	emitOwn := func(limit string) error {
		for len(own) > 0 && (limit == "" || own[0] < limit) {
			k := own[0]
			own = own[1:]
			if w := t.writes[k]; !w.deleted {
				if err := emit(k, []byte(w.value)); err != nil {
					return err
				}
			}
		}
		return nil
	}
	err := func() error {
		from := start
		page := etcdPage
		for {
			resp, err := t.get(from, clientv3.WithRange(end), clientv3.WithLimit(int64(page)))
			if err != nil && status.Code(err) == codes.ResourceExhausted && page > 1 {
				// An answer larger than the client takes: ask for
				// fewer keys at a time.
				t.err = nil
				page /= 2
				continue
			}
			if err != nil {
				return err
			}
			size := 0
			for _, kv := range resp.Kvs {
				size += len(kv.Key) + len(kv.Value)
			}
			page = nextPage(len(resp.Kvs), size)
			for _, kv := range resp.Kvs {
				k := string(kv.Key)
				if err := emitOwn(k); err != nil {
					return err
				}
				if len(own) > 0 && own[0] == k {
					continue // emitted by the next emitOwn, or deleted
				}
				v := kv.Value
				if v == nil {
					v = []byte{}
				}
				if err := emit(k, v); err != nil {
					return err
				}
			}
			if !resp.More || len(resp.Kvs) == 0 {
				return emitOwn("")
			}
			from = string(resp.Kvs[len(resp.Kvs)-1].Key) + "\x00"
		}
	}()
	if errors.Is(err, ErrStop) {
		return nil
	}
	return err
}

// Ping reads the store's prefix once: nil if the cluster answers with a
// quorum within the timeout.
func (e *Etcd) Ping(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, e.timeout)
	defer cancel()
	_, err := e.cli.Get(ctx, e.prefix, clientv3.WithCountOnly())
	return e.wrapErr(err)
}

// EtcdStatus is what the store knows of its cluster.
type EtcdStatus struct {
	Endpoints []EtcdEndpoint
	// Leader is the member id of the leader (0: none known).
	Leader uint64
	// Revision is the highest revision a member reported.
	Revision int64
}

// EtcdEndpoint is one endpoint's answer.
type EtcdEndpoint struct {
	URL      string
	MemberID uint64
	Version  string
	Revision int64
	Leader   bool
	Err      string
}

// Status asks each endpoint for its status.
func (e *Etcd) Status(ctx context.Context) EtcdStatus {
	var st EtcdStatus
	for _, ep := range e.cli.Endpoints() {
		c, cancel := context.WithTimeout(ctx, e.timeout)
		r, err := e.cli.Status(c, ep)
		cancel()
		s := EtcdEndpoint{URL: ep}
		if err != nil {
			s.Err = e.wrapErr(err).Error()
		} else {
			s.MemberID, s.Version, s.Revision = r.Header.MemberId, r.Version, r.Header.Revision
			s.Leader = r.Leader == r.Header.MemberId
			if r.Leader != 0 {
				st.Leader = r.Leader
			}
			st.Revision = max(st.Revision, r.Header.Revision)
		}
		st.Endpoints = append(st.Endpoints, s)
	}
	return st
}

// isUnavailable reports whether err is gRPC's UNAVAILABLE or
// DEADLINE_EXCEEDED, as a cluster without quorum or out of reach gives.
func isUnavailable(err error) bool {
	switch status.Code(err) {
	case codes.Unavailable, codes.DeadlineExceeded:
		return true
	case codes.Unknown:
		// A deadline that ran out on the client's side of a call in
		// flight can come back as an unknown status with the context's
		// message.
		return strings.Contains(status.Convert(err).Message(), context.DeadlineExceeded.Error())
	}
	return false
}

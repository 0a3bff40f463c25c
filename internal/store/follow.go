package store

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// Shared is a Store that other processes write too (Etcd): the daemons of
// several machines sharing one store follow what the others commit.
type Shared interface {
	Store
	// Follow calls commit with each transaction committed after revision
	// from, in commit order, and confirm with a revision up to which
	// every commit has been passed to commit and, unless zero, a time
	// asOf when that revision was the cluster's newest or later (every
	// commit made before asOf has been passed to commit), at least every
	// FollowConfirmEvery while the cluster answers. It returns when ctx
	// ends or the changes can no longer be followed (an error: the
	// caller starts again from its last revision, or gives up).
	Follow(ctx context.Context, from int64, commit func(Commit) error, confirm func(rev int64, asOf time.Time)) error
}

// Revisioned is a Tx that tells the revision of the snapshot it reads
// (a transaction of a Shared store): following from it gives every commit
// after what the transaction saw.
type Revisioned interface {
	Revision() int64
}

// Commit is one transaction's changes.
type Commit struct {
	Rev int64
	// Own is true for a transaction of this process (of this Store).
	Own     bool
	Changes []Change
}

// Change is a change of one key.
type Change struct {
	Bucket, Key []byte
	// Value is the new value (nil for a deletion); Prev the value before
	// (nil if the key was new).
	Value, Prev []byte
	Deleted     bool
}

// FollowConfirmEvery is how often Follow confirms its progress.
const FollowConfirmEvery = 200 * time.Millisecond

// ErrFollowLost: the commits after the revision asked for are gone from
// the cluster's history (compacted): they cannot be followed one by one.
var ErrFollowLost = errors.New("store: the changes to follow were compacted away")

// Follow implements Shared with an etcd watch of the store's buckets. The
// watch requires a leader: a member cut off from the quorum ends it, so
// that a daemon connected to it stops confirming (rather than confirming
// a history that the majority has gone past).
func (e *Etcd) Follow(ctx context.Context, from int64, commit func(Commit) error, confirm func(rev int64, asOf time.Time)) error {
	ctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	// The commits passed on are recorded for the committer too
	// (followedSince), from this call's first revision.
	e.folMu.Lock()
	session := e.fol.session + 1
	e.fol = etcdFollowed{session: session, from: from, rev: from, changes: map[string]etcdChange{}}
	e.folMu.Unlock()
	defer func() {
		e.folMu.Lock()
		if e.fol.session == session {
			e.fol = etcdFollowed{session: session} // nothing recorded
		}
		e.folMu.Unlock()
	}()
	start, end := e.prefix+"b/", e.prefix+"b0"
	wch := e.cli.Watch(ctx, start, clientv3.WithRange(end), clientv3.WithRev(from+1), clientv3.WithPrevKV(),
		clientv3.WithProgressNotify(), clientv3.WithCreatedNotify())
	// Ask for progress regularly: the answer, after every event before
	// it, confirms that nothing was missed up to its revision, which was
	// the newest when the cluster answered: after the request was sent.
	// One request waits for its answer at a time: an answer is dated by
	// the oldest request not yet answered (asked), not later than the one
	// it answers, however late it arrives.
	var askedMu sync.Mutex
	var asked time.Time // zero: no request waits for its answer
	go func() {
		t := time.NewTicker(FollowConfirmEvery)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				now := time.Now()
				askedMu.Lock()
				// A request unanswered for two periods may have been
				// dropped (the cluster answers only a watch that has
				// caught up): asked again, dated by the first.
				ask := asked.IsZero() || now.Sub(asked) > 2*FollowConfirmEvery
				if asked.IsZero() {
					asked = now
				}
				askedMu.Unlock()
				if ask {
					c, cancel := context.WithTimeout(ctx, e.timeout)
					e.cli.RequestProgress(c)
					cancel()
				}
			}
		}
	}()
	for resp := range wch {
		if err := resp.Err(); err != nil {
			if resp.CompactRevision != 0 {
				return fmt.Errorf("%w (at revision %d)", ErrFollowLost, resp.CompactRevision)
			}
			return e.wrapErr(err)
		}
		if resp.Canceled {
			return fmt.Errorf("%w: the watch was cancelled", ErrUnavailable)
		}
		var cur *Commit
		var keys []string // the etcd keys of cur's changes
		flush := func() error {
			if cur == nil {
				return nil
			}
			e.txnMu.Lock()
			_, own := e.own[cur.Rev]
			delete(e.own, cur.Rev)
			e.txnMu.Unlock()
			cur.Own = own
			err := commit(*cur)
			if err == nil {
				e.followed(session, cur, keys)
				if !own && e.rival(keys) {
					// Another writer's turn has passed (waitTurn).
					e.foreign.Add(1)
					select {
					case e.turn <- struct{}{}:
					default:
					}
				}
			}
			cur, keys = nil, nil
			return err
		}
		for _, ev := range resp.Events {
			rev := ev.Kv.ModRevision
			if cur != nil && cur.Rev != rev {
				if err := flush(); err != nil {
					return err
				}
			}
			if cur == nil {
				cur = &Commit{Rev: rev}
			}
			b, k, ok := e.splitKey(string(ev.Kv.Key))
			if !ok {
				continue
			}
			c := Change{Bucket: b, Key: k, Deleted: ev.Type == clientv3.EventTypeDelete}
			if !c.Deleted {
				c.Value = nonNil(ev.Kv.Value)
			}
			if ev.PrevKv != nil {
				c.Prev = nonNil(ev.PrevKv.Value)
			}
			cur.Changes = append(cur.Changes, c)
			keys = append(keys, string(ev.Kv.Key))
		}
		if err := flush(); err != nil {
			return err
		}
		switch {
		case resp.IsProgressNotify():
			// Sent only to a watch that has passed on every event up to
			// the revision it names.
			askedMu.Lock()
			asOf := asked
			asked = time.Time{}
			askedMu.Unlock()
			confirm(resp.Header.Revision, asOf)
		case len(resp.Events) > 0:
			// Events tell how far the watch has come, not how recent
			// that is.
			confirm(resp.Events[len(resp.Events)-1].Kv.ModRevision, time.Time{})
		}
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return fmt.Errorf("%w: the watch ended", ErrUnavailable)
}

// splitKey splits an etcd key of a bucket's value into bucket and key.
func (e *Etcd) splitKey(k string) ([]byte, []byte, bool) {
	rest, ok := strings.CutPrefix(k, e.prefix+"b/")
	if !ok {
		return nil, nil, false
	}
	hb, key, ok := strings.Cut(rest, "/")
	if !ok {
		return nil, nil, false
	}
	b, err := hex.DecodeString(hb)
	if err != nil {
		return nil, nil, false
	}
	return b, []byte(key), true
}

func nonNil(b []byte) []byte {
	if b == nil {
		return []byte{}
	}
	return b
}

var _ Shared = (*Etcd)(nil)

// rival reports whether a commit of another writer that changed keys
// wrote one that this store's last commit read: the next transaction of
// this store that reads it again would have lost to that commit, had it
// been sent at once. Writers of disjoint keys (the shards of a key
// store) are not each other's rivals.
func (e *Etcd) rival(keys []string) bool {
	p := e.lastRead.Load()
	if p == nil {
		return true
	}
	for _, k := range keys {
		if _, ok := (*p)[k]; ok {
			return true
		}
	}
	return false
}

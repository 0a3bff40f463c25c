package keystore

import (
	"math/rand/v2"
	"time"

	"github.com/keywarden/keywarden/internal/persist"
)

// The shards of a shared store (docs/cluster.md, "Shards"): the records
// are summed under one header per shard, the shard of a record being
// given by its id (persist.ShardOf), so that daemons that create keys at
// once, each in a shard of its own, write no header in common and their
// transactions do not conflict. A daemon creates in the shard it has
// picked (mine); once its follower sees another daemon write that shard,
// it moves to the shard that others have left alone the longest.

// shardQuiet is how long a shard must have gone unwritten by other
// daemons for this one to stay in it.
const shardQuiet = time.Second

// shardCount returns the number of shards of the store (1 before the
// first unseal).
func (s *Store) shardCount() uint32 { return max(s.shards.Load(), 1) }

// setShards records the number of shards the unseal checked, and picks a
// shard at random to create in. s.mu is held.
func (s *Store) setShards(n uint32) {
	s.shards.Store(n)
	s.mine.Store(rand.Uint32N(max(n, 1)))
	for i := range s.foreignAt {
		s.foreignAt[i].Store(0)
	}
}

// placeInShard gives new persistent object o an id in the shard this
// daemon creates in: the id's first byte, modulo the shard count, is the
// shard; its other bits stay random.
func (s *Store) placeInShard(o *Object) {
	n := s.shardCount()
	if n <= 1 {
		return
	}
	i := s.pickShard(n)
	o.ID[0] = o.ID[0]&^byte(n-1) | byte(i)
}

// pickShard returns the shard to create in: this daemon's, unless another
// daemon wrote it within shardQuiet; then the one others wrote least
// lately (from a random one on, among equals), which becomes this
// daemon's.
func (s *Store) pickShard(n uint32) uint32 {
	mine := s.mine.Load() % n
	now := time.Now().UnixNano()
	if now-s.foreignAt[mine].Load() >= int64(shardQuiet) {
		return mine
	}
	best, bestAt := mine, s.foreignAt[mine].Load()
	off := rand.Uint32N(n)
	for j := range n {
		i := (off + j) % n
		if at := s.foreignAt[i].Load(); at < bestAt {
			best, bestAt = i, at
		}
	}
	s.mine.Store(best)
	return best
}

// wroteElsewhere records that another daemon's commit wrote shard i's
// header.
func (s *Store) wroteElsewhere(i uint32) {
	if i < persist.MaxShards {
		s.foreignAt[i].Store(time.Now().UnixNano())
	}
}

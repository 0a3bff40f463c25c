package keystore

import (
	"bytes"
	"slices"
	"sync"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/wire"
)

type nameKey struct {
	owner uint32
	name  string
}

// Store indexes the live key objects.
type Store struct {
	maxPerUser int

	// mu guards the maps below. It is held only to read or change the
	// indexes, never across crypto or I/O.
	mu     sync.RWMutex
	byID   map[key.ID]*Object  // persistent keys
	byName map[nameKey]*Object // persistent keys with a name
	owned  map[uint32]int      // live keys (persistent and ephemeral) per owner
	closed bool
}

// New returns an empty store whose owners may each hold at most
// maxPerUser live keys.
func New(maxPerUser int) *Store {
	return &Store{
		maxPerUser: maxPerUser,
		byID:       make(map[key.ID]*Object),
		byName:     make(map[nameKey]*Object),
		owned:      make(map[uint32]int),
	}
}

var errClosed = wire.Errorf(wire.Status_STATUS_UNAVAILABLE, "the daemon is shutting down")

// Add registers a new object: it counts toward its owner's quota, and a
// persistent one becomes findable by id and, if named, by name. On error
// the caller still owns o and must Discard it.
func (s *Store) Add(o *Object) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return errClosed
	}
	if d := policy.CheckQuota(s.owned[o.Owner], s.maxPerUser); !d.Allowed() {
		return d.Err()
	}
	if !o.Ephemeral {
		if o.Name != "" {
			nk := nameKey{o.Owner, o.Name}
			if _, dup := s.byName[nk]; dup {
				return wire.Errorf(wire.Status_STATUS_ALREADY_EXISTS, "a key named %q already exists", o.Name)
			}
			s.byName[nk] = o
		}
		s.byID[o.ID] = o
	}
	s.owned[o.Owner]++
	return nil
}

// Discard wipes an object that was never added.
func Discard(o *Object) error { return o.wipe() }

// Get returns the persistent object with this id.
func (s *Store) Get(id key.ID) (*Object, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	o, ok := s.byID[id]
	return o, ok
}

// Lookup returns owner's persistent object of this name.
func (s *Store) Lookup(owner uint32, name string) (*Object, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	o, ok := s.byName[nameKey{owner, name}]
	return o, ok
}

// Remove unregisters o and wipes its material once no operation uses it.
// Handles other connections hold to o fail from then on. Removing an
// object twice is harmless. An error means the wipe found the key's memory
// overwritten past its end: a bug or an attack, to be logged loudly.
func (s *Store) Remove(o *Object) error {
	if o.removed.Swap(true) {
		return nil
	}
	s.mu.Lock()
	if cur, ok := s.byID[o.ID]; ok && cur == o {
		delete(s.byID, o.ID)
		if o.Name != "" {
			delete(s.byName, nameKey{o.Owner, o.Name})
		}
	}
	if s.owned[o.Owner]--; s.owned[o.Owner] <= 0 {
		delete(s.owned, o.Owner)
	}
	s.mu.Unlock()
	return o.wipe()
}

// List returns, in id order, up to limit persistent objects with ids
// greater than after for which visible returns true.
func (s *Store) List(after key.ID, limit int, visible func(*Object) bool) []*Object {
	s.mu.RLock()
	var out []*Object
	for id, o := range s.byID {
		if bytes.Compare(id[:], after[:]) > 0 && visible(o) {
			out = append(out, o)
		}
	}
	s.mu.RUnlock()
	slices.SortFunc(out, func(a, b *Object) int { return bytes.Compare(a.ID[:], b.ID[:]) })
	if limit > 0 && len(out) > limit {
		out = out[:limit]
	}
	return out
}

// Counts returns the number of persistent objects and of all live ones.
func (s *Store) Counts() (persistent, live int) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	for _, n := range s.owned {
		live += n
	}
	return len(s.byID), live
}

// Owned returns how many live keys owner holds.
func (s *Store) Owned(owner uint32) int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.owned[owner]
}

// Close refuses further Adds and wipes every persistent object. Ephemeral
// objects are wiped by their connections. It reports the first memory
// corruption found.
func (s *Store) Close() error {
	s.mu.Lock()
	s.closed = true
	objs := make([]*Object, 0, len(s.byID))
	for _, o := range s.byID {
		objs = append(objs, o)
	}
	s.byID = map[key.ID]*Object{}
	s.byName = map[nameKey]*Object{}
	s.mu.Unlock()
	var first error
	for _, o := range objs {
		if err := o.wipe(); err != nil && first == nil {
			first = err
		}
	}
	return first
}

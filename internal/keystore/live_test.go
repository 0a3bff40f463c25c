package keystore

import (
	"bytes"
	"testing"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/wire"
)

// A record put back while the daemon runs, as it was before a later
// change (a narrowed usage, a destroyed key), is refused when the key is
// next loaded, and it is not listed: the store remembers, from the unseal
// and from every write since, which record each key has. Putting the
// current bytes back afterwards does not hide it: the key stays refused
// until the next unseal, and is counted.
func TestLiveRollbackRefused(t *testing.T) {
	s, a, b := twoKeys(t)
	before := value(t, s, a.ID)
	o, err := s.Get(a.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetAttrs(o, func(old *key.Attrs) (*key.Attrs, error) {
		n := *old
		n.Usage = key.Decrypt
		return &n, nil
	}); err != nil {
		t.Fatal(err)
	}
	s.Release(o) // unloaded: the next use reads the record
	now := value(t, s, a.ID)

	put(t, s, a.ID, before)
	infos, err := s.List(key.ID{}, 0, func(*wire.KeyInfo) bool { return true })
	if err != nil {
		t.Fatal(err)
	}
	for _, info := range infos {
		if bytes.Equal(info.Id, a.ID[:]) {
			t.Errorf("list shows the record put back, with usage %v", key.Usage(info.Usage))
		}
	}
	if o, err := s.Get(a.ID); status(err) != wire.Status_STATUS_INTERNAL {
		if err == nil {
			t.Errorf("an older record put back while running loads, with usage %v", o.Attrs().Usage)
			s.Release(o)
		} else {
			t.Errorf("loading an older record put back: %v", err)
		}
	}
	put(t, s, a.ID, now)
	if _, err := s.Get(a.ID); status(err) != wire.Status_STATUS_INTERNAL {
		t.Errorf("the key is served again once its record is put back: %v", err)
	}
	if n := s.Quarantined(); n != 1 {
		t.Errorf("%d records counted as refused, want 1", n)
	}

	// A destroyed key's record put back while running.
	gone := value(t, s, b.ID)
	ob, err := s.Get(b.ID)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Remove(ob); err != nil {
		t.Fatal(err)
	}
	put(t, s, b.ID, gone)
	if o, err := s.Get(b.ID); err == nil {
		t.Error("a destroyed key's record put back while running loads")
		s.Release(o)
	}
}

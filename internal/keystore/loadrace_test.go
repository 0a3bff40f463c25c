package keystore

import (
	"path/filepath"
	"sync/atomic"
	"testing"
)

// A key loaded while another caller opens, rotates and lets go of it
// (between the read of its record and the install of the object made from
// it) is not installed as it was read: its rotation makes the version
// after the other's, not a second version of the same number that replaces
// it. Before, the object of the older record was installed once the other
// was unloaded, and two rotations both returned version 2.
func TestLoadOvertakenByRotation(t *testing.T) {
	s := persistent(t, filepath.Join(t.TempDir(), "state"))
	o := obj(t, 1, "k", false)
	if err := s.Add(o); err != nil {
		t.Fatal(err)
	}
	s.Release(o)
	s.mu.Lock()
	loaded := s.loaded[o.ID] != nil
	s.mu.Unlock()
	if loaded {
		t.Fatal("the key stays loaded once released: the test needs it unloaded")
	}
	var once atomic.Bool
	var first uint32
	setHook(t, &hookLoaded, func() {
		if !once.CompareAndSwap(false, true) {
			return
		}
		a, err := s.Lookup(1, "k")
		if err != nil {
			t.Errorf("the other caller's lookup: %v", err)
			return
		}
		v, err := s.Rotate(a)
		s.Release(a)
		if err != nil {
			t.Errorf("the other caller's rotation: %v", err)
			return
		}
		first = v.N
	})
	b, err := s.Lookup(1, "k")
	if err != nil {
		t.Fatal(err)
	}
	hookLoaded = nil
	v, err := s.Rotate(b)
	s.Release(b)
	if err != nil {
		t.Fatal(err)
	}
	if first != 2 || v.N != 3 {
		t.Fatalf("the rotations made versions %d and %d, want 2 and 3", first, v.N)
	}
	c, err := s.Lookup(1, "k")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Release(c)
	var ns []uint32
	for _, v := range c.Versions() {
		ns = append(ns, v.N)
	}
	if len(ns) != 3 || ns[0] != 1 || ns[1] != 2 || ns[2] != 3 {
		t.Fatalf("the key has versions %v, want [1 2 3]", ns)
	}
}

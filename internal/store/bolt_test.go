package store_test

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/store"
)

func TestBoltPersistsAndModes(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := store.OpenBolt(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Update(func(tx store.Tx) error { return tx.Put([]byte("b"), []byte("k"), []byte("v")) }); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	for path, want := range map[string]os.FileMode{dir: 0o700, filepath.Join(dir, store.FileName): 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %04o, want %04o", path, fi.Mode().Perm(), want)
		}
	}
	s, err = store.OpenBolt(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	s.View(func(tx store.Tx) error {
		if v := tx.Get([]byte("b"), []byte("k")); string(v) != "v" {
			t.Errorf("after reopening: %q", v)
		}
		return nil
	})
}

func TestBoltRefusesOpenDirectory(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := store.OpenBolt(dir, 0)
	if err == nil || !strings.Contains(err.Error(), "accessible to others") {
		t.Fatalf("OpenBolt on a 0755 directory: %v", err)
	}
}

func TestBoltRefusesSecondOpener(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := store.OpenBolt(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, err = store.OpenBolt(dir, 50*time.Millisecond)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("second OpenBolt: %v", err)
	}
}

// BenchmarkBoltUpdate measures durable writes with 1 and 16 concurrent
// writers: grouped commits make the second far cheaper per write.
func BenchmarkBoltUpdate(b *testing.B) {
	for _, writers := range []int{1, 16} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) {
			s, err := store.OpenBolt(filepath.Join(b.TempDir(), "state"), 0)
			if err != nil {
				b.Fatal(err)
			}
			defer s.Close()
			val := make([]byte, 200)
			var wg sync.WaitGroup
			per := b.N/writers + 1
			b.ResetTimer()
			for w := range writers {
				wg.Add(1)
				go func() {
					defer wg.Done()
					for i := range per {
						k := []byte(fmt.Sprintf("%02d-%09d", w, i))
						if err := s.Update(func(tx store.Tx) error { return tx.Put([]byte("b"), k, val) }); err != nil {
							b.Error(err)
							return
						}
					}
				}()
			}
			wg.Wait()
		})
	}
}

// Prefetch is only advice: the store works the same after it, and after
// it fails (a file no longer there).
func TestBoltPrefetch(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "state")
	s, err := store.OpenBolt(dir, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	val := make([]byte, 3000)
	for i := range 100 {
		if err := s.Update(func(tx store.Tx) error { return tx.Put([]byte("b"), fmt.Appendf(nil, "%03d", i), val) }); err != nil {
			t.Fatal(err)
		}
	}
	s.Prefetch()
	var n int
	s.View(func(tx store.Tx) error {
		return tx.ForEach([]byte("b"), nil, func(k, v []byte) error {
			if len(v) == len(val) {
				n++
			}
			return nil
		})
	})
	if n != 100 {
		t.Fatalf("%d values after Prefetch", n)
	}
	os.Rename(s.Path(), s.Path()+".moved")
	s.Prefetch()
}

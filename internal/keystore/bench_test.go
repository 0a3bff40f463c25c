package keystore

import (
	"context"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
)

// fileStore makes an unsealed store in a bbolt file in a new directory,
// with a quota that does not get in the way.
func fileStore(b *testing.B) *Store {
	b.Helper()
	db, err := store.OpenBolt(filepath.Join(b.TempDir(), "state"), time.Second)
	if err != nil {
		b.Fatal(err)
	}
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}, InsecureKDF: true})
	if err != nil {
		b.Fatal(err)
	}
	s := New(Config{MaxPerUser: 1 << 30, DB: db, Master: m})
	p, err := m.PrepareInit(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams}, false)
	if err != nil {
		b.Fatal(err)
	}
	if err := m.CommitInit(p, func(k *seal.Keys) ([]byte, error) { return NewHeader(k, time.Now()) }); err != nil {
		b.Fatal(err)
	}
	k, _ := m.Keys()
	if err := s.Verify(k, false); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { s.Close(); db.Close() })
	return s
}

// addKeys adds n new persistent AES-256-GCM keys from g goroutines, each
// durable when its Add returns, and lets go of each.
func addKeys(b *testing.B, s *Store, n, g int) {
	var wg sync.WaitGroup
	per := (n + g - 1) / g
	for range g {
		wg.Go(func() {
			for range per {
				o := obj(b, 1, "", false)
				if err := s.Add(o); err != nil {
					b.Error(err)
					return
				}
				s.Release(o)
			}
		})
	}
	wg.Wait()
}

// BenchmarkAdd measures the creation of persistent keys in a bbolt file,
// each durable before Add returns, from 1 and 16 goroutines: concurrent
// writers share transactions and fsyncs. "keywarden bench --create"
// measures the same through a daemon (docs/performance.md).
func BenchmarkAdd(b *testing.B) {
	for _, g := range []int{1, 16} {
		b.Run(fmt.Sprintf("goroutines=%d", g), func(b *testing.B) {
			s := fileStore(b)
			b.ResetTimer()
			addKeys(b, s, b.N, g)
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "keys/s")
		})
	}
}

// BenchmarkVerify measures the check of the whole store at unseal, per
// key record. "keywarden bench --startup" measures it on a million keys.
func BenchmarkVerify(b *testing.B) {
	const n = 10000
	s := fileStore(b)
	addKeys(b, s, n, 256)
	k, _ := s.Master().Keys()
	b.ResetTimer()
	for b.Loop() {
		if err := s.Verify(k, false); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/key")
}

// BenchmarkMasterRotation measures a master-key rotation of a store of
// 10,000 keys: the commit, which sums every record's summand anew under
// the new generation's index key (writes wait meanwhile), and the
// re-wrap of every record, per key.
func BenchmarkMasterRotation(b *testing.B) {
	const n = 10000
	s := fileStore(b)
	addKeys(b, s, n, 256)
	var commit, rewrap time.Duration
	for b.Loop() {
		p, err := s.Master().PrepareRotation(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams})
		if err != nil {
			b.Fatal(err)
		}
		t0 := time.Now()
		if err := s.CommitRotation(p); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		if err := s.RewrapAll(nil); err != nil {
			b.Fatal(err)
		}
		commit, rewrap = commit+t1.Sub(t0), rewrap+time.Since(t1)
	}
	b.ReportMetric(float64(commit.Nanoseconds())/float64(b.N*n), "commit-ns/key")
	b.ReportMetric(float64(rewrap.Nanoseconds())/float64(b.N*n), "rewrap-ns/key")
}

// BenchmarkEncrypting measures the count of one AES-GCM encryption
// (Encrypting's fast path) of one ephemeral key, from one goroutine and
// from as many as GOMAXPROCS at once on the same version.
func BenchmarkEncrypting(b *testing.B) {
	s, err := NewDev(Config{MaxPerUser: 10})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	o := obj(b, 1, "", true)
	if err := s.Add(o); err != nil {
		b.Fatal(err)
	}
	b.Run("serial", func(b *testing.B) {
		for b.Loop() {
			if _, err := s.Encrypting(o, 1); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("parallel", func(b *testing.B) {
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := s.Encrypting(o, 1); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

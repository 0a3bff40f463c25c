// Package storebench measures keywarden's key store in the measuring
// process, without a daemon: the in-process baselines of "keywarden bench
// --create" and "keywarden bench --startup", and the generator of the
// large stores the second one starts a daemon on.
//
// Unlike package bench, which is an ordinary client, this package is
// daemon-side code: it runs the daemon's own key store (package keystore),
// master key (package seal) and bbolt file (package store) in the calling
// process, so that its figures are the daemon's work without the daemon.
// A store it writes is the daemon's format byte for byte: the same code
// writes it, and the daemon unseals and serves it. Argon2id, which the
// daemon runs in a worker process, runs here in-process; its result is
// the same.
package storebench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/crypto/argon2"

	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/policy"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// Params are the Argon2id costs of the stores made here, and of those
// "keywarden bench" initialises through a daemon: cheap, since what is
// measured is the store, not the passphrase. They are below the floor of
// master passphrases (seal.MinParams), which the stores made here and the
// daemons "keywarden bench" starts on them therefore waive: the stores
// hold nothing but keys made for measuring.
var Params = kdf.Params{Time: 1, MemoryKiB: 8 << 10, Threads: 1}

// Passphrase is the master passphrase of every store made by "keywarden
// bench". Such a store holds keys made for measuring and nothing else.
const Passphrase = "keywarden bench store"

// NamePrefix names the keys Fill makes: NamePrefix followed by the key's
// number, zero-padded to seven digits (bench-0000000, bench-0000001, ...).
const NamePrefix = "bench-"

// KeyName returns the name Fill gives its i-th key.
func KeyName(i int) string { return fmt.Sprintf("%s%07d", NamePrefix, i) }

// inProcessKDF runs Argon2id in this process.
type inProcessKDF struct{}

func (inProcessKDF) Derive(_ context.Context, p kdf.Params, pass, salt []byte, n int) ([]byte, error) {
	return argon2.IDKey(pass, salt, p.Time, p.MemoryKiB, p.Threads, uint32(n)), nil
}

// Store is a key store open in this process.
type Store struct {
	*keystore.Store
	db *store.Bolt
}

// Close closes the store and its file.
func (s *Store) Close() error {
	err := s.Store.Close()
	if cerr := s.db.Close(); err == nil {
		err = cerr
	}
	return err
}

// Path returns the store file's path.
func (s *Store) Path() string { return s.db.Path() }

// maxPerUser lifts the per-owner quota: the stores here hold many keys of
// one owner.
const maxPerUser = 1 << 30

// Exists reports whether state directory dir holds a store file.
func Exists(dir string) bool {
	_, err := os.Stat(filepath.Join(dir, store.FileName))
	return err == nil
}

// Init creates a store in state directory dir (which must hold none),
// with a master key sealed under Passphrase at Params, as "keywarden
// init" does, and returns it unsealed.
func Init(dir string) (*Store, error) {
	if Exists(dir) {
		return nil, fmt.Errorf("%s already holds a store", dir)
	}
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		return nil, err
	}
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}, InsecureKDF: true})
	if err != nil {
		db.Close()
		return nil, err
	}
	s := &Store{Store: keystore.New(keystore.Config{MaxPerUser: maxPerUser, DB: db, Master: m}), db: db}
	p, err := m.PrepareInit(context.Background(), seal.Sealing{Passphrase: []byte(Passphrase), Params: Params}, false)
	if err == nil {
		err = m.CommitInit(p, func(k *seal.Keys) ([]byte, error) { return keystore.NewHeader(k, time.Now()) })
	}
	if err == nil {
		var k *seal.Keys
		if k, err = m.Keys(); err == nil {
			err = s.Verify(k, false)
		}
	}
	if err != nil {
		s.Close()
		return nil, err
	}
	return s, nil
}

// Open opens the store in state directory dir and unseals it with
// Passphrase, as "keywarden unseal" does: the whole store is verified
// before Open returns. verify is how long the verification took (the
// Argon2id derivation and the master record's checks excluded).
func Open(dir string) (s *Store, verify time.Duration, err error) {
	if !Exists(dir) {
		return nil, 0, fmt.Errorf("%s holds no store", dir)
	}
	db, err := store.OpenBolt(dir, time.Second)
	if err != nil {
		return nil, 0, err
	}
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}, InsecureKDF: true})
	if err != nil {
		db.Close()
		return nil, 0, err
	}
	s = &Store{Store: keystore.New(keystore.Config{MaxPerUser: maxPerUser, DB: db, Master: m}), db: db}
	err = m.UnsealPassphrase(context.Background(), []byte(Passphrase), func(k *seal.Keys) error {
		t0 := time.Now()
		err := s.Verify(k, false)
		verify = time.Since(t0)
		return err
	})
	if err != nil {
		s.Close()
		return nil, 0, err
	}
	return s, verify, nil
}

// newKey makes a persistent AES-256-GCM key as the daemon's generate
// does for a template naming only the type (and name) and owned by owner:
// default usage, not exportable, not wrappable.
func newKey(name string, owner uint32) (*keystore.Object, error) {
	spec := key.Lookup(wire.KeyType_KEY_TYPE_AES256_GCM)
	pt := policy.Template{Spec: spec, Class: key.Secret}
	usage, d := policy.CheckTemplate(pt)
	if err := d.Err(); err != nil {
		return nil, err
	}
	mat, err := mech.Generate(spec)
	if err != nil {
		return nil, err
	}
	attrs := &key.Attrs{Usage: usage, ACL: []key.ACLEntry{}}
	return keystore.NewObject(name, owner, mat, attrs, false, time.Now(), persist.Origin_ORIGIN_GENERATED)
}

// add makes one key and adds it to s durably, then lets go of it (it is
// unloaded and wiped; its record stays).
func add(s *keystore.Store, name string, owner uint32) error {
	o, err := newKey(name, owner)
	if err != nil {
		return err
	}
	if err := s.Add(o); err != nil {
		keystore.Discard(o)
		return err
	}
	s.Release(o)
	return nil
}

// Fill adds n persistent AES-256-GCM keys owned by owner to s, named
// KeyName(from) to KeyName(from+n-1), from workers goroutines at once
// (their writes are committed together, up to 1024 per transaction).
// progress, if not nil, is called now and then with the number added.
func Fill(ctx context.Context, s *Store, from, n int, owner uint32, workers int, progress func(done int)) error {
	var next, done atomic.Int64
	var wg sync.WaitGroup
	var errOnce sync.Once
	var firstErr error
	stop := make(chan struct{})
	workers = max(1, min(workers, n))
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1) - 1)
				if i >= n || ctx.Err() != nil {
					return
				}
				select {
				case <-stop:
					return
				default:
				}
				if err := add(s.Store, KeyName(from+i), owner); err != nil {
					errOnce.Do(func() { firstErr = err; close(stop) })
					return
				}
				done.Add(1)
			}
		})
	}
	if progress != nil {
		finished := make(chan struct{})
		go func() { wg.Wait(); close(finished) }()
		t := time.NewTicker(time.Second)
		defer t.Stop()
	loop:
		for {
			select {
			case <-finished:
				break loop
			case <-t.C:
				progress(int(done.Load()))
			}
		}
	}
	wg.Wait()
	if firstErr != nil {
		return firstErr
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	return nil
}

// Creations is what MeasureCreates observed.
type Creations struct {
	Ops     int
	Elapsed time.Duration
	// Lat holds the latency of each creation (Add), in nanoseconds.
	Lat []int64
}

// MeasureCreates creates persistent keys with clients goroutines at once
// for d, in a new store in state directory dir (which it creates and
// removes), and reports how many and how fast. Each creation is what the
// daemon does for a client's generate: make the key's material and
// object, Add it (durable when Add returns), and let go of it when the
// client closes its handle. A warm-up of warmup comes first.
func MeasureCreates(ctx context.Context, dir string, clients int, warmup, d time.Duration) (Creations, error) {
	if clients < 1 {
		return Creations{}, errors.New("clients must be at least 1")
	}
	s, err := Init(dir)
	if err != nil {
		return Creations{}, err
	}
	defer os.RemoveAll(dir)
	defer s.Close()
	owner := uint32(os.Getuid())
	if _, err := creates(ctx, s.Store, clients, owner, warmup); err != nil {
		return Creations{}, err
	}
	return creates(ctx, s.Store, clients, owner, d)
}

func creates(ctx context.Context, s *keystore.Store, clients int, owner uint32, d time.Duration) (Creations, error) {
	var (
		wg       sync.WaitGroup
		stop     atomic.Bool
		errOnce  sync.Once
		firstErr error
	)
	lats := make([][]int64, clients)
	start := time.Now()
	for g := range clients {
		wg.Go(func() {
			for !stop.Load() {
				t0 := time.Now()
				if err := add(s, "", owner); err != nil {
					errOnce.Do(func() { firstErr = err })
					stop.Store(true)
					return
				}
				t1 := time.Now()
				lats[g] = append(lats[g], int64(t1.Sub(t0)))
				if t1.Sub(start) >= d || ctx.Err() != nil {
					return
				}
			}
		})
	}
	wg.Wait()
	c := Creations{Elapsed: time.Since(start)}
	if firstErr != nil {
		return c, firstErr
	}
	if err := ctx.Err(); err != nil {
		return c, err
	}
	for _, l := range lats {
		c.Ops += len(l)
		c.Lat = append(c.Lat, l...)
	}
	return c, nil
}

// MeasureLoads opens the store in state directory dir as Open does, then
// looks up each of names (keys of owner) and lets go of it: for a key not
// in memory, what the daemon does when a client first opens it (read its
// record, check the record's MAC, open its blob into key memory). It
// returns how long the store's verification took and each lookup's
// latency in nanoseconds.
func MeasureLoads(dir string, owner uint32, names []string) (verify time.Duration, lat []int64, err error) {
	s, verify, err := Open(dir)
	if err != nil {
		return 0, nil, err
	}
	defer func() {
		if cerr := s.Close(); err == nil {
			err = cerr
		}
	}()
	for _, name := range names {
		t0 := time.Now()
		o, err := s.Lookup(owner, name)
		if err != nil {
			return 0, nil, fmt.Errorf("%s: %w", name, err)
		}
		lat = append(lat, int64(time.Since(t0)))
		s.Release(o)
	}
	return verify, lat, nil
}

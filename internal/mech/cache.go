package mech

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rsa"
	"crypto/x509"
	"errors"
	"hash"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/wire"
)

// expanded is the state the standard library needs to use a key, built
// from its canonical bytes inside secmem.Do. It is immutable once built,
// except for the pool of HMAC states.
type expanded struct {
	// gcm is AES-256-GCM with 12-byte nonces, which Encrypt draws from
	// package random; safe for concurrent use.
	gcm cipher.AEAD

	macKey  []byte      // HMAC key (copy)
	macMu   sync.Mutex  // guards macFree
	macFree []hash.Hash // keyed HMAC states, reset, ready for reuse

	ed  ed25519.PrivateKey // seed || public key
	ec  *ecdsa.PrivateKey
	rsa *rsa.PrivateKey // with Precomputed values
	dh  *ecdh.PrivateKey
}

// maxPooledMAC bounds the keyed HMAC states kept per key.
const maxPooledMAC = 8

// wipe overwrites what can be overwritten. Only Destroy calls it: an
// expanded state dropped for idleness may still be in use by a running
// operation, and is left to the garbage collector (and runtime/secret).
func (e *expanded) wipe() {
	clear(e.macKey)
	clear(e.ed)
	wipeECDSA(e.ec)
	wipeRSA(e.rsa)
	e.macMu.Lock()
	for _, h := range e.macFree {
		h.Reset()
	}
	e.macFree = nil
	e.macMu.Unlock()
}

// build expands canonical bytes sec for a key of spec s. It must run
// inside secmem.Do, so that everything it allocates is erased when freed.
func build(s *key.Spec, sec []byte) (*expanded, error) {
	e := &expanded{}
	switch s.Family {
	case key.FamilyAES:
		if len(sec) != aesKeyLen {
			return nil, invalid("secret key has wrong length")
		}
		block, err := aes.NewCipher(sec)
		if err != nil {
			return nil, internal("cannot expand key")
		}
		if e.gcm, err = cipher.NewGCM(block); err != nil {
			return nil, internal("cannot expand key")
		}
	case key.FamilyHMAC:
		if len(sec) == 0 {
			return nil, internal("cannot expand key")
		}
		e.macKey = append([]byte(nil), sec...)
	case key.FamilyEd25519:
		if len(sec) != ed25519.SeedSize {
			return nil, invalid("malformed key")
		}
		e.ed = ed25519.NewKeyFromSeed(sec)
	case key.FamilyECDSA:
		priv, err := ecdsa.ParseRawPrivateKey(ecdsaCurve(s), sec)
		if err != nil {
			return nil, invalid("malformed key")
		}
		e.ec = priv
	case key.FamilyRSA:
		priv, err := x509.ParsePKCS1PrivateKey(sec) // validates and precomputes
		if err != nil {
			return nil, invalid("malformed key")
		}
		if priv.N.BitLen() != rsaBits(s) || len(priv.Primes) != 2 {
			wipeRSA(priv)
			return nil, invalid("key does not match type " + s.Name)
		}
		e.rsa = priv
	case key.FamilyX25519, key.FamilyECDH:
		priv, err := ecdhCurve(s).NewPrivateKey(sec)
		if err != nil {
			return nil, invalid("malformed key")
		}
		e.dh = priv
	default:
		return nil, errUnsupported()
	}
	return e, nil
}

// run calls fn with k's expanded state (nil for public keys) inside
// secmem.Do, building the state from the canonical bytes if it is not
// cached.
func (k *Key) run(fn func(e *expanded) error) error {
	if err := k.live(); err != nil {
		return err
	}
	var err error
	secmem.Do(func() {
		var e *expanded
		if e, err = k.expand(); err == nil {
			err = fn(e)
		}
	})
	return err
}

// expand returns k's expanded state, building and caching it if needed.
// It runs inside secmem.Do.
func (k *Key) expand() (*expanded, error) {
	if k.secret == nil {
		return nil, nil // a public key
	}
	if e := k.exp.Load(); e != nil {
		k.touch()
		return e, nil
	}
	k.expMu.Lock()
	defer k.expMu.Unlock()
	if e := k.exp.Load(); e != nil {
		k.touch()
		return e, nil
	}
	if k.destroyed.Load() {
		return nil, errDestroyed()
	}
	sec := make([]byte, k.secret.Len())
	copy(sec, k.secret.Bytes())
	e, err := build(k.spec, sec)
	clear(sec)
	if err != nil {
		return nil, err
	}
	k.used.Store(time.Now().UnixNano())
	k.exp.Store(e)
	cache.add(k)
	return e, nil
}

// touch records a use of k's expanded state, on the janitor's coarse
// clock: reading the time on every operation would cost more than the
// operations it times.
func (k *Key) touch() {
	if now := cache.clock.Load(); k.used.Load() < now {
		k.used.Store(now)
	}
}

// getMAC takes a keyed HMAC state from e's pool, or makes one.
func (k *Key) getMAC(e *expanded) hash.Hash {
	e.macMu.Lock()
	if n := len(e.macFree); n > 0 {
		h := e.macFree[n-1]
		e.macFree = e.macFree[:n-1]
		e.macMu.Unlock()
		return h
	}
	e.macMu.Unlock()
	return hmac.New(k.macHash, e.macKey)
}

// putMAC resets h and keeps it for reuse.
func putMAC(e *expanded, h hash.Hash) {
	h.Reset()
	e.macMu.Lock()
	if len(e.macFree) < maxPooledMAC {
		e.macFree = append(e.macFree, h)
	}
	e.macMu.Unlock()
}

// The arena holding every key's canonical bytes.
var (
	arenaMu sync.Mutex
	arena   *secmem.Arena
)

// SetArena makes a the arena for keys made from now on. Without it, the
// first key made creates one with secmem's defaults.
func SetArena(a *secmem.Arena) {
	arenaMu.Lock()
	arena = a
	arenaMu.Unlock()
}

// Arena returns the arena keys are made in, creating it if needed.
func Arena() (*secmem.Arena, error) {
	arenaMu.Lock()
	defer arenaMu.Unlock()
	if arena == nil {
		a, err := secmem.New(secmem.Options{})
		if err != nil {
			return nil, err
		}
		arena = a
	}
	return arena, nil
}

// store copies canonical bytes sec into the arena.
func store(sec []byte) (*secmem.Buf, error) {
	a, err := Arena()
	if err != nil {
		return nil, internal("no key memory")
	}
	b, err := a.Alloc(len(sec))
	switch {
	case errors.Is(err, secmem.ErrExhausted):
		return nil, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "key memory exhausted (locked-memory limit)")
	case err != nil:
		return nil, internal("no key memory")
	}
	copy(b.Bytes(), sec)
	return b, nil
}

// DefaultCacheIdle is how long an unused key keeps its expanded state.
const DefaultCacheIdle = time.Second

// DefaultCacheMax bounds the keys with expanded state at once.
const DefaultCacheMax = 4096

// evictSample is how many cached keys a full cache looks at to choose the
// one whose state it drops.
const evictSample = 16

// cache tracks the keys whose expanded state is cached, and drops the
// state of keys idle for longer than idle.
var cache = &expCache{keys: make(map[*Key]struct{})}

type expCache struct {
	once sync.Once
	// clock is the time (Unix nanoseconds) as of the janitor's last tick.
	clock atomic.Int64
	idle  atomic.Int64 // nanoseconds; 0 means DefaultCacheIdle
	max   atomic.Int64 // 0 means DefaultCacheMax

	// gc asks the janitor for a garbage collection, after which memory
	// allocated inside secmem.Do and since dropped is erased.
	gc atomic.Bool

	// mu guards keys.
	mu   sync.Mutex
	keys map[*Key]struct{}
}

// SetCacheIdle sets how long an unused key keeps its expanded state (key
// schedules, parsed private keys) before it is dropped; d <= 0 restores
// DefaultCacheIdle.
func SetCacheIdle(d time.Duration) { cache.idle.Store(int64(max(d, 0))) }

// SetCacheMax bounds how many keys keep expanded state at once; the least
// recently used of a random sample of evictSample is dropped first. n <= 0
// restores DefaultCacheMax.
func SetCacheMax(n int) { cache.max.Store(int64(max(n, 0))) }

// CachedKeys returns how many keys have expanded state now.
func CachedKeys() int {
	cache.mu.Lock()
	defer cache.mu.Unlock()
	return len(cache.keys)
}

func (c *expCache) idleFor() time.Duration {
	if d := time.Duration(c.idle.Load()); d > 0 {
		return d
	}
	return DefaultCacheIdle
}

func (c *expCache) add(k *Key) {
	c.once.Do(func() {
		c.clock.Store(time.Now().UnixNano())
		go c.janitor()
	})
	c.mu.Lock()
	defer c.mu.Unlock()
	c.keys[k] = struct{}{}
	limit := int(c.max.Load())
	if limit <= 0 {
		limit = DefaultCacheMax
	}
	for len(c.keys) > limit {
		// The least recently used of a sample: the map's iteration starts
		// at a random place, and a full scan would cost every miss of a
		// full cache (many keys in use, each now and then) thousands of
		// loads under c.mu.
		var oldest *Key
		seen := 0
		for o := range c.keys {
			if o != k && (oldest == nil || o.used.Load() < oldest.used.Load()) {
				oldest = o
			}
			if seen++; seen >= evictSample {
				break
			}
		}
		if oldest == nil {
			break
		}
		c.dropLocked(oldest)
	}
}

// remove forgets k (destroyed) and asks for a collection.
func (c *expCache) remove(k *Key) {
	c.mu.Lock()
	delete(c.keys, k)
	c.mu.Unlock()
	c.gc.Store(true)
}

// dropLocked drops k's expanded state. c.mu is held.
func (c *expCache) dropLocked(k *Key) {
	k.exp.Store(nil)
	delete(c.keys, k)
	c.gc.Store(true)
}

// collect runs the garbage collector twice: crypto/ed25519 and
// crypto/ecdsa keep expanded keys in caches keyed by weak pointers, whose
// entries go only after the collection that frees the key has run their
// cleanup; the second collection frees (and, being allocations made inside
// secmem.Do, erases) them.
func collect() {
	runtime.GC()
	time.Sleep(20 * time.Millisecond) // let the cleanups run
	runtime.GC()
}

// janitor drops idle expanded state and runs the garbage collector after
// anything was dropped or destroyed, so that it is erased soon.
func (c *expCache) janitor() {
	for {
		time.Sleep(max(c.idleFor()/4, 10*time.Millisecond))
		now := time.Now()
		c.clock.Store(now.UnixNano())
		cutoff := now.Add(-c.idleFor()).UnixNano()
		c.mu.Lock()
		for k := range c.keys {
			if k.used.Load() < cutoff {
				c.dropLocked(k)
			}
		}
		c.mu.Unlock()
		if c.gc.Swap(false) {
			collect()
		}
	}
}

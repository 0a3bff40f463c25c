package random

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

// Freshness says what is known, since the last change of the machine's
// generation, of how the source's output differs from that of a clone of
// this machine.
type Freshness uint8

const (
	// Unconfirmed: nothing known to differ between this machine and a
	// clone of it has reached the source since the change. Read refuses.
	Unconfirmed Freshness = iota
	// Unique: the daemon's key has mixed in an input unique to this
	// machine (the CPU's random instructions, a new VM generation ID,
	// bytes an orchestrator sent), so Read returns what no clone returns;
	// the kernel's getrandom may still return what a clone's does, which
	// is what AwaitKernel waits for.
	Unique
	// Kernel: the kernel's generator re-seeded after the change, and the
	// daemon's key was re-keyed from its output.
	Kernel
)

func (f Freshness) String() string {
	switch f {
	case Unique:
		return "unique"
	case Kernel:
		return "kernel"
	}
	return "unconfirmed"
}

// DefaultWait is how long Read and AwaitKernel wait for a change to be
// confirmed before they fail: the sources that confirm a change (the
// kernel log, the VM generation ID) usually do within milliseconds of the
// one that reported it.
const DefaultWait = time.Second

// ErrNotFresh is returned while the source is Unconfirmed.
var ErrNotFresh = wire.Errorf(wire.Status_STATUS_UNAVAILABLE,
	"the machine's generation changed (a VM restore or clone) and fresh randomness is not confirmed yet: "+
		"the daemon refuses to make keys, nonces or ids that a clone could repeat. It goes on when the kernel "+
		"re-seeds its generator (within a minute), or at once after `keywarden generation bump` run as root")

// ErrKernelNotFresh is returned by AwaitKernel while the kernel's
// generator has not re-seeded since the change.
var ErrKernelNotFresh = wire.Errorf(wire.Status_STATUS_UNAVAILABLE,
	"the machine's generation changed (a VM restore or clone) and the kernel's random generator has not re-seeded "+
		"since: RSA keys, which the Go library draws from the kernel, wait until it has (within a minute), or "+
		"until `keywarden generation bump` run as root")

// Config configures a Source. The zero value is the daemon's.
type Config struct {
	// Kernel fills b with the kernel's random bytes; nil means getrandom
	// (crypto/rand.Read).
	Kernel func(b []byte)
	// Hardware fills b from the CPU's random instructions and reports
	// whether it could; nil means RDSEED or RDRAND where the CPU has them
	// and they look healthy (see HardwareName).
	Hardware func(b []byte) bool
	// DistrustHardware: the CPU's bytes are mixed in but never make a
	// change Unique on their own.
	DistrustHardware bool
	// Wait is how long Read and AwaitKernel wait; 0 means DefaultWait,
	// negative means not at all.
	Wait time.Duration
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// Source is a generator of random bytes that follows the machine's
// generation. Its methods are safe for concurrent use.
type Source struct {
	cfg Config
	// mu serializes Change and Confirm; readers never take it.
	mu  sync.Mutex
	cur atomic.Pointer[state]
}

// state is the source between two re-keyings, fixed once it is published.
type state struct {
	epoch uint64
	level Freshness
	since time.Time // when the change this state follows was made (zero: at start)
	by    string    // what confirmed the level, for status and logs
	key   [32]byte  // chained into the next re-keying
	block cipher.Block
	// next is closed when a newer state replaces this one.
	next chan struct{}
}

// New returns a source keyed from the kernel (and the CPU's random
// instructions, where present), Kernel-fresh.
func New(cfg Config) *Source {
	if cfg.Kernel == nil {
		cfg.Kernel = func(b []byte) { rand.Read(b) } // Go 1.24+: never fails, crashes instead
	}
	if cfg.Hardware == nil {
		cfg.Hardware = Hardware
	}
	if cfg.Wait == 0 {
		cfg.Wait = DefaultWait
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	s := &Source{cfg: cfg}
	st, _ := s.derive(nil, 0, [][]byte{[]byte("start")})
	st.level, st.by = Kernel, "keyed from the kernel at start"
	s.cur.Store(st)
	return s
}

var scratch = sync.Pool{New: func() any { return new([aes.BlockSize]byte) }}

// fill writes into b fresh bytes from getrandom, each block of 16 of them
// encrypted under st's key (AES-256, a pseudorandom permutation): the
// output is as unpredictable as getrandom's when the key is known, and as
// the key when getrandom's is known, and two clones whose keys differ give
// different bytes even when their kernels give the same. Readers share
// nothing they write, so reads scale with the CPUs.
func (s *Source) fill(st *state, b []byte) {
	full := len(b) &^ (aes.BlockSize - 1)
	if full > 0 {
		s.cfg.Kernel(b[:full])
		for off := 0; off < full; off += aes.BlockSize {
			blk := b[off : off+aes.BlockSize]
			st.block.Encrypt(blk, blk)
		}
	}
	if tail := b[full:]; len(tail) > 0 {
		sc := scratch.Get().(*[aes.BlockSize]byte)
		s.cfg.Kernel(sc[:])
		st.block.Encrypt(sc[:], sc[:])
		copy(tail, sc[:])
		clear(sc[:])
		scratch.Put(sc)
	}
}

// Read fills b with random bytes. While the source is Unconfirmed it
// waits up to the configured time for a confirmation, then returns
// ErrNotFresh and leaves b unspecified.
func (s *Source) Read(b []byte) error {
	_, err := s.read(b)
	return err
}

// read is Read that also returns the state the bytes came from.
func (s *Source) read(b []byte) (*state, error) {
	st := s.cur.Load()
	if st.level < Unique {
		if st = s.await(Unique); st == nil {
			return nil, ErrNotFresh
		}
	}
	s.fill(st, b)
	return st, nil
}

// ReadNow is Read without the wait.
func (s *Source) ReadNow(b []byte) error {
	st := s.cur.Load()
	if st.level < Unique {
		return ErrNotFresh
	}
	s.fill(st, b)
	return nil
}

// ReadAny fills b whether or not the source is confirmed. It is for
// values whose repetition in a clone does no harm (an RSA-PSS salt) and
// must not hold up what uses them.
func (s *Source) ReadAny(b []byte) { s.fill(s.cur.Load(), b) }

// AwaitKernel returns nil once the kernel's generator is known to have
// re-seeded since the last change, waiting up to the configured time,
// and ErrKernelNotFresh otherwise.
func (s *Source) AwaitKernel() error {
	if s.cur.Load().level >= Kernel || s.await(Kernel) != nil {
		return nil
	}
	return ErrKernelNotFresh
}

// Await returns nil once Read would not refuse, waiting up to the
// configured time, and ErrNotFresh otherwise.
func (s *Source) Await() error {
	if s.cur.Load().level >= Unique || s.await(Unique) != nil {
		return nil
	}
	return ErrNotFresh
}

// Fresh reports whether Read would return at once.
func (s *Source) Fresh() bool { return s.cur.Load().level >= Unique }

// WaitFresh waits, as long as it takes, until Read would return at once
// (true) or stop is closed (false): for work that must not be done with
// unconfirmed bytes but need not be done at once.
func (s *Source) WaitFresh(stop <-chan struct{}) bool {
	for {
		st := s.cur.Load()
		if st.level >= Unique {
			return true
		}
		select {
		case <-st.next:
		case <-stop:
			return false
		}
	}
}

func (s *Source) await(need Freshness) *state {
	st := s.cur.Load()
	if st.level >= need {
		return st
	}
	if s.cfg.Wait < 0 {
		return nil
	}
	t := time.NewTimer(s.cfg.Wait)
	defer t.Stop()
	for {
		select {
		case <-st.next:
			if st = s.cur.Load(); st.level >= need {
				return st
			}
		case <-t.C:
			return nil
		}
	}
}

// derive makes the state that follows old (nil at start): its key is
// HKDF-SHA-256 of old's key, 32 bytes of getrandom, 32 bytes of the CPU's
// random instructions (when it has them) and parts, each with its length.
// It reports whether the CPU's bytes went in.
func (s *Source) derive(old *state, epoch uint64, parts [][]byte) (*state, bool) {
	secret := make([]byte, 0, 128)
	if old != nil {
		secret = append(secret, old.key[:]...)
	}
	var k [32]byte
	s.cfg.Kernel(k[:])
	secret = append(secret, k[:]...)
	hw := s.cfg.Hardware(k[:])
	if hw {
		secret = append(secret, k[:]...)
	}
	clear(k[:])
	for _, p := range parts {
		secret = binary.BigEndian.AppendUint64(secret, uint64(len(p)))
		secret = append(secret, p...)
	}
	info := binary.BigEndian.AppendUint64([]byte("keywarden random v1 "), epoch)
	key, err := hkdf.Key(sha256.New, secret, nil, string(info), 32)
	clear(secret)
	if err != nil {
		panic("random: HKDF-SHA-256 of 32 bytes failed: " + err.Error())
	}
	st := &state{epoch: epoch, next: make(chan struct{})}
	copy(st.key[:], key)
	clear(key)
	if st.block, err = aes.NewCipher(st.key[:]); err != nil {
		panic("random: AES-256: " + err.Error())
	}
	return st, hw
}

// Change re-keys the source for a new generation, at level (what the
// caller knows: Kernel when the kernel re-seeded, Unique when parts hold
// an input unique to this machine) or Unique if the CPU's random
// instructions went in and are trusted. by says what confirmed level;
// parts are what the change brought. It returns the new status.
func (s *Source) Change(level Freshness, by string, parts ...[]byte) Status {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	st, hw := s.derive(old, old.epoch+1, parts)
	st.level, st.by, st.since = level, by, s.cfg.Now()
	if hw && !s.cfg.DistrustHardware && st.level < Unique {
		st.level, st.by = Unique, "the CPU's random instructions"
	}
	s.cur.Store(st)
	close(old.next)
	return st.status()
}

// Confirm raises the level of the current generation's state to level,
// re-keying it with parts and new getrandom output (after the kernel
// re-seeded, that output is what makes it fresh). It does nothing and
// returns false if epoch is no longer current or the source is already
// at level.
func (s *Source) Confirm(epoch uint64, level Freshness, by string, parts ...[]byte) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	old := s.cur.Load()
	if old.epoch != epoch || old.level >= level {
		return false
	}
	st, _ := s.derive(old, epoch, parts)
	st.level, st.by, st.since = level, by, old.since
	s.cur.Store(st)
	close(old.next)
	return true
}

// Status describes the source.
type Status struct {
	// Epoch counts the changes since start.
	Epoch uint64
	Level Freshness
	// Since is when the last change was made (zero: none since start).
	Since time.Time
	// By says what confirmed Level.
	By string
}

func (st *state) status() Status {
	return Status{Epoch: st.epoch, Level: st.level, Since: st.since, By: st.by}
}

// Status returns the source's state.
func (s *Source) Status() Status { return s.cur.Load().status() }

// String describes the status for people: "fresh (the kernel re-seeded
// ...)" or "unconfirmed since ...".
func (s Status) String() string {
	switch s.Level {
	case Kernel:
		return "fresh: " + s.By
	case Unique:
		return "fresh for the daemon's own generator: " + s.By + " (RSA key generation waits for the kernel to re-seed)"
	}
	return "unconfirmed since the generation change at " + s.Since.UTC().Format(time.RFC3339) +
		": operations that need fresh random bytes are refused"
}

var def atomic.Pointer[Source]

func init() { def.Store(New(Config{})) }

// Default returns the daemon's source, which the functions of this
// package use.
func Default() *Source { return def.Load() }

// SetDefault replaces the daemon's source (at start, with its
// configuration; in tests) and returns the one it replaced.
func SetDefault(s *Source) *Source { return def.Swap(s) }

// Read fills b from the default source (see Source.Read).
func Read(b []byte) error { return Default().Read(b) }

// ReadNow is Default().ReadNow.
func ReadNow(b []byte) error { return Default().ReadNow(b) }

// ReadAny is Default().ReadAny.
func ReadAny(b []byte) { Default().ReadAny(b) }

// AwaitKernel is Default().AwaitKernel.
func AwaitKernel() error { return Default().AwaitKernel() }

// Await is Default().Await.
func Await() error { return Default().Await() }

// Reader reads from the default source as Read does: for libraries that take an
// io.Reader (RSA-OAEP, Shamir's splitting).
var Reader = reader{}

type reader struct{}

func (reader) Read(b []byte) (int, error) {
	if err := Default().Read(b); err != nil {
		return 0, err
	}
	return len(b), nil
}

// AnyReader reads from the default source as ReadAny does.
var AnyReader = anyReader{}

type anyReader struct{}

func (anyReader) Read(b []byte) (int, error) {
	Default().ReadAny(b)
	return len(b), nil
}

// Seal seals pt with aead under a nonce from the default source and appends nonce ‖
// ciphertext ‖ tag to dst (the layout of cipher.NewGCMWithRandomNonce).
// aad and pt must not overlap the appended bytes.
func Seal(aead cipher.AEAD, dst, pt, aad []byte) ([]byte, error) {
	n := aead.NonceSize()
	start := len(dst)
	// A whole block is drawn (the hot path then needs no scratch buffer);
	// the ciphertext overwrites what follows the nonce.
	m := (n + aes.BlockSize - 1) &^ (aes.BlockSize - 1)
	dst = append(dst, make([]byte, m)...)
	if err := Default().Read(dst[start:]); err != nil {
		return dst[:start], err
	}
	dst = dst[:start+n]
	return aead.Seal(dst, dst[start:], pt, aad), nil
}

// ErrChangedInRun fails the encryptions of a run (SealEach) left when the
// machine's generation changed during it.
var ErrChangedInRun = wire.Errorf(wire.Status_STATUS_GENERATION_CHANGED,
	"the machine's generation changed (a VM restore or clone) during the run of encryptions: "+
		"the rest of the run was not encrypted; encrypt it again")

// nonceGroup is the most nonces SealEach draws with one read.
const nonceGroup = 32

var nonceBlocks = sync.Pool{New: func() any { return new([nonceGroup * aes.BlockSize]byte) }}

// SealEach seals n messages with aead as n calls of Seal would: in(i)
// gives the i-th plaintext, additional data and destination, done(i, ...)
// receives what Seal would have returned. Each nonce is still a whole
// block of the source of its own, but the blocks of up to nonceGroup
// messages are drawn with one read (one getrandom), just before those
// messages are sealed: a read checks the source's freshness as Seal's
// does, and a failed one fails the messages it was for. Blocks drawn
// before a change of the source are not used after it (a clone would hold
// the same ones): after a confirmation the rest of the group is drawn
// again, and after a new generation the rest of the run fails with
// ErrChangedInRun, as the key version it was counted against is closed.
func SealEach(aead cipher.AEAD, n int, in func(i int) (pt, aad, dst []byte), done func(i int, out []byte, err error)) {
	ns := aead.NonceSize()
	if ns > aes.BlockSize {
		for i := range n {
			pt, aad, dst := in(i)
			out, err := Seal(aead, dst, pt, aad)
			done(i, out, err)
		}
		return
	}
	src := Default()
	blocks := nonceBlocks.Get().(*[nonceGroup * aes.BlockSize]byte)
	defer nonceBlocks.Put(blocks)
	// pending holds what in gave for a message not sealed at the end of a
	// group that was drawn again, so that in is called once per message.
	var pending struct {
		ok           bool
		pt, aad, dst []byte
	}
	var epoch uint64
	for first := 0; first < n; {
		k := min(n-first, nonceGroup)
		st, err := src.read(blocks[:k*aes.BlockSize])
		if err == nil {
			if first == 0 {
				epoch = st.epoch
			} else if st.epoch != epoch {
				err = ErrChangedInRun
			}
		}
		j := 0
		for ; j < k; j++ {
			i := first + j
			var pt, aad, dst []byte
			if pending.ok {
				pt, aad, dst = pending.pt, pending.aad, pending.dst
				pending.ok, pending.pt, pending.aad, pending.dst = false, nil, nil, nil
			} else {
				pt, aad, dst = in(i)
			}
			if err != nil {
				done(i, dst, err)
				continue
			}
			if src.cur.Load() != st {
				// The source changed since the read (while in gave the
				// message, or before): this message and the rest of the
				// group are sealed under blocks drawn again.
				pending.ok, pending.pt, pending.aad, pending.dst = true, pt, aad, dst
				break
			}
			start := len(dst)
			dst = append(dst, blocks[j*aes.BlockSize:j*aes.BlockSize+ns]...)
			done(i, aead.Seal(dst, dst[start:], pt, aad), nil)
		}
		// A nonce is not secret once used, but none is left for another
		// caller to see.
		clear(blocks[:k*aes.BlockSize])
		first += j
	}
}

// Open opens what Seal made.
func Open(aead cipher.AEAD, dst, ct, aad []byte) ([]byte, error) {
	n := aead.NonceSize()
	if len(ct) < n {
		return nil, errShort
	}
	return aead.Open(dst, ct[:n], ct[n:], aad)
}

var errShort = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "ciphertext too short")

// StaleKernel returns a stand-in for getrandom that returns the same
// bytes in every copy made with the same seed, as two clones' kernels do
// until either re-seeds (tests of clone safety, here and elsewhere).
func StaleKernel(seed uint64) func(b []byte) {
	var mu sync.Mutex
	var blk [32]byte
	binary.LittleEndian.PutUint64(blk[:], seed)
	c, _ := aes.NewCipher(blk[:])
	var n uint64
	return func(b []byte) {
		mu.Lock()
		defer mu.Unlock()
		var in, out [aes.BlockSize]byte
		for off := 0; off < len(b); off += aes.BlockSize {
			n++
			binary.LittleEndian.PutUint64(in[:], n)
			c.Encrypt(out[:], in[:])
			copy(b[off:], out[:])
		}
	}
}

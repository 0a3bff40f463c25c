package stress

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"time"

	keywarden "github.com/keywarden/keywarden"
)

// ownedKey is a key one traffic goroutine owns: only it destroys or
// rotates it. k is its handle, nil until opened (again).
type ownedKey struct {
	rec *keyRec
	k   *keywarden.Key
}

type trafficWorker struct {
	h    *harness
	c    *keywarden.Client
	rng  *rand.Rand
	own  []*ownedKey
	base []*keyRec
	// baseK are handles to base keys, by index.
	baseK map[int]*keywarden.Key
}

var keyTypes = []keywarden.KeyType{keywarden.AES256GCM, keywarden.Ed25519, keywarden.HMACSHA256}

func (w *trafficWorker) run(ctx context.Context) {
	w.baseK = map[int]*keywarden.Key{}
	for ctx.Err() == nil {
		switch n := w.rng.IntN(100); {
		case n < 14 || len(w.own) == 0:
			w.create(ctx)
		case n < 18:
			w.ephemeral(ctx)
		case n < 40:
			w.use(ctx, w.pick())
		case n < 52:
			w.useBase(ctx)
		case n < 62:
			w.batch(ctx)
		case n < 67:
			w.session(ctx)
		case n < 77 || len(w.own) > ownMax:
			w.destroy(ctx)
		case n < 82:
			w.rotate(ctx)
		case n < 90:
			w.reopen(ctx)
		default:
			w.c.Ping(ctx, []byte("p"))
		}
	}
}

func (w *trafficWorker) pick() *ownedKey { return w.own[w.rng.IntN(len(w.own))] }

// handle returns o's handle, opening the key again if it has none.
func (w *trafficWorker) handle(ctx context.Context, o *ownedKey) *keywarden.Key {
	if o.k != nil {
		return o.k
	}
	var k *keywarden.Key
	err := w.h.keyOp("open", func() (err error) {
		k, err = w.c.OpenID(ctx, o.rec.id)
		return err
	})
	w.check(ctx, "open", o, err)
	o.k = k
	return k
}

// check reports an error that no interleaving explains, and drops o's
// handle after any error (it may be from before a seal).
func (w *trafficWorker) check(ctx context.Context, op string, o *ownedKey, err error) {
	if err == nil {
		return
	}
	w.h.unexpected(ctx, op, err)
	if o != nil {
		if strings.Contains(err.Error(), "key destroyed") && ctx.Err() == nil {
			w.h.finding("%s: key %s, which no one destroyed: %v", op, o.rec.id, err)
		}
		o.k = nil
	}
}

func (w *trafficWorker) create(ctx context.Context) {
	spec := keywarden.KeySpec{Type: keyTypes[w.rng.IntN(len(keyTypes))]}
	start := w.h.m.clk.tick()
	if w.rng.IntN(3) == 0 {
		spec.Name = fmt.Sprintf("k%d", start)
	}
	var k *keywarden.Key
	err := w.h.keyOp("create", func() (err error) {
		k, err = w.c.Generate(ctx, spec)
		return err
	})
	if err != nil {
		w.h.unexpected(ctx, "create", err)
		if unknownOutcome(ctx, err) {
			w.h.m.createUnknown()
		} else if spec.Name != "" && !errors.Is(err, keywarden.ErrAlreadyExists) {
			w.h.m.refusedName(spec.Name)
		}
		return
	}
	r := &keyRec{id: k.ID(), typ: spec.Type, createStart: start, acked: w.h.m.clk.tick()}
	w.h.m.acked(r)
	o := &ownedKey{rec: r, k: k}
	w.own = append(w.own, o)
	w.use(ctx, o)
}

// ephemeral makes an ephemeral key, uses it, and sometimes leaves it to
// die with the connection.
func (w *trafficWorker) ephemeral(ctx context.Context) {
	var k *keywarden.Key
	err := w.h.keyOp("create ephemeral", func() (err error) {
		k, err = w.c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
		return err
	})
	if err != nil {
		w.h.unexpected(ctx, "create ephemeral", err)
		return
	}
	err = w.h.keyOp("encrypt (ephemeral)", func() error {
		_, err := k.Encrypt(ctx, []byte("e"), nil)
		return err
	})
	w.h.unexpected(ctx, "encrypt (ephemeral)", err)
	switch w.rng.IntN(3) {
	case 0:
		k.Destroy(ctx)
	case 1:
		k.Close(ctx)
	}
}

// use makes a result with o's key and keeps it as a sample.
func (w *trafficWorker) use(ctx context.Context, o *ownedKey) {
	k := w.handle(ctx, o)
	if k == nil {
		return
	}
	pt := []byte(fmt.Sprintf("message %d", w.rng.Uint64()))
	var s sample
	var err error
	switch o.rec.typ {
	case keywarden.AES256GCM:
		err = w.h.keyOp("encrypt", func() (err error) {
			s.ct, err = k.Encrypt(ctx, pt, aad)
			return err
		})
		if err == nil {
			err = w.h.keyOp("decrypt", func() error {
				got, err := k.Decrypt(ctx, s.ct, aad)
				if err == nil && !bytes.Equal(got, pt) {
					w.h.finding("key %s decrypts its own ciphertext to something else", o.rec.id)
				}
				return err
			})
		}
		s.aad = aad
	case keywarden.Ed25519:
		err = w.h.keyOp("sign", func() (err error) {
			s.sig, err = k.SignMessageContext(ctx, pt, nil)
			return err
		})
	case keywarden.HMACSHA256:
		err = w.h.keyOp("mac", func() (err error) {
			s.sig, err = k.MAC(ctx, pt)
			return err
		})
	}
	w.check(ctx, "use", o, err)
	if err == nil {
		s.pt, s.at = pt, w.h.m.clk.tick()
		w.h.m.addSample(o.rec, s)
	}
}

// useBase encrypts with a base key, which every goroutine shares.
func (w *trafficWorker) useBase(ctx context.Context) {
	i := w.rng.IntN(len(w.base))
	k := w.baseK[i]
	if k == nil {
		err := w.h.keyOp("open (base)", func() (err error) {
			k, err = w.c.OpenID(ctx, w.base[i].id)
			return err
		})
		if err != nil {
			w.h.unexpected(ctx, "open (base)", err)
			return
		}
		w.baseK[i] = k
	}
	err := w.h.keyOp("encrypt (base)", func() error {
		_, err := k.Encrypt(ctx, []byte("b"), aad)
		return err
	})
	if err != nil {
		w.h.unexpected(ctx, "encrypt (base)", err)
		if strings.Contains(err.Error(), "key destroyed") && ctx.Err() == nil {
			w.h.finding("encrypt: base key %s: %v", w.base[i].id, err)
		}
		delete(w.baseK, i)
	}
}

// batch sends several operations on several keys in one request.
func (w *trafficWorker) batch(ctx context.Context) {
	b := w.c.NewBatch()
	type item struct {
		o   *ownedKey
		res *keywarden.BatchResult
	}
	var items []item
	for range 1 + w.rng.IntN(12) {
		o := w.pick()
		k := w.handle(ctx, o)
		if k == nil {
			continue
		}
		switch o.rec.typ {
		case keywarden.AES256GCM:
			items = append(items, item{o, b.Encrypt(k, []byte("batch"), aad)})
		case keywarden.Ed25519:
			items = append(items, item{o, b.SignMessage(k, []byte("batch"), nil)})
		case keywarden.HMACSHA256:
			items = append(items, item{o, b.MAC(k, []byte("batch"))})
		}
	}
	if len(items) == 0 {
		return
	}
	s0, n0 := w.h.w.snap()
	err := b.Do(ctx)
	s1, n1 := w.h.w.snap()
	if err != nil {
		w.h.unexpected(ctx, "batch", err)
		return
	}
	for _, it := range items {
		err := it.res.Err()
		if err == nil && s0 && s1 && n0 == n1 {
			w.h.finding("an operation of a batch succeeded while the daemon was sealed (sealed window %d)", n0)
		}
		w.check(ctx, "batch", it.o, err)
	}
}

// session computes a MAC in a streaming session, chunk by chunk, and
// compares it with the one-shot MAC.
func (w *trafficWorker) session(ctx context.Context) {
	var o *ownedKey
	for _, x := range w.own {
		if x.rec.typ == keywarden.HMACSHA256 {
			o = x
			break
		}
	}
	if o == nil {
		return
	}
	k := w.handle(ctx, o)
	if k == nil {
		return
	}
	s0, n0 := w.h.w.snap()
	st, err := k.NewMAC(ctx)
	if err != nil {
		w.check(ctx, "session open", o, err)
		return
	}
	defer st.Close()
	for range 3 {
		if _, err := st.Write([]byte("chunk ")); err != nil {
			w.check(ctx, "session update", o, err)
			return
		}
		time.Sleep(time.Duration(w.rng.IntN(3)) * time.Millisecond)
	}
	sum, err := st.Sum()
	s1, n1 := w.h.w.snap()
	if err != nil {
		w.check(ctx, "session final", o, err)
		return
	}
	if s0 && s1 && n0 == n1 {
		w.h.finding("a MAC session finished while the daemon was sealed (sealed window %d)", n0)
	}
	err = w.h.keyOp("verify mac", func() error { return k.VerifyMAC(ctx, []byte("chunk chunk chunk "), sum) })
	if err != nil && errors.Is(err, keywarden.ErrVerification) {
		w.h.finding("key %s: the MAC of a session does not verify: %v", o.rec.id, err)
	}
	w.check(ctx, "verify mac", o, err)
}

// destroy destroys one of the goroutine's keys.
func (w *trafficWorker) destroy(ctx context.Context) {
	i := w.rng.IntN(len(w.own))
	o := w.own[i]
	k := w.handle(ctx, o)
	if k == nil {
		// It does not open: gone with a restore, or the daemon is sealed.
		return
	}
	w.h.m.destroyStarted(o.rec, w.h.m.clk.tick())
	err := w.h.keyOp("destroy", func() error { return k.Destroy(ctx) })
	at := w.h.m.clk.tick()
	switch {
	case err == nil:
		w.h.m.destroyEnded(o.rec, at, true, false)
		w.own = append(w.own[:i], w.own[i+1:]...)
	case ctx.Err() != nil:
		w.h.m.destroyEnded(o.rec, at, false, false)
		w.own = append(w.own[:i], w.own[i+1:]...)
	default:
		w.h.m.destroyEnded(o.rec, at, false, true)
		w.check(ctx, "destroy", o, err)
	}
}

func (w *trafficWorker) rotate(ctx context.Context) {
	o := w.pick()
	k := w.handle(ctx, o)
	if k == nil {
		return
	}
	err := w.h.keyOp("rotate", func() error {
		_, err := k.Rotate(ctx)
		return err
	})
	w.check(ctx, "rotate", o, err)
	if err == nil {
		w.use(ctx, o)
	}
}

// reopen closes a handle and opens the key again.
func (w *trafficWorker) reopen(ctx context.Context) {
	o := w.pick()
	if o.k != nil {
		o.k.Close(ctx)
		o.k = nil
	}
	w.use(ctx, o)
}

// lifecycle runs the administrators' operations.
type lifecycle struct {
	h       *harness
	c       *keywarden.Client
	rng     *rand.Rand
	base    []*keyRec
	backup  *backupInfo
	restore *restoreInfo
}

func (l *lifecycle) seal(ctx context.Context) error {
	l.h.event("seal")
	sent := l.h.w.sealSent()
	err := l.c.Admin().Seal(ctx)
	if err == nil {
		l.h.w.sealAcked(sent)
	}
	l.h.event("seal: %v", err)
	l.h.unexpected(ctx, "seal", err)
	return err
}

func (l *lifecycle) unseal(ctx context.Context) error {
	l.h.w.unsealStart()
	l.h.event("unseal")
	err := l.c.Admin().Unseal(ctx, []byte(passphrase), nil)
	l.h.event("unseal: %v", err)
	l.h.w.unsealEnd()
	if err != nil && !errors.Is(err, keywarden.ErrAlreadyExists) {
		l.h.unexpected(ctx, "unseal", err)
		if !unknownOutcome(ctx, err) {
			l.h.finding("unseal: %v", err)
		}
	}
	return err
}

func (l *lifecycle) rotateMaster(ctx context.Context) error {
	l.h.event("master rotate")
	_, err := l.c.Admin().RotateMaster(ctx, keywarden.MasterSealing{Passphrase: []byte(passphrase), Argon2: testArgon2})
	l.h.event("master rotate: %v", err)
	l.h.unexpected(ctx, "master rotate", err)
	return err
}

// probe tries keys while the daemon is sealed (keyOp reports success
// inside a sealed window).
func (l *lifecycle) probe(ctx context.Context, before *keywarden.Key) {
	if before != nil {
		l.h.keyOp("encrypt (handle from before the seal)", func() error {
			_, err := before.Encrypt(ctx, []byte("x"), aad)
			return err
		})
	}
	r := l.base[l.rng.IntN(len(l.base))]
	l.h.keyOp("open (sealed)", func() error {
		k, err := l.c.OpenID(ctx, r.id)
		if err == nil {
			k.Close(ctx)
		}
		return err
	})
	l.h.keyOp("create (sealed)", func() error {
		k, err := l.c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
		if err == nil {
			k.Close(ctx)
		}
		return err
	})
}

func (l *lifecycle) pause(maxMs int) {
	time.Sleep(time.Duration(l.rng.IntN(maxMs+1)) * time.Millisecond)
}

// step runs one lifecycle step, chosen by the round's generator, and
// names it.
func (l *lifecycle) step(ctx context.Context) string {
	switch n := l.rng.IntN(100); {
	case n < 22: // seal, check, unseal
		k, _ := l.c.OpenID(ctx, l.base[l.rng.IntN(len(l.base))].id)
		l.seal(ctx)
		l.probe(ctx, k)
		l.pause(40)
		l.unseal(ctx)
		return "seal-unseal"
	case n < 37: // master rotation, its re-wrap left to run under traffic
		l.rotateMaster(ctx)
		return "master-rotate"
	case n < 55: // a seal while the re-wrap runs
		l.rotateMaster(ctx)
		l.pause(15)
		l.seal(ctx)
		l.pause(30)
		l.unseal(ctx)
		return "master-rotate+seal"
	case n < 68:
		if l.restore != nil {
			return "backup (skipped)"
		}
		start := l.h.m.clk.tick()
		var buf bytes.Buffer
		_, err := l.c.Admin().Backup(ctx, &buf)
		end := l.h.m.clk.tick()
		l.h.unexpected(ctx, "backup", err)
		if err == nil {
			l.backup = &backupInfo{start: start, end: end, data: buf.Bytes()}
		}
		return "backup"
	case n < 78:
		if l.backup == nil || l.restore != nil {
			return "restore (skipped)"
		}
		l.h.event("restore")
		start := l.h.m.clk.tick()
		sent := l.h.w.sealSent()
		_, err := l.c.Admin().Restore(ctx, bytes.NewReader(l.backup.data), &keywarden.RestoreOptions{Force: true})
		ack := l.h.m.clk.tick()
		l.h.unexpected(ctx, "restore", err)
		if err == nil {
			l.h.w.sealAcked(sent)
			l.restore = &restoreInfo{start: start, ack: ack, from: l.backup}
		}
		l.h.event("restore: %v", err)
		if err == nil {
		} else if !unknownOutcome(ctx, err) {
			l.h.finding("restore of this round's backup: %v", err)
		}
		l.pause(30)
		l.unseal(ctx)
		return "restore"
	case n < 92:
		_, err := l.c.Admin().BumpGeneration(ctx, nil)
		l.h.unexpected(ctx, "generation bump", err)
		return "bump"
	default:
		l.pause(100)
		return "pause"
	}
}

// rival seals, unseals, rotates and bumps at random until the round
// ends: a second administrator racing the first.
func (l *lifecycle) rival(ctx context.Context) {
	for ctx.Err() == nil {
		switch n := l.rng.IntN(10); {
		case n < 3:
			l.seal(ctx)
		case n < 7:
			l.unseal(ctx)
		case n < 8:
			l.rotateMaster(ctx)
		default:
			_, err := l.c.Admin().BumpGeneration(ctx, nil)
			l.h.unexpected(ctx, "generation bump", err)
		}
		l.pause(150)
	}
}

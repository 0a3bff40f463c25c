package e2e_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"strings"
	"sync"
	"testing"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/wire"
)

// TestLimits exceeds each documented limit, each on a daemon configured
// with a small value of it: each gets RESOURCE_EXHAUSTED, and the daemon
// and the connection stay healthy.
func TestLimits(t *testing.T) {
	var d *daemon
	exhausted := func(t *testing.T, what string, err error) {
		t.Helper()
		if !errors.Is(err, keywarden.ErrResourceExhausted) {
			t.Fatalf("%s: %v, want ErrResourceExhausted", what, err)
		}
	}

	t.Run("message size", func(t *testing.T) {
		d = startDaemon(t, "--max-message-bytes", "65536")
		defer d.healthy(t)
		r := dialRaw(t, d.sock)
		big, _ := (&wire.Request{Version: 1, Id: 77, Ops: []*wire.Op{ping(strings.Repeat("x", 70000))}}).MarshalVT()
		r.send(big)
		rep := r.recv()
		if rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED || rep.Id != 77 {
			t.Fatalf("oversized request: id %d %v %q", rep.Id, rep.Status, rep.Message)
		}
		r.ping()
		c := d.client(t)
		// A ping carries its payload in the message: refused before it is
		// sent.
		exhausted(t, "client-side", c.Ping(ctx, make([]byte, 70000)))
		// A hash of as much goes through shared memory, which no message
		// size limits.
		sum, err := c.Hash(ctx, 0x5 /* SHA-256 */, make([]byte, 70000))
		if want := sha256.Sum256(make([]byte, 70000)); err != nil || !bytes.Equal(sum, want[:]) {
			t.Fatalf("a hash of 70000 bytes through shared memory: %x %v", sum, err)
		}
	})

	t.Run("in flight", func(t *testing.T) {
		d = startDaemon(t, "--max-in-flight", "2")
		defer d.healthy(t)
		r := dialRaw(t, d.sock)
		// Three slow requests at once: the third is over the limit of two.
		ids := []uint64{
			r.sendOps(genOp(wire.KeyType_KEY_TYPE_RSA_3072, "", 0)),
			r.sendOps(genOp(wire.KeyType_KEY_TYPE_RSA_3072, "", 0)),
			r.sendOps(genOp(wire.KeyType_KEY_TYPE_RSA_3072, "", 0)),
		}
		got := map[uint64]wire.Status{}
		for range ids {
			rep := r.recv()
			got[rep.Id] = rep.Status
		}
		refused := 0
		for _, st := range got {
			if st == wire.Status_STATUS_RESOURCE_EXHAUSTED {
				refused++
			}
		}
		if refused != 1 || len(got) != 3 {
			t.Fatalf("replies %v: want exactly one RESOURCE_EXHAUSTED", got)
		}
		r.ping()
		// The client library never exceeds the limit: it waits.
		c := d.client(t)
		var wg sync.WaitGroup
		errs := make(chan error, 6)
		for range 6 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.RSA2048, Ephemeral: true})
				if err == nil {
					err = k.Close(ctx)
				}
				errs <- err
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatalf("client beyond the in-flight limit: %v", err)
			}
		}
	})

	t.Run("sessions", func(t *testing.T) {
		d = startDaemon(t, "--max-sessions", "2")
		defer d.healthy(t)
		c := d.client(t)
		s1, err := c.NewHash(ctx, 0x5)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.NewHash(ctx, 0x5); err != nil {
			t.Fatal(err)
		}
		_, err = c.NewHash(ctx, 0x5)
		exhausted(t, "third session", err)
		s1.Close()
		if _, err := c.NewHash(ctx, 0x5); err != nil {
			t.Fatalf("after closing one: %v", err)
		}
	})

	t.Run("handles", func(t *testing.T) {
		d = startDaemon(t, "--max-handles", "3")
		defer d.healthy(t)
		c := d.client(t)
		var keys []*keywarden.Key
		for range 3 {
			keys = append(keys, generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM}))
		}
		_, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
		exhausted(t, "fourth handle", err)
		keys[0].Close(ctx)
		generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM})
	})

	t.Run("keys per user", func(t *testing.T) {
		d = startDaemon(t, "--max-keys-per-user", "4")
		defer d.healthy(t)
		c := d.client(t)
		var keys []*keywarden.Key
		for i := range 4 {
			k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Name: "q" + string(rune('a'+i))})
			if err != nil {
				t.Fatalf("key %d: %v", i, err)
			}
			keys = append(keys, k)
			if i == 2 {
				c = d.client(t) // a new connection: the quota is per user, not per connection
			}
		}
		_, err := d.client(t).Generate(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Name: "qe"})
		exhausted(t, "fifth key", err)
		_, err = d.client(t).Generate(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Ephemeral: true})
		exhausted(t, "ephemeral key over quota", err)
		if err := keys[0].Destroy(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := d.client(t).Generate(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Name: "qe"}); err != nil {
			t.Fatalf("after destroying one: %v", err)
		}
		for _, k := range keys[1:] {
			k.Destroy(ctx)
		}
	})

	t.Run("batch ops", func(t *testing.T) {
		d = startDaemon(t, "--max-batch-ops", "8")
		defer d.healthy(t)
		r := dialRaw(t, d.sock)
		var ops []*wire.Op
		for range 9 {
			ops = append(ops, ping("x"))
		}
		if rep := r.do(ops...); rep.Status != wire.Status_STATUS_RESOURCE_EXHAUSTED {
			t.Fatalf("9 operations: %v", rep.Status)
		}
		r.ping()
		c := d.client(t)
		b := c.NewBatch()
		var rs []*keywarden.BatchResult
		for range 50 {
			rs = append(rs, b.Ping([]byte("y")))
		}
		if err := b.Do(ctx); err != nil {
			t.Fatal(err)
		}
		for _, r := range rs {
			if r.Err() != nil {
				t.Fatalf("client batch over the limit: %v", r.Err())
			}
		}
	})

	t.Run("connections", func(t *testing.T) {
		d = startDaemon(t, "--max-connections", "4")
		defer d.healthy(t)
		// This test's own connections: the harness and earlier subtests
		// closed theirs.
		var cs []*keywarden.Client
		defer func() {
			for _, c := range cs {
				c.Close()
			}
		}()
		var err error
		for range 10 {
			var c *keywarden.Client
			if c, err = keywarden.Dial(ctx, d.sock); err != nil {
				break
			}
			cs = append(cs, c)
		}
		exhausted(t, "connection over the limit", err)
		if len(cs) == 0 || len(cs) > 4 {
			t.Fatalf("%d connections accepted with a limit of 4", len(cs))
		}
		cs[0].Close()
		cs = cs[1:]
		// The slot frees once the daemon has seen the close.
		var c *keywarden.Client
		for range 100 {
			if c, err = keywarden.Dial(ctx, d.sock); err == nil {
				break
			}
		}
		if err != nil {
			t.Fatalf("after closing one: %v", err)
		}
		cs = append(cs, c)
		for _, c := range cs {
			c.Close()
		}
		cs = nil
	})
}

func ping(p string) *wire.Op {
	return &wire.Op{Op: &wire.Op_Ping{Ping: &wire.Ping{Payload: []byte(p)}}}
}

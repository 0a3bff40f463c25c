package keywarden_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/seqpacket"
	"github.com/keywarden/keywarden/internal/server"
)

func dial(t *testing.T) *keywarden.Client {
	t.Helper()
	c, err := keywarden.Dial(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// Many goroutines share one client; their requests are pipelined on one
// connection and every reply reaches its caller.
func TestConcurrentCalls(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	errs := make(chan error, 64)
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 100 {
				msg := fmt.Appendf(nil, "goroutine %d message %d", g, i)
				ct, err := k.Encrypt(ctx, msg, nil)
				if err == nil {
					var pt []byte
					pt, err = k.Decrypt(ctx, ct, nil)
					if err == nil && !bytes.Equal(pt, msg) {
						err = fmt.Errorf("got %q, want %q", pt, msg)
					}
				}
				if err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
}

// A cancelled context returns promptly and leaves the client usable; the
// late reply is dropped.
func TestContextCancel(t *testing.T) {
	c := dial(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.RSA4096, Ephemeral: true})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Skipf("RSA-4096 generation finished within 1ms (%v)", err)
	}
	if d := time.Since(start); d > 500*time.Millisecond {
		t.Fatalf("cancellation took %v", d)
	}
	if err := c.Ping(context.Background(), []byte("x")); err != nil {
		t.Fatalf("client unusable after a cancelled call: %v", err)
	}
}

// When the daemon goes away, calls fail instead of hanging.
func TestDaemonGone(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "s.sock")
	l, err := seqpacket.Listen(sock, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := server.New(server.Config{})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(l)
	c, err := keywarden.Dial(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv.Shutdown(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Ping(context.Background(), nil) }()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("ping to a stopped daemon succeeded")
		}
		if keywarden.CodeOf(err) != keywarden.CodeUnavailable {
			t.Fatalf("error code %v, want unavailable", keywarden.CodeOf(err))
		}
	case <-time.After(5 * time.Second):
		t.Fatal("call to a stopped daemon hung")
	}
	if err := c.Ping(context.Background(), nil); err == nil {
		t.Fatal("later call succeeded")
	}
}

// A batch larger than one message and than the batch limit is split, and
// every operation gets its own result.
func TestBatchSplits(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	k, _ := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	other, _ := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Ephemeral: true})
	b := c.NewBatch()
	var rs []*keywarden.BatchResult
	for i := range 5000 {
		rs = append(rs, b.Encrypt(k, make([]byte, 100+i%200), nil))
	}
	bad := b.Encrypt(other, []byte("x"), nil) // an Ed25519 key cannot encrypt
	if err := b.Do(ctx); err != nil {
		t.Fatal(err)
	}
	for i, r := range rs {
		ct, err := r.Bytes()
		if err != nil || len(ct) != 100+i%200+7+28 {
			t.Fatalf("op %d: %d bytes, %v", i, len(ct), err)
		}
	}
	if !errors.Is(bad.Err(), keywarden.ErrPolicyViolation) {
		t.Fatalf("failing op in a batch: %v", bad.Err())
	}
}

// Data too large for one message goes through shared memory; data too
// large for that too is refused before it is sent.
func TestTooLargeForOneMessage(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	k, _ := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	big := make([]byte, c.Limits().MaxMessageBytes)
	ct, err := k.Encrypt(ctx, big, nil)
	if err != nil {
		t.Fatalf("a one-shot larger than a message, through shared memory: %v", err)
	}
	if pt, err := k.Decrypt(ctx, ct, nil); err != nil || len(pt) != len(big) {
		t.Fatalf("its decryption: %d bytes, %v", len(pt), err)
	}
	if _, err := k.Encrypt(ctx, make([]byte, 9<<20), nil); !errors.Is(err, keywarden.ErrResourceExhausted) {
		t.Fatalf("a one-shot larger than half the shared memory: %v", err)
	}
	if _, err := k.Encrypt(ctx, make([]byte, c.MaxData()), nil); err != nil {
		t.Fatalf("MaxData bytes: %v", err)
	}
}

func TestClosedClient(t *testing.T) {
	c, err := keywarden.Dial(context.Background(), "")
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := c.Ping(context.Background(), nil); !errors.Is(err, keywarden.ErrClosed) {
		t.Fatalf("call on a closed client: %v", err)
	}
}

func TestParsers(t *testing.T) {
	u, err := keywarden.ParseUsage("sign, verify,derive")
	if err != nil || u != keywarden.UsageSign|keywarden.UsageVerify|keywarden.UsageDerive || u.String() != "sign,verify,derive" {
		t.Fatalf("ParseUsage: %v %v", u, err)
	}
	if _, err := keywarden.ParseUsage("sign,export"); err == nil {
		t.Fatal("unknown usage accepted")
	}
	for _, typ := range keywarden.KeyTypes() {
		if !typ.Valid() {
			t.Errorf("%s not valid", typ)
		}
	}
	if keywarden.KeyType("aes128").Valid() {
		t.Error("unknown type valid")
	}
	id := keywarden.KeyID{1, 2, 3}
	if p, err := keywarden.ParseKeyID(id.String()); err != nil || p != id {
		t.Fatal("key id round trip")
	}
}

// A batch of large operations completes: the client never has more
// replies outstanding than the daemon's socket buffer holds, so that the
// daemon, blocked sending a reply nobody reads, never leaves the client
// blocked sending a request it will not read (a deadlock of both).
func TestBatchOfLargeOperations(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	k, _ := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	b := c.NewBatch()
	var rs []*keywarden.BatchResult
	for range 64 {
		rs = append(rs, b.Encrypt(k, make([]byte, 200<<10), nil))
	}
	done := make(chan error, 1)
	go func() { done <- b.Do(ctx) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("a batch of 64 encryptions of 200 KiB did not complete in 30 s")
	}
	for i, r := range rs {
		if ct, err := r.Bytes(); err != nil || len(ct) != 200<<10+35 {
			t.Fatalf("op %d: %d bytes, %v", i, len(ct), err)
		}
	}
}

// Batches of large operations from many goroutines sharing one Client
// complete: their replies outstanding together stay within the socket
// buffer, so the goroutines cannot all be blocked sending requests while
// the daemon, blocked sending replies, reads none.
func TestConcurrentBatchesOfLargeOperations(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	k, _ := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	const goroutines = 16
	done := make(chan error, goroutines)
	for range goroutines {
		go func() {
			b := c.NewBatch()
			var rs []*keywarden.BatchResult
			for i := range 16 {
				rs = append(rs, b.Encrypt(k, make([]byte, 64<<10), []byte{byte(i)}))
			}
			err := b.Do(ctx)
			for _, r := range rs {
				if err == nil {
					err = r.Err()
				}
			}
			done <- err
		}()
	}
	deadline := time.After(2 * time.Minute)
	for range goroutines {
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
		case <-deadline:
			pprof.Lookup("goroutine").WriteTo(os.Stderr, 2)
			t.Fatal("concurrent batches of 16 encryptions of 64 KiB did not complete in 2 minutes")
		}
	}
}

// GenerateDataKey takes its length and whether to return the plaintext as
// options; nil means a 32-byte key returned only encrypted.
func TestGenerateDataKeyOptions(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	aad := []byte("file-9")
	dk, err := k.GenerateDataKey(ctx, aad, nil)
	if err != nil {
		t.Fatal(err)
	}
	if dk.Plaintext != nil {
		t.Fatal("the plaintext was returned unasked")
	}
	if pt, err := k.Decrypt(ctx, dk.Ciphertext, aad); err != nil || len(pt) != 32 {
		t.Fatalf("default data key: %d bytes, %v", len(pt), err)
	}
	dk, err = k.GenerateDataKey(ctx, aad, &keywarden.DataKeyOptions{Length: 16, Plaintext: true})
	if err != nil {
		t.Fatal(err)
	}
	if pt, err := k.Decrypt(ctx, dk.Ciphertext, aad); err != nil || len(dk.Plaintext) != 16 || !bytes.Equal(pt, dk.Plaintext) {
		t.Fatalf("16-byte data key: %d bytes, %v", len(dk.Plaintext), err)
	}
	for _, n := range []int{-1, 1 << 32} {
		if _, err := k.GenerateDataKey(ctx, aad, &keywarden.DataKeyOptions{Length: n}); !errors.Is(err, keywarden.ErrInvalidArgument) {
			t.Errorf("length %d: %v", n, err)
		}
	}
}

// The administrator calls are on Client.Admin; the daemon still decides
// who may make them. Its own uid may: a bump goes through, and a Seal of
// a development daemon, which has no master key to seal, is refused.
func TestAdminView(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	before, err := c.Generation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	g, err := c.Admin().BumpGeneration(ctx, &keywarden.BumpOptions{KernelReseeded: false})
	if err != nil {
		t.Fatal(err)
	}
	if g.Generation != before.Generation+1 {
		t.Fatalf("generation %d after a bump from %d", g.Generation, before.Generation)
	}
	if err := c.Admin().Seal(ctx); !errors.Is(err, keywarden.ErrPolicyViolation) {
		t.Fatalf("sealing a development daemon: %v", err)
	}
}

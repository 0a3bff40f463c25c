package e2e_test

import (
	"bytes"
	"context"
	"crypto/ed25519"
	"errors"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
)

// Many goroutines make one operation per call on one Client, so that the
// client combines the calls queued together into requests of several
// operations: every call still gets its own result and its own error, a
// goroutine's calls keep their order, cancelled calls return their
// context's error, and the audit log lists every operation executed,
// with the caller's identity.
func TestCombinedCallsOneClient(t *testing.T) {
	ctx := context.Background()
	d := startDaemon(t)
	c := d.client(t)
	al := newAuditReader(t, d.sock+".audit.log")
	aes, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	must(t, "generate", err)
	encOnly, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Usage: keywarden.UsageEncrypt, Ephemeral: true})
	must(t, "generate", err)
	hm, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true})
	must(t, "generate", err)
	ed, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.Ed25519, Ephemeral: true})
	must(t, "generate", err)
	pub, ok := ed.Public().(ed25519.PublicKey)
	if !ok {
		t.Fatalf("Ed25519 public key of type %T", ed.Public())
	}
	al.read()

	key := func(k *keywarden.Key) string { return audit.KeyID(k.ID()).String() }
	var mu sync.Mutex
	done := map[string]uint32{}      // "op key status": calls that returned it
	cancelled := map[string]uint32{} // "op key": calls cancelled, which may or may not have run
	tally := func(m map[string]uint32, k string) {
		mu.Lock()
		m[k]++
		mu.Unlock()
	}

	const goroutines, rounds = 32, 60
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fail := func(format string, args ...any) {
				errs <- fmt.Errorf("goroutine %d: "+format, append([]any{g}, args...)...)
			}
			for i := range rounds {
				msg := fmt.Appendf(nil, "goroutine %d round %d", g, i)
				// A goroutine's calls in order: each uses the last's result.
				ct, err := aes.Encrypt(ctx, msg, nil)
				if err != nil {
					fail("encrypt: %v", err)
					return
				}
				pt, err := aes.Decrypt(ctx, ct, nil)
				if err != nil || !bytes.Equal(pt, msg) {
					fail("decrypt: %q, %v", pt, err)
					return
				}
				tag, err := hm.MAC(ctx, msg)
				if err != nil {
					fail("mac: %v", err)
					return
				}
				if err := hm.VerifyMAC(ctx, msg, tag); err != nil {
					fail("verify mac: %v", err)
					return
				}
				tally(done, "encrypt "+key(aes)+" OK")
				tally(done, "decrypt "+key(aes)+" OK")
				tally(done, "mac "+key(hm)+" OK")
				tally(done, "mac-verify "+key(hm)+" OK")

				// Failures of their own, among the neighbours' successes.
				bad := bytes.Clone(ct)
				bad[len(bad)-1] ^= 1
				if _, err := aes.Decrypt(ctx, bad, nil); keywarden.CodeOf(err) != keywarden.CodeInvalidArgument {
					fail("tampered ciphertext: %v", err)
					return
				}
				tally(done, "decrypt "+key(aes)+" INVALID_ARGUMENT")
				if _, err := encOnly.Decrypt(ctx, ct, nil); !errors.Is(err, keywarden.ErrPolicyViolation) {
					fail("decryption with an encrypt-only key: %v", err)
					return
				}
				tally(done, "decrypt "+key(encOnly)+" POLICY_VIOLATION")
				if err := hm.VerifyMAC(ctx, ct, tag); keywarden.CodeOf(err) == keywarden.CodeOK {
					fail("a wrong tag verified")
					return
				}

				if i%3 == 0 {
					sig, err := ed.SignMessageContext(ctx, msg, nil)
					if err != nil || !ed25519.Verify(pub, msg, sig) {
						fail("sign: %v", err)
						return
					}
					tally(done, "sign "+key(ed)+" OK")
				}
				if err := c.Ping(ctx, msg); err != nil {
					fail("ping: %v", err)
					return
				}

				// Cancelled calls: before they start, or while they wait.
				cctx, cancel := context.WithCancel(ctx)
				if i%2 == 0 {
					cancel()
				} else {
					time.AfterFunc(time.Duration(i)*time.Microsecond, cancel)
				}
				got, err := hm.MAC(cctx, msg)
				switch {
				case err == nil:
					if !bytes.Equal(got, tag) {
						fail("mac under a cancelled context: wrong tag")
						return
					}
					tally(done, "mac "+key(hm)+" OK")
				case errors.Is(err, context.Canceled):
					tally(cancelled, "mac "+key(hm))
				default:
					fail("mac under a cancelled context: %v", err)
					return
				}
				cancel()
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if t.Failed() {
		return
	}
	// The daemon runs a connection's requests in order: once this ping is
	// answered, every request before it is recorded.
	must(t, "ping", c.Ping(ctx, nil))

	count := map[string]uint32{}
	perRequest := map[uint64]int{} // records of each request id
	for _, r := range requests(al.read()) {
		if r.Caller.PID != int32(os.Getpid()) || r.Caller.UID != uint32(os.Getuid()) {
			t.Fatalf("request recorded with caller pid %d uid %d, want %d %d", r.Caller.PID, r.Caller.UID, os.Getpid(), os.Getuid())
		}
		if r.Op == audit.OpBatch {
			t.Fatalf("calls recorded as a batch: %+v", r)
		}
		if r.Status != "OK" && r.Msg == "" {
			t.Errorf("%s %s recorded without its reason", r.Op, r.Status)
		}
		count[r.Op+" "+r.Key.String()+" "+r.Status]++
		perRequest[r.Request]++
	}
	combined := 0
	for _, n := range perRequest {
		if n > 1 {
			combined++
		}
	}
	if combined == 0 {
		t.Error("no calls were combined into one request")
	}
	for k, want := range done {
		var maybe uint32
		for ck, n := range cancelled {
			if k == ck+" OK" {
				maybe = n
			}
		}
		if got := count[k]; got < want || got > want+maybe {
			t.Errorf("audit log: %d of %q, want %d (and up to %d cancelled)", got, k, want, maybe)
		}
	}
	t.Logf("%d requests of several calls; cancelled: %v", combined, cancelled)
}

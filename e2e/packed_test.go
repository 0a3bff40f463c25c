package e2e_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
)

// A batch sends its runs on one key packed (docs/protocol.md, "Packed
// runs"): every operation still gets its own result, failures included,
// and the audit log records the operations as it does when they are sent
// one by one.
func TestPackedBatches(t *testing.T) {
	ctx := context.Background()
	d := startDaemon(t)
	c := d.client(t)
	if !c.Limits().PackedRuns {
		t.Fatal("the daemon does not say it takes packed runs")
	}
	al := newAuditReader(t, d.sock+".audit.log")
	aes, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	must(t, "generate", err)
	encOnly, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Usage: keywarden.UsageEncrypt, Ephemeral: true})
	must(t, "generate", err)
	hm, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true})
	must(t, "generate", err)
	al.read()

	const n = 1500 // more than one request holds
	msg := func(i int) []byte { return fmt.Appendf(nil, "message %d %s", i, bytes.Repeat([]byte{'x'}, i%300)) }
	b := c.NewBatch()
	var encs, macs []*keywarden.BatchResult
	for i := range n {
		encs = append(encs, b.Encrypt(aes, msg(i), []byte("aad one")))
	}
	other := b.Encrypt(aes, msg(0), []byte("aad two"))
	for i := range 10 {
		macs = append(macs, b.MAC(hm, msg(i)))
	}
	must(t, "batch", b.Do(ctx))
	for i, r := range encs {
		if _, err := r.Bytes(); err != nil {
			t.Fatalf("encryption %d: %v", i, err)
		}
	}
	for i, r := range macs {
		tag, err := r.Bytes()
		must(t, "mac", err)
		if err := hm.VerifyMAC(ctx, msg(i), tag); err != nil {
			t.Fatalf("tag %d: %v", i, err)
		}
	}

	// Decryptions: one tampered, one with the wrong additional data, and
	// a run on a key that may not decrypt.
	b = c.NewBatch()
	var decs []*keywarden.BatchResult
	for i, r := range encs {
		ct, _ := r.Bytes()
		if i == 7 {
			ct = bytes.Clone(ct)
			ct[len(ct)-1] ^= 1
		}
		decs = append(decs, b.Decrypt(aes, ct, []byte("aad one")))
	}
	ct, _ := other.Bytes()
	wrongAAD := b.Decrypt(aes, ct, []byte("aad one"))
	ct0, _ := encs[0].Bytes()
	refused := []*keywarden.BatchResult{b.Decrypt(encOnly, ct0, nil), b.Decrypt(encOnly, ct0, nil)}
	must(t, "batch", b.Do(ctx))
	for i, r := range decs {
		pt, err := r.Bytes()
		if i == 7 {
			if err == nil {
				t.Fatal("tampered ciphertext decrypted")
			}
			continue
		}
		if err != nil || !bytes.Equal(pt, msg(i)) {
			t.Fatalf("decryption %d: %v", i, err)
		}
	}
	if wrongAAD.Err() == nil {
		t.Fatal("decrypted with the wrong additional data")
	}
	for _, r := range refused {
		if !errors.Is(r.Err(), keywarden.ErrPolicyViolation) {
			t.Fatalf("decryption with an encrypt-only key: %v", r.Err())
		}
	}

	// Every operation is in the audit log, counted per key and status.
	count := map[string]uint32{}
	for _, r := range requests(al.read()) {
		if r.Op != audit.OpBatch {
			count[r.Op+" "+r.Status]++
			continue
		}
		if r.Msg != "" {
			t.Fatalf("batch record summarised: %s", r.Msg)
		}
		for _, e := range r.Ops {
			count[fmt.Sprintf("%s %s %s", e.Op, e.Key, e.Status)] += max(e.Count, 1)
		}
	}
	key := func(k *keywarden.Key) string { return audit.KeyID(k.ID()).String() }
	want := map[string]uint32{
		"encrypt " + key(aes) + " OK":                   n + 1,
		"mac " + key(hm) + " OK":                        10,
		"decrypt " + key(aes) + " OK":                   n - 1,
		"decrypt " + key(aes) + " INVALID_ARGUMENT":     2,
		"decrypt " + key(encOnly) + " POLICY_VIOLATION": 2,
		"mac-verify OK":                                 10,
	}
	for k, v := range want {
		if count[k] != v {
			t.Errorf("audit log: %d of %q, want %d (all: %v)", count[k], k, v, count)
		}
	}
}

// A batch of 512 small encryptions, decryptions or MACs goes to the
// daemon in one request, every operation of which the daemon executes:
// one audit record each, with every operation in it, and every result
// right. Two batches are in flight at once (Send, Wait), as a caller
// keeping both processes busy sends them.
func TestBatchInOneRequest(t *testing.T) {
	ctx := context.Background()
	d := startDaemon(t)
	c := d.client(t)
	al := newAuditReader(t, d.sock+".audit.log")
	aes, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	must(t, "generate", err)
	hm, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true})
	must(t, "generate", err)
	al.read()

	const n = 512
	msg := func(i int) []byte { return fmt.Appendf(nil, "%0256d", i) }
	enc, macs := c.NewBatch(), c.NewBatch()
	var encs, tags []*keywarden.BatchResult
	for i := range n {
		encs = append(encs, enc.Encrypt(aes, msg(i), nil))
		tags = append(tags, macs.MAC(hm, msg(i)))
	}
	must(t, "send", enc.Send(ctx))
	must(t, "send", macs.Send(ctx))
	must(t, "wait", enc.Wait(ctx))
	dec := c.NewBatch()
	var decs []*keywarden.BatchResult
	for i, r := range encs {
		ct, err := r.Bytes()
		if err != nil {
			t.Fatalf("encryption %d: %v", i, err)
		}
		decs = append(decs, dec.Decrypt(aes, ct, nil))
	}
	must(t, "send", dec.Send(ctx))
	must(t, "wait", macs.Wait(ctx))
	must(t, "wait", dec.Wait(ctx))
	for i := range n {
		if pt, err := decs[i].Bytes(); err != nil || !bytes.Equal(pt, msg(i)) {
			t.Fatalf("decryption %d: %v", i, err)
		}
		tag, err := tags[i].Bytes()
		must(t, "mac", err)
		if i%64 == 0 {
			must(t, "verify", hm.VerifyMAC(ctx, msg(i), tag))
		}
	}

	batches := 0
	for _, r := range requests(al.read()) {
		if r.Op != audit.OpBatch {
			continue
		}
		batches++
		ops := uint32(0)
		for _, e := range r.Ops {
			if e.Status != "OK" {
				t.Errorf("audit log: %d of %s %s", max(e.Count, 1), e.Op, e.Status)
			}
			ops += max(e.Count, 1)
		}
		if ops != n {
			t.Errorf("audit log: a request of %d operations, want %d", ops, n)
		}
	}
	if batches != 3 {
		t.Errorf("audit log: %d requests for three batches of %d, want 3", batches, n)
	}
}

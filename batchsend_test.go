package keywarden_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
)

// Two batches in flight at once, queued and sent in turn as a caller
// keeping the daemon busy would: every result is its own operation's, in
// the order queued, whether the batch went whole at Send or in part.
func TestBatchSendWaitInTurn(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	type turn struct {
		b    *keywarden.Batch
		msgs [][]byte
		res  []*keywarden.BatchResult
	}
	fill := func(tn *turn, round, n, size int) {
		tn.b.Reset()
		tn.msgs, tn.res = tn.msgs[:0], tn.res[:0]
		for i := range n {
			m := fmt.Appendf(nil, "round %d message %d ", round, i)
			m = append(m, bytes.Repeat([]byte{byte(i)}, size)...)
			tn.msgs = append(tn.msgs, m)
			tn.res = append(tn.res, tn.b.Encrypt(k, m, nil))
			if i%7 == 3 {
				tn.res = append(tn.res, tn.b.Decrypt(k, []byte("not a ciphertext"), nil))
				tn.msgs = append(tn.msgs, nil)
			}
		}
	}
	check := func(tn *turn, round int) {
		t.Helper()
		for i, r := range tn.res {
			ct, err := r.Bytes()
			if tn.msgs[i] == nil {
				if keywarden.CodeOf(err) != keywarden.CodeInvalidArgument {
					t.Fatalf("round %d: the decryption of garbage at %d: %v", round, i, err)
				}
				continue
			}
			if err != nil {
				t.Fatalf("round %d: operation %d: %v", round, i, err)
			}
			pt, err := k.Decrypt(ctx, ct, nil)
			if err != nil || !bytes.Equal(pt, tn.msgs[i]) {
				t.Fatalf("round %d: operation %d decrypts to %.30q (%v), want %.30q", round, i, pt, err, tn.msgs[i])
			}
		}
	}
	a := &turn{b: c.NewBatch()}
	b := &turn{b: c.NewBatch()}
	// Small batches go whole; those of 1,500 encryptions of 1 KiB bring
	// more replies than the Client lets be outstanding, so Send leaves
	// part of them to Wait.
	for _, sz := range []struct{ n, size int }{{100, 0}, {1500, 1 << 10}} {
		fill(a, 0, sz.n, sz.size)
		if err := a.b.Send(ctx); err != nil {
			t.Fatal(err)
		}
		for round := 1; round <= 4; round++ {
			fill(b, round, sz.n, sz.size)
			if err := b.b.Send(ctx); err != nil {
				t.Fatal(err)
			}
			if err := a.b.Wait(ctx); err != nil {
				t.Fatal(err)
			}
			check(a, round-1)
			a, b = b, a
		}
		if err := a.b.Wait(ctx); err != nil {
			t.Fatal(err)
		}
		check(a, 4)
	}
	// Wait with nothing sent, and a second Send before Wait.
	if err := a.b.Wait(ctx); err != nil {
		t.Fatalf("Wait with nothing sent: %v", err)
	}
	fill(a, 5, 10, 0)
	if err := a.b.Send(ctx); err != nil {
		t.Fatal(err)
	}
	if err := a.b.Send(ctx); keywarden.CodeOf(err) != keywarden.CodeInvalidArgument {
		t.Fatalf("a second Send before Wait: %v", err)
	}
	// A Reset between Send and Wait leaves the operations sent to Wait.
	res := a.res
	a.b.Reset()
	if err := a.b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	a.res = res
	check(a, 5)
}

// Waiting for batches out of the order they were sent does not hang, even
// when the first holds all the room for replies and the second has to
// send part of itself from Wait.
func TestBatchWaitOutOfOrder(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dial(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 4<<10)
	batch := func(n int) (*keywarden.Batch, []*keywarden.BatchResult) {
		b := c.NewBatch()
		var res []*keywarden.BatchResult
		for range n {
			res = append(res, b.Encrypt(k, msg, nil))
		}
		return b, res
	}
	first, r1 := batch(400)
	second, r2 := batch(400)
	if err := first.Send(ctx); err != nil {
		t.Fatal(err)
	}
	if err := second.Send(ctx); err != nil {
		t.Fatal(err)
	}
	if err := second.Wait(ctx); err != nil {
		t.Fatalf("the second batch: %v", err)
	}
	if err := first.Wait(ctx); err != nil {
		t.Fatalf("the first batch: %v", err)
	}
	for i, r := range append(r1, r2...) {
		if err := r.Err(); err != nil {
			t.Fatalf("operation %d: %v", i, err)
		}
	}
}

// A cancelled Send fails every operation and needs no Wait; a Wait whose
// context ends returns, fails what had no reply, and leaves the Client
// usable, its room for replies given back.
func TestBatchSendWaitCancel(t *testing.T) {
	c := dial(t)
	k, err := c.Generate(context.Background(), keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	msg := make([]byte, 1<<10)
	b := c.NewBatch()
	var res []*keywarden.BatchResult
	for range 1500 {
		res = append(res, b.Encrypt(k, msg, nil))
	}
	done, cancel := context.WithCancel(context.Background())
	cancel()
	if err := b.Send(done); !errors.Is(err, context.Canceled) {
		t.Fatalf("Send with a cancelled context: %v", err)
	}
	for i, r := range res {
		if !errors.Is(r.Err(), context.Canceled) {
			t.Fatalf("operation %d: %v", i, r.Err())
		}
	}
	if err := b.Wait(context.Background()); err != nil {
		t.Fatalf("Wait after a failed Send: %v", err)
	}

	// Twice: the replies given up on stay in the socket until read, and
	// the room they take is not given back before.
	for range 2 {
		if err := b.Send(context.Background()); err != nil {
			t.Fatal(err)
		}
		if err := b.Wait(done); !errors.Is(err, context.Canceled) {
			t.Fatalf("Wait with a cancelled context: %v", err)
		}
		for i, r := range res {
			if r.Err() != nil && !errors.Is(r.Err(), context.Canceled) {
				t.Fatalf("operation %d: %v", i, r.Err())
			}
		}
	}
	// The room is back: a batch as large goes, and so does a call.
	if err := b.Do(context.Background()); err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		if r.Err() != nil {
			t.Fatalf("operation %d after the cancelled Wait: %v", i, r.Err())
		}
	}
	if err := c.Ping(context.Background(), []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// A batch pinned to a generation by Send's context stays pinned for what
// Wait sends: a change of generation between them fails those operations
// with GENERATION_CHANGED, those sent before the change succeed, and a
// batch sent after it under the old generation fails whole.
func TestBatchSendWaitGenerationChange(t *testing.T) {
	requireBump(t)
	ctx := context.Background()
	c := dial(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	g, err := c.Generation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	pinned := keywarden.WithGeneration(ctx, g.Generation)
	msg := make([]byte, 1<<10)
	b := c.NewBatch()
	var res []*keywarden.BatchResult
	for range 1500 {
		res = append(res, b.Encrypt(k, msg, nil))
	}
	if err := b.Send(pinned); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Admin().BumpGeneration(ctx, nil); err != nil {
		t.Fatal(err)
	}
	late := c.NewBatch()
	lateRes := late.MAC(k, msg)
	if err := late.Send(pinned); err != nil {
		t.Fatal(err)
	}
	// Waited for without the pin: what is left still goes pinned.
	if err := b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	ok, changed := 0, 0
	for i, r := range res {
		switch err := r.Err(); {
		case err == nil:
			if changed > 0 {
				t.Fatalf("operation %d succeeded after %d refused", i, changed)
			}
			ok++
		case errors.Is(err, keywarden.ErrGenerationChanged):
			changed++
		default:
			t.Fatalf("operation %d: %v", i, err)
		}
	}
	if ok == 0 || changed == 0 {
		t.Fatalf("%d sent before the change succeeded, %d after it refused: want some of each", ok, changed)
	}
	if err := late.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	if !errors.Is(lateRes.Err(), keywarden.ErrGenerationChanged) {
		t.Fatalf("a batch sent pinned to the old generation: %v", lateRes.Err())
	}
}

// Two batches in turn: one is queued and sent while the daemon executes
// the other, so that this process and the daemon work at once.
func ExampleBatch_Send() {
	ctx := context.Background()
	client, err := keywarden.Dial(ctx, "")
	if err != nil {
		fmt.Println(err)
		return
	}
	defer client.Close()
	key, err := client.Generate(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true})
	if err != nil {
		fmt.Println(err)
		return
	}
	type turn struct {
		b   *keywarden.Batch
		res []*keywarden.BatchResult
	}
	queue := func(t *turn, round int) error {
		t.b.Recycle() // the results of its last round are read: reuse its memory
		t.res = t.res[:0]
		for i := range 1000 {
			t.res = append(t.res, t.b.MAC(key, fmt.Appendf(nil, "round %d record %d", round, i)))
		}
		return t.b.Send(ctx)
	}
	tags := 0
	read := func(t *turn) error {
		if err := t.b.Wait(ctx); err != nil {
			return err
		}
		for _, r := range t.res {
			if _, err := r.Bytes(); err != nil {
				return err
			}
			tags++
		}
		return nil
	}
	a, b := &turn{b: client.NewBatch()}, &turn{b: client.NewBatch()}
	if err := queue(a, 0); err != nil {
		fmt.Println(err)
		return
	}
	for round := 1; round < 10; round++ {
		if err := queue(b, round); err != nil { // b goes behind a
			fmt.Println(err)
			return
		}
		if err := read(a); err != nil { // a's results, while b is in the daemon
			fmt.Println(err)
			return
		}
		a, b = b, a
	}
	if err := read(a); err != nil {
		fmt.Println(err)
		return
	}
	fmt.Println(tags, "tags")
	// Output: 10000 tags
}

// A Reset between Send and Wait leaves the operations sent to Wait, the
// part of a large batch that Send could not send at once included: Wait
// sends them as they were queued, packed runs and all.
func TestBatchResetBeforeWaitSendsTheRest(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c := dial(t)
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	b := c.NewBatch()
	var res []*keywarden.BatchResult
	msgs := make([][]byte, 1500) // more replies than the Client lets be outstanding
	for i := range msgs {
		msgs[i] = bytes.Repeat([]byte{byte(i)}, 1<<10)
		res = append(res, b.Encrypt(k, msgs[i], nil))
	}
	if err := b.Send(ctx); err != nil {
		t.Fatal(err)
	}
	b.Reset()
	if err := b.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	for i, r := range res {
		ct, err := r.Bytes()
		if err != nil {
			t.Fatalf("encryption %d: %v", i, err)
		}
		if i%100 == 0 {
			if pt, err := k.Decrypt(ctx, ct, nil); err != nil || !bytes.Equal(pt, msgs[i]) {
				t.Fatalf("encryption %d decrypts to another message (%v)", i, err)
			}
		}
	}
}

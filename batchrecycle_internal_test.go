package keywarden

import (
	"bytes"
	"context"
	"testing"
)

// Recycle wipes the replies earlier results point into and receives the
// next replies into the same memory; the results stay right.
func TestBatchRecycle(t *testing.T) {
	ctx := context.Background()
	c, err := Dial(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, err := c.Generate(ctx, KeySpec{Type: HMACSHA256, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	want, err := k.MAC(ctx, []byte("message"))
	if err != nil {
		t.Fatal(err)
	}
	b := c.NewBatch()
	round := func() []*BatchResult {
		t.Helper()
		var res []*BatchResult
		for range 600 {
			res = append(res, b.MAC(k, []byte("message")))
		}
		if err := b.Do(ctx); err != nil {
			t.Fatal(err)
		}
		for i, r := range res {
			if d, err := r.Bytes(); err != nil || !bytes.Equal(d, want) {
				t.Fatalf("operation %d: %x %v", i, d, err)
			}
		}
		return res
	}
	round()
	b.Recycle() // from now on replies go into buffers the batch keeps
	res := round()
	if len(b.usedBufs) == 0 {
		t.Fatal("no reply received into a kept buffer")
	}
	kept := map[*byte]bool{}
	for _, buf := range b.usedBufs {
		kept[&buf[:1][0]] = true
	}
	old, _ := res[0].Bytes()
	b.Recycle()
	if !bytes.Equal(old, make([]byte, len(old))) {
		t.Fatal("a recycled result's bytes were not wiped")
	}
	round()
	for _, buf := range b.usedBufs {
		if !kept[&buf[:1][0]] {
			t.Fatal("a reply went into new memory after Recycle")
		}
	}
	// Reset keeps the results: nothing is wiped or reused.
	res = round()
	old, _ = res[0].Bytes()
	b.Reset()
	round()
	if !bytes.Equal(old, want) {
		t.Fatal("Reset disturbed an earlier result")
	}
}

// A recycled batch queues its operations again in the memory of the
// earlier ones: queuing allocates nothing.
func TestBatchRecycleQueuesInPlace(t *testing.T) {
	c := &Client{limits: Limits{MaxMessageBytes: 256 << 10, MaxInFlight: 64, MaxBatchOps: 4096, PackedRuns: true}}
	k := &Key{c: c, handle: 1, typ: AES256GCM, info: KeyInfo{Type: AES256GCM}}
	b := c.NewBatch()
	pt := make([]byte, 256)
	queue := func() {
		b.Recycle()
		for range 512 {
			b.Encrypt(k, pt, nil)
			b.Decrypt(k, pt, nil)
			b.MAC(k, pt)
		}
	}
	queue()
	queue()
	if n := testing.AllocsPerRun(20, queue); n != 0 {
		t.Fatalf("%.0f allocations to queue 1,536 operations on a recycled batch", n)
	}
	if b.Len() != 3*512 {
		t.Fatalf("%d operations queued", b.Len())
	}
}

// A batch recycled once and then only Reset keeps the results of every
// round valid and holds on to none of their memory.
func TestBatchResetAfterRecycle(t *testing.T) {
	ctx := context.Background()
	c, err := Dial(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	k, err := c.Generate(ctx, KeySpec{Type: HMACSHA256, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	want, err := k.MAC(ctx, []byte("message"))
	if err != nil {
		t.Fatal(err)
	}
	b := c.NewBatch()
	b.Recycle()
	var all []*BatchResult
	for range 5 {
		for range 300 {
			all = append(all, b.MAC(k, []byte("message")))
		}
		if err := b.Do(ctx); err != nil {
			t.Fatal(err)
		}
		b.Reset()
		if len(b.usedBufs) != 0 || len(b.opSlab.chunks) != 0 || len(b.resSlab.chunks) != 0 {
			t.Fatalf("after Reset the batch keeps %d replies and %d chunks of operations", len(b.usedBufs), len(b.opSlab.chunks))
		}
	}
	for i, r := range all {
		if d, err := r.Bytes(); err != nil || !bytes.Equal(d, want) {
			t.Fatalf("result %d: %x %v", i, d, err)
		}
	}
}

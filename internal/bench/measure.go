package bench

import (
	"context"
	"fmt"
	"math"
	"math/rand/v2"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/keywarden/keywarden"
)

// maxSamples bounds the latency samples kept per measurement. Beyond it a
// sampler keeps a uniform random sample (reservoir sampling), so long
// measurements use bounded memory; at the default duration every sample
// is kept.
const maxSamples = 1 << 20

// groupTarget is how long a timed group of in-process operations should
// take, so that reading the clock costs little next to the operations.
const groupTarget = 10 * time.Microsecond

// sampler collects latency samples, in nanoseconds.
type sampler struct {
	ns   []int64
	max  int
	seen int
}

func newSampler(max int) *sampler { return &sampler{max: max} }

func (s *sampler) add(d time.Duration) {
	s.seen++
	if len(s.ns) < s.max {
		s.ns = append(s.ns, int64(d))
		return
	}
	if j := rand.IntN(s.seen); j < len(s.ns) {
		s.ns[j] = int64(d)
	}
}

// percentile returns the p-th percentile (0 < p ≤ 1, nearest rank) of
// sorted samples, in microseconds, divided by div.
func percentile(sorted []int64, p float64, div int) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(math.Ceil(p*float64(len(sorted)))) - 1
	i = max(0, min(i, len(sorted)-1))
	return float64(sorted[i]) / float64(div) / 1e3
}

// measurement is what one timing loop observed.
type measurement struct {
	ops     int
	elapsed time.Duration
	// lat holds per-operation latencies, except in the batched mode, where
	// it holds per-batch latencies and batch is the batch size.
	lat      []int64
	batch    int
	pipeline int
	clients  int
}

func (m measurement) result(op operation, mode string) Result {
	r := Result{Op: op.name, Mode: mode, Ops: m.ops, Seconds: m.elapsed.Seconds(), Bytes: int64(op.size),
		Batch: m.batch, Pipeline: m.pipeline, Clients: m.clients}
	if m.elapsed > 0 {
		r.OpsPerSec = float64(m.ops) / m.elapsed.Seconds()
		r.MBPerSec = r.OpsPerSec * float64(op.size) / 1e6
	}
	slices.Sort(m.lat)
	div := max(1, m.batch)
	r.P50us = percentile(m.lat, 0.50, div)
	r.P99us = percentile(m.lat, 0.99, div)
	if m.batch > 0 {
		r.BatchP50us = percentile(m.lat, 0.50, 1)
		r.BatchP99us = percentile(m.lat, 0.99, 1)
	}
	return r
}

// measureInProcess runs fn in a loop on this goroutine: first for warmup,
// one at a time, to learn how many calls make a group of about
// groupTarget, then for d in groups, timing each group.
func measureInProcess(ctx context.Context, fn func() error, warmup, d time.Duration) (measurement, error) {
	runtime.GC()
	w, err := inProcessLoop(ctx, fn, 1, warmup)
	if err != nil {
		return w, err
	}
	group := 1
	if w.ops > 0 {
		per := w.elapsed / time.Duration(w.ops)
		group = int(min(4096, max(1, groupTarget/max(per, 1))))
	}
	return inProcessLoop(ctx, fn, group, d)
}

func inProcessLoop(ctx context.Context, fn func() error, group int, d time.Duration) (measurement, error) {
	s := newSampler(maxSamples)
	m := measurement{}
	start := time.Now()
	for {
		t0 := time.Now()
		for range group {
			if err := fn(); err != nil {
				return m, err
			}
		}
		t1 := time.Now()
		m.ops += group
		s.add(t1.Sub(t0) / time.Duration(group))
		if t1.Sub(start) >= d {
			break
		}
		if err := ctx.Err(); err != nil {
			return m, err
		}
	}
	m.elapsed = time.Since(start)
	m.lat = s.ns
	return m, nil
}

// measureRoundTrip calls one in a loop on this goroutine for d, timing
// each call.
func measureRoundTrip(ctx context.Context, one func(context.Context) error, d time.Duration) (measurement, error) {
	s := newSampler(maxSamples)
	m := measurement{}
	start := time.Now()
	for {
		t0 := time.Now()
		if err := one(ctx); err != nil {
			return m, err
		}
		t1 := time.Now()
		m.ops++
		s.add(t1.Sub(t0))
		if t1.Sub(start) >= d {
			break
		}
	}
	m.elapsed = time.Since(start)
	m.lat = s.ns
	return m, nil
}

// measurePipelined calls one in a loop on n goroutines for d, timing each
// call. The goroutines share one Client, so their requests are in flight
// on its connection together.
func measurePipelined(ctx context.Context, one func(context.Context) error, n int, d time.Duration) (measurement, error) {
	var (
		wg       sync.WaitGroup
		stop     atomic.Bool
		errOnce  sync.Once
		firstErr error
	)
	counts := make([]int, n)
	samplers := make([]*sampler, n)
	start := time.Now()
	for g := range n {
		samplers[g] = newSampler(maxSamples / n)
		wg.Go(func() {
			s := samplers[g]
			for !stop.Load() {
				t0 := time.Now()
				if err := one(ctx); err != nil {
					errOnce.Do(func() { firstErr = err })
					stop.Store(true)
					return
				}
				t1 := time.Now()
				counts[g]++
				s.add(t1.Sub(t0))
				if t1.Sub(start) >= d {
					return
				}
			}
		})
	}
	wg.Wait()
	m := measurement{elapsed: time.Since(start), pipeline: n}
	if firstErr != nil {
		return m, firstErr
	}
	for g := range n {
		m.ops += counts[g]
		m.lat = append(m.lat, samplers[g].ns...)
	}
	return m, nil
}

// measureBatched queues size operations on a Batch and sends them, in a
// loop on this goroutine for d, with two batches in turn as the client
// library lets a caller keep them: one is queued and sent while the other
// is in the daemon, then the older one's results are waited for and
// checked (Batch.Send, Batch.Wait). Each batch is timed from the first
// operation queued to the end of its Wait, which includes the time it
// spends behind the batch before it.
func measureBatched(ctx context.Context, c *keywarden.Client, queue func(*keywarden.Batch) *keywarden.BatchResult, size int, d time.Duration) (measurement, error) {
	s := newSampler(maxSamples)
	m := measurement{batch: size}
	type turn struct {
		b   *keywarden.Batch
		res []*keywarden.BatchResult
		t0  time.Time
	}
	send := func(t *turn) error {
		t.t0 = time.Now()
		t.b.Recycle()
		for i := range t.res {
			t.res[i] = queue(t.b)
		}
		return t.b.Send(ctx)
	}
	wait := func(t *turn) (time.Time, error) {
		err := t.b.Wait(ctx)
		t1 := time.Now()
		if err != nil {
			return t1, err
		}
		for _, r := range t.res {
			if err := r.Err(); err != nil {
				return t1, fmt.Errorf("an operation of the batch failed: %w", err)
			}
		}
		s.add(t1.Sub(t.t0))
		m.ops += size
		return t1, nil
	}
	older := &turn{b: c.NewBatch(), res: make([]*keywarden.BatchResult, size)}
	newer := &turn{b: c.NewBatch(), res: make([]*keywarden.BatchResult, size)}
	start := time.Now()
	if err := send(older); err != nil {
		return m, err
	}
	for {
		if err := send(newer); err != nil {
			older.b.Wait(ctx)
			return m, err
		}
		t1, err := wait(older)
		if err != nil {
			newer.b.Wait(ctx)
			return m, err
		}
		older, newer = newer, older
		if t1.Sub(start) >= d {
			break
		}
	}
	// The batch still in flight is waited for and counted: the time
	// measured is that of every operation counted.
	t1, err := wait(older)
	if err != nil {
		return m, err
	}
	m.elapsed = t1.Sub(start)
	m.lat = s.ns
	return m, nil
}

package cluster

import (
	"cmp"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/keywarden/keywarden"
)

// The history of lifecycle operations made by clients of the three
// daemons at once (create, rotate, destroy, and reads: open a key by name
// and see its version) is linearizable per key, with reads allowed the
// staleness the daemons promise: a write that succeeded took effect at
// one instant between its call and its return, in an order the model of
// a key allows (a rotation makes the next version of a key that exists;
// a create needs no key of that name; a destroy of a key already gone
// changes nothing); a read saw the state of some instant between its
// return and its call less the bound (a daemon may serve a key for up to
// the bound after a change it has not seen: docs/cluster.md). A write
// that failed with UNAVAILABLE may or may not have taken effect; any
// other refusal took none. Each name is created once.
func TestClusterHistoryLinearizable(t *testing.T) {
	_, nodes := cluster(t)
	// The bound (1 s), plus the period of the check that enforces it
	// (100 ms) and, generously, how late that check may run on a loaded
	// machine (docs/cluster.md, "Staleness").
	const staleness = 2 * time.Second

	type input struct {
		op  string // create, rotate, destroy, read
		key string
	}
	type output struct {
		ok, unknown bool
		exists      bool   // read
		version     uint32 // rotate, read
	}
	type state struct {
		exists  bool
		version uint32
	}

	t0 := time.Now()
	var mu sync.Mutex
	var history []porcupine.Operation
	record := func(client int, in input, call time.Time, out output) {
		c, ret := call.Sub(t0).Nanoseconds(), time.Since(t0).Nanoseconds()
		if in.op == "read" {
			c -= staleness.Nanoseconds()
		}
		if out.unknown {
			ret = math.MaxInt64 // it may take effect at any time after its call
		}
		mu.Lock()
		history = append(history, porcupine.Operation{ClientId: client, Input: in, Call: c, Output: out, Return: ret})
		mu.Unlock()
	}
	outcome := func(err error) output {
		switch {
		case err == nil:
			return output{ok: true}
		case errors.Is(err, keywarden.ErrUnavailable):
			return output{unknown: true}
		}
		return output{} // refused: no effect
	}
	var names []string
	for i := range 8 {
		names = append(names, fmt.Sprintf("h%d", i))
	}
	created := map[string]bool{}
	var wg sync.WaitGroup
	deadline := time.Now().Add(5 * time.Second)
	for n, nd := range nodes {
		for w := range 2 {
			client := 2*n + w
			cl := nd.client(t)
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(client), 11))
				for time.Now().Before(deadline) {
					in := input{key: names[r.IntN(len(names))]}
					switch p := r.IntN(20); {
					case p < 3:
						in.op = "create"
					case p < 10:
						in.op = "rotate"
					case p < 11:
						in.op = "destroy"
					default:
						in.op = "read"
					}
					call := time.Now()
					switch in.op {
					case "create":
						mu.Lock()
						again := created[in.key]
						created[in.key] = true
						mu.Unlock()
						if again {
							continue
						}
						k, err := cl.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: in.key})
						record(client, in, call, outcome(err))
						if err == nil {
							// Destroy needs it; changes neither existence nor version.
							k.SetLifecycle(ctx, keywarden.LifecycleChange{DeletionAllowed: &yes})
							k.Close(ctx)
						}
					case "read":
						k, err := cl.Open(ctx, in.key)
						switch {
						case err == nil:
							record(client, in, call, output{ok: true, exists: true, version: k.Info().Version})
							k.Close(ctx)
						case errors.Is(err, keywarden.ErrNotFound):
							record(client, in, call, output{ok: true})
						}
						// UNAVAILABLE: the daemon told nothing.
					default:
						k, err := cl.Open(ctx, in.key)
						if err != nil {
							continue // nothing done
						}
						var out output
						if in.op == "rotate" {
							info, err := k.Rotate(ctx)
							out = outcome(err)
							out.version = info.Version
						} else {
							out = outcome(k.Destroy(ctx))
						}
						k.Close(ctx)
						record(client, in, call, out)
					}
				}
			}()
		}
	}
	wg.Wait()

	model := porcupine.NondeterministicModel{
		Partition: func(h []porcupine.Operation) [][]porcupine.Operation {
			by := map[string][]porcupine.Operation{}
			for _, op := range h {
				k := op.Input.(input).key
				by[k] = append(by[k], op)
			}
			var parts [][]porcupine.Operation
			for _, p := range by {
				parts = append(parts, p)
			}
			return parts
		},
		Init: func() []interface{} { return []interface{}{state{}} },
		Step: func(st, in, out interface{}) []interface{} {
			s, i, o := st.(state), in.(input), out.(output)
			if i.op == "read" {
				if o.exists == s.exists && (!s.exists || o.version == s.version) {
					return []interface{}{s}
				}
				return nil
			}
			var done state
			can := false
			switch i.op {
			case "create":
				can, done = !s.exists, state{true, 1}
			case "rotate":
				can, done = s.exists && (o.unknown || o.version == s.version+1), state{true, s.version + 1}
			case "destroy":
				can, done = true, state{}
			}
			switch {
			case o.unknown && can:
				return []interface{}{s, done}
			case o.unknown, !o.ok:
				return []interface{}{s}
			case can:
				return []interface{}{done}
			}
			return nil
		},
		DescribeOperation: func(in, out interface{}) string { return fmt.Sprintf("%v -> %+v", in, out) },
	}
	count := map[string]int{}
	for _, op := range history {
		if op.Output.(output).ok {
			count[op.Input.(input).op]++
		}
	}
	t.Logf("%d operations; succeeded: %v", len(history), count)
	if count["rotate"] < 10 || count["read"] < 10 || count["create"] < 4 {
		t.Fatalf("too few operations succeeded to check much: %v", count)
	}
	// Each key is checked alone (the model's partitions). A check that
	// runs out of time (porcupine.Unknown: many reads whose windows the
	// staleness allowance widens, on a loaded machine) proves nothing
	// either way: it is reported, and only a history found illegal fails.
	inconclusive := 0
	budget := time.Now().Add(90 * time.Second) // for all keys together
	for _, part := range model.Partition(history) {
		switch porcupine.CheckOperationsTimeout(model.ToModel(), part, max(time.Until(budget), time.Second)) {
		case porcupine.Ok:
			continue
		case porcupine.Unknown:
			inconclusive++
			continue
		}
		// Name the key whose history fails, and list it.
		slices.SortFunc(part, func(x, y porcupine.Operation) int { return cmp.Compare(x.Call, y.Call) })
		for _, op := range part {
			ret := "never"
			if op.Return != math.MaxInt64 {
				ret = fmt.Sprintf("%.3fs", float64(op.Return)/1e9)
			}
			t.Logf("client %d: %.3fs..%s %v -> %+v", op.ClientId, float64(op.Call)/1e9, ret, op.Input, op.Output)
		}
		t.Fatalf("the history of %d operations is not linearizable: the key above", len(history))
	}
	if inconclusive > 0 {
		t.Logf("the check of %d keys' histories ran out of time: not checked", inconclusive)
	}
}

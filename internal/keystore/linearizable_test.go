package keystore

import (
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"sort"
	"sync"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/wire"
)

// The lifecycle operations (create, rotate, destroy) made by three
// daemons on a three-member cluster, one member of which is killed and
// restarted during the run, form a linearizable history of each key:
// every operation that succeeded took effect at one instant between its
// call and its return, in an order that the model of a key allows (a
// rotation makes the next version of a key that exists; a create needs no
// key of that name; a destroy of a key already gone succeeds and changes
// nothing). An operation that failed for the store's sake (no answer in
// time) may or may not have taken effect; one refused took none. Each
// name is created once: a destroy acts on a key, not on a name, and a
// name made again is another key.
func TestClusterLifecycleLinearizable(t *testing.T) {
	c := etcdtest.Start(t, 3)
	eps := c.Endpoints()
	nodes := []*Store{clusterNode(t, eps, "/linear/", true)}
	for i := 1; i < 3; i++ {
		nodes = append(nodes, clusterNode(t, append([]string{eps[i]}, eps...), "/linear/", false))
	}

	type input struct {
		op  string // create, rotate, destroy
		key string
	}
	type output struct {
		ok, unknown bool
		version     uint32
		err         string // for the failure's log only: the model ignores it
	}
	type state struct {
		exists  bool
		version uint32
	}

	// Daemons lag: each commit reaches a follower up to 30 ms late, as on
	// a loaded machine, so that operations meet states others replaced.
	lag := func(*Store) { time.Sleep(time.Duration(rand.IntN(30)) * time.Millisecond) }
	hookFollowApply.Store(&lag)
	defer hookFollowApply.Store(nil)

	t0 := time.Now()
	var mu sync.Mutex
	var history []porcupine.Operation
	record := func(client int, in input, call time.Time, out output) {
		ret := time.Since(t0).Nanoseconds()
		if out.unknown {
			ret = math.MaxInt64 // it may take effect at any time after its call
		}
		mu.Lock()
		history = append(history, porcupine.Operation{ClientId: client, Input: in, Call: call.Sub(t0).Nanoseconds(), Output: out, Return: ret})
		mu.Unlock()
	}
	// outcome classifies an error: refused (no effect) or unknown.
	outcome := func(err error) output {
		if err == nil {
			return output{ok: true}
		}
		switch wire.StatusOf(err) {
		case wire.Status_STATUS_UNAVAILABLE:
			if errors.Is(err, errRaced) || errors.Is(err, errStale) {
				return output{err: err.Error()}
			}
			return output{unknown: true, err: err.Error()}
		case wire.Status_STATUS_INTERNAL:
			t.Errorf("an integrity failure during the run: %v", err)
		}
		return output{err: err.Error()}
	}
	keys := []string{"k0", "k1", "k2", "k3", "k4"}
	created := map[string]bool{}
	var wg sync.WaitGroup
	deadline := time.Now().Add(4 * time.Second)
	for n, s := range nodes {
		for w := range 2 {
			client := 2*n + w
			wg.Add(1)
			go func() {
				defer wg.Done()
				r := rand.New(rand.NewPCG(uint64(client), 7))
				for time.Now().Before(deadline) {
					in := input{key: keys[r.IntN(len(keys))]}
					switch p := r.IntN(30); {
					case p < 1:
						in.op = "create"
					case p < 29:
						in.op = "rotate"
					default:
						in.op = "destroy"
					}
					call := time.Now()
					if in.op == "create" {
						mu.Lock()
						again := created[in.key]
						created[in.key] = true
						mu.Unlock()
						if again {
							continue
						}
						err := s.Add(obj(t, 1, in.key, false))
						if wire.StatusOf(err) == wire.Status_STATUS_ALREADY_EXISTS {
							err = nil
							record(client, in, call, output{err: "already exists"})
							continue
						}
						record(client, in, call, outcome(err))
						continue
					}
					o, err := s.Lookup(1, in.key)
					if err != nil {
						record(client, in, call, output{err: "lookup: " + err.Error()}) // nothing done
						continue
					}
					var out output
					if in.op == "rotate" {
						v, err := s.Rotate(o)
						out = outcome(err)
						if err == nil {
							out.version = v.N
						}
					} else {
						out = outcome(s.Remove(o))
					}
					s.Release(o)
					record(client, in, call, out)
				}
			}()
		}
	}
	time.Sleep(1500 * time.Millisecond)
	c.Kill(1)
	time.Sleep(1500 * time.Millisecond)
	c.Restart(1)
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
		DescribeOperation: func(in, out interface{}) string {
			return fmt.Sprintf("%v -> %+v", in, out)
		},
	}
	var oks int
	for _, op := range history {
		if op.Output.(output).ok {
			oks++
		}
	}
	t.Logf("%d operations, %d of them succeeded", len(history), oks)
	if oks < 20 {
		t.Fatalf("only %d operations succeeded: the run checks little", oks)
	}
	res := porcupine.CheckOperationsTimeout(model.ToModel(), history, 30*time.Second)
	if res != porcupine.Ok {
		// Name the key whose history is illegal and log it in call order.
		for _, part := range model.Partition(history) {
			if porcupine.CheckOperationsTimeout(model.ToModel(), part, 30*time.Second) == porcupine.Ok {
				continue
			}
			sort.Slice(part, func(i, j int) bool { return part[i].Call < part[j].Call })
			t.Logf("the history of key %s is illegal:", part[0].Input.(input).key)
			for _, op := range part {
				ret := "never"
				if op.Return != math.MaxInt64 {
					ret = time.Duration(op.Return).String()
				}
				t.Logf("  node %d client %d %-7s call %-12v return %-12s %+v", op.ClientId/2, op.ClientId, op.Input.(input).op, time.Duration(op.Call), ret, op.Output)
			}
		}
		t.Fatalf("the history of lifecycle operations is not linearizable (%v)", res)
	}
}

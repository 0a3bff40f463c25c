package bench_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/bench"
	"github.com/keywarden/keywarden/internal/bench/storebench"
	"github.com/keywarden/keywarden/internal/cli"
	"github.com/keywarden/keywarden/internal/kdf"
)

// daemonEnv makes the test binary run as the keywarden command, so that
// it can be the private daemon.
const daemonEnv = "KEYWARDEN_BENCH_DAEMON"

func TestMain(m *testing.M) {
	// A daemon with a persistent store starts its binary, this one, as
	// its Argon2id worker, with an empty environment.
	if kdf.IsWorker(os.Args) {
		os.Exit(kdf.WorkerMain())
	}
	if bench.IsEcho(os.Args) {
		os.Exit(bench.EchoMain())
	}
	if os.Getenv(daemonEnv) == "1" {
		os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	code := m.Run()
	if err := stopShared(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		code = 1
	}
	os.Exit(code)
}

// daemonConfig makes Run start the test binary as its daemon.
func daemonConfig(t testing.TB) (executable string, env []string) {
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	return self, []string{daemonEnv + "=1"}
}

// Run measures only the modes asked for: ping's floor goes with its round
// trip, and the ratio to in-process is there when the in-process mode is.
func TestRunModes(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	results, err := bench.Run(ctx, bench.Config{
		Duration:   50 * time.Millisecond,
		Ops:        []string{"aes256-gcm-open-256", "ping"},
		Modes:      []string{bench.ModeBatched, bench.ModeInProcess},
		BatchSize:  64,
		Executable: exe,
		Env:        env,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range results {
		got = append(got, r.Op+" "+r.Mode)
		if r.Op != "ping" && r.RatioToInProcess <= 0 {
			t.Errorf("%s %s: ratio %v", r.Op, r.Mode, r.RatioToInProcess)
		}
	}
	if want := []string{"aes256-gcm-open-256 inprocess", "aes256-gcm-open-256 batched", "ping batched"}; !slices.Equal(got, want) {
		t.Errorf("measured %q, want %q", got, want)
	}
}

func TestRun(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where the private daemon's directory goes
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	results, err := bench.Run(ctx, bench.Config{
		Duration:   50 * time.Millisecond,
		Ops:        []string{"aes256-gcm-seal-256", "ping"},
		BatchSize:  64,
		Pipeline:   4,
		Executable: exe,
		Env:        env,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}

	type key struct{ op, mode string }
	want := []key{
		{"aes256-gcm-seal-256", bench.ModeInProcess}, {"aes256-gcm-seal-256", bench.ModeRoundTrip},
		{"aes256-gcm-seal-256", bench.ModePipelined}, {"aes256-gcm-seal-256", bench.ModeBatched},
		{"ping", bench.ModeFloor}, {"ping", bench.ModeRoundTrip}, {"ping", bench.ModePipelined}, {"ping", bench.ModeBatched},
	}
	var got []key
	daemonCPU := 0.0
	for _, r := range results {
		got = append(got, key{r.Op, r.Mode})
		// Each process's processor time per operation through the
		// daemon (the daemon's in clock ticks of 10 ms: over all the
		// modes).
		if through := r.Mode != bench.ModeInProcess && r.Mode != bench.ModeFloor; through != (r.CPUusPerOp > 0) || r.DaemonCPUusPerOp < 0 ||
			!through && r.DaemonCPUusPerOp != 0 {
			t.Errorf("%s %s: %v µs of processor time per operation, the daemon's %v", r.Op, r.Mode, r.CPUusPerOp, r.DaemonCPUusPerOp)
		}
		daemonCPU += r.DaemonCPUusPerOp
		if r.OpsPerSec <= 0 || r.Ops <= 0 || r.P50us <= 0 || r.P99us < r.P50us {
			t.Errorf("%s %s: ops %d, %v ops/s, p50 %v µs, p99 %v µs", r.Op, r.Mode, r.Ops, r.OpsPerSec, r.P50us, r.P99us)
		}
		switch {
		case r.Op == "ping" && (r.RatioToInProcess != 0 || r.MBPerSec != 0):
			t.Errorf("ping %s: ratio %v, %v MB/s; want 0 and 0", r.Mode, r.RatioToInProcess, r.MBPerSec)
		case r.Op != "ping" && (r.RatioToInProcess <= 0 || r.Bytes != 256 || r.MBPerSec <= 0):
			t.Errorf("%s %s: ratio %v, %d bytes, %v MB/s", r.Op, r.Mode, r.RatioToInProcess, r.Bytes, r.MBPerSec)
		case r.Mode == bench.ModeInProcess && r.RatioToInProcess != 1:
			t.Errorf("%s in-process ratio %v, want 1", r.Op, r.RatioToInProcess)
		case r.Mode == bench.ModeBatched && (r.Batch != 64 || r.BatchP50us < r.P50us):
			t.Errorf("%s batched: batch %d, batch p50 %v µs, p50 %v µs", r.Op, r.Batch, r.BatchP50us, r.P50us)
		case r.Mode == bench.ModePipelined && r.Pipeline != 4:
			t.Errorf("%s pipelined: pipeline %d, want 4", r.Op, r.Pipeline)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("measured %v, want %v", got, want)
	}
	if daemonCPU <= 0 {
		t.Error("no processor time of the daemon measured")
	}
	// Ping's round trip says what it costs over the floor.
	if i := slices.IndexFunc(results, func(r bench.Result) bool { return r.Mode == bench.ModeFloor }); i >= 0 && i+1 < len(results) {
		floor, rt := results[i], results[i+1]
		if want := max(0, rt.P50us-floor.P50us); rt.OverFloorP50us != want {
			t.Errorf("ping round trip %v µs over the floor, want %v (p50 %v, floor %v)", rt.OverFloorP50us, want, rt.P50us, floor.P50us)
		}
	}

	b, err := json.Marshal(results)
	if err != nil {
		t.Fatal(err)
	}
	var objs []map[string]any
	if err := json.Unmarshal(b, &objs); err != nil {
		t.Fatal(err)
	}
	for _, o := range objs {
		for _, k := range []string{"op", "mode", "ops_per_sec", "mb_per_sec", "p50_us", "p99_us", "ratio_to_inprocess"} {
			if _, ok := o[k]; !ok {
				t.Errorf("%v %v: JSON has no %q", o["op"], o["mode"], k)
			}
		}
	}

	// The daemon is gone, reaped, and its directory removed.
	var ws syscall.WaitStatus
	if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); !errors.Is(err, syscall.ECHILD) {
		t.Errorf("a child process is left (pid %d, %v)", pid, err)
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("left behind in the temporary directory: %v", left)
	}
}

// The 1 MiB operations are measured in-process and one at a time through
// the daemon, each answer checked once.
func TestRunLarge(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	results, err := bench.Run(ctx, bench.Config{
		Duration: 50 * time.Millisecond, Ops: []string{"aes256-gcm-seal-1m", "sha256-1m"},
		BatchSize: 64, Pipeline: 4, Executable: exe, Env: env,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range results {
		got = append(got, r.Op+" "+r.Mode)
		if r.Ops <= 0 || r.Bytes != 1<<20 || r.RatioToInProcess <= 0 {
			t.Errorf("%s %s: ops %d, %d bytes, ratio %v", r.Op, r.Mode, r.Ops, r.Bytes, r.RatioToInProcess)
		}
	}
	want := []string{"aes256-gcm-seal-1m " + bench.ModeInProcess, "aes256-gcm-seal-1m " + bench.ModeRoundTrip,
		"sha256-1m " + bench.ModeInProcess, "sha256-1m " + bench.ModeRoundTrip}
	if !slices.Equal(got, want) {
		t.Errorf("measured %v, want %v", got, want)
	}
}

func TestRunUnknownOp(t *testing.T) {
	_, err := bench.Run(context.Background(), bench.Config{Ops: []string{"rot13"}, Executable: "/nonexistent"}, nil)
	if err == nil {
		t.Fatal("Run accepted an unknown operation")
	}
}

func TestPercentile(t *testing.T) {
	var s []int64
	for i := 1; i <= 100; i++ {
		s = append(s, int64(i)*1000) // 1..100 µs
	}
	for _, tc := range []struct {
		samples []int64
		p, want float64
	}{
		{s, 0.50, 50}, {s, 0.99, 99}, {s, 1, 100}, {s[:1], 0.99, 1}, {nil, 0.5, 0},
	} {
		if got := bench.Percentile(tc.samples, tc.p); math.Abs(got-tc.want) > 1e-9 {
			t.Errorf("percentile %v of %d samples = %v µs, want %v", tc.p, len(tc.samples), got, tc.want)
		}
	}
}

func BenchmarkInProcess(b *testing.B) {
	for _, op := range bench.Ops() {
		fn, err := op.Local()
		if err != nil {
			b.Fatal(err)
		}
		if fn == nil {
			continue // no in-process equivalent
		}
		b.Run(op.Name, func(b *testing.B) {
			b.SetBytes(int64(op.Size))
			for b.Loop() {
				if err := fn(); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, b.N)
		})
	}
}

// The daemon the benchmarks share: started once per process, by the first
// benchmark that needs it, and stopped by TestMain.
var (
	sharedOnce   sync.Once
	sharedDaemon *bench.Daemon
	sharedErr    error
)

func shared(b *testing.B) string {
	sharedOnce.Do(func() {
		exe, env := daemonConfig(b)
		sharedDaemon, sharedErr = bench.StartDaemon(context.Background(), exe, env)
	})
	if sharedErr != nil {
		b.Fatal(sharedErr)
	}
	return sharedDaemon.Socket()
}

func stopShared() error {
	if sharedDaemon == nil {
		return nil
	}
	return sharedDaemon.Stop()
}

// The pipelined and batched benchmarks use Run's defaults.
const (
	pipeline  = 16
	batchSize = 512
)

func BenchmarkDaemon(b *testing.B) {
	ctx := context.Background()
	c, err := keywarden.Dial(ctx, shared(b))
	if err != nil {
		b.Fatal(err)
	}
	defer c.Close()
	for _, op := range bench.Ops() {
		b.Run(op.Name, func(b *testing.B) {
			one, queue, closeKey, err := op.Remote(ctx, c)
			if err != nil {
				b.Fatal(err)
			}
			defer closeKey(ctx)
			b.Run(bench.ModeRoundTrip, func(b *testing.B) {
				b.SetBytes(int64(op.Size))
				lat := make([]int64, 0, 1<<16)
				for b.Loop() {
					t0 := time.Now()
					if err := one(ctx); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, int64(time.Since(t0)))
				}
				reportRate(b, b.N)
				reportLatency(b, lat, "")
			})
			b.Run(bench.ModePipelined, func(b *testing.B) {
				if queue == nil {
					b.Skip("large messages are measured one at a time")
				}
				b.SetBytes(int64(op.Size))
				b.SetParallelism((pipeline + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0))
				var mu sync.Mutex
				var lat []int64
				b.RunParallel(func(pb *testing.PB) {
					var mine []int64
					for pb.Next() {
						t0 := time.Now()
						if err := one(ctx); err != nil {
							b.Error(err)
							return
						}
						mine = append(mine, int64(time.Since(t0)))
					}
					mu.Lock()
					lat = append(lat, mine...)
					mu.Unlock()
				})
				reportRate(b, b.N)
				reportLatency(b, lat, "")
			})
			b.Run(bench.ModeBatched, func(b *testing.B) {
				if queue == nil {
					b.Skip("large messages are measured one at a time")
				}
				// One iteration is one batch.
				b.SetBytes(int64(op.Size) * batchSize)
				bt := c.NewBatch()
				res := make([]*keywarden.BatchResult, batchSize)
				var lat []int64
				for b.Loop() {
					t0 := time.Now()
					bt.Reset()
					for i := range res {
						res[i] = queue(bt)
					}
					if err := bt.Do(ctx); err != nil {
						b.Fatal(err)
					}
					lat = append(lat, int64(time.Since(t0)))
					for _, r := range res {
						if err := r.Err(); err != nil {
							b.Fatal(err)
						}
					}
				}
				reportRate(b, b.N*batchSize)
				reportLatency(b, lat, "batch-")
			})
		})
	}
}

// reportRate reports operations per second.
func reportRate(b *testing.B, ops int) {
	if s := b.Elapsed().Seconds(); s > 0 {
		b.ReportMetric(float64(ops)/s, "ops/s")
	}
}

// reportLatency reports the median and 99th percentile of lat.
func reportLatency(b *testing.B, lat []int64, prefix string) {
	if len(lat) == 0 {
		return
	}
	slices.Sort(lat)
	b.ReportMetric(bench.Percentile(lat, 0.50), prefix+"p50-µs")
	b.ReportMetric(bench.Percentile(lat, 0.99), prefix+"p99-µs")
}

func TestRunCreate(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp) // where the private daemons' directories go
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var counted []int
	results, err := bench.RunCreate(ctx, bench.CreateConfig{
		Clients: []int{1, 3}, Duration: 100 * time.Millisecond, Runs: 2, Dir: tmp,
		Passphrase: []byte(storebench.Passphrase), Argon2: keywarden.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1},
		InProcess: func(ctx context.Context, dir string, clients int, warmup, d time.Duration) (int, time.Duration, []int64, error) {
			c, err := storebench.MeasureCreates(ctx, dir, clients, warmup, d)
			return c.Ops, c.Elapsed, c.Lat, err
		},
		Count: func(dir string) (int, error) {
			s, _, err := storebench.Open(dir)
			if err != nil {
				return 0, err
			}
			defer s.Close()
			n, _ := s.Counts()
			counted = append(counted, n)
			return n, nil
		},
		Executable: exe, Env: env,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	type key struct {
		mode    string
		clients int
	}
	want := []key{{bench.ModeInProcess, 1}, {bench.ModeDaemon, 1}, {bench.ModeInProcess, 3}, {bench.ModeDaemon, 3}}
	var got []key
	for _, r := range results {
		got = append(got, key{r.Mode, r.Clients})
		if r.Op != bench.OpCreate || r.OpsPerSec <= 0 || r.Ops <= 0 || r.P50us <= 0 || r.P99us < r.P50us || r.Runs != 2 || len(r.RunsOpsPerSec) != 2 {
			t.Errorf("%+v", r)
		}
		if r.RatioToInProcess <= 0 || (r.Mode == bench.ModeInProcess && r.RatioToInProcess != 1) {
			t.Errorf("%s, %d clients: ratio %v", r.Mode, r.Clients, r.RatioToInProcess)
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("measured %v, want %v", got, want)
	}
	// Every daemon's store was checked after it stopped: 2 runs × 2.
	if len(counted) != 4 || slices.Contains(counted, 0) {
		t.Errorf("stores counted: %v", counted)
	}
	var ws syscall.WaitStatus
	if pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil); !errors.Is(err, syscall.ECHILD) {
		t.Errorf("a child process is left (pid %d, %v)", pid, err)
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("left behind in the temporary directory: %v", left)
	}
}

func TestRunStartup(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	state := filepath.Join(t.TempDir(), "state")
	s, err := storebench.Init(state)
	if err != nil {
		t.Fatal(err)
	}
	const keys = 40
	if err := storebench.Fill(ctx, s, 0, keys, uint32(os.Getuid()), 8, nil); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(); err != nil {
		t.Fatal(err)
	}
	res, err := bench.RunStartup(ctx, bench.StartupConfig{
		State: state, Keys: keys, KeyName: storebench.KeyName, Passphrase: []byte(storebench.Passphrase),
		Runs: 2, FirstUse: 10,
		InProcess: func(dir string, names []string) (time.Duration, []int64, error) {
			return storebench.MeasureLoads(dir, uint32(os.Getuid()), names)
		},
		Executable: exe, Env: env,
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if res.Keys != keys || res.Runs != 2 || res.FirstUse != 10 || len(res.RunsServingMs) != 2 || len(res.RunsUnsealMs) != 2 || len(res.RunsVerifyProcMs) != 2 {
		t.Errorf("%+v", res)
	}
	for name, v := range map[string]float64{
		"serving": res.ServingMs, "unseal": res.UnsealMs, "verify": res.VerifyInProcessMs,
		"sealed rss": res.SealedRSSMiB, "unsealed rss": res.UnsealedRSSMiB, "anon": res.UnsealedAnonMiB,
		"open p50": res.OpenP50us, "first encryption p50": res.FirstEncP50us, "second encryption p50": res.SecondEncP50us,
		"first use p50": res.FirstUseP50us, "store": res.StoreMiB, "in-process load p50": res.LoadInProcessP50us,
	} {
		if v <= 0 {
			t.Errorf("%s: %v", name, v)
		}
	}
	if res.OpenP99us < res.OpenP50us || res.FirstUseP50us < res.OpenP50us {
		t.Errorf("latencies: %+v", res)
	}
	// The store is as it was: alone in its directory with the daemons'
	// lock (their audit logs went elsewhere), and it still verifies, with
	// every key.
	ents, _ := os.ReadDir(state)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if !slices.Equal(names, []string{"keywarden.db", "lock"}) {
		t.Errorf("the state directory holds %v", names)
	}
	s, _, err = storebench.Open(state)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := s.Counts(); n != keys {
		t.Errorf("%d keys after the runs", n)
	}
	s.Close()
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("left behind in the temporary directory: %v", left)
	}
}

func TestRunStream(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const size = 3<<20 + 17 // several batches of chunks, the last one short
	res, err := bench.RunStream(ctx, bench.StreamConfig{Size: size, Runs: 2, ChunkSize: 16 << 10, Executable: exe, Env: env}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(res) != 10 {
		t.Fatalf("%d results", len(res))
	}
	for _, r := range res {
		if r.Bytes != size || r.Runs != 2 || r.Seconds <= 0 || r.MBPerSec <= 0 || r.RatioToInProcess <= 0 {
			t.Errorf("%+v", r)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("left behind in the temporary directory: %v", left)
	}
}

// TestRunCreateSockets: with Sockets, RunCreate measures the running
// daemons at them, its clients spread over them in turn, and starts none
// of its own (nor measures in-process).
func TestRunCreateSockets(t *testing.T) {
	tmp := t.TempDir()
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var socks []string
	var clients []*keywarden.Client
	for i := range 2 {
		d, err := bench.StartServe(ctx, exe, env, []string{"--state", filepath.Join(tmp, fmt.Sprint("state", i)),
			"--insecure-master-kdf", "--max-keys-per-user", "1000000"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { d.Stop() })
		c, err := keywarden.Dial(ctx, d.Socket())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := c.Admin().Init(ctx, keywarden.MasterSealing{Passphrase: []byte(storebench.Passphrase),
			Argon2: keywarden.Argon2Params{Time: 1, MemoryKiB: 64, Threads: 1}}, nil); err != nil {
			t.Fatal(err)
		}
		socks = append(socks, d.Socket())
		clients = append(clients, c)
	}
	results, err := bench.RunCreate(ctx, bench.CreateConfig{
		Clients: []int{1, 3}, Duration: 100 * time.Millisecond, Runs: 1, Dir: tmp, Sockets: socks,
		InProcess: func(context.Context, string, int, time.Duration, time.Duration) (int, time.Duration, []int64, error) {
			t.Error("measured in-process with Sockets")
			return 0, 0, nil, errors.New("measured in-process")
		},
		Executable: "/nonexistent", // no daemon of its own
	}, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(results) != 2 {
		t.Fatalf("%d results, want 2: %+v", len(results), results)
	}
	for i, want := range []struct{ clients, daemons int }{{1, 1}, {3, 2}} {
		r := results[i]
		if r.Mode != bench.ModeDaemon || r.Clients != want.clients || r.Daemons != want.daemons || r.Ops <= 0 || r.RatioToInProcess != 0 {
			t.Errorf("result %d: %+v; want %d clients over %d daemons", i, r, want.clients, want.daemons)
		}
	}
	// Both daemons made keys: the 3 clients were spread over them.
	for i, c := range clients {
		st, err := c.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if st.Keys == 0 {
			t.Errorf("the daemon at socket %d made no key", i)
		}
	}
}

package bench_test

import (
	"context"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/bench"
)

// The scaling modes run end to end against private daemons, small: every
// figure is there and consistent, the baselines included.
func TestRunScalingModes(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	cfg := bench.ScaleConfig{Duration: 50 * time.Millisecond, Runs: 1, Executable: exe, Env: env,
		Clients: []int{1, 2}, Ops: []string{"ping", "aes256-gcm-seal-256"}, IdleConns: 40, ResidentKeys: 5000}

	rs, err := bench.RunScaling(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	// ping has no in-process figure: 2 + 2×2.
	if len(rs) != 6 {
		t.Fatalf("%d scaling results, want 6: %+v", len(rs), rs)
	}
	for _, r := range rs {
		if r.Kind != "scaling" || r.OpsPerSec <= 0 || r.P50us <= 0 || r.Speedup <= 0 || r.Runs != 1 {
			t.Errorf("scaling result: %+v", r)
		}
		if r.Mode == bench.ModeRoundTrip && r.Op != "ping" && r.RatioToInProcess <= 0 {
			t.Errorf("no ratio to in-process: %+v", r)
		}
	}

	cfg.Clients = []int{2}
	rs, err = bench.RunIdle(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 2 || rs[0].IdleConns != 0 || rs[1].IdleConns != 40 || rs[1].Clients != 2 {
		t.Fatalf("idle results: %+v", rs)
	}
	if w := rs[1]; w.P99RatioToBaseline <= 0 || w.DaemonRSSBytes <= 0 || w.DaemonThreads <= 0 || w.OpsPerSec <= 0 {
		t.Errorf("idle result: %+v", w)
	}

	rs, err = bench.RunResident(ctx, cfg, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 3 || rs[0].ResidentKeys != 1 || rs[1].ResidentKeys != 5000 || rs[1].Key != "same" || rs[2].Key != "random" {
		t.Fatalf("resident results: %+v", rs)
	}
	for _, r := range rs[1:] {
		if r.P50RatioToBaseline <= 0 || r.KeysPerSec <= 0 || r.DaemonRSSBytes <= 0 || r.OpsPerSec <= 0 {
			t.Errorf("resident result: %+v", r)
		}
	}
}

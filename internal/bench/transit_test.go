package bench_test

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/bench"
)

func TestRunTransit(t *testing.T) {
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	res, err := bench.RunTransit(ctx, bench.TransitConfig{Clients: []int{1, 2}, Duration: 30 * time.Millisecond, Runs: 1,
		Executable: exe, Env: env}, nil)
	if err != nil {
		t.Fatal(err)
	}
	// Three transports for encrypt and sign, two for the batch; two
	// client counts each.
	if len(res) != 16 {
		t.Fatalf("%d results: %+v", len(res), res)
	}
	for _, r := range res {
		if r.OpsPerSec <= 0 || r.RequestsPerSec <= 0 || r.P50us <= 0 || r.P99us < r.P50us {
			t.Errorf("%+v", r)
		}
		if r.Op == bench.TransitEncryptBatch && r.OpsPerSec != 256*r.RequestsPerSec {
			t.Errorf("a batch of 256 counted as %v ops for %v requests", r.OpsPerSec, r.RequestsPerSec)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("left behind in the temporary directory: %v", left)
	}
}

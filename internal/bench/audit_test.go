package bench

import (
	"math"
	"testing"
)

// TestPairedRatio: the ratio pairs each run with the baseline of the same
// run, so that a machine that slows down between runs does not skew it.
func TestPairedRatio(t *testing.T) {
	// The machine halves its speed after the first run: each run's ratio
	// is 0.9, while the ratio of the medians would be 0.9*50/100 = 0.45
	// with these three runs.
	base := []float64{100, 50, 50}
	runs := []float64{90, 45, 45}
	if got := pairedRatio(runs, base); got != 0.9 {
		t.Fatalf("paired ratio %v, want 0.9", got)
	}
	if got := pairedRatio([]float64{1, 2}, []float64{0, 0}); got != 0 {
		t.Fatalf("ratio against nothing measured: %v", got)
	}
	if got := pairedRatio([]float64{80, 90, 100}, []float64{100, 100}); math.Abs(got-0.85) > 1e-9 {
		t.Fatalf("ratio with a run lacking its baseline: %v", got)
	}
}

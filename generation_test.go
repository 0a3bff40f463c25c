package keywarden_test

import (
	"context"
	"errors"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
)

func requireBump(t *testing.T) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("bumping the generation needs root")
	}
}

// The mapped page follows the generation without a round trip; a request
// pinned to another generation is refused.
func TestGenerationPageAndPinning(t *testing.T) {
	requireBump(t)
	ctx := context.Background()
	c := dial(t)
	g, err := c.Generation(ctx)
	if err != nil {
		t.Fatal(err)
	}
	page, err := c.MapGeneration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer page.Close()
	if got, _, live := page.Read(); got != g.Generation || !live {
		t.Fatalf("page: %d (live %v), daemon: %d", got, live, g.Generation)
	}
	pinned := keywarden.WithGeneration(ctx, g.Generation)
	if err := c.Ping(pinned, []byte("x")); err != nil {
		t.Fatalf("pinned to the current generation: %v", err)
	}
	b, err := c.Admin().BumpGeneration(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if b.Generation != g.Generation+1 || page.Generation() != b.Generation {
		t.Fatalf("after a bump: daemon %d, page %d", b.Generation, page.Generation())
	}
	if _, changed, _ := page.Read(); changed.IsZero() || time.Since(changed) > time.Minute {
		t.Fatalf("change time %v", changed)
	}
	err = c.Ping(pinned, []byte("x"))
	if !errors.Is(err, keywarden.ErrGenerationChanged) {
		t.Fatalf("pinned to the old generation: %v", err)
	}
	if got, ok := keywarden.ExpectedGeneration(pinned); !ok || got != g.Generation {
		t.Fatalf("ExpectedGeneration: %d %v", got, ok)
	}
	// The connection carries on.
	if err := c.Ping(ctx, []byte("x")); err != nil {
		t.Fatal(err)
	}
}

// The watcher's loop and the orchestrator's wait.
func TestWatchAndWaitWatchers(t *testing.T) {
	requireBump(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	orch, app := dial(t), dial(t)
	seen := make(chan uint64, 4)
	release := make(chan struct{})
	watchCtx, stopWatch := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		err := app.Watch(watchCtx, "", func(gen uint64) error {
			seen <- gen
			<-release // adjusting to the new generation
			return nil
		})
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Watch: %v", err)
		}
	}()
	// Wait until the app is a watcher.
	for {
		g, err := orch.Generation(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if g.Watchers >= 1 {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	b, err := orch.Admin().BumpGeneration(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if gen := <-seen; gen != b.Generation {
		t.Fatalf("the watcher saw %d, want %d", gen, b.Generation)
	}
	// Still adjusting: the orchestrator's wait times out.
	g, err := orch.WaitWatchers(ctx, 50*time.Millisecond)
	if !errors.Is(err, keywarden.ErrOutdatedWatchers) || g.OutdatedWatchers != 1 {
		t.Fatalf("wait while adjusting: %+v %v", g, err)
	}
	// Done adjusting: the watcher acknowledges and the wait ends.
	close(release)
	g, err = orch.WaitWatchers(ctx, 10*time.Second)
	if err != nil || g.OutdatedWatchers != 0 {
		t.Fatalf("wait: %+v %v", g, err)
	}
	stopWatch()
	wg.Wait()
	// A watch that is cut short by its context.
	short, cancelShort := context.WithTimeout(ctx, 100*time.Millisecond)
	defer cancelShort()
	if _, err := app.WatchGeneration(short, g.Generation, ""); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("short watch: %v", err)
	}
}

// Mapping the page while other calls are in flight: each map gets its
// descriptor, no descriptor stays open, the other calls are unaffected.
func TestMapGenerationUnderLoad(t *testing.T) {
	ctx := context.Background()
	c := dial(t)
	before := generationFDs(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				if err := c.Ping(ctx, []byte("load")); err != nil {
					t.Error(err)
					return
				}
			}
		}()
	}
	for range 50 {
		p, err := c.MapGeneration(ctx)
		if err != nil {
			t.Fatal(err)
		}
		p.Close()
	}
	close(stop)
	wg.Wait()
	if after := generationFDs(t); after > before {
		t.Fatalf("%d descriptors of the generation page before, %d after", before, after)
	}
}

// generationFDs counts this process's descriptors of the daemon's
// generation page. Only those: the count of all descriptors also moves
// with whatever the runtime and earlier tests open lazily.
func generationFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skip("no /proc")
	}
	n := 0
	for _, e := range ents {
		target, err := os.Readlink("/proc/self/fd/" + e.Name())
		if err == nil && strings.Contains(target, "keywarden-generation") {
			n++
		}
	}
	return n
}

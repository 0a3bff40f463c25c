package e2e_test

import (
	"context"
	"crypto"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
)

// Root may bump the generation; another uid may not, unless the daemon
// names it with --generation-admin. Status shows the change.
func TestGenerationBump(t *testing.T) {
	requireRoot(t)
	d := startDaemon(t)
	if r := d.runCLI(t, nobody, nil, "generation", "bump"); r.code != 1 || !strings.Contains(r.stderr, "only root or a generation admin") {
		t.Fatalf("bump as nobody: %v", r)
	}
	if r := d.runCLI(t, nil, nil, "generation", "bump"); r.code != 0 || r.stdout != "generation 1\n" {
		t.Fatalf("bump as root: %v", r)
	}
	r := d.runCLI(t, nobody, nil, "status", "--json")
	var st struct {
		Generation struct {
			Generation uint64
			Changed    string
			ChangedBy  []string `json:"changed_by"`
			Sources    []struct {
				Name   string
				Active bool
				Detail string
			}
		}
	}
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status: %v\n%v", err, r)
	}
	g := st.Generation
	if g.Generation != 1 || g.Changed == "" || len(g.ChangedBy) != 1 || g.ChangedBy[0] != "request" || len(g.Sources) == 0 {
		t.Fatalf("status: %+v", g)
	}
	if !strings.Contains(d.log.String(), "generation bumped on request") {
		t.Error("the bump is not in the log")
	}
	// An admin uid.
	d2 := startDaemon(t, "--generation-admin", "65534")
	if r := d2.runCLI(t, nobody, nil, "generation", "bump"); r.code != 0 {
		t.Fatalf("bump as a generation admin: %v", r)
	}
	if r := d2.runCLI(t, nobody, nil, "generation", "show"); r.code != 0 || !strings.Contains(r.stdout, "generation:  1") {
		t.Fatalf("show: %v", r)
	}
}

// The orchestration flow across processes: a watcher is outdated after a
// change until it acknowledges; wait-watchers waits for it; a session
// begun before the change fails; the mapped page follows.
func TestGenerationWatchers(t *testing.T) {
	d := startDaemon(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	app := d.client(t)
	page, err := app.MapGeneration(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer page.Close()
	mac, err := app.Generate(ctx, keywarden.KeySpec{Type: keywarden.HMACSHA256, Ephemeral: true})
	if err != nil {
		t.Fatal(err)
	}
	stream, err := mac.NewMAC(ctx)
	if err != nil {
		t.Fatal(err)
	}
	hash, err := app.NewHash(ctx, crypto.SHA256)
	if err != nil {
		t.Fatal(err)
	}
	stream.Write([]byte("before"))
	// The app watches.
	type watched struct {
		g   *keywarden.Generation
		err error
	}
	got := make(chan watched, 1)
	go func() {
		g, err := app.WatchGeneration(ctx, 0, "")
		got <- watched{g, err}
	}()
	waitWatchers(t, app, 1)
	// Nothing changed yet: wait-watchers returns at once.
	if r := d.runCLI(t, nil, nil, "generation", "wait-watchers", "--timeout", "10s"); r.code != 0 || !strings.Contains(r.stdout, "every watcher (1) is up to date") {
		t.Fatalf("wait-watchers before a change: %v", r)
	}
	bumpAsRootOrSkip(t, d)
	w := <-got
	if w.err != nil || w.g.Generation != 1 || w.g.OutdatedWatchers != 1 {
		t.Fatalf("watch: %+v %v", w.g, w.err)
	}
	if page.Generation() != 1 {
		t.Fatalf("the page says %d", page.Generation())
	}
	if r := d.runCLI(t, nil, nil, "generation", "wait-watchers", "--timeout", "100ms"); r.code != 1 || !strings.Contains(r.stderr, "1 of 1 watchers still outdated") {
		t.Fatalf("wait-watchers with an outdated watcher: %v", r)
	}
	// The sessions from before the change fail.
	if _, err := stream.Sum(); !errors.Is(err, keywarden.ErrGenerationChanged) {
		t.Fatalf("MAC stream across the change: %v", err)
	}
	if _, err := hash.Write([]byte("after")); err != nil {
		t.Fatal(err) // buffered
	}
	if _, err := hash.Sum(); !errors.Is(err, keywarden.ErrGenerationChanged) {
		t.Fatalf("hash stream across the change: %v", err)
	}
	// The orchestrator waits; the app acknowledges; the wait ends.
	waitDone := make(chan cliResult, 1)
	go func() { waitDone <- d.runCLI(t, nil, nil, "generation", "wait-watchers", "--timeout", "30s", "--json") }()
	time.Sleep(100 * time.Millisecond)
	if err := app.AckGeneration(ctx, 1, ""); err != nil {
		t.Fatal(err)
	}
	select {
	case r := <-waitDone:
		if r.code != 0 || !strings.Contains(r.stdout, `"outdated_watchers": 0`) {
			t.Fatalf("wait-watchers after the ack: %v", r)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("wait-watchers did not end after the ack")
	}
	// A CLI watcher sees the next change.
	watchDone := make(chan cliResult, 1)
	go func() {
		watchDone <- d.runCLI(t, nil, nil, "generation", "watch", "--count", "1", "--ack", "--name", "cli")
	}()
	waitWatchers(t, app, 2)
	bumpAsRootOrSkip(t, d)
	if r := <-watchDone; r.code != 0 || !strings.HasPrefix(r.stdout, "generation 2 (last change ") {
		t.Fatalf("CLI watch: %v", r)
	}
	// Its named watcher outlives the command, acknowledged.
	g, err := app.Generation(ctx)
	if err != nil || g.Watchers != 2 || g.OutdatedWatchers != 1 { // the app has not acked 2
		t.Fatalf("after the CLI watch: %+v %v", g, err)
	}
	if r := d.runCLI(t, nil, nil, "generation", "forget", "--name", "cli"); r.code != 0 {
		t.Fatal(r)
	}
	// When the daemon stops, the page says so.
	d.stop()
	if page.Live() {
		t.Fatal("the page of a stopped daemon says it is live")
	}
}

func waitWatchers(t *testing.T, c *keywarden.Client, n int) {
	t.Helper()
	for range 1000 {
		g, err := c.Generation(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if g.Watchers >= n {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("fewer than %d watchers", n)
}

func bumpAsRootOrSkip(t *testing.T, d *daemon) {
	t.Helper()
	r := d.runCLI(t, nil, nil, "generation", "bump")
	if r.code != 0 {
		if strings.Contains(r.stderr, "only root") {
			t.Skip("bumping the generation needs root")
		}
		t.Fatalf("bump: %v", r)
	}
}

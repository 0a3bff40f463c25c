package e2e_test

import (
	"strings"
	"syscall"
	"testing"
	"time"
)

// Whose watchers count (docs/genid.md): an ordinary user's named watcher
// that never acknowledges does not hold up an administrator's
// wait-watchers, while the watcher of a --generation-watcher uid does,
// until it acknowledges; and a user's own watcher holds up that user's
// wait.
func TestGenerationWatcherScope(t *testing.T) {
	requireRoot(t)
	service := nobody                                 // listed with --generation-watcher
	user := &syscall.Credential{Uid: 4321, Gid: 4321} // an ordinary local user
	d := startDaemon(t, "--generation-watcher", "65534")
	run := func(cred *syscall.Credential, args ...string) cliResult {
		return d.runCLI(t, cred, nil, append([]string{"generation"}, args...)...)
	}
	if r := run(user, "ack", "0", "--name", "never-acks"); r.code != 0 {
		t.Fatalf("the user's named watcher: %s", r)
	}
	if r := run(service, "ack", "0", "--name", "svc"); r.code != 0 {
		t.Fatalf("the service's named watcher: %s", r)
	}
	bumpAsRootOrSkip(t, d)

	// The service's watcher is outdated and counts: root's wait times out.
	if r := run(nil, "wait-watchers", "--timeout", "200ms"); r.code != 1 || !strings.Contains(r.stderr, "1 of 1 watchers still outdated") {
		t.Fatalf("root's wait with the service's watcher outdated: %s", r)
	}
	// Once it acknowledges, root's wait ends at once, although the user's
	// watcher is still outdated.
	if r := run(service, "ack", "1", "--name", "svc"); r.code != 0 {
		t.Fatalf("the service's ack: %s", r)
	}
	start := time.Now()
	r := run(nil, "wait-watchers", "--timeout", "20s")
	if r.code != 0 || !strings.Contains(r.stdout, "(1) is up to date") {
		t.Fatalf("root's wait with only another user's watcher outdated: %s", r)
	}
	if time.Since(start) > 10*time.Second {
		t.Fatalf("root's wait took %v: it waited for the user's watcher", time.Since(start))
	}
	// The user's own wait counts the user's watcher (and the service's).
	if r := run(user, "wait-watchers", "--timeout", "200ms"); r.code != 1 || !strings.Contains(r.stderr, "1 of 2 watchers still outdated") {
		t.Fatalf("the user's wait with its own watcher outdated: %s", r)
	}
	// A third uid sees neither the user's watcher nor waits for it.
	if r := run(&syscall.Credential{Uid: 4322, Gid: 4322}, "wait-watchers", "--timeout", "20s"); r.code != 0 {
		t.Fatalf("a third user's wait: %s", r)
	}
	if r := run(user, "forget", "--name", "never-acks"); r.code != 0 {
		t.Fatalf("forget: %s", r)
	}
	if r := run(user, "wait-watchers", "--timeout", "20s"); r.code != 0 {
		t.Fatalf("the user's wait once its watcher is forgotten: %s", r)
	}
}

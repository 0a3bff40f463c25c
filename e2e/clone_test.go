package e2e_test

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/audit"
)

// TestUnconfirmedRandomnessRefused: a daemon that cannot make the kernel
// re-seed (it runs as an ordinary user) and has no trusted CPU random
// instruction is told of a restore by an orchestrator that cannot either.
// Its random bytes may then be a clone's: it refuses what needs them
// (encryption, key generation, data keys) with UNAVAILABLE and serves the
// rest, until something confirms them: bytes an orchestrator sends, which
// are enough for everything but RSA keys, and a bump from root, whose
// command makes the kernel re-seed.
func TestUnconfirmedRandomnessRefused(t *testing.T) {
	requireRoot(t)
	svc := &syscall.Credential{Uid: 3100, Gid: 3100}
	orch := &syscall.Credential{Uid: 3101, Gid: 3101}
	d := startDaemonAs(t, svc, 0, "--generation-sources", "none", "--generation-admin", "3101", "--distrust-cpu-random")
	if err := os.Chmod(filepath.Dir(d.sock), 0o711); err != nil { // the orchestrator's way in
		t.Fatal(err)
	}
	c := d.client(t)
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "k"})
	sig := generate(t, c, keywarden.KeySpec{Type: keywarden.ECDSAP256, Name: "s"})
	before, err := k.Encrypt(ctx, []byte("before"), nil)
	if err != nil {
		t.Fatal(err)
	}

	r := d.runCLI(t, orch, nil, "generation", "bump")
	if r.code != 0 || !strings.Contains(r.stderr, "has not confirmed fresh randomness") {
		t.Fatalf("bump by an orchestrator that cannot re-seed: %v", r)
	}
	unavailable := func(what string, err error) {
		t.Helper()
		if !errors.Is(err, keywarden.ErrUnavailable) || !strings.Contains(err.Error(), "fresh randomness is not confirmed") {
			t.Errorf("%s after an unconfirmed change: %v, want UNAVAILABLE (fresh randomness is not confirmed)", what, err)
		}
	}
	_, err = k.Encrypt(ctx, []byte("after"), nil)
	unavailable("encrypt", err)
	_, err = c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
	unavailable("generate", err)
	_, err = k.GenerateDataKey(ctx, nil, &keywarden.DataKeyOptions{Length: 32, Plaintext: true})
	unavailable("data key", err)
	if pt, err := k.Decrypt(ctx, before, nil); err != nil || string(pt) != "before" {
		t.Errorf("decrypt: %q, %v", pt, err)
	}
	if _, err := sig.SignMessageContext(ctx, []byte("msg"), nil); err != nil {
		t.Errorf("sign: %v", err)
	}
	g, err := c.Generation(ctx)
	if err != nil || !g.RandomnessUnconfirmed || !strings.HasPrefix(g.Randomness, "unconfirmed") {
		t.Fatalf("generation after the bump: %+v, %v", g, err)
	}
	if r := d.runCLI(t, nil, nil, "generation", "show"); !strings.Contains(r.stdout, "randomness:  unconfirmed since") {
		t.Errorf("generation show:\n%s", r.stdout)
	}

	// Bytes from outside: enough for the daemon's own generator.
	if r := d.runCLI(t, orch, []byte("0123456789abcdef0123456789abcdef"), "generation", "bump", "--entropy-file", "-"); r.code != 0 || r.stderr != "" {
		t.Fatalf("bump with entropy: %v", r)
	}
	ct, err := k.Encrypt(ctx, []byte("after"), nil)
	if err != nil {
		t.Fatalf("encrypt once confirmed: %v", err)
	}
	if v := ctVersion(t, ct); v != 2 {
		// The change closed version 1; the refused encryptions made none.
		t.Errorf("encrypted under version %d, want 2", v)
	}
	if _, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true}); err != nil {
		t.Errorf("generate once confirmed: %v", err)
	}
	_, err = c.Generate(ctx, keywarden.KeySpec{Type: keywarden.RSA2048, Ephemeral: true})
	if !errors.Is(err, keywarden.ErrUnavailable) || !strings.Contains(err.Error(), "RSA keys") {
		t.Errorf("RSA key before the kernel re-seeded: %v", err)
	}

	// Root's bump makes the kernel re-seed first.
	if r := d.runCLI(t, nil, nil, "generation", "bump"); r.code != 0 || r.stderr != "" {
		t.Fatalf("bump by root: %v", r)
	}
	if _, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.RSA2048, Ephemeral: true}); err != nil {
		t.Errorf("RSA key after root's bump: %v", err)
	}
	if g, _ := c.Generation(ctx); g == nil || g.RandomnessUnconfirmed || !strings.Contains(g.Randomness, "kernel re-seeded") {
		t.Errorf("generation after root's bump: %+v", g)
	}
	if !strings.Contains(d.log.String(), "nothing confirms that its bytes differ from a clone's") {
		t.Errorf("the daemon's log does not say why it refused:\n%s", d.log)
	}

	// The audit log recorded each change; the new segment, whose nonce
	// tells two clones' logs apart, waited for fresh randomness: none for
	// generation 1, which never had it.
	b, err := os.ReadFile(d.sock + ".audit.log")
	if err != nil {
		t.Fatal(err)
	}
	var events, segments []string
	for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		r, err := audit.ParseRecord(line)
		if err != nil {
			t.Fatalf("audit record %q: %v", line, err)
		}
		switch {
		case r.Kind == audit.KindEvent && r.Op == audit.OpGeneration:
			events = append(events, r.Msg)
		case r.Kind == audit.KindSegment && strings.HasPrefix(r.Segment.Reason, "generation "):
			segments = append(segments, r.Segment.Reason)
		}
	}
	if len(events) != 3 || strings.Join(segments, ",") != "generation 2,generation 3" {
		t.Errorf("audit log: generation events %q, segments %q; want 3 events and the segments of generations 2 and 3", events, segments)
	}
}

package e2e_test

import (
	"strings"
	"testing"
	"time"
)

// The master passphrase's Argon2id costs have a floor (RFC 9106's second
// recommended option: 3 passes over 64 MiB, or as much work with more
// memory): init and master rotate refuse less, unless the daemon was
// started with --insecure-master-kdf, for tests only. A store sealed
// below the floor before it existed still unseals, with a warning.
func TestMasterKDFFloor(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := launch(t, sock, []string{"--state", state, "--kdf-max-memory", "262144"})
	init := func(kdf ...string) cliResult {
		return d.runCLI(t, nil, nil, append([]string{"init", "--passphrase-file", passFile}, kdf...)...)
	}
	for _, kdf := range [][]string{
		cheapKDF, // 1 pass over 8 MiB: what the issue found accepted
		{"--time", "1", "--memory", "65536", "--threads", "1"},  // enough memory, too little work
		{"--time", "10", "--memory", "32768", "--threads", "1"}, // enough work, too little memory
	} {
		r := init(kdf...)
		if r.code != 1 || !strings.Contains(r.stderr, "below the floor") || !strings.Contains(r.stderr, "--time 3 --memory 65536") {
			t.Fatalf("init %v: %s; want it refused below the floor", kdf, r)
		}
	}
	if st := status(t, d.client(t)); st.Seal.Initialized {
		t.Fatal("a refused init left a master key")
	}
	// At the floor, and with fewer passes over more memory: accepted.
	if r := init("--time", "2", "--memory", "98304", "--threads", "1"); r.code != 0 {
		t.Fatalf("init with 2 passes over 96 MiB: %s", r)
	}
	r := d.runCLI(t, nil, nil, append([]string{"master", "rotate", "--passphrase-file", passFile}, cheapKDF...)...)
	if r.code != 1 || !strings.Contains(r.stderr, "below the floor") {
		t.Fatalf("master rotate below the floor: %s", r)
	}
	if r := d.runCLI(t, nil, nil, "master", "rotate", "--passphrase-file", passFile, "--time", "3", "--memory", "65536", "--threads", "1"); r.code != 0 {
		t.Fatalf("master rotate at the floor: %s", r)
	}

	// The override is for a persistent daemon's tests, and says so.
	r = d.runCLI(t, nil, nil, "serve", "--dev", "--insecure-master-kdf", "--socket", sock+"2")
	if r.code != 2 || !strings.Contains(r.stderr, "--insecure-master-kdf") {
		t.Fatalf("--dev with --insecure-master-kdf: %s", r)
	}
	d.stop()

	// A store sealed below the floor (here with the override) unseals
	// without it, and the log says to rotate.
	sock2, state2, _ := persistentSetup(t)
	weak := startPersistent(t, sock2, state2)
	if !strings.Contains(weak.log.String(), "--insecure-master-kdf") {
		t.Errorf("the override is not in the log:\n%s", weak.log)
	}
	initStore(t, weak, passFile)
	weak.stop()
	again := launch(t, sock2, []string{"--state", state2, "--kdf-max-memory", "65536"})
	if r := again.runCLI(t, nil, nil, "unseal", "--passphrase-file", passFile); r.code != 0 {
		t.Fatalf("unseal of a store sealed below the floor: %s", r)
	}
	deadline := time.Now().Add(5 * time.Second)
	for !strings.Contains(again.log.String(), "below the floor") {
		if time.Now().After(deadline) {
			t.Fatalf("no warning about the weak passphrase slot:\n%s", again.log)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

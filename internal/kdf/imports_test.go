package kdf

import (
	"go/build"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// TestArgon2OnlyInWorker guards the rule of this package: the daemon
// never runs Argon2 in its own address space. Only the worker's file
// calls golang.org/x/crypto/argon2, and no other daemon package imports
// it (the CLI's kdf bench does, to measure the in-process baseline in its
// own process).
func TestArgon2OnlyInWorker(t *testing.T) {
	const argon2 = "golang.org/x/crypto/argon2"
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		if strings.HasSuffix(f, "_test.go") {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(string(b), `"`+argon2+`"`) && f != "worker.go" {
			t.Errorf("%s imports %s; only the worker may", f, argon2)
		}
	}
	for _, dir := range []string{"../server", "../daemon", "../keystore", "../mech", "../policy", "../wire", "../seqpacket", "../key"} {
		p, err := build.Default.ImportDir(dir, 0)
		if err != nil {
			t.Fatalf("%s: %v", dir, err)
		}
		if slices.Contains(p.Imports, argon2) {
			t.Errorf("daemon package %s imports %s", dir, argon2)
		}
	}
}

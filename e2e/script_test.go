package e2e_test

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/rogpeppe/go-internal/testscript"
)

// TestScripts runs the CLI scripts in testdata/script: each starts its own
// daemon in the background and drives it with the keywarden command.
func TestScripts(t *testing.T) {
	testscript.Run(t, testscript.Params{
		Dir: "testdata/script",
		Setup: func(e *testscript.Env) error {
			e.Setenv("KEYWARDEN_SOCKET", e.WorkDir+"/kw.sock")
			if _, err := exec.LookPath("openssl"); err == nil {
				e.Setenv("HAVE_OPENSSL", "1")
			}
			e.Setenv("HOME", e.WorkDir)
			e.Setenv("PATH", os.Getenv("PATH"))
			return nil
		},
		Cmds: map[string]func(ts *testscript.TestScript, neg bool, args []string){"dirstate": cmdDirState},
		Condition: func(cond string) (bool, error) {
			switch cond {
			case "openssl":
				_, err := exec.LookPath("openssl")
				return err == nil, nil
			case "root":
				return os.Geteuid() == 0, nil
			}
			return false, nil
		},
	})
}

// cmdDirState is "dirstate save DIR" and "dirstate same DIR": the second
// fails unless DIR holds the files it held at the save, each with the
// same bytes (SHA-256), except audit logs, which may only have grown (a
// refusal is recorded).
func cmdDirState(ts *testscript.TestScript, neg bool, args []string) {
	if neg || len(args) != 2 || (args[0] != "save" && args[0] != "same") {
		ts.Fatalf("usage: dirstate save|same DIR")
	}
	dir := ts.MkAbs(args[1])
	now := map[string][]byte{}
	ents, err := os.ReadDir(dir)
	ts.Check(err)
	for _, e := range ents {
		if !e.IsDir() {
			b, err := os.ReadFile(filepath.Join(dir, e.Name()))
			ts.Check(err)
			now[e.Name()] = b
		}
	}
	key := fmt.Sprintf("%p %s", ts, dir)
	if args[0] == "save" {
		savedDirs.Store(key, now)
		return
	}
	v, ok := savedDirs.Load(key)
	if !ok {
		ts.Fatalf("dirstate same %s: no dirstate save before", args[1])
	}
	before := v.(map[string][]byte)
	for name, b := range before {
		a, ok := now[name]
		switch {
		case !ok:
			ts.Fatalf("%s is gone", name)
		case strings.HasPrefix(name, "audit.log"):
			if !bytes.HasPrefix(a, b) {
				ts.Fatalf("%s changed other than by appending", name)
			}
		case sha256.Sum256(a) != sha256.Sum256(b):
			ts.Fatalf("%s changed", name)
		}
	}
	for name := range now {
		if _, ok := before[name]; !ok {
			ts.Fatalf("%s appeared", name)
		}
	}
}

// savedDirs holds dirstate's saves, by script and directory.
var savedDirs sync.Map

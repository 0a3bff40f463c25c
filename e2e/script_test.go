package e2e_test

import (
	"os"
	"os/exec"
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

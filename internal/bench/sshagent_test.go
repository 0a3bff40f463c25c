package bench_test

import (
	"context"
	"os"
	"os/exec"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/bench"
)

func TestRunSSHAgent(t *testing.T) {
	for _, tc := range []struct {
		name, program string
	}{
		{"openssh", ""},
		{"without-openssh", "/nonexistent/ssh-agent"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			modes := []string{bench.SSHInProcess, bench.SSHNative, bench.SSHAgentKeywarden, bench.SSHAgentKeywardenAdded}
			if tc.program == "" {
				if _, err := exec.LookPath("ssh-agent"); err != nil {
					t.Skip("OpenSSH's ssh-agent is not installed")
				}
				modes = append(modes, bench.SSHAgentOpenSSH)
			}
			tmp := t.TempDir()
			t.Setenv("TMPDIR", tmp)
			exe, env := daemonConfig(t)
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			clients := []int{1, 3}
			res, err := bench.RunSSHAgent(ctx, bench.SSHAgentConfig{
				Clients: clients, Duration: 30 * time.Millisecond, Runs: 2,
				OpenSSHAgent: tc.program, Executable: exe, Env: env,
			}, nil)
			if err != nil {
				t.Fatal(err)
			}
			if len(res) != len(clients)*len(modes) {
				t.Fatalf("%d results, want %d: %+v", len(res), len(clients)*len(modes), res)
			}
			for i, r := range res {
				if r.Mode != modes[i%len(modes)] || r.Clients != clients[i/len(modes)] {
					t.Errorf("result %d is %s with %d clients", i, r.Mode, r.Clients)
				}
				if r.Runs != 2 || len(r.RunsOpsPerSec) != 2 || r.OpsPerSec <= 0 || r.P50us <= 0 || r.P99us < r.P50us || r.RatioToInProcess <= 0 {
					t.Errorf("%+v", r)
				}
				if hasOpenSSH := tc.program == ""; (r.RatioToOpenSSH > 0) != hasOpenSSH {
					t.Errorf("ratio to OpenSSH's agent %v with OpenSSH's agent measured: %v", r.RatioToOpenSSH, hasOpenSSH)
				}
			}
			if left, _ := os.ReadDir(tmp); len(left) > 0 {
				t.Errorf("left behind in the temporary directory: %v", left)
			}
		})
	}
}

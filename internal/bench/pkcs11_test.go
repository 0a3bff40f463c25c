package bench_test

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/bench"
)

// TestRunPKCS11 builds the module and the C host, and measures them
// (against SoftHSM2 when it is installed) with a private daemon.
func TestRunPKCS11(t *testing.T) {
	if _, err := exec.LookPath("cc"); err != nil {
		t.Skip("no C compiler")
	}
	if _, err := os.Stat("/usr/include/p11-kit-1/p11-kit/pkcs11.h"); err != nil {
		t.Skip("no p11-kit headers")
	}
	build := t.TempDir()
	os.Chmod(build, 0o755)
	mod, host := filepath.Join(build, "libkeywarden-pkcs11.so"), filepath.Join(build, "keywarden-p11bench")
	for _, args := range [][]string{
		{"-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-I/usr/include/p11-kit-1", "-o", mod, "../../pkcs11/keywarden-pkcs11.c", "-lpthread"},
		{"-O2", "-I/usr/include/p11-kit-1", "-o", host, "../../pkcs11/keywarden-p11bench.c", "-ldl", "-lpthread"},
	} {
		if out, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
			t.Fatalf("cc: %v\n%s", err, out)
		}
	}
	tmp := t.TempDir()
	t.Setenv("TMPDIR", tmp)
	exe, env := daemonConfig(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := bench.RunPKCS11(ctx, bench.PKCS11Config{Threads: []int{1, 2}, Duration: 100 * time.Millisecond, Runs: 1,
		Module: mod, Host: host, Executable: exe, Env: env}, nil)
	if err != nil {
		t.Fatal(err)
	}
	tokens := 1
	if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so"); err == nil {
		if _, err := exec.LookPath("softhsm2-util"); err == nil {
			tokens = 2
		}
	}
	if len(res) != 2*len(bench.PKCS11Ops)*tokens {
		t.Fatalf("%d results: %+v", len(res), res)
	}
	for _, r := range res {
		if r.OpsPerSec <= 0 {
			t.Errorf("%+v", r)
		}
		if tokens == 2 && r.Token == bench.PKCS11Keywarden && r.RatioToSoftHSM <= 0 {
			t.Errorf("no ratio to SoftHSM2: %+v", r)
		}
	}
	if left, _ := os.ReadDir(tmp); len(left) > 0 {
		t.Errorf("left behind in the temporary directory: %v", left)
	}
}

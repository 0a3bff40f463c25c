package bench

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden"
)

// PKCS #11 tokens RunPKCS11 compares.
const (
	// PKCS11Keywarden is libkeywarden-pkcs11.so and a private daemon.
	PKCS11Keywarden = "keywarden"
	// PKCS11SoftHSM is SoftHSM2, a software token in the process.
	PKCS11SoftHSM = "softhsm2"
)

// PKCS11Config says how RunPKCS11 measures.
type PKCS11Config struct {
	// Threads are the numbers of threads of the host process, each with
	// its own session and session keys; empty means 1 and 4.
	Threads []int
	// Duration is how long each operation is measured in each run; 0
	// means one second.
	Duration time.Duration
	// Runs repeats every measurement and reports medians; 0 means 3.
	Runs int
	// Dir holds the sockets, the daemon's audit log and SoftHSM2's token;
	// empty means the temporary directory.
	Dir string
	// Module is libkeywarden-pkcs11.so; empty means the one beside the
	// keywarden executable, else the one in the multiarch PKCS #11
	// directory.
	Module string
	// Host is keywarden-p11bench, the C program that loads a module and
	// measures; empty means the one beside the executable, else in PATH.
	Host string
	// SoftHSM is SoftHSM2's module; empty means Debian's path. If it (or
	// softhsm2-util) is missing, RunPKCS11 says so and measures keywarden
	// alone.
	SoftHSM string
	// Executable is the keywarden binary that runs the daemon; empty
	// means this one. Env is added to the daemon's environment.
	Executable string
	Env        []string
}

func (c PKCS11Config) withDefaults() PKCS11Config {
	if len(c.Threads) == 0 {
		c.Threads = []int{1, 4}
	}
	if c.Duration <= 0 {
		c.Duration = time.Second
	}
	if c.Runs <= 0 {
		c.Runs = 3
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	multiarch := map[string]string{"amd64": "x86_64-linux-gnu", "arm64": "aarch64-linux-gnu"}[runtime.GOARCH]
	beside := func(name string) string {
		exe, err := os.Executable()
		if c.Executable != "" {
			exe, err = c.Executable, nil
		}
		if err != nil {
			return ""
		}
		p := filepath.Join(filepath.Dir(exe), name)
		if _, err := os.Stat(p); err != nil {
			return ""
		}
		return p
	}
	if c.Module == "" {
		c.Module = cmp.Or(beside("libkeywarden-pkcs11.so"), "/usr/lib/"+multiarch+"/pkcs11/libkeywarden-pkcs11.so")
	}
	if c.Host == "" {
		c.Host = cmp.Or(beside("keywarden-p11bench"), "keywarden-p11bench")
	}
	if c.SoftHSM == "" {
		c.SoftHSM = "/usr/lib/" + multiarch + "/softhsm/libsofthsm2.so"
	}
	return c
}

// PKCS11Result is one operation of one token with one number of threads:
// the median over the runs.
type PKCS11Result struct {
	Token     string  `json:"token"`
	Op        string  `json:"op"`
	Threads   int     `json:"threads"`
	OpsPerSec float64 `json:"ops_per_sec"`
	Runs      int     `json:"runs"`
	// RatioToSoftHSM is keywarden's figure over SoftHSM2's in the same
	// run (0 when SoftHSM2 was not measured, and on SoftHSM2's rows).
	RatioToSoftHSM float64 `json:"ratio_to_softhsm,omitempty"`
}

// PKCS11Ops are the operations keywarden-p11bench measures, in its order.
var PKCS11Ops = []string{"ecdsa-p256", "ed25519", "hmac-sha256-256B", "aes-gcm-256B"}

// RunPKCS11 measures operations through libkeywarden-pkcs11.so, with a
// private daemon (its audit log on) behind it, and through SoftHSM2, both
// loaded by the same C host (keywarden-p11bench) in the same run: ECDSA
// P-256 and Ed25519 signatures, HMAC-SHA-256 and AES-256-GCM of 256
// bytes, one call at a time from each thread (C_*Init then the call, as
// programs do). The tokens alternate in order from one run to the next.
func RunPKCS11(ctx context.Context, cfg PKCS11Config, progress io.Writer) (_ []PKCS11Result, err error) {
	cfg = cfg.withDefaults()
	say := sayer(progress)
	host, err := exec.LookPath(cfg.Host)
	if err != nil {
		return nil, fmt.Errorf("the C host keywarden-p11bench was not found (%v): make pkcs11 builds it", err)
	}
	if _, err := os.Stat(cfg.Module); err != nil {
		return nil, fmt.Errorf("the module: %w (make pkcs11 builds bin/libkeywarden-pkcs11.so)", err)
	}
	dir, err := os.MkdirTemp(cfg.Dir, "keywarden-bench-pkcs11-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	os.Chmod(dir, 0o755)
	sock := filepath.Join(dir, "pkcs11.sock")

	say("starting a private daemon with a PKCS #11 socket")
	d, err := startServe(ctx, serveSpec{executable: cfg.Executable, env: cfg.Env,
		args: []string{"--dev", "--pkcs11", sock, "--audit-log", filepath.Join(dir, "audit.log")},
		ready: func(context.Context, *keywarden.Client) error {
			_, err := os.Stat(sock)
			return err
		}})
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := d.stop(); err == nil && serr != nil {
			err = serr
		}
	}()

	type token struct{ name, module, pin string }
	tokens := []token{{PKCS11Keywarden, cfg.Module, "any"}}
	env := append(os.Environ(), "KEYWARDEN_PKCS11_SOCKET="+sock)
	if softhsmEnv, err := initSoftHSM(ctx, dir, cfg.SoftHSM); err != nil {
		say("SoftHSM2 is not measured: %v", err)
	} else {
		env = append(env, softhsmEnv)
		tokens = append(tokens, token{PKCS11SoftHSM, cfg.SoftHSM, "1234"})
	}

	// figures[token][threads][op] are the runs' figures.
	figures := map[string]map[int]map[string][]float64{}
	secs := strconv.FormatFloat(cfg.Duration.Seconds(), 'f', -1, 64)
	for run := range cfg.Runs {
		order := tokens
		if run%2 == 1 {
			order = append([]token(nil), tokens...)
			for i, j := 0, len(order)-1; i < j; i, j = i+1, j-1 {
				order[i], order[j] = order[j], order[i]
			}
		}
		for _, th := range cfg.Threads {
			for _, tk := range order {
				say("run %d/%d: %s, %d thread(s)", run+1, cfg.Runs, tk.name, th)
				cmd := exec.CommandContext(ctx, host, tk.module, tk.pin, secs, strconv.Itoa(th))
				cmd.Env = env
				var out, stderr bytes.Buffer
				cmd.Stdout, cmd.Stderr = &out, &stderr
				if err := cmd.Run(); err != nil {
					return nil, fmt.Errorf("%s with %d threads: %v: %s", tk.name, th, err, strings.TrimSpace(stderr.String()))
				}
				got, err := parseP11Bench(out.Bytes())
				if err != nil {
					return nil, fmt.Errorf("%s: %w", tk.name, err)
				}
				if figures[tk.name] == nil {
					figures[tk.name] = map[int]map[string][]float64{}
				}
				if figures[tk.name][th] == nil {
					figures[tk.name][th] = map[string][]float64{}
				}
				for op, v := range got {
					figures[tk.name][th][op] = append(figures[tk.name][th][op], v)
				}
			}
		}
	}
	var results []PKCS11Result
	for _, th := range cfg.Threads {
		for _, op := range PKCS11Ops {
			for _, tk := range tokens {
				r := PKCS11Result{Token: tk.name, Op: op, Threads: th, Runs: cfg.Runs,
					OpsPerSec: median(append([]float64(nil), figures[tk.name][th][op]...))}
				if tk.name == PKCS11Keywarden && len(tokens) > 1 {
					if s := median(append([]float64(nil), figures[PKCS11SoftHSM][th][op]...)); s > 0 {
						r.RatioToSoftHSM = r.OpsPerSec / s
					}
				}
				results = append(results, r)
			}
		}
	}
	return results, nil
}

// parseP11Bench reads keywarden-p11bench's lines: "NAME N/s".
func parseP11Bench(out []byte) (map[string]float64, error) {
	got := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		name, rate, ok := strings.Cut(sc.Text(), " ")
		if !ok || !strings.HasSuffix(rate, "/s") {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSuffix(rate, "/s"), 64)
		if err != nil {
			return nil, fmt.Errorf("keywarden-p11bench said %q", sc.Text())
		}
		got[name] = v
	}
	for _, op := range PKCS11Ops {
		if _, ok := got[op]; !ok {
			return nil, fmt.Errorf("keywarden-p11bench gave no figure for %s", op)
		}
	}
	return got, nil
}

// initSoftHSM makes a SoftHSM2 token (label "bench", user PIN 1234) in
// dir and returns the environment variable that points SoftHSM2 at it.
func initSoftHSM(ctx context.Context, dir, module string) (string, error) {
	if _, err := os.Stat(module); err != nil {
		return "", err
	}
	util, err := exec.LookPath("softhsm2-util")
	if err != nil {
		return "", err
	}
	tokens := filepath.Join(dir, "softhsm")
	if err := os.MkdirAll(tokens, 0o700); err != nil {
		return "", err
	}
	conf := filepath.Join(dir, "softhsm2.conf")
	if err := os.WriteFile(conf, []byte("directories.tokendir = "+tokens+"\nobjectstore.backend = file\nlog.level = ERROR\n"), 0o600); err != nil {
		return "", err
	}
	env := "SOFTHSM2_CONF=" + conf
	cmd := exec.CommandContext(ctx, util, "--init-token", "--free", "--label", "bench", "--pin", "1234", "--so-pin", "5678")
	cmd.Env = append(os.Environ(), env)
	if out, err := cmd.CombinedOutput(); err != nil {
		return "", errors.New("softhsm2-util --init-token: " + strings.TrimSpace(string(out)))
	}
	return env, nil
}

package bench

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/stream"
)

// Operations and modes of RunStream.
const (
	OpStreamEncrypt = "stream-encrypt"
	OpStreamDecrypt = "stream-decrypt"
	// ModeLibrary is EncryptWriter or DecryptReader of the client library
	// in the measuring process, an envelope stream (a data key from the
	// daemon, the chunks sealed in the process).
	ModeLibrary = "library"
	// ModeCLI is "keywarden encrypt" or "keywarden decrypt", a process of
	// its own, as they run by default: an envelope stream.
	ModeCLI = "cli"
	// ModeLibraryDaemon and ModeCLIDaemon are the same with every chunk
	// sealed or opened by the daemon (StreamOptions without DataKey,
	// "keywarden encrypt --format stream").
	ModeLibraryDaemon = "library-stream"
	ModeCLIDaemon     = "cli-stream"
)

// streamModes is the order of RunStream's results for each operation.
var streamModes = []string{ModeInProcess, ModeLibrary, ModeCLI, ModeLibraryDaemon, ModeCLIDaemon}

// StreamConfig configures RunStream. Zero values mean defaults.
type StreamConfig struct {
	// Size is the file's size in bytes; 0 means 1 GiB.
	Size int64
	// Runs is how many times each measurement is made; 0 means 3.
	Runs int
	// ChunkSize is the stream's chunk size; 0 means the default.
	ChunkSize int
	// Dir holds the files (the input, and the ciphertext and plaintext
	// written); empty means the temporary directory.
	Dir string
	// Executable is the keywarden binary, run as the private daemon and
	// as the CLI; empty means the running executable.
	Executable string
	// Env is added to the environment of the daemon and of the CLI.
	Env []string
}

func (c StreamConfig) withDefaults() StreamConfig {
	if c.Size <= 0 {
		c.Size = 1 << 30
	}
	if c.Runs <= 0 {
		c.Runs = 3
	}
	return c
}

// RunStream measures the encryption and decryption of a file of
// cfg.Size random bytes, file to file, in the stream formats: in-process
// (an envelope stream under a data key of the measuring process's own,
// reading and writing the same files: the yardstick), then with the client
// library and with the keywarden command, as envelope streams and as
// streams whose every chunk the daemon seals. Each figure is the
// median of cfg.Runs runs; Result.Ops is 1 (one file) and Bytes its size.
// Every output is checked: the ciphertexts decrypt, and the plaintexts
// are the input.
func RunStream(ctx context.Context, cfg StreamConfig, progress io.Writer) (_ []Result, err error) {
	cfg = cfg.withDefaults()
	say := sayer(progress)
	exe := cfg.Executable
	if exe == "" {
		if exe, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	dir, err := os.MkdirTemp(cfg.Dir, "keywarden-bench-stream-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	in := filepath.Join(dir, "plain")
	say("writing %d random bytes to %s...", cfg.Size, in)
	want, err := randomFile(in, cfg.Size)
	if err != nil {
		return nil, err
	}

	d, err := startDaemon(ctx, exe, cfg.Env)
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := d.stop(); err == nil {
			err = serr
		}
	}()
	c, err := keywarden.Dial(ctx, d.socket)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	const keyName = "bench-stream"
	k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: keyName})
	if err != nil {
		return nil, err
	}
	localKey := make([]byte, stream.DataKeySize)
	rand.Read(localKey)
	local, err := stream.EnvelopeCipher(localKey)
	if err != nil {
		return nil, err
	}
	envOpts := &keywarden.StreamOptions{ChunkSize: cfg.ChunkSize, DataKey: true}
	daemonOpts := &keywarden.StreamOptions{ChunkSize: cfg.ChunkSize}
	sopts := &stream.Options{}
	if cfg.ChunkSize > 0 {
		for 1<<sopts.ChunkShift < cfg.ChunkSize {
			sopts.ChunkShift++
		}
	}
	cliArgs := func(op, format string) []string {
		args := []string{op, "--key", keyName}
		if op == "encrypt" && cfg.ChunkSize > 0 {
			args = append(args, "--chunk-size", fmt.Sprint(cfg.ChunkSize))
		}
		if op == "encrypt" && format != "" {
			args = append(args, "--format", format)
		}
		return args
	}
	// The in-process envelope stream: its header and a stand-in for the
	// wrapped data key, so that the files are the size the daemon's are.
	shift := sopts.ChunkShift
	if shift == 0 {
		shift = stream.DefaultChunkShift
	}
	envHeader, err := stream.NewEnvelopeHeader(shift)
	if err != nil {
		return nil, err
	}
	preamble, err := stream.Preamble(make([]byte, 7+12+stream.DataKeySize+16))
	if err != nil {
		return nil, err
	}
	library := func(opts *keywarden.StreamOptions) [2]func(src, dst string) (time.Duration, error) {
		return [2]func(src, dst string) (time.Duration, error){
			func(src, dst string) (time.Duration, error) {
				return 0, fileToFile(src, dst, func(r io.Reader, w io.Writer) error {
					ew, err := k.EncryptWriter(ctx, w, nil, opts)
					if err != nil {
						return err
					}
					if _, err := io.Copy(ew, r); err != nil {
						return err
					}
					return ew.Close()
				})
			},
			func(src, dst string) (time.Duration, error) {
				return 0, fileToFile(src, dst, func(r io.Reader, w io.Writer) error {
					dr, err := k.DecryptReader(ctx, r, nil, nil)
					if err != nil {
						return err
					}
					defer dr.Close()
					_, err = io.Copy(w, dr)
					return err
				})
			},
		}
	}
	libEnv, libDaemon := library(envOpts), library(daemonOpts)

	type way struct {
		op, mode string
		// run returns the processor time of the command it ran, if any.
		run func(src, dst string) (time.Duration, error)
	}
	ct, pt := filepath.Join(dir, "cipher"), filepath.Join(dir, "plain.out")
	// Each way encrypts in into ct, or decrypts ct into pt; a decryption
	// reads the ciphertext its mode made.
	ways := []way{
		{OpStreamEncrypt, ModeInProcess, func(src, dst string) (time.Duration, error) {
			return 0, fileToFile(src, dst, func(r io.Reader, w io.Writer) error {
				sw := stream.NewWriterHeader(local, w, envHeader, preamble, nil, sopts)
				if _, err := io.Copy(sw, r); err != nil {
					return err
				}
				return sw.Close()
			})
		}},
		{OpStreamDecrypt, ModeInProcess, func(src, dst string) (time.Duration, error) {
			return 0, fileToFile(src, dst, func(r io.Reader, w io.Writer) error {
				if _, err := io.CopyN(io.Discard, r, int64(stream.HeaderSize+len(preamble))); err != nil {
					return err
				}
				sr := stream.NewReaderHeader(local, r, envHeader, nil, nil)
				_, err := io.Copy(w, sr)
				return err
			})
		}},
		{OpStreamEncrypt, ModeLibrary, libEnv[0]},
		{OpStreamDecrypt, ModeLibrary, libEnv[1]},
		{OpStreamEncrypt, ModeCLI, func(src, dst string) (time.Duration, error) {
			return runCLI(ctx, exe, cfg.Env, d.socket, cliArgs("encrypt", ""), src, dst)
		}},
		{OpStreamDecrypt, ModeCLI, func(src, dst string) (time.Duration, error) {
			return runCLI(ctx, exe, cfg.Env, d.socket, cliArgs("decrypt", ""), src, dst)
		}},
		{OpStreamEncrypt, ModeLibraryDaemon, libDaemon[0]},
		{OpStreamDecrypt, ModeLibraryDaemon, libDaemon[1]},
		{OpStreamEncrypt, ModeCLIDaemon, func(src, dst string) (time.Duration, error) {
			return runCLI(ctx, exe, cfg.Env, d.socket, cliArgs("encrypt", "stream"), src, dst)
		}},
		{OpStreamDecrypt, ModeCLIDaemon, func(src, dst string) (time.Duration, error) {
			return runCLI(ctx, exe, cfg.Env, d.socket, cliArgs("decrypt", ""), src, dst)
		}},
	}
	times := map[[2]string][]float64{}
	cpus := map[[2]string][]float64{}
	dcpus := map[[2]string][]float64{}
	for run := 1; run <= cfg.Runs; run++ {
		for _, w := range ways {
			src, dst := in, ct
			if w.op == OpStreamDecrypt {
				src, dst = ct, pt
			}
			say("measuring %s %s, run %d of %d...", w.op, w.mode, run, cfg.Runs)
			os.Remove(dst)
			key := [2]string{w.op, w.mode}
			self0, dmn0 := selfCPU(), procCPU(d.pid())
			start := time.Now()
			cmdCPU, err := w.run(src, dst)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", w.op, w.mode, err)
			}
			times[key] = append(times[key], time.Since(start).Seconds())
			if w.mode == ModeCLI || w.mode == ModeCLIDaemon {
				cpus[key] = append(cpus[key], cmdCPU.Seconds())
			} else {
				cpus[key] = append(cpus[key], (selfCPU() - self0).Seconds())
			}
			if w.mode != ModeInProcess {
				dcpus[key] = append(dcpus[key], (procCPU(d.pid()) - dmn0).Seconds())
			}
			if w.op == OpStreamDecrypt {
				if got, err := fileHash(pt); err != nil || !bytes.Equal(got, want) {
					return nil, fmt.Errorf("%s %s: the plaintext is not the input (%v)", w.op, w.mode, err)
				}
			}
		}
	}
	var results []Result
	for _, op := range []string{OpStreamEncrypt, OpStreamDecrypt} {
		var base float64
		for _, mode := range streamModes {
			ts := times[[2]string{op, mode}]
			r := Result{Op: op, Mode: mode, Ops: 1, Bytes: cfg.Size, Runs: len(ts)}
			for _, t := range ts {
				r.RunsOpsPerSec = append(r.RunsOpsPerSec, 1/t)
			}
			r.Seconds = median(append([]float64(nil), ts...))
			r.CPUSeconds = median(cpus[[2]string{op, mode}])
			r.DaemonCPUSeconds = median(dcpus[[2]string{op, mode}])
			r.OpsPerSec = 1 / r.Seconds
			r.MBPerSec = float64(cfg.Size) / r.Seconds / 1e6
			if mode == ModeInProcess {
				base = r.OpsPerSec
			}
			if base > 0 {
				r.RatioToInProcess = r.OpsPerSec / base
			}
			results = append(results, r)
		}
	}
	return results, nil
}

// randomFile writes n random bytes to path and returns their SHA-256.
func randomFile(path string, n int64) ([]byte, error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.CopyN(io.MultiWriter(f, h), rand.Reader, n); err != nil {
		return nil, err
	}
	return h.Sum(nil), f.Close()
}

func fileHash(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	return h.Sum(nil), nil
}

// fileToFile runs fn from src to a new dst, the files as the CLI has its
// stdin and stdout.
func fileToFile(src, dst string, fn func(io.Reader, io.Writer) error) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return err
	}
	defer out.Close()
	if err := fn(in, out); err != nil {
		return err
	}
	return out.Close()
}

// runCLI runs the keywarden command with stdin from src and stdout to dst
// and returns its processor time.
func runCLI(ctx context.Context, exe string, env []string, socket string, args []string, src, dst string) (time.Duration, error) {
	in, err := os.Open(src)
	if err != nil {
		return 0, err
	}
	defer in.Close()
	out, err := os.Create(dst)
	if err != nil {
		return 0, err
	}
	defer out.Close()
	cmd := exec.CommandContext(ctx, exe, args...)
	cmd.Env = append(append(os.Environ(), env...), keywarden.SocketEnv+"="+socket)
	cmd.Stdin, cmd.Stdout = in, out
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		return 0, fmt.Errorf("keywarden %s: %v: %s", args[0], err, bytes.TrimSpace(stderr.Bytes()))
	}
	return cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime(), out.Close()
}

// selfCPU is this process's processor time, user and system.
func selfCPU() time.Duration {
	var ru syscall.Rusage
	if syscall.Getrusage(syscall.RUSAGE_SELF, &ru) != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// procCPU is process pid's processor time from /proc/PID/stat, in the
// kernel's clock ticks (100 per second on Linux).
func procCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command name, which is in parentheses.
	i := bytes.LastIndexByte(b, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(string(b[i+1:]))
	if len(f) < 13 {
		return 0
	}
	ut, _ := strconv.ParseInt(f[11], 10, 64) // utime, field 14
	st, _ := strconv.ParseInt(f[12], 10, 64) // stime, field 15
	return time.Duration(ut+st) * 10 * time.Millisecond
}

package cli

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"strconv"
	"time"
	"unicode/utf8"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/kdf"
)

// The Argon2id commands: key derive-passphrase, password hash and verify,
// kdf calibrate and kdf bench (kdfbench.go), and the daemon's --kdf-*
// flags. Passphrases never come from the command line: from a terminal
// without echo, or from --passphrase-file.

// kdfServeFlags registers the daemon's KDF flags; the returned Config is
// filled when the flags are parsed.
func kdfServeFlags(f *flags) *kdf.Config {
	c := &kdf.Config{}
	f.Var((*kibFlag)(&c.MaxMemoryKiB), "kdf-max-memory", "most memory of one Argon2id derivation, in `KiB` (default 1048576, at most half of RAM)")
	f.Uint64Var(&c.BudgetKiB, "kdf-memory-budget", 0, "memory all derivations running at once may use, in `KiB`, counting 16384 per worker besides Argon2's memory (default: one derivation of --kdf-max-memory)")
	f.IntVar(&c.Queue, "kdf-queue", 0, "derivations that may wait for the memory budget (default 64)")
	f.IntVar(&c.QueuePerTenant, "kdf-queue-per-uid", 0, "derivations of one uid that may wait (default 8)")
	f.IntVar(&c.RunningPerTenant, "kdf-running-per-uid", 0, fmt.Sprintf("derivations of one uid that may run at once (default %d: half the processors)", kdf.DefaultRunningPerTenant(runtime.NumCPU())))
	f.IntVar(&c.Nice, "kdf-nice", 0, "nice value (1 to 19) of the workers of derivations other than unsealing (default: the daemon's own)")
	f.DurationVar(&c.Deadline, "kdf-deadline", 0, "kill a derivation's worker after this `duration` (default 1m)")
	f.DurationVar(&c.Watchdog, "kdf-watchdog", 0, "kill a worker that leaves a liveness challenge unanswered and neither runs nor waits for a processor for half this `period` (default 1s)")
	f.StringVar(&c.Cgroup, "kdf-cgroup", "auto", "`mode`: auto (a memory cgroup per worker where the machine allows) or off")
	return c
}

// kibFlag is a uint32 flag.
type kibFlag uint32

func (k *kibFlag) String() string { return strconv.FormatUint(uint64(*k), 10) }
func (k *kibFlag) Set(s string) error {
	n, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return errors.New("want a number of KiB")
	}
	*k = kibFlag(n)
	return nil
}

// argon2Flags are the cost flags of the commands that run Argon2id.
type argon2Flags struct {
	time, memory, threads uint
}

func (a *argon2Flags) register(f *flags) {
	f.UintVar(&a.time, "time", 0, "Argon2id `passes` (default 3)")
	f.UintVar(&a.memory, "memory", 0, "Argon2id memory in `KiB` (default 65536)")
	f.UintVar(&a.threads, "threads", 0, "Argon2id `lanes` (default 4)")
}

func (a *argon2Flags) params() (keywarden.Argon2Params, error) {
	if a.time > 1<<32-1 || a.memory > 1<<32-1 || a.threads > 255 {
		return keywarden.Argon2Params{}, usagef("--time and --memory must fit 32 bits and --threads be at most 255")
	}
	return keywarden.Argon2Params{Time: uint32(a.time), MemoryKiB: uint32(a.memory), Threads: uint8(a.threads)}, nil
}

// maxPassphrase bounds what is read as a passphrase.
const maxPassphrase = kdf.MaxPasswordLen

// readPassphrase reads a passphrase from file ("-" for stdin), or, when
// file is empty, from the terminal without echo (twice when confirm is
// set). One trailing newline is removed from a file or stdin.
func readPassphrase(e *env, file, what string, confirm bool) ([]byte, error) {
	var pw []byte
	var err error
	switch file {
	case "":
		pw, err = promptPassphrase(e, what, confirm)
	case "-":
		pw, err = readLimited(e.stdin)
	default:
		var f *os.File
		if f, err = os.Open(file); err == nil {
			pw, err = readLimited(f)
			f.Close()
		}
	}
	if err != nil {
		return nil, err
	}
	if file != "" {
		pw = trimNewline(pw)
	}
	if len(pw) == 0 {
		return nil, usagef("empty %s", what)
	}
	return pw, nil
}

func readLimited(r io.Reader) ([]byte, error) {
	b, err := io.ReadAll(io.LimitReader(r, maxPassphrase+2))
	if err != nil {
		clear(b)
		return nil, fmt.Errorf("read the passphrase: %w", err)
	}
	if len(trimNewline(b)) > maxPassphrase {
		clear(b)
		return nil, fmt.Errorf("the passphrase is longer than %d bytes", maxPassphrase)
	}
	return b, nil
}

func trimNewline(b []byte) []byte {
	b = bytes.TrimSuffix(b, []byte("\n"))
	return bytes.TrimSuffix(b, []byte("\r"))
}

// promptPassphrase asks on the controlling terminal with echo off.
func promptPassphrase(e *env, what string, confirm bool) ([]byte, error) {
	tty, err := os.OpenFile("/dev/tty", os.O_RDWR, 0)
	if err != nil {
		return nil, usagef("no terminal to ask for the %s: give --passphrase-file FILE (- for stdin)", what)
	}
	defer tty.Close()
	pw, err := askNoEcho(tty, fmt.Sprintf("Enter %s: ", what))
	if err != nil || !confirm {
		return pw, err
	}
	again, err := askNoEcho(tty, fmt.Sprintf("Repeat %s: ", what))
	defer clear(again)
	if err != nil {
		clear(pw)
		return nil, err
	}
	if !bytes.Equal(pw, again) {
		clear(pw)
		return nil, fmt.Errorf("the %ss do not match", what)
	}
	return pw, nil
}

// askNoEcho prints prompt on tty and reads one line with echo off,
// restoring the terminal even on Ctrl-C.
func askNoEcho(tty *os.File, prompt string) ([]byte, error) {
	fd := int(tty.Fd())
	old, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return nil, usagef("cannot read a passphrase from the terminal: %v", err)
	}
	noEcho := *old
	noEcho.Lflag &^= unix.ECHO
	noEcho.Lflag |= unix.ICANON | unix.ECHONL
	if err := unix.IoctlSetTermios(fd, unix.TCSETS, &noEcho); err != nil {
		return nil, usagef("cannot turn off echo: %v", err)
	}
	restore := func() { unix.IoctlSetTermios(fd, unix.TCSETS, old) }
	defer restore()
	fmt.Fprint(tty, prompt)
	sig := make(chan os.Signal, 1)
	signal.Notify(sig, os.Interrupt, unix.SIGTERM)
	defer signal.Stop(sig)
	type line struct {
		b   []byte
		err error
	}
	got := make(chan line, 1)
	go func() {
		b, err := bufio.NewReaderSize(tty, 1024).ReadSlice('\n')
		out := bytes.Clone(trimNewline(b))
		clear(b)
		got <- line{out, err}
	}()
	select {
	case l := <-got:
		if l.err != nil && l.err != io.EOF {
			clear(l.b)
			return nil, fmt.Errorf("read the passphrase: %w", l.err)
		}
		return l.b, nil
	case <-sig:
		restore()
		fmt.Fprintln(tty)
		return nil, errors.New("interrupted")
	}
}

func runKeyDerivePassphrase(e *env, args []string) error {
	f := newFlags("key derive-passphrase", e)
	var s specFlags
	s.register(f, false)
	f.StringVar(&s.typ, "type", string(keywarden.AES256GCM), "the new key's `type`: aes256-gcm or hmac-sha256/384/512")
	salt := f.String("salt", "", "the `salt`: 8 to 256 bytes, not secret, unique to this key (required)")
	saltHex := f.String("salt-hex", "", "the salt in `hex`, instead of --salt")
	file := f.String("passphrase-file", "", "read the passphrase from `FILE` (- for stdin; one trailing newline is removed) instead of the terminal")
	var a argon2Flags
	a.register(f)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	spec, err := s.spec()
	if err != nil {
		return err
	}
	var sb []byte
	switch {
	case *salt != "" && *saltHex != "":
		return usagef("give --salt or --salt-hex, not both")
	case *saltHex != "":
		if sb, err = hex.DecodeString(*saltHex); err != nil {
			return usagef("--salt-hex is not hex")
		}
	case *salt != "":
		sb = []byte(*salt)
	default:
		return usagef("--salt is required")
	}
	if len(sb) < kdf.MinSaltLen || len(sb) > kdf.MaxSaltLen {
		return usagef("the salt must be %d to %d bytes", kdf.MinSaltLen, kdf.MaxSaltLen)
	}
	params, err := a.params()
	if err != nil {
		return err
	}
	pw, err := readPassphrase(e, *file, "passphrase", true)
	if err != nil {
		return err
	}
	defer clear(pw)
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	k, err := c.DeriveFromPassphrase(ctx, spec, pw, sb, params)
	clear(pw)
	if err != nil {
		return err
	}
	return printKey(e, f.json, k.Info())
}

// saltString shows a salt as text when it is printable, else as hex.
func saltString(b []byte) string {
	if utf8.Valid(b) {
		printable := true
		for _, r := range string(b) {
			if r < 0x20 || r == 0x7f || r == ' ' {
				printable = false
				break
			}
		}
		if printable {
			return strconv.Quote(string(b))
		}
	}
	return "hex:" + hex.EncodeToString(b)
}

func runPasswordHash(e *env, args []string) error {
	f := newFlags("password hash", e)
	file := f.String("passphrase-file", "", "read the password from `FILE` (- for stdin; one trailing newline is removed) instead of the terminal")
	var a argon2Flags
	a.register(f)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	params, err := a.params()
	if err != nil {
		return err
	}
	pw, err := readPassphrase(e, *file, "password", true)
	if err != nil {
		return err
	}
	defer clear(pw)
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	phc, err := c.HashPassword(ctx, pw, params)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, map[string]string{"hash": phc})
	}
	_, err = fmt.Fprintln(e.stdout, phc)
	return err
}

func runPasswordVerify(e *env, args []string) error {
	f := newFlags("password verify", e)
	phc := f.String("hash", "", "the `PHC` string: $argon2id$v=19$m=...,t=...,p=...$SALT$HASH (required)")
	file := f.String("passphrase-file", "", "read the password from `FILE` (- for stdin; one trailing newline is removed) instead of the terminal")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if *phc == "" {
		return usagef("--hash is required")
	}
	pw, err := readPassphrase(e, *file, "password", false)
	if err != nil {
		return err
	}
	defer clear(pw)
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	err = c.VerifyPassword(ctx, pw, *phc)
	switch {
	case f.json && (err == nil || errors.Is(err, keywarden.ErrVerification)):
		printJSON(e, map[string]bool{"match": err == nil})
	case err == nil:
		fmt.Fprintln(e.stdout, "match") // as verify prints "verified"
	}
	return err
}

func runKDFCalibrate(e *env, args []string) error {
	f := newFlags("kdf calibrate", e)
	target := f.Uint("target-ms", 0, "how long one derivation should take, in `milliseconds` (required; e.g. 1000)")
	maxMem := f.Uint("max-memory", 0, "use at most this much memory, in `KiB` (default: the daemon's cap, at most half of RAM and of available memory)")
	threads := f.Uint("threads", 0, "Argon2id `lanes` (default: min(4, the daemon's CPUs))")
	quiet := f.Bool("quiet", false, "no progress on stderr")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if *target < 1 || *target > 60000 {
		return usagef("--target-ms must be 1 to 60000")
	}
	if *maxMem > 1<<32-1 || *threads > 255 {
		return usagef("--max-memory must fit 32 bits and --threads be at most 255")
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	tgt := time.Duration(*target) * time.Millisecond
	var steps []map[string]any
	progress := func(st keywarden.CalibrationStep) {
		steps = append(steps, map[string]any{"step": st.Step, "time": st.Params.Time, "memory_kib": st.Params.MemoryKiB,
			"threads": st.Params.Threads, "elapsed_ms": msFloat(st.Elapsed)})
		if !*quiet && !f.json {
			fmt.Fprintf(e.stderr, "step %d: m=%d KiB, t=%d, p=%d: %.0f ms (target %d ms, memory cap %d KiB)\n",
				st.Step, st.Params.MemoryKiB, st.Params.Time, st.Params.Threads, msFloat(st.Elapsed), *target, st.MemoryCapKiB)
		}
	}
	res, err := c.CalibrateKDF(ctx, tgt, &keywarden.CalibrateOptions{MaxMemoryKiB: uint32(*maxMem), Threads: uint8(*threads), Progress: progress})
	if err != nil {
		return err
	}
	p := res.Params
	if f.json {
		return printJSON(e, map[string]any{"time": p.Time, "memory_kib": p.MemoryKiB, "threads": p.Threads,
			"elapsed_ms": msFloat(res.Elapsed), "target_ms": *target, "memory_cap_kib": res.MemoryCapKiB, "steps": steps})
	}
	fmt.Fprintf(e.stdout, "time:     %d\nmemory:   %d KiB\nthreads:  %d\ntakes:    %.0f ms (target %d ms)\nflags:    --time %d --memory %d --threads %d\n",
		p.Time, p.MemoryKiB, p.Threads, msFloat(res.Elapsed), *target, p.Time, p.MemoryKiB, p.Threads)
	return nil
}

func msFloat(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }

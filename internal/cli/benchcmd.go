package cli

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/keywarden/keywarden/internal/bench"
)

func runBench(e *env, args []string) error {
	f := newFlags("bench", e)
	// Unlike other commands, bench does not look for the usual daemon: it
	// measures one of its own unless told otherwise, and has no deadline
	// unless given one.
	f.Lookup("socket").Usage = "measure the daemon at this socket `path` (default: start a private daemon, as a separate process, for the run); with --create, a comma-separated list of the sockets of running, unsealed daemons (several sharing one etcd store, say), over which the clients are spread in turn"
	f.timeout = 0
	f.Lookup("timeout").DefValue = "0s"
	f.Lookup("timeout").Usage = "give up after this `duration` (default: no limit)"
	duration := f.Duration("duration", time.Second, "measure each operation in each mode for this `duration` (with --create: each measurement, default 5s)")
	opsList := f.String("ops", "", "comma-separated `list` of operations to measure (default: all of "+strings.Join(bench.Operations(), ", ")+")")
	batch := f.Int("batch", 512, "operations per batch in the batched mode")
	modesList := f.String("modes", "", "comma-separated `list` of modes to measure the operations in (default: all of "+strings.Join(bench.Modes(), ", ")+"; ping's floor goes with its roundtrip)")
	pipeline := f.Int("pipeline", 16, "requests in flight at once in the pipelined mode")
	var st storeBenchFlags
	st.register(f)
	streamMode := f.Bool("stream", false, "measure the encryption and decryption of a --size file, file to file, in the stream format: in-process, with the client library and with the keywarden command")
	size := f.Int64("size", 1<<30, "with --stream: the file's size in `bytes`")
	chunk := f.Int("chunk-size", 0, "with --stream: the stream's chunk size in `bytes` (default 65536)")
	auditMode := f.Bool("audit", false, "measure what the audit log costs: requests and batches of AES-GCM encryptions with --clients concurrent clients, against private daemons with no audit log, --audit-sync grouped and always")
	sshAgentMode := f.Bool("ssh-agent", false, "measure Ed25519 signatures through a private daemon's ssh-agent socket against OpenSSH's ssh-agent, one request per round trip from --clients concurrent clients, with the daemon's own socket and in-process signatures as baselines")
	httpMode := f.Bool("http", false, "measure the transit HTTP API of a private daemon (encrypt 256 B, single and batch_input of 256; Ed25519 sign) over its Unix socket and over mutual TLS, from --clients concurrent clients (default 1 and 8), with the daemon's own socket as the baseline")
	pkcs11Mode := f.Bool("pkcs11", false, "measure ECDSA P-256 and Ed25519 signatures, HMAC-SHA-256 and AES-256-GCM of 256 B through libkeywarden-pkcs11.so and a private daemon against SoftHSM2, both loaded by one C host (keywarden-p11bench) with --clients threads (default 1 and 4)")
	pkcs11Module := f.String("pkcs11-module", "", "with --pkcs11: libkeywarden-pkcs11.so's `path` (default: beside keywarden, else the multiarch PKCS #11 directory)")
	pkcs11Host := f.String("pkcs11-host", "", "with --pkcs11: keywarden-p11bench's `path` (default: beside keywarden, else in PATH)")
	softhsm := f.String("softhsm", "", "with --pkcs11: SoftHSM2's module `path` (default: Debian's; missing, keywarden is measured alone)")
	var sc scaleFlags
	sc.register(f)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if done, err := sc.run(e, f, &st, *duration, *opsList, *streamMode || *auditMode || *sshAgentMode || *pkcs11Mode || *httpMode || st.create || st.startup); done {
		return err
	}
	if *httpMode {
		explicit := map[string]bool{}
		f.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
		return runTransitBench(e, f, &st, *duration, explicit)
	}
	if *pkcs11Mode {
		explicit := map[string]bool{}
		f.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
		return runPKCS11Bench(e, f, &st, *duration, explicit, bench.PKCS11Config{Module: *pkcs11Module, Host: *pkcs11Host, SoftHSM: *softhsm})
	}
	if *sshAgentMode {
		explicit := map[string]bool{}
		f.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
		return runSSHAgentBench(e, f, &st, *duration, explicit)
	}
	if *streamMode {
		return runStreamBench(e, f, &st, *size, *chunk)
	}
	if *auditMode {
		explicit := map[string]bool{}
		f.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
		return runAuditBench(e, f, &st, *duration, *batch, explicit)
	}
	if st.create || st.startup {
		explicit := map[string]bool{}
		f.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
		if !explicit["duration"] {
			*duration = 0 // the store modes' own default
		}
		return runStoreBench(e, f, &st, *duration, explicit)
	}
	switch {
	case *duration <= 0:
		return usagef("--duration must be positive")
	case *batch < 1:
		return usagef("--batch must be at least 1")
	case *pipeline < 1:
		return usagef("--pipeline must be at least 1")
	}
	var ops []string
	for _, op := range strings.Split(*opsList, ",") {
		if op = strings.TrimSpace(op); op == "" {
			continue
		}
		if !slices.Contains(bench.Operations(), op) {
			return usagef("unknown operation %q (want %s)", op, strings.Join(bench.Operations(), ", "))
		}
		ops = append(ops, op)
	}

	var modes []string
	for _, m := range strings.Split(*modesList, ",") {
		if m = strings.TrimSpace(m); m == "" {
			continue
		}
		if !slices.Contains(bench.Modes(), m) {
			return usagef("unknown mode %q (want %s)", m, strings.Join(bench.Modes(), ", "))
		}
		modes = append(modes, m)
	}

	ctx, stop, progress := benchContext(e, f)
	defer stop()
	results, err := bench.Run(ctx, bench.Config{
		Socket: f.socket, Duration: *duration, Ops: ops, Modes: modes, BatchSize: *batch, Pipeline: *pipeline,
	}, progress)
	if err != nil {
		return err
	}
	if f.json {
		if results == nil {
			results = []bench.Result{}
		}
		return printJSON(e, results)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "OP\tMODE\tOPS/S\tMB/S\tP50(µs)\tP99(µs)\t×INPROC\tCPU(µs/op)\tDAEMON CPU(µs/op)")
	for _, r := range results {
		mb, ratio, cpu, dcpu := "-", "-", "-", "-"
		if r.Bytes > 0 {
			mb = fmt.Sprintf("%.1f", r.MBPerSec)
		}
		if r.RatioToInProcess > 0 {
			ratio = fmt.Sprintf("%.2f", r.RatioToInProcess)
		}
		if r.CPUusPerOp > 0 {
			cpu = micros(r.CPUusPerOp)
		}
		if r.DaemonCPUusPerOp > 0 {
			dcpu = micros(r.DaemonCPUusPerOp)
		}
		fmt.Fprintf(w, "%s\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Op, r.Mode, r.OpsPerSec, mb, micros(r.P50us), micros(r.P99us), ratio, cpu, dcpu)
	}
	return w.Flush()
}

// micros formats a latency in microseconds with three significant digits
// or more.
func micros(us float64) string {
	switch {
	case us < 10:
		return fmt.Sprintf("%.3f", us)
	case us < 100:
		return fmt.Sprintf("%.2f", us)
	case us < 1000:
		return fmt.Sprintf("%.1f", us)
	}
	return fmt.Sprintf("%.0f", us)
}

// runAuditBench is bench --audit.
func runAuditBench(e *env, f *flags, st *storeBenchFlags, duration time.Duration, batch int, explicit map[string]bool) error {
	if f.socket != "" {
		return usagef("--audit starts its own daemons: it takes no --socket")
	}
	cfg := bench.AuditConfig{BatchSize: batch, Dir: st.dir}
	if explicit["duration"] {
		cfg.Duration = duration
	}
	if explicit["runs"] {
		cfg.Runs = st.runs
	}
	if explicit["clients"] {
		var err error
		if cfg.Clients, err = st.clientCounts(); err != nil {
			return err
		}
	}
	if explicit["runs"] && st.runs < 1 {
		return usagef("--runs must be at least 1")
	}
	ctx, stop, progress := benchContext(e, f)
	defer stop()
	results, err := bench.RunAudit(ctx, cfg, progress)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, results)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "AUDIT\tKIND\tCLIENTS\tOPS/S\tP50(µs)\tP99(µs)\t×OFF")
	for _, r := range results {
		ratio := "-"
		if r.RatioToOff > 0 {
			ratio = fmt.Sprintf("%.2f", r.RatioToOff)
		}
		kind := r.Kind
		if r.Batch > 0 {
			kind = fmt.Sprintf("batched %d", r.Batch)
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%.0f\t%s\t%s\t%s\n", r.Audit, kind, r.Clients, r.OpsPerSec, micros(r.P50us), micros(r.P99us), ratio)
	}
	return w.Flush()
}

// runSSHAgentBench is bench --ssh-agent.
func runSSHAgentBench(e *env, f *flags, st *storeBenchFlags, duration time.Duration, explicit map[string]bool) error {
	if f.socket != "" {
		return usagef("--ssh-agent starts its own daemon: it takes no --socket")
	}
	for _, name := range []string{"ops", "modes", "batch", "pipeline", "stream", "audit", "create", "startup"} {
		if explicit[name] {
			return usagef("--%s does not apply to --ssh-agent", name)
		}
	}
	switch {
	case duration <= 0:
		return usagef("--duration must be positive")
	case st.runs < 1:
		return usagef("--runs must be at least 1")
	}
	cfg := bench.SSHAgentConfig{Duration: duration, Runs: st.runs, Dir: st.dir}
	if explicit["clients"] {
		var err error
		if cfg.Clients, err = st.clientCounts(); err != nil {
			return err
		}
	}
	ctx, stop, progress := benchContext(e, f)
	defer stop()
	results, err := bench.RunSSHAgent(ctx, cfg, progress)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, results)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "SIGNER\tCLIENTS\tOPS/S\tP50(µs)\tP99(µs)\t×OPENSSH\t×INPROC")
	openssh := false
	for _, r := range results {
		ratio := "-"
		if r.RatioToOpenSSH > 0 {
			ratio = fmt.Sprintf("%.2f", r.RatioToOpenSSH)
			openssh = true
		}
		fmt.Fprintf(w, "%s\t%d\t%.0f\t%s\t%s\t%s\t%.2f\n", r.Mode, r.Clients, r.OpsPerSec, micros(r.P50us), micros(r.P99us), ratio, r.RatioToInProcess)
	}
	if err := w.Flush(); err != nil {
		return err
	}
	if !openssh {
		fmt.Fprintln(e.stdout, "(OpenSSH's ssh-agent is not installed: no comparison with it)")
	}
	return nil
}

// runPKCS11Bench is bench --pkcs11.
func runPKCS11Bench(e *env, f *flags, st *storeBenchFlags, duration time.Duration, explicit map[string]bool, cfg bench.PKCS11Config) error {
	if f.socket != "" {
		return usagef("--pkcs11 starts its own daemon: it takes no --socket")
	}
	for _, name := range []string{"ops", "modes", "batch", "pipeline", "stream", "audit", "create", "startup", "ssh-agent", "http"} {
		if explicit[name] {
			return usagef("--%s does not apply to --pkcs11", name)
		}
	}
	if duration <= 0 || st.runs < 1 {
		return usagef("--duration must be positive and --runs at least 1")
	}
	cfg.Duration, cfg.Runs, cfg.Dir = duration, st.runs, st.dir
	if explicit["clients"] {
		var err error
		if cfg.Threads, err = st.clientCounts(); err != nil {
			return err
		}
	}
	ctx, stop, progress := benchContext(e, f)
	defer stop()
	results, err := bench.RunPKCS11(ctx, cfg, progress)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, results)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "OPERATION\tTHREADS\tTOKEN\tOPS/S\t×SOFTHSM2")
	for _, r := range results {
		ratio := "-"
		if r.RatioToSoftHSM > 0 {
			ratio = fmt.Sprintf("%.2f", r.RatioToSoftHSM)
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%.0f\t%s\n", r.Op, r.Threads, r.Token, r.OpsPerSec, ratio)
	}
	return w.Flush()
}

// runTransitBench is bench --http.
func runTransitBench(e *env, f *flags, st *storeBenchFlags, duration time.Duration, explicit map[string]bool) error {
	if f.socket != "" {
		return usagef("--http starts its own daemon: it takes no --socket")
	}
	for _, name := range []string{"ops", "modes", "batch", "pipeline", "stream", "audit", "create", "startup", "ssh-agent"} {
		if explicit[name] {
			return usagef("--%s does not apply to --http", name)
		}
	}
	if duration <= 0 || st.runs < 1 {
		return usagef("--duration must be positive and --runs at least 1")
	}
	cfg := bench.TransitConfig{Duration: duration, Runs: st.runs, Dir: st.dir}
	if explicit["clients"] {
		var err error
		if cfg.Clients, err = st.clientCounts(); err != nil {
			return err
		}
	}
	ctx, stop, progress := benchContext(e, f)
	defer stop()
	results, err := bench.RunTransit(ctx, cfg, progress)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, results)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "OP\tTRANSPORT\tCLIENTS\tOPS/S\tREQUESTS/S\tP50(µs)\tP99(µs)")
	for _, r := range results {
		fmt.Fprintf(w, "%s\t%s\t%d\t%.0f\t%.0f\t%s\t%s\n", r.Op, r.Transport, r.Clients, r.OpsPerSec, r.RequestsPerSec, micros(r.P50us), micros(r.P99us))
	}
	if err := w.Flush(); err != nil {
		return err
	}
	fmt.Fprintln(e.stdout, "(OpenBao is not measured here: docs/performance.md quotes figures measured elsewhere)")
	return nil
}

// runStreamBench is bench --stream.
func runStreamBench(e *env, f *flags, st *storeBenchFlags, size int64, chunk int) error {
	if f.socket != "" {
		return usagef("--stream starts its own daemon: it takes no --socket")
	}
	if size < 1 || st.runs < 1 {
		return usagef("--size and --runs must be at least 1")
	}
	ctx, stop, progress := benchContext(e, f)
	defer stop()
	results, err := bench.RunStream(ctx, bench.StreamConfig{Size: size, Runs: st.runs, ChunkSize: chunk, Dir: st.dir}, progress)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, results)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(w, "OP\tMODE\tSECONDS\tMB/S\t×INPROC\tCPU(s)\tDAEMON CPU(s)")
	for _, r := range results {
		dcpu := "-"
		if r.Mode != bench.ModeInProcess {
			dcpu = fmt.Sprintf("%.2f", r.DaemonCPUSeconds)
		}
		fmt.Fprintf(w, "%s\t%s\t%.3f\t%.1f\t%.2f\t%.2f\t%s\n", r.Op, r.Mode, r.Seconds, r.MBPerSec, r.RatioToInProcess, r.CPUSeconds, dcpu)
	}
	return w.Flush()
}

// benchContext is what every bench run needs: a context that ends at
// SIGINT or SIGTERM and at --timeout, the function that releases it, and
// where progress goes (stderr, unless the result is JSON).
func benchContext(e *env, f *flags) (context.Context, func(), io.Writer) {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	release := stop
	if f.timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		release = func() { cancel(); stop() }
	}
	var progress io.Writer
	if !f.json {
		progress = e.stderr
	}
	return ctx, release, progress
}

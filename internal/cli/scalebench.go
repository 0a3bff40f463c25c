package cli

import (
	"flag"
	"fmt"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/keywarden/keywarden/internal/bench"
)

// scaleFlags are the flags of the scaling modes of "keywarden bench"
// (docs/performance.md, "Connections and scaling"): --clients alone,
// --idle-conns and --resident-keys.
type scaleFlags struct {
	idleConns    int
	residentKeys int
}

func (s *scaleFlags) register(f *flags) {
	f.IntVar(&s.idleConns, "idle-conns", 0, "measure ping round trips of --clients active clients (default 16) with `N` idle connections open besides, against none, and what an idle connection costs the daemon")
	f.IntVar(&s.residentKeys, "resident-keys", 0, "measure AES-GCM round trips with `N` keys resident in the daemon, against one")
}

// run runs a scaling mode if the flags ask for one (done), else leaves the
// command to the other modes. other: another mode was asked for.
func (s *scaleFlags) run(e *env, f *flags, st *storeBenchFlags, duration time.Duration, opsList string, other bool) (done bool, err error) {
	explicit := map[string]bool{}
	f.Visit(func(fl *flag.Flag) { explicit[fl.Name] = true })
	idle, resident := explicit["idle-conns"], explicit["resident-keys"]
	scaling := explicit["clients"] && !other && !idle && !resident
	if !idle && !resident && !scaling {
		return false, nil
	}
	switch {
	case other:
		return true, usagef("--idle-conns and --resident-keys do not go with --create, --startup, --stream, --audit, --ssh-agent, --pkcs11 or --http")
	case idle && resident:
		return true, usagef("give --idle-conns or --resident-keys, not both")
	case idle && s.idleConns < 1, resident && s.residentKeys < 1:
		return true, usagef("--idle-conns and --resident-keys must be at least 1")
	case st.runs < 1:
		return true, usagef("--runs must be at least 1")
	case (idle || resident) && f.socket != "":
		return true, usagef("--idle-conns and --resident-keys start daemons of their own: --socket does not apply")
	}
	for _, name := range []string{"modes", "batch", "pipeline", "dir"} {
		if explicit[name] {
			return true, usagef("--%s does not apply to --clients, --idle-conns or --resident-keys", name)
		}
	}
	cfg := bench.ScaleConfig{Socket: f.socket, Runs: st.runs, IdleConns: s.idleConns, ResidentKeys: s.residentKeys}
	if explicit["duration"] {
		if duration <= 0 {
			return true, usagef("--duration must be positive")
		}
		cfg.Duration = duration
	}
	if explicit["clients"] {
		if cfg.Clients, err = st.clientCounts(); err != nil {
			return true, err
		}
	}
	if explicit["ops"] {
		if idle || resident {
			return true, usagef("--ops does not apply to --idle-conns (ping) or --resident-keys (aes256-gcm-seal-256)")
		}
		for _, op := range strings.Split(opsList, ",") {
			if op = strings.TrimSpace(op); op == "" {
				continue
			}
			if !slices.Contains(bench.Operations(), op) {
				return true, usagef("unknown operation %q (want %s)", op, strings.Join(bench.Operations(), ", "))
			}
			cfg.Ops = append(cfg.Ops, op)
		}
	}
	ctx, stop, progress := benchContext(e, f)
	defer stop()
	var results []bench.ScaleResult
	switch {
	case idle:
		results, err = bench.RunIdle(ctx, cfg, progress)
	case resident:
		results, err = bench.RunResident(ctx, cfg, progress)
	default:
		results, err = bench.RunScaling(ctx, cfg, progress)
	}
	if err != nil {
		return true, err
	}
	if f.json {
		return true, printJSON(e, results)
	}
	w := tabwriter.NewWriter(e.stdout, 0, 0, 2, ' ', 0)
	switch {
	case idle:
		fmt.Fprintln(w, "OP\tCLIENTS\tIDLE\tOPS/S\tP50(µs)\tP99(µs)\tP50×\tP99×\tDAEMON RSS\tPER IDLE CONN\tTHREADS")
		for _, r := range results {
			fmt.Fprintf(w, "%s\t%d\t%d\t%.0f\t%s\t%s\t%s\t%s\t%d MiB\t%s\t%s\n", r.Op, r.Clients, r.IdleConns, r.OpsPerSec,
				micros(r.P50us), micros(r.P99us), ratioOrDash(r.P50RatioToBaseline), ratioOrDash(r.P99RatioToBaseline),
				r.DaemonRSSBytes>>20, bytesOrDash(r.RSSPerIdleConnBytes), countOrDash(r.DaemonThreads))
		}
	case resident:
		fmt.Fprintln(w, "OP\tKEYS\tKEY\tOPS/S\tP50(µs)\tP99(µs)\tP50×\tP99×\tDAEMON RSS\tPER KEY")
		for _, r := range results {
			fmt.Fprintf(w, "%s\t%d\t%s\t%.0f\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Op, r.ResidentKeys, r.Key, r.OpsPerSec,
				micros(r.P50us), micros(r.P99us), ratioOrDash(r.P50RatioToBaseline), ratioOrDash(r.P99RatioToBaseline),
				mibOrDash(r.DaemonRSSBytes), bytesOrDash(r.RSSPerKeyBytes))
		}
	default:
		fmt.Fprintln(w, "OP\tMODE\tCLIENTS\tOPS/S\tPER CLIENT\tP50(µs)\tP99(µs)\tSPEEDUP\t×INPROC")
		for _, r := range results {
			fmt.Fprintf(w, "%s\t%s\t%d\t%.0f\t%.0f\t%s\t%s\t%.2f\t%s\n", r.Op, r.Mode, r.Clients, r.OpsPerSec, r.OpsPerSecPerClient,
				micros(r.P50us), micros(r.P99us), r.Speedup, ratioOrDash(r.RatioToInProcess))
		}
	}
	return true, w.Flush()
}

func ratioOrDash(v float64) string {
	if v <= 0 {
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

func bytesOrDash(v int64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%d B", v)
}

func mibOrDash(v int64) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprintf("%d MiB", v>>20)
}

func countOrDash(v int) string {
	if v == 0 {
		return "-"
	}
	return fmt.Sprint(v)
}

package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/genid"
)

// The machine generation commands (docs/genid.md).

// uidList is a repeatable flag of uids.
type uidList []uint32

func (u *uidList) String() string {
	var s []string
	for _, v := range *u {
		s = append(s, strconv.FormatUint(uint64(v), 10))
	}
	return strings.Join(s, ",")
}

func (u *uidList) Set(v string) error {
	n, err := strconv.ParseUint(v, 10, 32)
	if err != nil {
		return fmt.Errorf("want a numeric uid, not %q", v)
	}
	*u = append(*u, uint32(n))
	return nil
}

type generationSourceJSON struct {
	Name       string `json:"name"`
	Active     bool   `json:"active"`
	Detail     string `json:"detail"`
	LastSeen   string `json:"last_seen,omitempty"`
	LastReport string `json:"last_report,omitempty"`
}

type generationJSON struct {
	Generation       uint64                 `json:"generation"`
	Changed          string                 `json:"changed,omitempty"`
	ChangedBy        []string               `json:"changed_by,omitempty"`
	Watchers         int                    `json:"watchers"`
	OutdatedWatchers int                    `json:"outdated_watchers"`
	Sources          []generationSourceJSON `json:"sources,omitempty"`
	Randomness       string                 `json:"randomness,omitempty"`
	// Unconfirmed: keys, nonces and ids are refused until it is not.
	RandomnessUnconfirmed bool `json:"randomness_unconfirmed,omitempty"`
}

func timeJSON(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

func generationToJSON(g *keywarden.Generation) generationJSON {
	j := generationJSON{Generation: g.Generation, Changed: timeJSON(g.Changed), ChangedBy: g.ChangedBy,
		Watchers: g.Watchers, OutdatedWatchers: g.OutdatedWatchers,
		Randomness: g.Randomness, RandomnessUnconfirmed: g.RandomnessUnconfirmed}
	for _, s := range g.Sources {
		j.Sources = append(j.Sources, generationSourceJSON{Name: s.Name, Active: s.Active, Detail: s.Detail, LastSeen: timeJSON(s.LastSeen),
			LastReport: s.LastReport})
	}
	return j
}

// generationLine is the one-line summary status and show print.
func generationLine(g *keywarden.Generation) string {
	s := fmt.Sprintf("%d", g.Generation)
	if g.Changed.IsZero() {
		s += " (no change since the daemon started)"
	} else {
		s += fmt.Sprintf(" (last change %s, seen by %s)", g.Changed.UTC().Format(time.RFC3339), strings.Join(g.ChangedBy, ","))
	}
	return s
}

func sourcesLine(g *keywarden.Generation) string {
	var on, off []string
	for _, s := range g.Sources {
		if s.Active {
			on = append(on, s.Name)
		} else {
			off = append(off, s.Name)
		}
	}
	s := "active " + strings.Join(on, ", ")
	if len(on) == 0 {
		s = "none active"
	}
	if len(off) > 0 {
		s += "; inactive " + strings.Join(off, ", ")
	}
	return s
}

func printGeneration(e *env, g *keywarden.Generation) {
	fmt.Fprintf(e.stdout, "generation:  %s\n", generationLine(g))
	fmt.Fprintf(e.stdout, "watchers:    %d (%d outdated)\n", g.Watchers, g.OutdatedWatchers)
	for _, s := range g.Sources {
		state := "active  "
		if !s.Active {
			state = "inactive"
		}
		line := fmt.Sprintf("source:      %-8s %s  %s", s.Name, state, s.Detail)
		if !s.LastSeen.IsZero() {
			line += fmt.Sprintf("\n             last change %s: %s", s.LastSeen.UTC().Format(time.RFC3339), s.LastReport)
		}
		fmt.Fprintln(e.stdout, line)
	}
	if g.Randomness != "" {
		fmt.Fprintf(e.stdout, "randomness:  %s\n", g.Randomness)
	}
}

func runGenerationShow(e *env, args []string) error {
	f := newFlags("generation show", e)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	g, err := c.Generation(ctx)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, generationToJSON(g))
	}
	printGeneration(e, g)
	return nil
}

// timeoutSet reports whether --timeout was given.
func (f *flags) timeoutSet() bool {
	set := false
	f.Visit(func(fl *flag.Flag) {
		if fl.Name == "timeout" {
			set = true
		}
	})
	return set
}

func runGenerationWatch(e *env, args []string) error {
	f := newFlags("generation watch", e)
	after := f.String("after", "", "report the generations after `G` (default: the current one)")
	count := f.Int("count", 0, "stop after this many changes (0: never)")
	name := f.String("name", "", "watch as the named watcher `W` of your uid, which outlives this command (default: this connection)")
	ack := f.Bool("ack", false, "acknowledge each generation once it is printed")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	// Watching has no deadline unless --timeout is given.
	ctx := context.Background()
	if f.timeoutSet() {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, f.timeout)
		defer cancel()
	}
	c, err := f.dialContext(ctx)
	if err != nil {
		return err
	}
	defer c.Close()
	var last uint64
	if *after != "" {
		if last, err = strconv.ParseUint(*after, 10, 64); err != nil {
			return usagef("invalid --after %q", *after)
		}
	} else {
		g, err := c.Generation(ctx)
		if err != nil {
			return err
		}
		last = g.Generation
	}
	for n := 0; *count == 0 || n < *count; n++ {
		g, err := c.WatchGeneration(ctx, last, *name)
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("no generation change within %v", f.timeout)
		}
		if err != nil {
			return err
		}
		if f.json {
			if err := printJSON(e, generationToJSON(g)); err != nil {
				return err
			}
		} else {
			fmt.Fprintf(e.stdout, "generation %s\n", generationLine(g))
		}
		if *ack {
			if err := c.AckGeneration(ctx, g.Generation, *name); err != nil {
				return err
			}
		}
		last = g.Generation
	}
	return nil
}

func runGenerationAck(e *env, args []string) error {
	f := newFlags("generation ack", e)
	name := f.String("name", "", "acknowledge for the named watcher `W` of your uid (default: this connection, which ends with the command)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 1, "the generation to acknowledge"); err != nil {
		return err
	}
	gen, err := strconv.ParseUint(pos[0], 10, 64)
	if err != nil {
		return usagef("invalid generation %q", pos[0])
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	return c.AckGeneration(ctx, gen, *name)
}

func runGenerationForget(e *env, args []string) error {
	f := newFlags("generation forget", e)
	name := f.String("name", "", "the named watcher `W` of your uid to remove")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if *name == "" {
		return usagef("--name is required")
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	return c.ForgetWatcher(ctx, *name)
}

// defaultWaitWatchers is wait-watchers' timeout when --timeout is not
// given.
const defaultWaitWatchers = 30 * time.Second

func runGenerationWaitWatchers(e *env, args []string) error {
	f := newFlags("generation wait-watchers", e)
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	wait := defaultWaitWatchers
	if f.timeoutSet() {
		wait = f.timeout
	}
	if wait < 0 || wait > time.Hour {
		return usagef("--timeout must be between 0 and 1h")
	}
	f.timeout = wait + 10*time.Second // the command's own deadline
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	g, err := c.WaitWatchers(ctx, wait)
	if g != nil {
		if f.json {
			if jerr := printJSON(e, generationToJSON(g)); jerr != nil {
				return jerr
			}
		} else if err == nil {
			fmt.Fprintf(e.stdout, "generation %d: every watcher (%d) is up to date\n", g.Generation, g.Watchers)
		}
	}
	if errors.Is(err, keywarden.ErrOutdatedWatchers) {
		return fmt.Errorf("generation %d: %d of %d watchers still outdated after %v", g.Generation, g.OutdatedWatchers, g.Watchers, wait)
	}
	return err
}

func runGenerationBump(e *env, args []string) error {
	f := newFlags("generation bump", e)
	entropyFile := f.String("entropy-file", "", "send 16 to 64 bytes read from `file` (- for stdin), unique to this machine "+
		"(from the host, say), to confirm the daemon's fresh randomness")
	noReseed := f.Bool("no-reseed", false, "do not make the kernel re-seed its random generator first")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	var o keywarden.BumpOptions
	if *entropyFile != "" {
		b, err := readEntropy(e, *entropyFile)
		if err != nil {
			return err
		}
		o.Entropy = b
	}
	// With CAP_SYS_ADMIN (as root) the kernel's generator re-seeds now,
	// from values that differ between clones: the daemon, which may lack
	// the capability, then knows its random bytes are fresh.
	if !*noReseed {
		res, _ := genid.ReseedKernel(genid.Change{At: time.Now(), Detail: fmt.Sprintf("keywarden generation bump, pid %d", os.Getpid())})
		o.KernelReseeded = res.Forced
	}
	ctx, c, done, err := f.dial()
	if err != nil {
		return err
	}
	defer done()
	g, err := c.Admin().BumpGeneration(ctx, &o)
	if err != nil {
		return err
	}
	if f.json {
		return printJSON(e, generationToJSON(g))
	}
	fmt.Fprintf(e.stdout, "generation %d\n", g.Generation)
	if g.RandomnessUnconfirmed {
		fmt.Fprintf(e.stderr, "keywarden: the daemon has not confirmed fresh randomness since the change and refuses keys, "+
			"nonces and ids until it has (within a minute, when the kernel re-seeds); run this as root, or with --entropy-file, to confirm it now\n")
	}
	return nil
}

// readEntropy reads the bytes of --entropy-file: 16 to 64 of them.
func readEntropy(e *env, path string) ([]byte, error) {
	var r io.Reader = e.stdin
	if path != "-" {
		f, err := os.Open(path)
		if err != nil {
			return nil, err
		}
		defer f.Close()
		r = f
	}
	b := make([]byte, genid.MaxBumpEntropy+1)
	n, err := io.ReadFull(r, b)
	if err != nil && err != io.ErrUnexpectedEOF && err != io.EOF {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	b = b[:min(n, genid.MaxBumpEntropy)]
	if len(b) < genid.MinBumpEntropy {
		return nil, usagef("--entropy-file: %s gave %d bytes; want at least %d", path, len(b), genid.MinBumpEntropy)
	}
	return b, nil
}

package keywarden

import (
	"context"
	"errors"
	"fmt"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/wire"
)

// Generation is the machine generation as the daemon sees it: a counter
// that starts at 0 with the daemon and increases whenever the virtual
// machine is restored from a snapshot or cloned, or an orchestrator says
// so (docs/genid.md). After a change, anything a program derived from
// randomness or counters before it (session keys, nonces, UUIDs, cached
// random values) may exist twice, once in each clone.
type Generation struct {
	Generation uint64
	// Changed is when the daemon saw the last change; zero if none since
	// it started.
	Changed time.Time
	// ChangedBy names the sources that reported it.
	ChangedBy []string
	// Watchers counts the watchers; OutdatedWatchers those that have not
	// acknowledged Generation.
	Watchers         int
	OutdatedWatchers int
	// Sources are the ways the daemon learns of changes (filled by
	// Client.Generation, Status and BumpGeneration only).
	Sources []GenerationSource
	// Randomness says whether the daemon has confirmed fresh randomness
	// since the last change, and by what; while RandomnessUnconfirmed,
	// generating keys, encrypting, data keys and wrapping fail with
	// CodeUnavailable (filled with Sources).
	Randomness            string
	RandomnessUnconfirmed bool
}

// GenerationSource is one way the daemon learns of generation changes.
type GenerationSource struct {
	// Name is "kmsg", "vmclock", "uevent", "guid" or "request".
	Name   string
	Active bool
	// Detail says what an active source watches, or why it is inactive.
	Detail string
	// LastSeen is when it last reported a change; zero if never.
	LastSeen time.Time
	// LastReport is what it reported then: a kernel log line, a counter,
	// the new VM generation ID.
	LastReport string
}

func generationFromWire(w *wire.GenerationInfo) Generation {
	g := Generation{
		Generation:       w.GetGeneration(),
		ChangedBy:        w.GetChangedBy(),
		Watchers:         int(w.GetWatchers()),
		OutdatedWatchers: int(w.GetOutdatedWatchers()),

		Randomness:            w.GetRandomness(),
		RandomnessUnconfirmed: w.GetRandomnessUnconfirmed(),
	}
	if ns := w.GetChangedUnixNano(); ns != 0 {
		g.Changed = time.Unix(0, ns)
	}
	for _, s := range w.GetSources() {
		src := GenerationSource{Name: s.GetName(), Active: s.GetActive(), Detail: s.GetDetail(), LastReport: s.GetLastReport()}
		if ns := s.GetLastSeenUnixNano(); ns != 0 {
			src.LastSeen = time.Unix(0, ns)
		}
		g.Sources = append(g.Sources, src)
	}
	return g
}

func (c *Client) generationOp(ctx context.Context, name string, op *wire.Op) (*Generation, error) {
	res, err := c.do(ctx, name, op)
	if err != nil {
		return nil, err
	}
	w := res.GetGeneration()
	if w == nil {
		return nil, &Error{Code: CodeInternal, Op: name, Message: "the daemon sent no generation"}
	}
	g := generationFromWire(w)
	return &g, nil
}

// Generation asks the daemon for the machine generation and its sources.
func (c *Client) Generation(ctx context.Context) (*Generation, error) {
	return c.generationOp(ctx, "generation", &wire.Op{Op: &wire.Op_GenerationGet{GenerationGet: &wire.GenerationGet{}}})
}

// watchSlice is the longest one watch request waits in the daemon; a
// longer wait is several requests.
const watchSlice = 30 * time.Second

// WatchGeneration waits until the generation exceeds after, and returns
// it, or returns ctx's error when ctx is done first. It makes the caller a
// watcher: this connection, or when name is not empty, the named watcher
// of the caller's uid, which outlives connections. A watcher is outdated
// from a change until it acknowledges it (AckGeneration); orchestrators
// wait for outdated watchers (WaitWatchers).
func (c *Client) WatchGeneration(ctx context.Context, after uint64, name string) (*Generation, error) {
	for {
		wait := watchSlice
		if dl, ok := ctx.Deadline(); ok {
			wait = min(wait, time.Until(dl))
		}
		if wait <= 0 {
			return nil, context.DeadlineExceeded
		}
		g, err := c.generationOp(ctx, "generation watch", &wire.Op{Op: &wire.Op_GenerationWatch{GenerationWatch: &wire.GenerationWatch{
			After: after, TimeoutMs: uint32(max(wait.Milliseconds(), 1)), Name: name}}})
		if err != nil {
			return nil, err
		}
		if g.Generation > after {
			return g, nil
		}
		if err := ctx.Err(); err != nil {
			return nil, err
		}
	}
}

// AckGeneration tells the daemon that the watcher (this connection, or the
// caller's named watcher) has adjusted to generation gen: it no longer
// counts as outdated.
func (c *Client) AckGeneration(ctx context.Context, gen uint64, name string) error {
	_, err := c.generationOp(ctx, "generation ack", &wire.Op{Op: &wire.Op_GenerationAck{GenerationAck: &wire.GenerationAck{
		Generation: gen, Name: name}}})
	return err
}

// ForgetWatcher removes the watcher (this connection's, or the caller's
// named one): it no longer counts, outdated or not.
func (c *Client) ForgetWatcher(ctx context.Context, name string) error {
	_, err := c.generationOp(ctx, "generation forget", &wire.Op{Op: &wire.Op_GenerationAck{GenerationAck: &wire.GenerationAck{
		Name: name, Forget: true}}})
	return err
}

// ErrOutdatedWatchers is returned by WaitWatchers when its timeout passed
// with watchers still outdated.
var ErrOutdatedWatchers = errors.New("keywarden: watchers are still outdated")

// WaitWatchers waits up to timeout (at most an hour) until no watcher is
// outdated: the orchestrator's flow, which holds traffic until every
// component has adjusted to a change. The watchers that count are those
// of the daemon's administrators, of its --generation-watcher uids and of
// the caller's own uid; other users' watchers neither delay the wait nor
// show in the counts. When the timeout passes first it returns the
// generation with ErrOutdatedWatchers.
func (c *Client) WaitWatchers(ctx context.Context, timeout time.Duration) (*Generation, error) {
	if timeout < 0 || timeout > time.Hour {
		return nil, argError("generation wait-watchers", "the timeout must be between 0 and 1h")
	}
	g, err := c.generationOp(ctx, "generation wait-watchers", &wire.Op{Op: &wire.Op_GenerationWaitWatchers{
		GenerationWaitWatchers: &wire.GenerationWaitWatchers{TimeoutMs: uint32(timeout.Milliseconds())}}})
	if err != nil {
		return nil, err
	}
	if g.OutdatedWatchers > 0 {
		return g, ErrOutdatedWatchers
	}
	return g, nil
}

// BumpOptions say what the orchestrator that bumps the generation knows of
// randomness on this machine. A daemon that cannot make the kernel
// re-seed (it lacks CAP_SYS_ADMIN) and has no CPU random instruction
// refuses keys, nonces and ids after a change until something confirms
// its bytes differ from a clone's (docs/genid.md, "Randomness"); these
// confirm it at once.
type BumpOptions struct {
	// Entropy are 16 to 64 bytes unique to this machine: from outside it
	// (the host's generator), or read after the kernel re-seeded.
	Entropy []byte
	// KernelReseeded says that the caller made the kernel re-seed its
	// generator (the RNDRESEEDCRNG ioctl on /dev/urandom, which needs
	// CAP_SYS_ADMIN) just before.
	KernelReseeded bool
}

// BumpGeneration increases the generation: for orchestrators that learn of
// a restore in another way than the daemon can (an after-restore hook).
// Only root and the daemon's --generation-admin uids may. opts say what
// the caller knows of randomness; nil means the zero value.
func (a *Admin) BumpGeneration(ctx context.Context, opts *BumpOptions) (*Generation, error) {
	c := a.c
	var o BumpOptions
	if opts != nil {
		o = *opts
	}
	if len(o.Entropy) > 64 {
		return nil, argError("generation bump", "at most 64 bytes of entropy")
	}
	return c.generationOp(ctx, "generation bump", &wire.Op{Op: &wire.Op_GenerationBump{GenerationBump: &wire.GenerationBump{
		Entropy: o.Entropy, KernelReseeded: o.KernelReseeded}}})
}

// Watch runs the watcher's loop: it waits for each change after the
// current generation, calls fn with the new generation, and acknowledges
// it once fn returns nil. It returns fn's error, or ctx's when ctx is
// done. name is as for WatchGeneration.
func (c *Client) Watch(ctx context.Context, name string, fn func(gen uint64) error) error {
	g, err := c.Generation(ctx)
	if err != nil {
		return err
	}
	after := g.Generation
	// Become a watcher now, up to date, so that a change from here on
	// counts this one as outdated until fn has handled it.
	if err := c.AckGeneration(ctx, after, name); err != nil {
		return err
	}
	for {
		g, err := c.WatchGeneration(ctx, after, name)
		if err != nil {
			return err
		}
		if err := fn(g.Generation); err != nil {
			return err
		}
		if err := c.AckGeneration(ctx, g.Generation, name); err != nil {
			return err
		}
		after = g.Generation
	}
}

type expectedGenerationKey struct{}

// WithGeneration returns a context whose requests name gen as the
// generation they expect: the daemon refuses each of them, before any of
// its operations runs, with an error matching ErrGenerationChanged when
// the machine is in another generation. This is the transactional flow:
// read the generation (GenerationPage.Generation costs no round trip),
// do the work pinned to it, and discard what was made if it changed.
func WithGeneration(ctx context.Context, gen uint64) context.Context {
	return context.WithValue(ctx, expectedGenerationKey{}, gen)
}

// ExpectedGeneration returns the generation WithGeneration set in ctx.
func ExpectedGeneration(ctx context.Context) (uint64, bool) {
	g, ok := ctx.Value(expectedGenerationKey{}).(uint64)
	return g, ok
}

// GenerationPage is a read-only mapping of the daemon's generation page:
// reading the generation from it costs a few memory loads, no round trip
// and no system call. It stays valid after the Client is closed; Close it
// when done.
type GenerationPage struct {
	mem []byte
}

// MapGeneration asks the daemon for its generation page, which the reply
// carries as a descriptor, and maps it.
func (c *Client) MapGeneration(ctx context.Context) (*GenerationPage, error) {
	c.fdWanted.Add(1)
	defer c.fdWanted.Add(-1)
	op := &wire.Op{Op: &wire.Op_GenerationMap{GenerationMap: &wire.GenerationMap{}}}
	// A reader already waiting when fdWanted went up receives without room
	// for a descriptor, and the kernel drops it: ask again.
	for range 3 {
		cl, err := c.startCall(ctx, []*wire.Op{op}, true)
		if err != nil {
			return nil, err
		}
		rep, err := c.finish(ctx, "generation map", cl)
		c.mu.Lock()
		fds := cl.fds
		cl.fds = nil
		c.mu.Unlock()
		if err == nil && len(rep.Results) == 1 {
			err = resultErr("generation map", rep.Results[0].Status, rep.Results[0].Message)
		}
		if err != nil {
			closeFDs(fds)
			return nil, err
		}
		if len(fds) == 0 {
			continue
		}
		p, err := mapGenerationPage(fds[0])
		closeFDs(fds)
		return p, err
	}
	return nil, &Error{Code: CodeUnavailable, Op: "generation map", Message: "the reply carried no descriptor"}
}

func mapGenerationPage(fd int) (*GenerationPage, error) {
	mem, err := unix.Mmap(fd, 0, wire.GenPageSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("keywarden: map the generation page: %w", err)
	}
	if _, _, _, ok := wire.ReadGenPage(mem); !ok {
		unix.Munmap(mem)
		return nil, errors.New("keywarden: the daemon's generation page has an unknown layout")
	}
	return &GenerationPage{mem: mem}, nil
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}

// Generation returns the current generation. After the daemon stopped it
// returns the last one it published (see Live).
func (p *GenerationPage) Generation() uint64 {
	g, _, _, _ := wire.ReadGenPage(p.mem)
	return g
}

// Read returns the generation, when it last changed (zero if never since
// the daemon started) and whether the daemon still runs: a page whose
// daemon stopped never changes again.
func (p *GenerationPage) Read() (gen uint64, changed time.Time, live bool) {
	g, ns, live, _ := wire.ReadGenPage(p.mem)
	if ns != 0 {
		changed = time.Unix(0, ns)
	}
	return g, changed, live
}

// Live reports whether the page's daemon still runs.
func (p *GenerationPage) Live() bool {
	_, _, live, _ := wire.ReadGenPage(p.mem)
	return live
}

// Close unmaps the page.
func (p *GenerationPage) Close() error {
	if p.mem == nil {
		return nil
	}
	err := unix.Munmap(p.mem)
	p.mem = nil
	return err
}

package genid

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/random"
	"github.com/keywarden/keywarden/internal/wire"
)

// fakeSource reports a change for every string sent on ch.
type fakeSource struct {
	name    string
	ch      chan string
	openErr error
	closed  atomic.Bool
}

func newFake(name string) *fakeSource { return &fakeSource{name: name, ch: make(chan string)} }

func (f *fakeSource) Name() string { return f.name }
func (f *fakeSource) Open() (string, error) {
	if f.openErr != nil {
		return "", f.openErr
	}
	return "fake " + f.name, nil
}
func (f *fakeSource) Run(ctx context.Context, report func(string)) {
	for {
		select {
		case <-ctx.Done():
			return
		case d := <-f.ch:
			report(d)
		}
	}
}
func (f *fakeSource) Close() error { f.closed.Store(true); return nil }

// fakeChecker changes when its counter does.
type fakeChecker struct {
	fakeSource
	counter, seen atomic.Uint64
}

func (f *fakeChecker) Check() (bool, string) {
	c := f.counter.Load()
	if old := f.seen.Swap(c); old != c {
		return true, "counter moved"
	}
	return false, ""
}

// clock is a settable clock for coalescing tests.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newTracker(t *testing.T, cfg Config) *Tracker {
	t.Helper()
	tr := New(cfg)
	tr.Start()
	t.Cleanup(func() { tr.Close() })
	return tr
}

// waitGen waits for the tracker to reach gen.
func waitGen(t *testing.T, tr *Tracker, gen uint64) {
	t.Helper()
	if g, _ := tr.Wait(gen-1, 5*time.Second, nil); g < gen {
		t.Fatalf("generation %d, want %d", g, gen)
	}
}

func TestSourceReportsChange(t *testing.T) {
	src := newFake("fake")
	tr := newTracker(t, Config{Sources: []Source{src}})
	if tr.Current() != 0 {
		t.Fatalf("starts at %d", tr.Current())
	}
	changed := tr.Changed()
	src.ch <- "the VM was restored"
	waitGen(t, tr, 1)
	select {
	case <-changed:
	default:
		t.Fatal("Changed channel not closed")
	}
	st := tr.Status()
	if st.Generation != 1 || len(st.ChangedBy) != 1 || st.ChangedBy[0] != "fake" || st.Changed.IsZero() {
		t.Fatalf("status %+v", st)
	}
	if len(st.Sources) != 1 || !st.Sources[0].Active || st.Sources[0].Detail != "fake fake" || st.Sources[0].LastSeen.IsZero() {
		t.Fatalf("sources %+v", st.Sources)
	}
}

func TestInactiveSource(t *testing.T) {
	bad := newFake("absent")
	bad.openErr = errors.New("no such device")
	tr := newTracker(t, Config{Sources: []Source{bad, newFake("ok")}})
	st := tr.Status()
	if st.Sources[0].Active || st.Sources[0].Detail != "no such device" || !st.Sources[1].Active {
		t.Fatalf("sources %+v", st.Sources)
	}
	if got := tr.ActiveSources(); got != "ok" {
		t.Fatalf("active %q", got)
	}
	tr.Close()
	if bad.closed.Load() {
		t.Error("an inactive source was closed")
	}
}

// Hooks run before any request can see the new generation, in order.
func TestHooksRunBeforePublication(t *testing.T) {
	tr := newTracker(t, Config{})
	fd, err := tr.PageFD()
	if err != nil {
		t.Fatal(err)
	}
	mem, err := unix.Mmap(fd, 0, wire.GenPageSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	var order []string
	tr.Register("first", HookFunc(func(c Change) {
		page, _, _, _ := wire.ReadGenPage(mem)
		if tr.Current() != c.From || page != c.From || c.To != c.From+1 {
			t.Errorf("hook sees generation %d (page %d) during change %d -> %d", tr.Current(), page, c.From, c.To)
		}
		if c.Detail != "asked" || c.Sources[0] != RequestSource || c.Fresh != random.Unconfirmed {
			t.Errorf("change %+v", c)
		}
		order = append(order, "first")
	}))
	tr.Register("panics", HookFunc(func(Change) { panic("a broken hook") }))
	tr.Register("second", HookFunc(func(Change) { order = append(order, "second") }))
	c := tr.Bump("asked")
	if c.To != 1 || tr.Current() != 1 || len(order) != 2 || order[1] != "second" {
		t.Fatalf("change %+v, generation %d, hooks %v", c, tr.Current(), order)
	}
}

// Reports of other sources soon after a change confirm it; a source that
// already reported it, or a report after the window, is a new change.
func TestCoalescing(t *testing.T) {
	clk := &clock{t: time.Unix(1000, 0)}
	kmsg, guid := newFake("kmsg"), newFake("guid")
	tr := newTracker(t, Config{Sources: []Source{kmsg, guid}, Now: clk.now})
	kmsg.ch <- "fork"
	waitGen(t, tr, 1)
	clk.add(200 * time.Millisecond)
	guid.ch <- "guid changed" // the same restore
	waitFor(t, func() bool { return len(tr.Status().ChangedBy) == 2 })
	if tr.Current() != 1 {
		t.Fatalf("a confirmation changed the generation to %d", tr.Current())
	}
	kmsg.ch <- "another fork" // kmsg already counted this change: a new one
	waitGen(t, tr, 2)
	clk.add(2 * time.Second)
	guid.ch <- "guid changed" // after the window
	waitGen(t, tr, 3)
	// A bump is never coalesced.
	tr.Bump("orchestrator")
	if tr.Current() != 4 {
		t.Fatalf("bump: generation %d", tr.Current())
	}
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	for range 500 {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatal("condition not reached")
}

// A Checker is consulted synchronously by Check.
func TestChecker(t *testing.T) {
	c := &fakeChecker{fakeSource: *newFake("vmclock")}
	tr := newTracker(t, Config{Sources: []Source{c}})
	if tr.Check() != 0 {
		t.Fatal("changed without a change")
	}
	c.counter.Store(7)
	if g := tr.Check(); g != 1 {
		t.Fatalf("Check returned %d after the counter moved", g)
	}
	if g := tr.Check(); g != 1 {
		t.Fatalf("a change counted twice: %d", g)
	}
}

func TestWait(t *testing.T) {
	tr := newTracker(t, Config{})
	// A zero timeout answers at once.
	if g, stopped := tr.Wait(0, 0, nil); g != 0 || stopped {
		t.Fatalf("Wait(0, 0) = %d %v", g, stopped)
	}
	tr.Bump("x")
	if g, _ := tr.Wait(0, time.Hour, nil); g != 1 {
		t.Fatalf("Wait(0) after a bump = %d", g)
	}
	// Timeout.
	start := time.Now()
	if g, stopped := tr.Wait(1, 50*time.Millisecond, nil); g != 1 || stopped || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("timeout: %d %v after %v", g, stopped, time.Since(start))
	}
	// Woken by a change.
	go func() { time.Sleep(20 * time.Millisecond); tr.Bump("y") }()
	if g, _ := tr.Wait(1, 10*time.Second, nil); g != 2 {
		t.Fatalf("woken with %d", g)
	}
	// Stopped.
	stop := make(chan struct{})
	go func() { time.Sleep(20 * time.Millisecond); close(stop) }()
	if _, stopped := tr.Wait(2, 10*time.Second, stop); !stopped {
		t.Fatal("not stopped")
	}
}

func TestWatchersAndAcks(t *testing.T) {
	tr := newTracker(t, Config{NamedWatchersPerUID: 2})
	conn := tr.NewWatcher(0)
	named, err := tr.NamedWatcher(1000, "db")
	if err != nil {
		t.Fatal(err)
	}
	if again, _ := tr.NamedWatcher(1000, "db"); again != named {
		t.Fatal("a named watcher is not found again")
	}
	if w, o := tr.Outdated(); w != 2 || o != 0 {
		t.Fatalf("%d watchers, %d outdated before a change", w, o)
	}
	// Nothing outdated: WaitWatchers returns at once.
	if n, _ := tr.WaitWatchers(time.Hour, nil, nil); n != 0 {
		t.Fatalf("WaitWatchers: %d outdated", n)
	}
	tr.Bump("restore")
	if _, o := tr.Outdated(); o != 2 {
		t.Fatalf("%d outdated after a change", o)
	}
	if err := conn.Ack(2); !errors.Is(err, ErrAhead) {
		t.Fatalf("ack of a future generation: %v", err)
	}
	if err := conn.Ack(1); err != nil {
		t.Fatal(err)
	}
	if err := conn.Ack(0); err != nil || conn.Acked() != 1 {
		t.Fatalf("an older ack lowered the watcher: %v %d", err, conn.Acked())
	}
	// One still outdated: the wait times out.
	start := time.Now()
	if n, stopped := tr.WaitWatchers(50*time.Millisecond, nil, nil); n != 1 || stopped || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("WaitWatchers: %d outdated, stopped %v, after %v", n, stopped, time.Since(start))
	}
	// It returns as soon as the last one acknowledges.
	go func() { time.Sleep(20 * time.Millisecond); named.Ack(1) }()
	start = time.Now()
	if n, _ := tr.WaitWatchers(10*time.Second, nil, nil); n != 0 || time.Since(start) > 5*time.Second {
		t.Fatalf("WaitWatchers: %d outdated after %v", n, time.Since(start))
	}
	// A removed watcher no longer counts, and a new one starts up to date.
	tr.Bump("again")
	conn.Remove()
	if w, o := tr.Outdated(); w != 1 || o != 1 {
		t.Fatalf("after removal: %d watchers, %d outdated", w, o)
	}
	named.Remove()
	fresh := tr.NewWatcher(0)
	if w, o := tr.Outdated(); w != 1 || o != 0 || fresh.Acked() != 2 {
		t.Fatalf("fresh watcher: %d watchers, %d outdated, acked %d", w, o, fresh.Acked())
	}
	// Named watchers per uid are bounded.
	tr.NamedWatcher(7, "a")
	tr.NamedWatcher(7, "b")
	if _, err := tr.NamedWatcher(7, "c"); !errors.Is(err, ErrTooManyWatchers) {
		t.Fatalf("third named watcher: %v", err)
	}
	if _, err := tr.NamedWatcher(8, "c"); err != nil {
		t.Fatalf("another uid: %v", err)
	}
	// A stopped wait says so.
	stop := make(chan struct{})
	close(stop)
	tr.Bump("third")
	if _, stopped := tr.WaitWatchers(time.Hour, nil, stop); !stopped {
		t.Fatal("not stopped")
	}
}

// The page a client maps shows every change, cannot be written by the
// client, and says when its daemon stopped.
func TestPage(t *testing.T) {
	tr := New(Config{})
	tr.Start()
	fd, err := tr.PageFD()
	if err != nil {
		t.Fatal(err)
	}
	// A client receives a duplicate of the descriptor.
	cfd, err := unix.Dup(fd)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(cfd)
	if _, err := unix.Mmap(cfd, 0, wire.GenPageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
		t.Fatal("the page could be mapped writable")
	}
	if _, err := unix.Write(cfd, []byte{1}); err == nil {
		t.Fatal("the page could be written")
	}
	if err := unix.Ftruncate(cfd, 0); err == nil {
		t.Fatal("the page could be truncated")
	}
	// Reopening it read-write does not help: the seals are on the file.
	if rw, err := unix.Open("/proc/self/fd/"+itoa(cfd), unix.O_RDWR, 0); err == nil {
		if _, err := unix.Write(rw, []byte{1}); err == nil {
			t.Error("a reopened page could be written")
		}
		if _, err := unix.Mmap(rw, 0, wire.GenPageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED); err == nil {
			t.Error("a reopened page could be mapped writable")
		}
		unix.Close(rw)
	}
	mem, err := unix.Mmap(cfd, 0, wire.GenPageSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	if err := unix.Mprotect(mem, unix.PROT_READ|unix.PROT_WRITE); err == nil {
		t.Fatal("the mapping could be made writable")
	}
	g, changed, live, ok := wire.ReadGenPage(mem)
	if !ok || g != 0 || changed != 0 || !live {
		t.Fatalf("fresh page: %d %d %v %v", g, changed, live, ok)
	}
	c := tr.Bump("x")
	tr.Bump("y")
	g, changed, live, ok = wire.ReadGenPage(mem)
	if !ok || g != 2 || changed < c.At.UnixNano() || !live {
		t.Fatalf("after two bumps: %d %d %v %v", g, changed, live, ok)
	}
	tr.Close()
	if g, _, live, ok := wire.ReadGenPage(mem); !ok || g != 2 || live {
		t.Fatalf("after Close: %d live %v ok %v", g, live, ok)
	}
	if _, err := tr.PageFD(); err == nil {
		t.Fatal("a closed tracker hands out its page")
	}
}

func itoa(n int) string {
	b := []byte{}
	for {
		b = append([]byte{byte('0' + n%10)}, b...)
		if n /= 10; n == 0 {
			return string(b)
		}
	}
}

// Readers never see a torn generation while the daemon writes.
func TestPageConcurrentReaders(t *testing.T) {
	tr := newTracker(t, Config{})
	fd, _ := tr.PageFD()
	mem, err := unix.Mmap(fd, 0, wire.GenPageSize, unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Munmap(mem)
	done := make(chan struct{})
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var last uint64
			for {
				select {
				case <-done:
					return
				default:
				}
				g, _, _, ok := wire.ReadGenPage(mem)
				if !ok || g < last {
					t.Errorf("read %d (ok %v) after %d", g, ok, last)
					return
				}
				last = g
			}
		}()
	}
	for range 2000 {
		tr.Bump("race")
	}
	close(done)
	wg.Wait()
}

func TestReseedKernel(t *testing.T) {
	res, err := ReseedKernel(Change{From: 0, To: 1, At: time.Now(), Detail: "VM generation ID x -> y"})
	if err != nil {
		t.Fatal(err)
	}
	if !res.Mixed {
		t.Fatal("nothing mixed into the pool")
	}
	// The kernel lets CAP_SYS_ADMIN force a reseed.
	if unix.Geteuid() == 0 && !res.Forced {
		t.Log("running as root, but the reseed was not forced (no CAP_SYS_ADMIN in this namespace?)")
	}
	t.Logf("mixed %v, forced %v", res.Mixed, res.Forced)
}

func TestNewSources(t *testing.T) {
	for spec, want := range map[string]int{"auto": 4, "": 4, "none": 0, "kmsg": 1, "kmsg,guid,kmsg": 2} {
		srcs, err := NewSources(spec)
		if err != nil || len(srcs) != want {
			t.Errorf("%q: %d sources, %v", spec, len(srcs), err)
		}
	}
	if _, err := NewSources("kmsg,tea-leaves"); err == nil {
		t.Error("unknown source accepted")
	}
	srcs, _ := NewSources("uevent")
	if u := srcs[0].(*Uevent); !u.Force {
		t.Error("an explicitly named uevent source is not forced")
	}
}

// While a change's hooks run, a request that starts (Check) waits for the
// change to be published, and then sees it.
func TestCheckWaitsForChange(t *testing.T) {
	tr := newTracker(t, Config{})
	inHook, release := make(chan struct{}), make(chan struct{})
	tr.Register("slow", HookFunc(func(Change) {
		close(inHook)
		<-release
	}))
	go tr.Bump("slow change")
	<-inHook
	got := make(chan uint64)
	go func() { got <- tr.Check() }()
	select {
	case g := <-got:
		t.Fatalf("Check returned %d while the change's hooks ran", g)
	case <-time.After(50 * time.Millisecond):
	}
	if tr.Current() != 0 {
		t.Fatal("published before the hooks finished")
	}
	close(release)
	if g := <-got; g != 1 {
		t.Fatalf("Check after the change: %d", g)
	}
}

// A Scope counts only the watchers of the uids it names: an outdated
// watcher of another uid neither delays a wait nor shows in its answer.
func TestWatcherScope(t *testing.T) {
	tr := newTracker(t, Config{})
	admin, err := tr.NamedWatcher(0, "db")
	if err != nil {
		t.Fatal(err)
	}
	stalled, err := tr.NamedWatcher(1000, "never-acks")
	if err != nil {
		t.Fatal(err)
	}
	conn := tr.NewWatcher(1000)
	if admin.UID() != 0 || stalled.UID() != 1000 || conn.UID() != 1000 {
		t.Fatalf("watchers of uids %d, %d, %d", admin.UID(), stalled.UID(), conn.UID())
	}
	root := Scope(func(uid uint32) bool { return uid == 0 })
	tr.Bump("restore")
	if w, o := tr.OutdatedIn(root); w != 1 || o != 1 {
		t.Fatalf("root's scope: %d watchers, %d outdated; want 1, 1", w, o)
	}
	if w, o := tr.Outdated(); w != 3 || o != 3 {
		t.Fatalf("every watcher: %d, %d outdated; want 3, 3", w, o)
	}
	// The counted watcher still holds the wait until it acknowledges.
	start := time.Now()
	if n, _ := tr.WaitWatchers(50*time.Millisecond, root, nil); n != 1 || time.Since(start) < 50*time.Millisecond {
		t.Fatalf("root's wait: %d outdated after %v, want 1 after the timeout", n, time.Since(start))
	}
	go func() { time.Sleep(20 * time.Millisecond); admin.Ack(1) }()
	start = time.Now()
	if n, _ := tr.WaitWatchers(10*time.Second, root, nil); n != 0 || time.Since(start) > 5*time.Second {
		t.Fatalf("root's wait: %d outdated after %v, want 0 once its watcher acknowledged", n, time.Since(start))
	}
	// uid 1000's watchers are still outdated, for whoever counts them.
	if n, _ := tr.WaitWatchers(0, nil, nil); n != 2 {
		t.Fatalf("every watcher: %d outdated, want 2", n)
	}
}

// A generation Check returns is published: the Changed channel taken
// before it is closed. Check once read the flag of a change under way
// before the generation, and could return a generation whose change was
// still being published.
func TestCheckReturnsOnlyPublishedGenerations(t *testing.T) {
	tr := newTracker(t, Config{})
	for i := uint64(1); i <= 3000; i++ {
		changed := tr.Changed()
		done := make(chan struct{})
		go func() { tr.Bump("test"); close(done) }()
		for tr.Check() < i {
		}
		select {
		case <-changed:
		default:
			t.Fatalf("generation %d returned before its change was published", i)
		}
		<-done
	}
}

// A Mark is unchanged until a change begins: a Mark taken while a
// change's hooks run is refused, and one taken before it is changed from
// the first hook on, not only once the change is published.
func TestMark(t *testing.T) {
	tr := New(Config{})
	defer tr.Close()
	m, ok := tr.Mark()
	if !ok || !tr.Unchanged(m) {
		t.Fatalf("a mark with no change: ok %v, unchanged %v", ok, tr.Unchanged(m))
	}
	var inHook struct {
		ok, unchanged bool
	}
	tr.Register("probe", HookFunc(func(Change) {
		_, inHook.ok = tr.Mark()
		inHook.unchanged = tr.Unchanged(m)
	}))
	tr.Bump("test")
	if inHook.ok || inHook.unchanged {
		t.Errorf("in a change's hook: a new mark taken %v, the mark before unchanged %v", inHook.ok, inHook.unchanged)
	}
	if tr.Unchanged(m) {
		t.Error("the mark taken before the change is unchanged after it")
	}
	m2, ok := tr.Mark()
	if !ok || !tr.Unchanged(m2) {
		t.Fatalf("a mark after the change: ok %v, unchanged %v", ok, tr.Unchanged(m2))
	}
}

// BenchmarkMark: what work done within one generation adds, a Mark and
// its check.
func BenchmarkMark(b *testing.B) {
	tr := New(Config{})
	defer tr.Close()
	for b.Loop() {
		m, ok := tr.Mark()
		if !ok || !tr.Unchanged(m) {
			b.Fatal("changed")
		}
	}
}

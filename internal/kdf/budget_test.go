package kdf

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// admitted waits for the next admission reported on order.
func admitted(t *testing.T, order <-chan string) string {
	t.Helper()
	select {
	case s := <-order:
		return s
	case <-time.After(5 * time.Second):
		t.Fatal("nothing admitted")
		return ""
	}
}

func noneAdmitted(t *testing.T, order <-chan string) {
	t.Helper()
	select {
	case s := <-order:
		t.Fatalf("%s admitted", s)
	case <-time.After(30 * time.Millisecond):
	}
}

// Tenants take turns: a tenant that floods the queue delays another by
// one of its derivations, not by its whole queue.
func TestBudgetTenantsTakeTurns(t *testing.T) {
	b := &budget{total: 10, maxQueue: 100, perTenantQueue: 100, perTenantRunning: 1}
	flood := ForTenant(context.Background(), 1000, false)
	other := ForTenant(context.Background(), 1001, false)
	if err := b.acquire(flood, 10); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 16)
	wait := func(ctx context.Context, name string) {
		go func() {
			if err := b.acquire(ctx, 10); err != nil {
				t.Error(err)
			}
			order <- name
		}()
		time.Sleep(10 * time.Millisecond) // arrive in order
	}
	for range 3 {
		wait(flood, "flood")
	}
	wait(other, "other")
	noneAdmitted(t, order)
	b.release(flood, 10)
	if got := admitted(t, order); got != "other" {
		t.Fatalf("admitted %s first, want the other tenant", got)
	}
	b.release(other, 10)
	for range 3 {
		if got := admitted(t, order); got != "flood" {
			t.Fatalf("admitted %s", got)
		}
		b.release(flood, 10)
	}
	if st := b.stats(); st.Queued != 0 || st.Running != 0 || st.UsedKiB != 0 || len(b.tenants) != 0 {
		t.Fatalf("left over: %+v, %d tenants", st, len(b.tenants))
	}
}

// A tenant runs at most its share at once, even with room in the budget,
// and queues at most its share: more is refused at once, and TenantFull
// says so beforehand. Exempt tenants have no share.
func TestBudgetTenantShare(t *testing.T) {
	b := &budget{total: 100, maxQueue: 100, perTenantQueue: 2, perTenantRunning: 1}
	flood := ForTenant(context.Background(), 1000, false)
	if err := b.acquire(flood, 10); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 4)
	for range 2 {
		go func() {
			if err := b.acquire(flood, 10); err == nil {
				order <- "flood"
			}
		}()
	}
	time.Sleep(20 * time.Millisecond)
	noneAdmitted(t, order) // room in the budget, but not in the share
	if !b.tenantFull(claimOf(flood)) {
		t.Fatal("TenantFull: false with the share queued")
	}
	if err := b.acquire(flood, 10); !IsError(err, ErrQueueFull) {
		t.Fatalf("over the tenant's queue: %v", err)
	}
	other := ForTenant(context.Background(), 1001, false)
	if b.tenantFull(claimOf(other)) {
		t.Fatal("TenantFull for another tenant")
	}
	if err := b.acquire(other, 10); err != nil {
		t.Fatalf("another tenant: %v", err)
	}
	admin := ForTenant(context.Background(), 0, true)
	for range 3 {
		if err := b.acquire(admin, 10); err != nil {
			t.Fatalf("an exempt tenant: %v", err)
		}
	}
	b.release(flood, 10)
	admitted(t, order)
	if st := b.stats(); st.Running != 5 || st.Queued != 1 {
		t.Fatalf("%+v", st)
	}
}

// A priority derivation goes before every tenant's: it waits only for
// room, and nothing else is admitted while it waits.
func TestBudgetPriority(t *testing.T) {
	b := &budget{total: 10, maxQueue: 100, perTenantQueue: 100, perTenantRunning: 1}
	flood := ForTenant(context.Background(), 1000, false)
	if err := b.acquire(flood, 6); err != nil {
		t.Fatal(err)
	}
	order := make(chan string, 16)
	for range 5 {
		go func() {
			b.acquire(flood, 6)
			order <- "flood"
		}()
	}
	time.Sleep(20 * time.Millisecond)
	go func() {
		if err := b.acquire(Priority(context.Background()), 8); err != nil {
			t.Error(err)
		}
		order <- "unseal"
	}()
	noneAdmitted(t, order)
	b.release(flood, 6)
	if got := admitted(t, order); got != "unseal" {
		t.Fatalf("admitted %s before the priority derivation", got)
	}
	// The queue's limit does not apply to priority derivations.
	b.maxQueue = 0
	go func() {
		b.acquire(Priority(context.Background()), 8)
		order <- "unseal"
	}()
	noneAdmitted(t, order)
	b.release(Priority(context.Background()), 8)
	if got := admitted(t, order); got != "unseal" {
		t.Fatalf("admitted %s", got)
	}
}

// threadNices returns the nice value of each thread of process pid.
func threadNices(t *testing.T, pid int) []int {
	t.Helper()
	ents, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	var out []int
	for _, e := range ents {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/stat", pid, e.Name()))
		if err != nil {
			continue
		}
		// Fields after the command's closing parenthesis: state is the
		// 3rd field of the line, nice the 19th.
		f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
		n, _ := strconv.Atoi(f[16])
		out = append(out, n)
	}
	return out
}

// TestWorkerBackground: a worker for a tenant runs as background work
// (every thread at the configured nice value, on all processors but
// one); a priority worker (unsealing) runs as the daemon does.
func TestWorkerBackground(t *testing.T) {
	type seen struct {
		nices []int
		env   string
		cpus  int
	}
	got := make(chan seen, 1)
	s, _ := newSupervisor(t, Config{Nice: 7, onStart: func(pid int) {
		time.Sleep(50 * time.Millisecond) // the runtime's threads start
		env, _ := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		var set unix.CPUSet
		unix.SchedGetaffinity(pid, &set)
		got <- seen{threadNices(t, pid), string(env), set.Count()}
	}})
	p := Params{Time: 1, MemoryKiB: 1024, Threads: 1}
	if _, err := s.Derive(ForTenant(context.Background(), 1000, false), p, []byte("pw"), []byte("saltsalt"), 32); err != nil {
		t.Fatal(err)
	}
	g := <-got
	if len(g.nices) == 0 || slices.ContainsFunc(g.nices, func(n int) bool { return n != 7 }) {
		t.Errorf("a tenant's worker threads run at nice %v, want 7", g.nices)
	}
	if want := fmt.Sprintf("GOMAXPROCS=%d\x00", backgroundProcs()); g.env != want {
		t.Errorf("a tenant's worker environment %q, want %q", g.env, want)
	}
	if want := max(1, runtime.NumCPU()-1); g.cpus != want {
		t.Errorf("a tenant's worker runs on %d processors, want %d", g.cpus, want)
	}
	own, _ := syscall.Getpriority(syscall.PRIO_PROCESS, 0)
	if _, err := s.Derive(Priority(context.Background()), p, []byte("pw"), []byte("saltsalt"), 32); err != nil {
		t.Fatal(err)
	}
	g = <-got
	// getpriority's raw value is 20 - nice.
	if slices.ContainsFunc(g.nices, func(n int) bool { return n != 20-own }) || g.env != "" || g.cpus != runtime.NumCPU() {
		t.Errorf("a priority worker: nice %v (want %d), environment %q, %d processors", g.nices, 20-own, g.env, g.cpus)
	}
}

package bench

import (
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/awnumar/memguard"

	"github.com/keywarden/keywarden/internal/secmem"
)

// procStatus returns a field of /proc/self/status in bytes (kB fields).
func procStatus(field string) int64 {
	b, _ := os.ReadFile("/proc/self/status")
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n << 10
		}
	}
	return 0
}

func mapCount() int {
	b, _ := os.ReadFile("/proc/self/maps")
	return strings.Count(string(b), "\n")
}

// BenchmarkKeys allocates keys of 32 bytes, b.N at a time, and frees them:
// the arena (many keys per page) beside memguard (one locked buffer, with
// its own guard pages, per key), measured in the same run. Reported:
// ns per allocation and per free, and locked and resident bytes and memory
// maps per key.
func BenchmarkKeys(b *testing.B) {
	b.Run("secmem", func(b *testing.B) {
		a, err := secmem.New(secmem.Options{})
		if err != nil {
			b.Fatal(err)
		}
		defer a.Close()
		bufs := make([]*secmem.Buf, b.N)
		lck, rss, maps := procStatus("VmLck"), procStatus("VmRSS"), mapCount()
		b.ResetTimer()
		start := time.Now()
		for i := range bufs {
			if bufs[i], err = a.Alloc(32); err != nil {
				b.Fatalf("key %d: %v", i, err)
			}
			copy(bufs[i].Bytes(), "0123456789abcdef0123456789abcdef")
		}
		allocTime := time.Since(start)
		b.StopTimer()
		report(b, allocTime, lck, rss, maps, a.Stats().Locked)
		b.StartTimer()
		start = time.Now()
		for _, buf := range bufs {
			buf.Free()
		}
		b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N), "ns/free")
	})
	b.Run("memguard", func(b *testing.B) {
		// memguard maps a region per buffer and runs out of memory maps
		// (vm.max_map_count) near 32,000 buffers.
		if b.N > 20000 {
			b.N = 20000
		}
		bufs := make([]*memguard.LockedBuffer, b.N)
		lck, rss, maps := procStatus("VmLck"), procStatus("VmRSS"), mapCount()
		b.ResetTimer()
		start := time.Now()
		for i := range bufs {
			bufs[i] = memguard.NewBufferFromBytes([]byte("0123456789abcdef0123456789abcdef"))
		}
		allocTime := time.Since(start)
		b.StopTimer()
		report(b, allocTime, lck, rss, maps, 0)
		b.StartTimer()
		start = time.Now()
		for _, buf := range bufs {
			buf.Destroy()
		}
		b.ReportMetric(float64(time.Since(start).Nanoseconds())/float64(b.N), "ns/free")
	})
}

func report(b *testing.B, allocTime time.Duration, lck0, rss0 int64, maps0 int, arenaLocked int64) {
	n := float64(b.N)
	b.ReportMetric(float64(allocTime.Nanoseconds())/n, "ns/alloc")
	locked := procStatus("VmLck") - lck0
	if arenaLocked > locked {
		locked = arenaLocked // memfd_secret pages are locked without showing in VmLck
	}
	b.ReportMetric(float64(locked)/n, "locked-B/key")
	b.ReportMetric(float64(procStatus("VmRSS")-rss0)/n, "rss-B/key")
	b.ReportMetric(float64(mapCount()-maps0)/n, "maps/key")
}

package metrics

import (
	"io"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/wire"
)

func scrape(t *testing.T, m *Metrics) string {
	t.Helper()
	rec := httptest.NewRecorder()
	m.Handler().ServeHTTP(rec, httptest.NewRequest("GET", "/metrics", nil))
	b, _ := io.ReadAll(rec.Body)
	return string(b)
}

// Only the operation and status pairs that happened are exported, and an
// index out of range (a newer protocol's operation, a status this build
// does not know) is counted, not a crash.
func TestCounts(t *testing.T) {
	m := New([]string{"encrypt", "sign"})
	m.Begin()
	m.Op(0, wire.Status_STATUS_OK)
	m.Op(0, wire.Status_STATUS_OK)
	m.Op(1, wire.Status_STATUS_PERMISSION_DENIED)
	m.Op(99, wire.Status_STATUS_OK)
	m.Op(0, wire.Status(1000))
	m.End(0, time.Millisecond)
	m.Begin()
	m.End(-1, time.Millisecond)
	m.Refused(wire.Status_STATUS_RESOURCE_EXHAUSTED)
	out := scrape(t, m)
	for _, want := range []string{
		`keywarden_operations_total{op="encrypt",status="OK"} 2`,
		`keywarden_operations_total{op="sign",status="PERMISSION_DENIED"} 1`,
		`keywarden_operations_total{op="unknown",status="OK"} 1`,
		`keywarden_operations_total{op="encrypt",status="INTERNAL"} 1`,
		`keywarden_requests_refused_total{status="RESOURCE_EXHAUSTED"} 1`,
		`keywarden_request_duration_seconds_count{op="encrypt"} 1`,
		`keywarden_request_duration_seconds_count{op="unknown"} 1`,
		`keywarden_requests_in_flight 0`,
	} {
		if !strings.Contains(out, want+"\n") {
			t.Errorf("missing %s", want)
		}
	}
	if strings.Contains(out, `op="sign",status="OK"`) || strings.Contains(out, `request_duration_seconds_count{op="sign"}`) {
		t.Errorf("series for what never happened:\n%s", out)
	}
}

func TestCheckAddr(t *testing.T) {
	for addr, ok := range map[string]bool{
		"unix:/run/keywarden/metrics.sock": true, "127.0.0.1:9613": true, "[::1]:9613": true, "localhost:9613": true,
		"127.0.0.2:80": true, "0.0.0.0:9613": false, "[::]:9613": false, "192.0.2.1:9613": false, "example.com:9613": false,
		"unix:metrics.sock": false, ":9613": false, "127.0.0.1": false, "": false,
	} {
		if err := CheckAddr(addr); (err == nil) != ok {
			t.Errorf("CheckAddr(%q) = %v, want ok %v", addr, err, ok)
		}
	}
}

// BenchmarkRequest is what the request path pays per request of one
// operation with metrics on: two clock reads, an atomic add for the
// operation, the in-flight gauge and a histogram observation.
func BenchmarkRequest(b *testing.B) {
	m := New([]string{"encrypt", "sign"})
	for b.Loop() {
		m.Begin()
		t := time.Now()
		m.Op(0, wire.Status_STATUS_OK)
		m.End(0, time.Since(t))
	}
}

// BenchmarkRequestParallel is BenchmarkRequest from every processor at
// once: the counters are shared.
func BenchmarkRequestParallel(b *testing.B) {
	m := New([]string{"encrypt", "sign"})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			m.Begin()
			t := time.Now()
			m.Op(0, wire.Status_STATUS_OK)
			m.End(0, time.Since(t))
		}
	})
}

package metrics

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/wire"
)

const ns = "keywarden"

// Sources are the daemon's state that metrics read at scrape time. A nil
// function leaves its metrics out.
type Sources struct {
	Connections func() int
	// Keys: persistent keys in the store, live keys (ephemeral ones too).
	Keys func() (persistent, live int)
	// Memory: bytes locked for key memory, in use, and the limit (0: none).
	Memory func() (locked, inUse, limit int64)
	// Seal: whether a master key exists and whether it is sealed.
	Seal func() (initialized, sealed bool)
	// Audit is the audit log's state (nil function: no audit log).
	Audit func() audit.Status
	KDF   func() (kdf.Stats, kdf.Limits)
	// Generation is the machine generation: each change adds one.
	Generation func() uint64
	// StoreFile is the key store's file ("": none, development mode).
	StoreFile string
}

// Metrics are the daemon's metrics. Its request-path methods (Begin, Op,
// End, Refused) are safe for concurrent use and never block.
type Metrics struct {
	ops      []string // by index; one more for operations not known
	nStatus  int
	counts   []atomic.Uint64 // [op*nStatus+status]
	refused  []atomic.Uint64 // [status]
	inFlight atomic.Int64
	// hists holds each operation's latency histogram, made at its first
	// request so that operations never used add no series.
	hists   []atomic.Pointer[prometheus.Observer]
	histVec *prometheus.HistogramVec
	fsync   prometheus.Histogram

	reg *prometheus.Registry
	src atomic.Pointer[Sources]
}

// latencyBuckets span a small in-memory operation (a few µs) to an RSA-4096
// key generation or an Argon2id derivation (seconds).
var latencyBuckets = []float64{5e-6, 10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1, 2.5, 5, 10}

// New makes the metrics for the operations named by ops (server.OpNames).
func New(ops []string) *Metrics {
	nStatus := 0
	for v := range wire.Status_name {
		nStatus = max(nStatus, int(v)+1)
	}
	m := &Metrics{ops: append(append([]string(nil), ops...), "unknown"), nStatus: nStatus, reg: prometheus.NewRegistry()}
	m.counts = make([]atomic.Uint64, len(m.ops)*nStatus)
	m.refused = make([]atomic.Uint64, nStatus)
	hv := prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: ns, Name: "request_duration_seconds",
		Help:    "Time to execute a request (audit record included), by the request's first operation.",
		Buckets: latencyBuckets,
	}, []string{"op"})
	m.hists = make([]atomic.Pointer[prometheus.Observer], len(m.ops))
	m.histVec = hv
	m.fsync = prometheus.NewHistogram(prometheus.HistogramOpts{
		Namespace: ns, Subsystem: "audit", Name: "fsync_duration_seconds",
		Help:    "Time of each fsync of audit records.",
		Buckets: []float64{100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 0.1, 0.25, 0.5, 1},
	})
	m.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		hv, m.fsync, (*collector)(m))
	return m
}

// SetSources says where the scraped state comes from.
func (m *Metrics) SetSources(s Sources) { m.src.Store(&s) }

// Begin counts a request in flight.
func (m *Metrics) Begin() { m.inFlight.Add(1) }

// Op counts one operation's result.
func (m *Metrics) Op(op int, st wire.Status) {
	if uint(op) >= uint(len(m.ops)) {
		op = len(m.ops) - 1
	}
	if uint(st) >= uint(m.nStatus) {
		st = wire.Status_STATUS_INTERNAL
	}
	m.counts[op*m.nStatus+int(st)].Add(1)
}

// End ends a request begun with Begin.
func (m *Metrics) End(op int, d time.Duration) {
	m.inFlight.Add(-1)
	if uint(op) >= uint(len(m.ops)) {
		op = len(m.ops) - 1
	}
	h := m.hists[op].Load()
	if h == nil {
		o := m.histVec.WithLabelValues(m.ops[op])
		h = &o
		m.hists[op].Store(h)
	}
	(*h).Observe(d.Seconds())
}

// Refused counts a request refused before it ran.
func (m *Metrics) Refused(st wire.Status) {
	if uint(st) < uint(m.nStatus) {
		m.refused[st].Add(1)
	}
}

// Fsync records an fsync of the audit log (audit.Options.OnSync).
func (m *Metrics) Fsync(d time.Duration) { m.fsync.Observe(d.Seconds()) }

// Handler serves the metrics in Prometheus' text format.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{ErrorHandling: promhttp.ContinueOnError})
}

// statusName is st's name without the STATUS_ prefix, as the CLI and the
// audit log write it.
func statusName(st int) string {
	n, ok := wire.Status_name[int32(st)]
	if !ok {
		return fmt.Sprint(st)
	}
	return strings.TrimPrefix(n, "STATUS_")
}

var (
	descOps = prometheus.NewDesc(ns+"_operations_total",
		"Operations executed, by operation and result status (a batch counts each of its operations).", []string{"op", "status"}, nil)
	descRefused = prometheus.NewDesc(ns+"_requests_refused_total",
		"Requests refused before they ran (limits, malformed requests, a failing audit log), by status.", []string{"status"}, nil)
	descInFlight    = prometheus.NewDesc(ns+"_requests_in_flight", "Requests executing now.", nil, nil)
	descConns       = prometheus.NewDesc(ns+"_connections", "Connections open on the main socket.", nil, nil)
	descKeys        = prometheus.NewDesc(ns+"_keys", "Persistent keys in the store.", nil, nil)
	descLive        = prometheus.NewDesc(ns+"_keys_live", "Keys live in memory for their owners, ephemeral ones included.", nil, nil)
	descLocked      = prometheus.NewDesc(ns+"_locked_memory_bytes", "Key memory locked (mlock or memfd_secret).", nil, nil)
	descInUse       = prometheus.NewDesc(ns+"_locked_memory_in_use_bytes", "Key memory in use by key buffers.", nil, nil)
	descLimit       = prometheus.NewDesc(ns+"_locked_memory_limit_bytes", "Bound of the key memory (0: none).", nil, nil)
	descInit        = prometheus.NewDesc(ns+"_master_key_initialized", "1 if the store has a master key.", nil, nil)
	descSealed      = prometheus.NewDesc(ns+"_sealed", "1 while the daemon is sealed (key operations refused).", nil, nil)
	descAuditOK     = prometheus.NewDesc(ns+"_audit_healthy", "1 while the audit log is written; 0 means every request is refused.", nil, nil)
	descAuditSeq    = prometheus.NewDesc(ns+"_audit_records_total", "Sequence number of the last audit record.", nil, nil)
	descAuditBytes  = prometheus.NewDesc(ns+"_audit_file_bytes", "Size of the active audit log file.", nil, nil)
	descAuditLag    = prometheus.NewDesc(ns+"_audit_unsynced_seconds", "How long written audit records have waited for their fsync (grouped sync).", nil, nil)
	descAuditRef    = prometheus.NewDesc(ns+"_audit_failing_refusals", "Requests refused since the audit log stopped writing (0 while it writes).", nil, nil)
	descKDFRun      = prometheus.NewDesc(ns+"_kdf_workers_running", "Argon2id worker processes running.", nil, nil)
	descKDFQueue    = prometheus.NewDesc(ns+"_kdf_queue_length", "Derivations waiting for the memory budget.", nil, nil)
	descKDFUsed     = prometheus.NewDesc(ns+"_kdf_memory_used_bytes", "Memory budget taken by running derivations.", nil, nil)
	descKDFBudget   = prometheus.NewDesc(ns+"_kdf_memory_budget_bytes", "Memory budget of the derivations.", nil, nil)
	descKDFQueueMax = prometheus.NewDesc(ns+"_kdf_queue_capacity", "Derivations that may wait.", nil, nil)
	descGen         = prometheus.NewDesc(ns+"_generation_changes_total", "Machine generation changes (VM snapshot restores and clones) seen since the store began counting.", nil, nil)
	descStore       = prometheus.NewDesc(ns+"_store_bytes", "Size of the key store file.", nil, nil)
)

// collector turns the counters and the daemon's state into samples at
// scrape time.
type collector Metrics

func (c *collector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descOps, descRefused, descInFlight, descConns, descKeys, descLive, descLocked, descInUse,
		descLimit, descInit, descSealed, descAuditOK, descAuditSeq, descAuditBytes, descAuditLag, descAuditRef,
		descKDFRun, descKDFQueue, descKDFUsed, descKDFBudget, descKDFQueueMax, descGen, descStore} {
		ch <- d
	}
}

func b2f(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

func (c *collector) Collect(ch chan<- prometheus.Metric) {
	m := (*Metrics)(c)
	gauge := func(d *prometheus.Desc, v float64) { ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v) }
	counter := func(d *prometheus.Desc, v float64) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, v)
	}
	// Only the pairs that happened: most operations never end with most
	// statuses.
	for i := range m.counts {
		if n := m.counts[i].Load(); n > 0 {
			ch <- prometheus.MustNewConstMetric(descOps, prometheus.CounterValue, float64(n), m.ops[i/m.nStatus], statusName(i%m.nStatus))
		}
	}
	for st := range m.refused {
		if n := m.refused[st].Load(); n > 0 {
			ch <- prometheus.MustNewConstMetric(descRefused, prometheus.CounterValue, float64(n), statusName(st))
		}
	}
	gauge(descInFlight, float64(m.inFlight.Load()))
	s := m.src.Load()
	if s == nil {
		return
	}
	if s.Connections != nil {
		gauge(descConns, float64(s.Connections()))
	}
	if s.Keys != nil {
		p, l := s.Keys()
		gauge(descKeys, float64(p))
		gauge(descLive, float64(l))
	}
	if s.Memory != nil {
		locked, inUse, limit := s.Memory()
		gauge(descLocked, float64(locked))
		gauge(descInUse, float64(inUse))
		gauge(descLimit, float64(limit))
	}
	if s.Seal != nil {
		init, sealed := s.Seal()
		gauge(descInit, b2f(init))
		gauge(descSealed, b2f(sealed))
	}
	if s.Audit != nil {
		a := s.Audit()
		gauge(descAuditOK, b2f(a.Healthy))
		counter(descAuditSeq, float64(a.Seq))
		gauge(descAuditBytes, float64(a.FileBytes))
		gauge(descAuditLag, a.Lag.Seconds())
		gauge(descAuditRef, float64(a.Refused))
	}
	if s.KDF != nil {
		st, l := s.KDF()
		gauge(descKDFRun, float64(st.Running))
		gauge(descKDFQueue, float64(st.Queued))
		gauge(descKDFUsed, float64(st.UsedKiB)*1024)
		gauge(descKDFBudget, float64(st.BudgetKiB)*1024)
		gauge(descKDFQueueMax, float64(l.Queue))
	}
	if s.Generation != nil {
		counter(descGen, float64(s.Generation()))
	}
	if s.StoreFile != "" {
		if fi, err := os.Stat(s.StoreFile); err == nil {
			gauge(descStore, float64(fi.Size()))
		}
	}
}

// CheckAddr checks a --metrics address: "unix:/ABSOLUTE/PATH", or a
// loopback "HOST:PORT" (127.0.0.0/8, ::1 or localhost). Metrics are never
// served on another interface: they say how busy the daemon is.
func CheckAddr(addr string) error {
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		if !filepath.IsAbs(p) {
			return errors.New("want unix:/ABSOLUTE/PATH")
		}
		return nil
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil || port == "" {
		return errors.New("want unix:PATH or a loopback HOST:PORT such as 127.0.0.1:9613")
	}
	if host == "localhost" {
		return nil
	}
	ip, err := netip.ParseAddr(host)
	if err != nil || !ip.IsLoopback() {
		return fmt.Errorf("%q is not a loopback address: metrics are served on 127.0.0.1, ::1 or a Unix socket only", host)
	}
	return nil
}

// Listen opens the metrics endpoint at addr (see CheckAddr). A Unix socket
// gets mode 0660: the daemon's user and group may scrape it.
func Listen(addr string) (net.Listener, error) {
	if err := CheckAddr(addr); err != nil {
		return nil, err
	}
	if p, ok := strings.CutPrefix(addr, "unix:"); ok {
		if fi, err := os.Lstat(p); err == nil {
			if fi.Mode().Type() != os.ModeSocket {
				return nil, fmt.Errorf("metrics socket %s: a file that is not a socket is in the way", p)
			}
			if c, err := net.DialTimeout("unix", p, time.Second); err == nil {
				c.Close()
				return nil, fmt.Errorf("metrics socket %s: another process listens on it", p)
			}
			os.Remove(p)
		}
		l, err := net.Listen("unix", p)
		if err != nil {
			return nil, err
		}
		if err := os.Chmod(p, 0o660); err != nil {
			l.Close()
			return nil, err
		}
		return l, nil
	}
	if host, port, _ := net.SplitHostPort(addr); host == "localhost" {
		addr = net.JoinHostPort("127.0.0.1", port)
	}
	return net.Listen("tcp", addr)
}

// Serve serves the metrics on l at /metrics until ctx is done.
func (m *Metrics) Serve(ctx context.Context, l net.Listener, log *slog.Logger) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", m.Handler())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second, WriteTimeout: 30 * time.Second,
		ErrorLog: slog.NewLogLogger(log.Handler(), slog.LevelDebug)}
	go func() {
		<-ctx.Done()
		srv.Close()
	}()
	if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Error("metrics endpoint failed", "err", err)
	}
}

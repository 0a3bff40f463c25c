package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"path/filepath"
	"slices"
	"strings"

	"github.com/keywarden/keywarden/internal/audit"
	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/kdf"
	"github.com/keywarden/keywarden/internal/metrics"
	"github.com/keywarden/keywarden/internal/secmem"
	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/store"
)

// startMetrics opens the metrics endpoint (--metrics) and serves it until
// ctx is done. It refuses the path of a socket that serves keys.
func startMetrics(ctx context.Context, m *metrics.Metrics, cfg Config, srv *server.Server, arena *secmem.Arena,
	alog *auditLog, kdfSup *kdf.Supervisor, gen *genid.Tracker, log *slog.Logger) (net.Listener, error) {
	if p, ok := strings.CutPrefix(cfg.MetricsAddr, "unix:"); ok {
		if p == cfg.SocketPath || slices.Contains(cfg.SSHAgentSockets, p) {
			return nil, fmt.Errorf("--metrics %s: that socket serves keys; give the metrics a socket of their own", cfg.MetricsAddr)
		}
		if err := prepareDir(filepath.Dir(p)); err != nil {
			return nil, err
		}
	}
	src := metrics.Sources{
		Connections: srv.Connections,
		Keys:        srv.KeyCounts,
		Memory: func() (int64, int64, int64) {
			st := arena.Stats()
			return st.Locked, st.InUse, st.Limit
		},
		Seal: func() (bool, bool) {
			st := srv.SealState()
			return st.Initialized, st.Sealed
		},
		KDF:        func() (kdf.Stats, kdf.Limits) { return kdfSup.Stats(), kdfSup.Limits() },
		Generation: gen.Current,
	}
	if cfg.Dev {
		src.Seal = nil
	} else {
		src.StoreFile = filepath.Join(cfg.StateDir, store.FileName)
	}
	if a := alog.get(); a != nil {
		src.Audit = func() audit.Status { return a.Status() }
	}
	m.SetSources(src)
	l, err := metrics.Listen(cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("--metrics %s: %w", cfg.MetricsAddr, err)
	}
	log.Info("serving metrics", "addr", cfg.MetricsAddr, "path", "/metrics")
	go m.Serve(ctx, l, log)
	return l, nil
}

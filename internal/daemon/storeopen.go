package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/store"
)

// openStore opens the key store cfg names, and says where it is. An etcd
// cluster that does not answer is waited for, with a log line every
// etcdRetryLog: the daemon reads nothing, and so stays sealed, until it
// can read the master record (a daemon that went on without it would
// take the store for one with no master key).
func openStore(ctx context.Context, cfg Config, log *slog.Logger) (store.Store, string, error) {
	if cfg.Etcd == nil {
		db, err := store.OpenBolt(cfg.StateDir, time.Second)
		return db, cfg.StateDir, err
	}
	where := fmt.Sprintf("etcd %s, prefix %s", strings.Join(cfg.Etcd.Endpoints, ","), cfg.Etcd.Prefix)
	db, err := store.OpenEtcd(*cfg.Etcd)
	if err != nil {
		return nil, where, err
	}
	var last time.Time
	for {
		err := db.Ping(ctx)
		if err == nil {
			break
		}
		if time.Since(last) >= etcdRetryLog {
			log.Error("the etcd cluster does not answer: the daemon stays sealed and serves nothing until it does",
				"endpoints", strings.Join(cfg.Etcd.Endpoints, ","), "err", err)
			last = time.Now()
		}
		select {
		case <-ctx.Done():
			db.Close()
			return nil, where, fmt.Errorf("%s: %w", where, err)
		case <-time.After(etcdRetry):
		}
	}
	log.Info("key store in an etcd cluster", "endpoints", strings.Join(cfg.Etcd.Endpoints, ","), "prefix", cfg.Etcd.Prefix)
	return db, where, nil
}

const (
	etcdRetry    = 500 * time.Millisecond
	etcdRetryLog = 5 * time.Second
)

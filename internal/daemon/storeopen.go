package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
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

// clusterStatus describes the cluster and how closely keys follows it.
func clusterStatus(ctx context.Context, db *store.Etcd, keys *keystore.Store) *wire.ClusterStatus {
	st := db.Status(ctx)
	c := &wire.ClusterStatus{Prefix: db.Prefix(), Leader: st.Leader, Revision: st.Revision}
	for _, e := range st.Endpoints {
		c.Endpoints = append(c.Endpoints, &wire.ClusterEndpoint{Url: e.URL, MemberId: e.MemberID, Version: e.Version,
			Revision: e.Revision, Leader: e.Leader, Error: e.Err})
	}
	f := keys.FollowStatus()
	c.Following, c.FollowedRevision, c.Refused = f.Following, f.Revision, f.Err
	c.LagMs, c.BoundMs = uint32(min(f.Lag.Milliseconds(), 1<<31)), uint32(f.Bound.Milliseconds())
	return c
}

const (
	etcdRetry    = 500 * time.Millisecond
	etcdRetryLog = 5 * time.Second
)

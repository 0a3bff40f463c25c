package cli

import (
	"fmt"
	"strings"
	"time"

	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/store"
)

// runStoreMigrate copies a store between one machine's bbolt file and an
// etcd cluster (docs/cluster.md), with every daemon on either stopped.
func runStoreMigrate(e *env, args []string) error {
	f := newFlags("store migrate", e)
	from := f.String("from", "", "the store to copy: bolt:STATE_DIR or etcd")
	to := f.String("to", "", "the new store, empty: bolt:STATE_DIR or etcd")
	endpoints := f.String("etcd-endpoints", "", "the etcd cluster's client `URLs`, comma-separated")
	prefix := f.String("etcd-prefix", "/keywarden/", "the etcd key `prefix` of the store")
	cert := f.String("etcd-cert", "", "the client certificate `file` (PEM)")
	key := f.String("etcd-key", "", "the client certificate's key `file` (PEM)")
	ca := f.String("etcd-ca", "", "the CA certificate `file` (PEM) of the members")
	maxOps := f.Int("etcd-max-txn-ops", 128, "the cluster's --max-txn-ops")
	maxBytes := f.Int("etcd-max-request-bytes", store.DefaultMaxRequestBytes, "the cluster's --max-request-bytes")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	open := func(spec string) (store.Store, string, error) {
		switch {
		case strings.HasPrefix(spec, "bolt:") && len(spec) > len("bolt:"):
			dir := strings.TrimPrefix(spec, "bolt:")
			s, err := store.OpenBolt(dir, time.Second)
			return s, dir, err
		case spec == "etcd":
			if *endpoints == "" {
				return nil, "", usagef("etcd needs --etcd-endpoints")
			}
			s, err := store.OpenEtcd(store.EtcdConfig{Endpoints: strings.Split(*endpoints, ","), Prefix: *prefix,
				CertFile: *cert, KeyFile: *key, CAFile: *ca, MaxTxnOps: *maxOps, MaxRequestBytes: *maxBytes})
			return s, "etcd " + *endpoints + " " + *prefix, err
		}
		return nil, "", usagef("a store is bolt:STATE_DIR or etcd, not %q", spec)
	}
	if *from == "" || *to == "" {
		return usagef("give --from and --to")
	}
	src, sname, err := open(*from)
	if err != nil {
		return err
	}
	defer src.Close()
	dst, dname, err := open(*to)
	if err != nil {
		return err
	}
	defer dst.Close()
	buckets := [][]byte{persist.BucketMeta, persist.BucketKeys, persist.BucketNames, persist.BucketQuarantine}
	n, err := store.Migrate(src, dst, buckets, max(1, *maxOps/2))
	if err != nil {
		return fmt.Errorf("migrate %s to %s: %w", sname, dname, err)
	}
	fmt.Fprintf(e.stdout, "copied %d records from %s to %s, and checked each one\n", n, sname, dname)
	return nil
}

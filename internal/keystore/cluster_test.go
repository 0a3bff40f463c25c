package keystore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"

	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/mech"
	"github.com/keywarden/keywarden/internal/persist"
	"github.com/keywarden/keywarden/internal/seal"
	"github.com/keywarden/keywarden/internal/store"
	"github.com/keywarden/keywarden/internal/wire"
)

// clusterNode opens a daemon's key store on the etcd cluster at eps under
// prefix: it initializes the store if first, else unseals it.
func clusterNode(t testing.TB, eps []string, prefix string, first bool) *Store {
	t.Helper()
	return clusterNodeOf(t, store.EtcdConfig{Endpoints: eps, Prefix: prefix}, first)
}

// clusterNodeOf is clusterNode with the etcd store configured as cfg.
func clusterNodeOf(t testing.TB, cfg store.EtcdConfig, first bool) *Store {
	t.Helper()
	cfg.Timeout = 2 * time.Second
	db, err := store.OpenEtcd(cfg)
	if err != nil {
		t.Fatal(err)
	}
	m, err := seal.Open(seal.Config{Store: db, KDF: inProcessKDF{}, InsecureKDF: true})
	if err != nil {
		t.Fatal(err)
	}
	s := New(Config{MaxPerUser: 1000, DB: db, Master: m, HighWaterFile: filepath.Join(t.TempDir(), "highwater")})
	t.Cleanup(func() { s.Close(); db.Close() })
	if first {
		p, err := m.PrepareInit(context.Background(), seal.Sealing{Passphrase: []byte("passphrase"), Params: testParams}, false)
		if err != nil {
			t.Fatal(err)
		}
		if err := m.CommitInit(p, func(k *seal.Keys) ([]byte, error) { return NewHeader(k, time.Now()) }); err != nil {
			t.Fatal(err)
		}
		k, _ := m.Keys()
		if err := s.Verify(k, false); err != nil {
			t.Fatal(err)
		}
	} else {
		unseal(t, s)
	}
	return s
}

// within polls cond until it holds, failing after d.
func within(t *testing.T, d time.Duration, what string, cond func() bool) time.Duration {
	t.Helper()
	t0 := time.Now()
	for !cond() {
		if time.Since(t0) > d {
			t.Fatalf("%s: not within %s", what, d)
		}
		time.Sleep(5 * time.Millisecond)
	}
	return time.Since(t0)
}

func useErr(o *Object) error { return o.Use(func(*mech.Key) error { return nil }) }

// Two daemons on one store: a key made on one is used on the other; a
// rotation on one drops the other's copy, which opens the new version; a
// destroy on one is refused on the other within the bound.
func TestClusterDaemonsFollowEachOther(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/follow/", true)
	b := clusterNode(t, c.Endpoints(), "/follow/", false)

	o := obj(t, 1, "shared", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	var ob *Object
	within(t, time.Second, "the key made on a opens on b", func() bool {
		var err error
		ob, err = b.Get(o.ID)
		return err == nil
	})
	if err := useErr(ob); err != nil {
		t.Fatal(err)
	}
	if p, _ := b.Counts(); p != 1 {
		t.Fatalf("b counts %d persistent keys", p)
	}

	if _, err := a.Rotate(o); err != nil {
		t.Fatal(err)
	}
	d := within(t, time.Second, "b drops its copy after the rotation on a", func() bool { return errors.Is(useErr(ob), errChangedElsewhere) })
	t.Logf("rotation seen on the other daemon after %s", d)
	b.Release(ob)
	ob, err := b.Get(o.ID)
	if err != nil {
		t.Fatal(err)
	}
	if n := ob.Newest().N; n != 2 {
		t.Fatalf("b opens version %d after the rotation on a", n)
	}

	if err := a.Remove(o); err != nil {
		t.Fatal(err)
	}
	d = within(t, time.Second, "b refuses the key destroyed on a", func() bool { return errors.Is(useErr(ob), errDestroyedElsewhere) })
	t.Logf("destroy seen on the other daemon after %s", d)
	b.Release(ob)
	if _, err := b.Get(o.ID); status(err) != wire.Status_STATUS_NOT_FOUND {
		t.Fatalf("b opens the destroyed key: %v", err)
	}
	within(t, time.Second, "b's count", func() bool { p, _ := b.Counts(); return p == 0 })
}

// Two daemons rotating one key at once never make the same version twice:
// they make N+1 and N+2, or one is refused.
func TestClusterConcurrentRotations(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rotate/", true)
	b := clusterNode(t, c.Endpoints(), "/rotate/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	for round := range 10 {
		oa, err := a.Get(o.ID)
		if err != nil {
			t.Fatal(err)
		}
		var ob *Object
		within(t, time.Second, "b opens the key", func() bool {
			ob, err = b.Get(o.ID)
			return err == nil && ob.Newest().N == oa.Newest().N
		})
		n := oa.Newest().N
		var wg sync.WaitGroup
		vs := make([]*Version, 2)
		errs := make([]error, 2)
		for i, p := range []struct {
			s *Store
			o *Object
		}{{a, oa}, {b, ob}} {
			wg.Add(1)
			go func() { defer wg.Done(); vs[i], errs[i] = p.s.Rotate(p.o) }()
		}
		wg.Wait()
		var made []uint32
		for i := range 2 {
			if errs[i] == nil {
				made = append(made, vs[i].N)
			}
		}
		switch {
		case len(made) == 0:
			t.Fatalf("round %d: both rotations refused: %v", round, errs)
		case len(made) == 2 && made[0] == made[1]:
			t.Fatalf("round %d: both daemons made version %d", round, made[0])
		}
		for _, m := range made {
			if m != n+1 && m != n+2 {
				t.Fatalf("round %d: version %d after %d", round, m, n)
			}
		}
		a.Release(oa)
		b.Release(ob)
		// The store holds the newest version made.
		var latest *Object
		within(t, time.Second, "a opens the newest version", func() bool {
			latest, err = a.Get(o.ID)
			if err != nil {
				return false
			}
			ok := latest.Newest().N == max(made[0], made[len(made)-1])
			if !ok {
				a.Release(latest)
			}
			return ok
		})
		a.Release(latest)
	}
}

// A daemon whose follower lags (it has not applied another daemon's
// rotation yet) and rotates the same key from the state it knows is
// refused: it would otherwise write version N+1 over the other's N+1.
func TestClusterRotationFromStaleStateRefused(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/stalerotate/", true)
	b := clusterNode(t, c.Endpoints(), "/stalerotate/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	var ob *Object
	within(t, time.Second, "b opens the key", func() bool {
		var err error
		ob, err = b.Get(o.ID)
		return err == nil
	})
	hold := make(chan struct{})
	held := make(chan struct{}, 1)
	hook := func(s *Store) {
		if s == b {
			select {
			case held <- struct{}{}:
			default:
			}
			<-hold
		}
	}
	hookFollowApply.Store(&hook)
	defer hookFollowApply.Store(nil)
	va, err := a.Rotate(o)
	if err != nil {
		t.Fatal(err)
	}
	<-held // b's follower holds a's rotation, unapplied
	vb, err := b.Rotate(ob)
	close(hold)
	if err == nil {
		t.Fatalf("a made version %d, and b, from the state before it, version %d", va.N, vb.N)
	}
	if status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("b's rotation: %v", err)
	}
}

// Someone who can write to etcd, but holds no master key, tries each
// change the store's checks must catch, while two daemons run: a record
// swapped for another's, an older revision of a record put back, a
// record deleted, an older store header put back. Each is seen by the
// daemons, which refuse the store's keys from then on.
func TestClusterTamperThroughEtcd(t *testing.T) {
	c := etcdtest.Start(t, 1)
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	for i, tc := range []struct {
		name   string
		tamper func(t *testing.T, keys, hdr string, x, y *Object, oldX, oldHdr string)
	}{
		{"SwapRecords", func(t *testing.T, keys, _ string, x, y *Object, _, _ string) {
			vx, vy := get(t, raw, keys+string(x.ID[:])), get(t, raw, keys+string(y.ID[:]))
			if _, err := raw.Txn(ctx).Then(clientv3.OpPut(keys+string(x.ID[:]), vy), clientv3.OpPut(keys+string(y.ID[:]), vx)).Commit(); err != nil {
				t.Fatal(err)
			}
		}},
		{"OldRevisionOfRecord", func(t *testing.T, keys, _ string, x, _ *Object, oldX, _ string) {
			if _, err := raw.Put(ctx, keys+string(x.ID[:]), oldX); err != nil {
				t.Fatal(err)
			}
		}},
		{"OldRevisionWithItsHeader", func(t *testing.T, keys, hdr string, x, _ *Object, oldX, oldHdr string) {
			if _, err := raw.Txn(ctx).Then(clientv3.OpPut(keys+string(x.ID[:]), oldX), clientv3.OpPut(hdr, oldHdr)).Commit(); err != nil {
				t.Fatal(err)
			}
		}},
		{"DeleteRecord", func(t *testing.T, keys, _ string, x, _ *Object, _, _ string) {
			if _, err := raw.Delete(ctx, keys+string(x.ID[:])); err != nil {
				t.Fatal(err)
			}
		}},
		{"ReplayHeader", func(t *testing.T, _, hdr string, _, _ *Object, _, oldHdr string) {
			if _, err := raw.Put(ctx, hdr, oldHdr); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			prefix := fmt.Sprintf("/tamper/%d/", i)
			a := clusterNode(t, c.Endpoints(), prefix, true)
			b := clusterNode(t, c.Endpoints(), prefix, false)
			x, y := obj(t, 1, "x", false), obj(t, 1, "y", false)
			for _, o := range []*Object{x, y} {
				if err := a.Add(o); err != nil {
					t.Fatal(err)
				}
			}
			db := a.db.(*store.Etcd)
			keys := db.BucketPrefix(persist.BucketKeys)
			hdr := shardHeaderKey(a, x.ID) // x's and y's: a creates in one shard
			oldX, oldHdr := get(t, raw, keys+string(x.ID[:])), get(t, raw, hdr)
			if _, err := a.Rotate(x); err != nil { // x's record and the header move on
				t.Fatal(err)
			}
			ob, err := b.Get(y.ID)
			if err != nil {
				t.Fatal(err)
			}
			tc.tamper(t, keys, hdr, x, y, oldX, oldHdr)
			for _, s := range []*Store{a, b} {
				within(t, time.Second, "the tampering seen", func() bool {
					_, err := s.Get(y.ID)
					return status(err) == wire.Status_STATUS_INTERNAL && strings.Contains(err.Error(), "outside keywarden")
				})
			}
			if err := useErr(ob); status(err) != wire.Status_STATUS_INTERNAL {
				t.Fatalf("a key in memory is still used after the tampering: %v", err)
			}
			// The next unseal's full check refuses the store too.
			a.SealAll()
			if err := a.Master().UnsealPassphrase(ctx, []byte("passphrase"), func(k *seal.Keys) error { return a.Verify(k, false) }); err == nil {
				t.Fatal("the unseal accepted the tampered store")
			}
		})
	}
}

func get(t *testing.T, c *clientv3.Client, k string) string {
	t.Helper()
	r, err := c.Get(context.Background(), k)
	if err != nil || len(r.Kvs) != 1 {
		t.Fatalf("get %q: %v", k, err)
	}
	return string(r.Kvs[0].Value)
}

// A daemon that loses the cluster refuses its keys once the bound has
// passed, with UNAVAILABLE, and serves them again once it catches up.
func TestClusterStaleRefused(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/stale/", true)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	c.Kill(0)
	t0 := time.Now()
	within(t, 3*time.Second, "keys refused", func() bool { return errors.Is(useErr(o), errStale) })
	if d := time.Since(t0); d < DefaultStaleBound-store.FollowConfirmEvery {
		t.Fatalf("refused after %s, before the bound", d)
	}
	if _, err := a.Get(o.ID); status(err) != wire.Status_STATUS_UNAVAILABLE {
		t.Fatalf("open while stale: %v", err)
	}
	c.Restart(0)
	c.WaitHealthy(20 * time.Second)
	within(t, 10*time.Second, "keys served again", func() bool { return useErr(o) == nil })
}

// Two daemons encrypting with one AES-GCM key take turns reserving ranges
// of its budget: each reservation is seen by the other in place (its copy
// of the key stays usable), the next one goes on after it, and the
// encryptions counted on both never exceed what the record reserves.
func TestClusterBudgetRangesShared(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/budget/", true)
	b := clusterNode(t, c.Endpoints(), "/budget/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	var ob *Object
	within(t, time.Second, "b opens the key", func() bool {
		var err error
		ob, err = b.Get(o.ID)
		return err == nil
	})
	reserved := func() uint64 {
		var r uint64
		a.db.View(func(tx store.Tx) error {
			v := tx.Get(persist.BucketKeys, o.ID[:])
			_, rb, _ := persist.SplitValue(v)
			var rec persist.KeyRecord
			rec.UnmarshalVT(rb)
			r = rec.Versions[len(rec.Versions)-1].EncryptionsReserved
			return nil
		})
		return r
	}
	const n = reserveBlock
	var total uint64
	for round := range 6 {
		for _, p := range []struct {
			s *Store
			o *Object
		}{{a, o}, {b, ob}} {
			var err error
			for try := 0; ; try++ {
				_, err = p.s.Encrypting(p.o, n)
				if !errors.Is(err, errRaced) || try == 20 {
					break
				}
				time.Sleep(10 * time.Millisecond) // the other's reservation not followed yet
			}
			if err != nil {
				t.Fatalf("round %d: %v", round, err)
			}
			total += n
			if r := reserved(); total > r {
				t.Fatalf("round %d: %d encryptions counted, %d reserved", round, total, r)
			}
		}
	}
	if o.Newest().N != 1 || ob.Newest().N != 1 {
		t.Fatalf("the key was rotated: versions %d and %d", o.Newest().N, ob.Newest().N)
	}
	for _, k := range []*Object{o, ob} {
		if err := useErr(k); err != nil {
			t.Fatalf("a copy of the key was dropped: %v", err)
		}
	}
}

// The interleaving TestClusterBudgetRangesShared meets by chance, forced:
// a's follower applies b's reservation after a has settled its count
// (raised to the other daemons' reservations) and before a writes the
// reservation it computed from that count. a's reservation would begin
// inside b's range: it is refused (errRaced), and the next one starts
// after b's. Every encryption counted on either daemon stays within what
// the record reserves.
func TestClusterBudgetReservationRaceForced(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/budget-race/", true)
	b := clusterNode(t, c.Endpoints(), "/budget-race/", false)
	o := obj(t, 1, "k", false)
	if err := a.Add(o); err != nil {
		t.Fatal(err)
	}
	var ob *Object
	within(t, time.Second, "b opens the key", func() bool {
		var err error
		ob, err = b.Get(o.ID)
		return err == nil
	})
	defer b.Release(ob)
	reserved := func() uint64 {
		var r uint64
		a.db.View(func(tx store.Tx) error {
			_, rb, _ := persist.SplitValue(tx.Get(persist.BucketKeys, o.ID[:]))
			var rec persist.KeyRecord
			rec.UnmarshalVT(rb)
			r = rec.Versions[len(rec.Versions)-1].EncryptionsReserved
			return nil
		})
		return r
	}
	const n = reserveBlock
	var total uint64
	encrypt := func(s *Store, k *Object) error {
		_, err := s.Encrypting(k, n)
		if err == nil {
			total += n
		}
		return err
	}
	// Both daemons reserve once, each seeing the other's range.
	if err := encrypt(a, o); err != nil {
		t.Fatal(err)
	}
	within(t, 2*time.Second, "b follows a's reservation", func() bool { return ob.Newest().elsewhere.Load() >= reserved() })
	if err := encrypt(b, ob); err != nil {
		t.Fatal(err)
	}
	within(t, 2*time.Second, "a follows b's reservation", func() bool { return o.Newest().elsewhere.Load() >= reserved() })

	forced := false
	hookReserving = func(k *Object) {
		if k != o || forced {
			return
		}
		forced = true
		// b encrypts until it reserves a range of its own.
		before := reserved()
		for reserved() == before {
			if err := encrypt(b, ob); err != nil {
				t.Errorf("b's reservation: %v", err)
				return
			}
		}
		want := reserved()
		within(t, 2*time.Second, "a's follower applies b's reservation", func() bool { return o.Newest().elsewhere.Load() >= want })
	}
	t.Cleanup(func() { hookReserving = nil })
	// a encrypts within what it reserved before until it must reserve.
	var err error
	for range 4 {
		if err = encrypt(a, o); forced || err != nil {
			break
		}
	}
	if !forced {
		t.Fatal("the hook did not run: a made no reservation")
	}
	if !errors.Is(err, errRaced) {
		t.Fatalf("a's reservation made from a count that b's overtook: %v, want errRaced (counted %d, reserved %d)", err, total, reserved())
	}
	if r := reserved(); total > r {
		t.Fatalf("%d encryptions counted, %d reserved", total, r)
	}
	// Tried again, a counts from the end of b's range.
	if err := encrypt(a, o); err != nil {
		t.Fatal(err)
	}
	if r := reserved(); total > r {
		t.Fatalf("after the retry: %d encryptions counted, %d reserved", total, r)
	}
}

// Someone who can write to etcd replays a group commit: the writes of the
// transaction that created two keys at once (their records, names and the
// header), put back in one etcd transaction after both keys were rotated.
// Each record is genuine and the header is the one written with them, so
// only the header's epoch, older than one seen, gives the replay away: both
// daemons refuse the store, and the next unseal does too.
func TestClusterReplayGroupCommit(t *testing.T) {
	c := etcdtest.Start(t, 1)
	raw, err := clientv3.New(clientv3.Config{Endpoints: c.Endpoints(), Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	ctx := context.Background()
	a := clusterNode(t, c.Endpoints(), "/replay/", true)
	b := clusterNode(t, c.Endpoints(), "/replay/", false)
	db := a.db.(*store.Etcd)
	keys := db.BucketPrefix(persist.BucketKeys)
	names := db.BucketPrefix(persist.BucketNames)

	// Concurrent creations: a's committer puts the calls that wait while
	// it commits into one etcd transaction.
	var objs []*Object
	for i := range 8 {
		objs = append(objs, obj(t, 1, fmt.Sprintf("k%d", i), false))
	}
	var wg sync.WaitGroup
	for _, o := range objs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := a.Add(o); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	hdr := shardHeaderKey(a, objs[0].ID) // a creates in one shard
	// The two records last written in one transaction with the header.
	hr, err := raw.Get(ctx, hdr)
	if err != nil {
		t.Fatal(err)
	}
	rev := hr.Kvs[0].ModRevision
	var batch []*Object
	for _, o := range objs {
		r, err := raw.Get(ctx, keys+string(o.ID[:]))
		if err != nil {
			t.Fatal(err)
		}
		if r.Kvs[0].ModRevision == rev {
			batch = append(batch, o)
		}
	}
	if len(batch) < 2 {
		t.Skipf("the creations were not grouped (%d in the last transaction): nothing to replay", len(batch))
	}
	t.Logf("%d creations of %d in the last group commit", len(batch), len(objs))
	var ops []clientv3.Op
	for _, k := range append([]string{hdr}, func() []string {
		var ks []string
		for _, o := range batch {
			ks = append(ks, keys+string(o.ID[:]), names+string(persist.NameKey(o.Owner, o.Name)))
		}
		return ks
	}()...) {
		ops = append(ops, clientv3.OpPut(k, get(t, raw, k)))
	}
	for _, o := range batch {
		if _, err := a.Rotate(o); err != nil {
			t.Fatal(err)
		}
	}
	ob, err := b.Get(batch[0].ID)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := raw.Txn(ctx).Then(ops...).Commit(); err != nil {
		t.Fatal(err)
	}
	for i, s := range []*Store{a, b} {
		var last error
		t0 := time.Now()
		for {
			o, err := s.Get(batch[1].ID)
			if err == nil {
				s.Release(o)
			}
			if status(err) == wire.Status_STATUS_INTERNAL && strings.Contains(err.Error(), "outside keywarden") {
				break
			}
			last = err
			if time.Since(t0) > 2*time.Second {
				t.Fatalf("daemon %d: the replay not seen within 2s: %v", i, last)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := useErr(ob); status(err) != wire.Status_STATUS_INTERNAL {
		t.Fatalf("a key in memory is still used after the replay: %v", err)
	}
	a.SealAll()
	if err := a.Master().UnsealPassphrase(ctx, []byte("passphrase"), func(k *seal.Keys) error { return a.Verify(k, false) }); err == nil {
		t.Fatal("the unseal accepted the replayed store")
	}
}

// Creations of persistent keys from 16 goroutines spread over daemons
// (keystores of their own, each with its own etcd client) sharing one
// store on a three-member cluster: the store's group commits, and with
// several daemons their conflicts on the store header, which every
// transaction writes.
func BenchmarkClusterAdd(b *testing.B) {
	for _, nodes := range []int{1, 3} {
		b.Run(fmt.Sprintf("daemons=%d", nodes), func(b *testing.B) {
			c := etcdtest.Start(b, 3)
			eps := c.Endpoints()
			var ss []*Store
			for i := range nodes {
				mine := append([]string{eps[i]}, append(append([]string{}, eps[:i]...), eps[i+1:]...)...)
				ss = append(ss, clusterNode(b, mine, "/bench/", i == 0))
				ss[i].SetMaxPerUser(1 << 30)
			}
			var next atomic.Uint64
			b.SetParallelism(max(16/runtime.GOMAXPROCS(0), 1))
			etcd0, self0 := c.CPUTime(), selfCPU(b)
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				s := ss[next.Add(1)%uint64(nodes)]
				for pb.Next() {
					for {
						err := s.Add(obj(b, 1, "", false))
						if err == nil {
							break
						}
						if !errors.Is(err, store.ErrUnavailable) && status(err) != wire.Status_STATUS_UNAVAILABLE {
							b.Error(err)
							return
						}
					}
				}
			})
			b.StopTimer()
			// Processor time per creation: this process's (the key
			// stores and their etcd clients) and the members'.
			b.ReportMetric(float64((selfCPU(b)-self0).Microseconds())/float64(b.N), "cpu-µs/creation")
			b.ReportMetric(float64((c.CPUTime()-etcd0).Microseconds())/float64(b.N), "etcd-cpu-µs/creation")
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "creations/s")
			var n store.EtcdCounts
			for _, s := range ss {
				c := s.db.(*store.Etcd).Counts()
				n.Commits, n.Conflicts, n.Calls, n.Tried = n.Commits+c.Commits, n.Conflicts+c.Conflicts, n.Calls+c.Calls, n.Tried+c.Tried
				n.Sent, n.Reads = n.Sent+c.Sent, n.Reads+c.Reads
			}
			if n.Commits > 0 {
				// What each transaction carried, how many lost to
				// another key store's (on the store header), and how
				// many times a creation was sent before it committed.
				b.ReportMetric(float64(n.Calls)/float64(n.Commits), "creations/txn")
				b.ReportMetric(float64(n.Conflicts)/float64(n.Commits+n.Conflicts), "lost/txn")
				b.ReportMetric(float64(n.Tried)/float64(n.Calls), "sent/creation")
				b.ReportMetric(float64(n.Sent)/float64(n.Calls), "txn-B/creation")
				b.ReportMetric(float64(n.Reads)/float64(n.Calls), "reads/creation")
			}
		})
	}
}

// selfCPU is the processor time this process has used so far.
func selfCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// A restore into an etcd store larger than one etcd transaction may be
// (the cluster's --max-txn-ops, 128 by default) is written in several:
// first the header goes (so that no daemon writes, or unseals, on a store
// half restored), then the records, then the backup's header. Every key of
// the backup is there after the unseal, and none made after it.
func TestClusterRestoreInChunks(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/restore-chunks/", true)
	var ids []key.ID
	for i := range 150 {
		o := obj(t, 1, fmt.Sprintf("k%d", i), false)
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID)
		a.Release(o)
	}
	bk := filepath.Join(t.TempDir(), "backup")
	f, err := os.Create(bk)
	if err != nil {
		t.Fatal(err)
	}
	if err := a.Backup(f); err != nil {
		t.Fatal(err)
	}
	f.Close()
	var later []key.ID
	for i := range 70 {
		o := obj(t, 1, fmt.Sprintf("later%d", i), false)
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		later = append(later, o.ID)
		a.Release(o)
	}
	// Stopped half-way, the restore leaves a store that no unseal
	// accepts, and says why; run again, it completes.
	chunks := 0
	hookRestoreChunk = func() error {
		if chunks++; chunks == 3 {
			return errors.New("stopped")
		}
		return nil
	}
	t.Cleanup(func() { hookRestoreChunk = nil })
	if _, err := a.Restore(bk, RestoreOptions{Force: true}); err == nil {
		t.Fatal("the restore went on past the hook's error")
	}
	hookRestoreChunk = nil
	err = a.Master().UnsealPassphrase(context.Background(), []byte("passphrase"), func(k *seal.Keys) error { return a.Verify(k, false) })
	if err == nil || !strings.Contains(err.Error(), "restore the backup again") {
		t.Fatalf("unseal of a store half restored: %v", err)
	}
	if _, err := a.Restore(bk, RestoreOptions{Force: true}); err != nil {
		t.Fatal(err)
	}
	unseal(t, a)
	for _, id := range ids {
		o, err := a.Get(id)
		if err != nil {
			t.Fatalf("a key of the backup after the restore: %v", err)
		}
		a.Release(o)
	}
	for _, id := range later {
		if _, err := a.Get(id); !errors.Is(err, errNoKey) {
			t.Fatalf("a key made after the backup, after the restore: %v", err)
		}
	}
}

// A master-key rotation re-wraps every record of a shared store in
// transactions within the etcd cluster's limits, however many keys it
// holds, and the keys open under the new master key afterwards.
func TestClusterRewrapWithinLimits(t *testing.T) {
	c := etcdtest.Start(t, 1)
	a := clusterNode(t, c.Endpoints(), "/rewrap-limits/", true)
	var ids []key.ID
	for i := range 300 {
		o := obj(t, 1, fmt.Sprintf("k%d", i), false)
		if err := a.Add(o); err != nil {
			t.Fatal(err)
		}
		ids = append(ids, o.ID)
		a.Release(o)
	}
	rotateMaster(t, a, "rotated")
	for _, id := range ids {
		o, err := a.Get(id)
		if err != nil {
			t.Fatalf("a key after the rotation: %v", err)
		}
		a.Release(o)
	}
}

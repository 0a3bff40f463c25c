// Package cluster holds the end-to-end tests of several daemons sharing
// one key store in an etcd cluster (docs/cluster.md): real daemons (the
// test binary re-executed as the keywarden command) on a real three-member
// cluster, all on this machine. They take a minute or more, so they run
// only with KEYWARDEN_CLUSTER_TESTS set (the test script sets it and runs
// this package beside the others).
package cluster

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/cli"
	"github.com/keywarden/keywarden/internal/etcdtest"
	"github.com/keywarden/keywarden/internal/kdf"
)

const mainEnv = "KEYWARDEN_CLUSTER_MAIN"

// The daemons under test start this test binary as their Argon2id worker.
func init() {
	if kdf.IsWorker(os.Args) {
		os.Exit(kdf.WorkerMain())
	}
}

func TestMain(m *testing.M) {
	if os.Getenv(mainEnv) == "1" {
		os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	os.Exit(m.Run())
}

var ctx = context.Background()

const pass = "correct horse battery staple"

var yes = true

func enabled(t *testing.T) {
	t.Helper()
	if os.Getenv("KEYWARDEN_CLUSTER_TESTS") == "" {
		t.Skip("cluster tests run with KEYWARDEN_CLUSTER_TESTS set (scripts/test.sh sets it)")
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// node is one daemon of the cluster.
type node struct {
	t    *testing.T
	name string
	sock string
	cmd  *exec.Cmd
	log  *syncBuffer
	done chan error
}

// startNode starts a daemon on the cluster's endpoints under prefix; with
// wait, it waits until the daemon answers.
func startNode(t *testing.T, name string, endpoints []string, prefix string, wait bool, flags ...string) *node {
	t.Helper()
	return launch(t, name, t.TempDir(), wait, append([]string{"--store", "etcd", "--etcd-endpoints", strings.Join(endpoints, ","),
		"--etcd-prefix", prefix, "--etcd-timeout", "2s"}, flags...)...)
}

// launch starts a daemon with its socket and state in dir.
func launch(t *testing.T, name, dir string, wait bool, flags ...string) *node {
	t.Helper()
	n := &node{t: t, name: name, sock: filepath.Join(dir, "kw.sock"), log: &syncBuffer{}, done: make(chan error, 1)}
	args := append([]string{"serve", "--socket", n.sock, "--state", filepath.Join(dir, "state"), "--log-level", "debug",
		"--kdf-max-memory", "65536", "--insecure-master-kdf"}, flags...)
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	n.cmd = exec.Command(self, args...)
	n.cmd.Env = append(os.Environ(), mainEnv+"=1")
	n.cmd.Stderr = n.log
	n.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := n.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { n.done <- n.cmd.Wait() }()
	t.Cleanup(n.stop)
	if wait {
		n.waitReady(20 * time.Second)
	}
	return n
}

func (n *node) waitReady(d time.Duration) {
	n.t.Helper()
	deadline := time.Now().Add(d)
	for {
		c, err := keywarden.Dial(ctx, n.sock)
		if err == nil {
			c.Close()
			return
		}
		select {
		case err := <-n.done:
			n.t.Fatalf("%s exited during start-up: %v\n%s", n.name, err, n.log)
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("%s did not come up: %v\n%s", n.name, err, n.log)
		}
	}
}

func (n *node) stop() {
	if n.cmd.ProcessState != nil {
		return
	}
	n.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-n.done:
	case <-time.After(15 * time.Second):
		n.cmd.Process.Kill()
		n.t.Errorf("%s did not stop within 15s of SIGTERM\n%s", n.name, n.log)
	}
	if strings.Contains(n.log.String(), "panic") {
		n.t.Errorf("%s's log mentions a panic:\n%s", n.name, n.log)
	}
}

func (n *node) client(t *testing.T) *keywarden.Client {
	t.Helper()
	c, err := keywarden.Dial(ctx, n.sock)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// cli runs the keywarden command against the node.
func (n *node) cli(t *testing.T, stdin string, args ...string) (string, error) {
	t.Helper()
	self, _ := os.Executable()
	cmd := exec.Command(self, args...)
	cmd.Env = append(os.Environ(), mainEnv+"=1", keywarden.SocketEnv+"="+n.sock)
	cmd.Stdin = strings.NewReader(stdin)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// cluster starts a three-member etcd cluster and three daemons on it, and
// initializes the store on the first and unseals the others.
func cluster(t *testing.T) (*etcdtest.Cluster, []*node) {
	t.Helper()
	enabled(t)
	ec := etcdtest.Start(t, 3)
	eps := ec.Endpoints()
	var nodes []*node
	for i, name := range []string{"A", "B", "C"} {
		// Each daemon talks to its own member first, as one per machine
		// would, and to the others if it fails.
		mine := append([]string{eps[i]}, append(append([]string{}, eps[:i]...), eps[i+1:]...)...)
		nodes = append(nodes, startNode(t, name, mine, "/keywarden/", true))
	}
	pf := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pf, []byte(pass+"\n"), 0o600)
	if out, err := nodes[0].cli(t, "", "init", "--passphrase-file", pf, "--time", "1", "--memory", "8192", "--threads", "1"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	for _, n := range nodes[1:] {
		if out, err := n.cli(t, "", "unseal", "--passphrase-file", pf); err != nil {
			t.Fatalf("unseal %s: %v\n%s", n.name, err, out)
		}
	}
	return ec, nodes
}

// eventually polls f until it returns nil, failing after d; it returns how
// long it took.
func eventually(t *testing.T, d time.Duration, what string, f func() error) time.Duration {
	t.Helper()
	t0 := time.Now()
	for {
		err := f()
		if err == nil {
			return time.Since(t0)
		}
		if time.Since(t0) > d {
			t.Fatalf("%s: not within %s: %v", what, d, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// The lifecycle of a key across three daemons: made on A and used on B
// and C; rotated on B, A encrypts under the new version; its ACL narrowed
// on A, enforced on C; destroyed on C, refused on A and B. Each change is
// seen on every daemon within the bound (1 s).
func TestClusterKeyLifecycle(t *testing.T) {
	_, nodes := cluster(t)
	a, b, c := nodes[0].client(t), nodes[1].client(t), nodes[2].client(t)
	ka, err := a.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "shared"})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ka.SetLifecycle(ctx, keywarden.LifecycleChange{DeletionAllowed: &yes}); err != nil {
		t.Fatal(err)
	}
	msg := []byte("made on A")
	ct, err := ka.Encrypt(ctx, msg, nil)
	if err != nil {
		t.Fatal(err)
	}
	var kb, kc *keywarden.Key
	for _, p := range []struct {
		c *keywarden.Client
		k **keywarden.Key
	}{{b, &kb}, {c, &kc}} {
		eventually(t, time.Second, "open on another daemon", func() error {
			k, err := p.c.Open(ctx, "shared")
			if err != nil {
				return err
			}
			pt, err := k.Decrypt(ctx, ct, nil)
			if err != nil {
				return err
			}
			if !bytes.Equal(pt, msg) {
				return fmt.Errorf("decrypted %q", pt)
			}
			*p.k = k
			return nil
		})
	}

	info, err := kb.Rotate(ctx)
	if err != nil || info.Version != 2 {
		t.Fatalf("rotate on B: %v %v", info.Version, err)
	}
	d := eventually(t, time.Second, "A encrypts under version 2", func() error {
		ct, err := ka.Encrypt(ctx, msg, nil)
		if errors.Is(err, keywarden.ErrNotFound) { // changed elsewhere: open it again
			if ka, err = a.Open(ctx, "shared"); err != nil {
				return err
			}
			ct, err = ka.Encrypt(ctx, msg, nil)
		}
		if err != nil {
			return err
		}
		if ct[6] != 2 {
			return fmt.Errorf("version %d", ct[6])
		}
		return nil
	})
	t.Logf("rotation on B seen on A after %s", d)

	// Narrowing: the owner's grant to nobody on A, then revoked; C refuses
	// nobody's open within the bound.
	if _, err := ka.SetACL(ctx, []keywarden.ACLEntry{{ID: 65534, Usage: keywarden.UsageEncrypt}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ka.SetACL(ctx, nil); err != nil {
		t.Fatal(err)
	}
	d = eventually(t, time.Second, "C sees the ACL narrowed", func() error {
		_, err := kc.Encrypt(ctx, msg, nil)
		if !errors.Is(err, keywarden.ErrNotFound) {
			return fmt.Errorf("C's handle still works: %v", err)
		}
		return nil
	})
	t.Logf("ACL change on A seen on C after %s", d)
	if kc, err = c.Open(ctx, "shared"); err != nil {
		t.Fatal(err)
	}
	if len(kc.Info().ACL) != 0 {
		t.Fatalf("C opens the key with ACL %v", kc.Info().ACL)
	}

	if err := kc.Destroy(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range []struct {
		name string
		c    *keywarden.Client
	}{{"A", a}, {"B", b}} {
		d := eventually(t, time.Second, p.name+" refuses the destroyed key", func() error {
			_, err := p.c.Open(ctx, "shared")
			if !errors.Is(err, keywarden.ErrNotFound) {
				return fmt.Errorf("open: %v", err)
			}
			return nil
		})
		t.Logf("destroy on C seen on %s after %s", p.name, d)
	}
	if _, err := ka.Encrypt(ctx, msg, nil); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("A's handle to the destroyed key: %v", err)
	}
}

// Two daemons rotating one key at once never make one version twice.
func TestClusterConcurrentRotations(t *testing.T) {
	_, nodes := cluster(t)
	a, b := nodes[0].client(t), nodes[1].client(t)
	if _, err := a.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "r"}); err != nil {
		t.Fatal(err)
	}
	seen := map[uint32]string{}
	for round := range 10 {
		var ks [2]*keywarden.Key
		for i, c := range []*keywarden.Client{a, b} {
			eventually(t, time.Second, "open", func() error {
				var err error
				ks[i], err = c.Open(ctx, "r")
				return err
			})
		}
		var wg sync.WaitGroup
		var infos [2]keywarden.KeyInfo
		var errs [2]error
		for i := range 2 {
			wg.Add(1)
			go func() { defer wg.Done(); infos[i], errs[i] = ks[i].Rotate(ctx) }()
		}
		wg.Wait()
		for i := range 2 {
			if errs[i] != nil {
				if !errors.Is(errs[i], keywarden.ErrUnavailable) && !errors.Is(errs[i], keywarden.ErrNotFound) {
					t.Fatalf("round %d: rotation refused with %v", round, errs[i])
				}
				continue
			}
			v := infos[i].Version
			if who, dup := seen[v]; dup {
				t.Fatalf("round %d: version %d made twice (%s and node %d)", round, v, who, i)
			}
			seen[v] = fmt.Sprintf("round %d node %d", round, i)
		}
		for _, k := range ks {
			k.Close(ctx)
		}
	}
	t.Logf("%d versions made in 10 rounds of two concurrent rotations", len(seen))
}

// Faults: one etcd member killed, the daemons go on; two killed (no
// quorum), writes fail with UNAVAILABLE and, past the bound, keys are
// refused with UNAVAILABLE; quorum back, everything acknowledged is there
// and keys are served again. A daemon started while etcd is unreachable
// stays sealed and says why.
func TestClusterFaults(t *testing.T) {
	ec, nodes := cluster(t)
	a := nodes[0].client(t)
	var made []string
	gen := func(name string) error {
		_, err := a.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: name})
		if err == nil {
			made = append(made, name)
		}
		return err
	}
	if err := gen("before"); err != nil {
		t.Fatal(err)
	}
	k, err := a.Open(ctx, "before")
	if err != nil {
		t.Fatal(err)
	}

	ec.Kill(2) // C's member
	eventually(t, 10*time.Second, "a creation with one member down", func() error { return gen("one-down") })
	if _, err := k.Encrypt(ctx, []byte("x"), nil); err != nil {
		t.Fatalf("a key in use with one member down: %v", err)
	}

	ec.Kill(1)
	t0 := time.Now()
	err = gen("no-quorum")
	if !errors.Is(err, keywarden.ErrUnavailable) {
		t.Fatalf("a creation without quorum: %v", err)
	}
	t.Logf("creation without quorum refused after %s: %v", time.Since(t0).Round(time.Millisecond), err)
	eventually(t, 5*time.Second, "keys refused without quorum, past the bound", func() error {
		_, err := k.Encrypt(ctx, []byte("x"), nil)
		if !errors.Is(err, keywarden.ErrUnavailable) {
			return fmt.Errorf("encrypt: %v", err)
		}
		return nil
	})
	st, err := a.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if cs := st.Seal.Cluster; cs == nil || cs.Refused == "" {
		t.Fatalf("status without quorum: %+v", cs)
	}

	ec.Restart(1)
	ec.Restart(2)
	ec.WaitHealthy(30 * time.Second)
	eventually(t, 10*time.Second, "keys served again", func() error {
		_, err := k.Encrypt(ctx, []byte("x"), nil)
		return err
	})
	for _, n := range nodes {
		c := n.client(t)
		for _, name := range made {
			eventually(t, 5*time.Second, "acknowledged key on "+n.name, func() error { _, err := c.Open(ctx, name); return err })
		}
	}

	// A daemon whose cluster does not answer stays sealed and says why.
	late := startNode(t, "D", []string{"http://127.0.0.1:1"}, "/keywarden/", false)
	eventually(t, 10*time.Second, "the reason logged", func() error {
		if !strings.Contains(late.log.String(), "the etcd cluster does not answer: the daemon stays sealed") {
			return errors.New("not logged")
		}
		return nil
	})
	if _, err := os.Stat(late.sock); err == nil {
		t.Fatal("a daemon without its cluster listens")
	}
}

// A store of one machine moves into the cluster and back with "store
// migrate", every record checked: its keys open on the cluster's daemons.
func TestClusterMigrate(t *testing.T) {
	enabled(t)
	ec := etcdtest.Start(t, 1)
	dir := t.TempDir()
	solo := launch(t, "solo", dir, true)
	pf := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pf, []byte(pass+"\n"), 0o600)
	if out, err := solo.cli(t, "", "init", "--passphrase-file", pf, "--time", "1", "--memory", "8192", "--threads", "1"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	c := solo.client(t)
	var cts [][]byte
	for i := range 5 {
		k, err := c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: fmt.Sprintf("k%d", i)})
		if err != nil {
			t.Fatal(err)
		}
		ct, err := k.Encrypt(ctx, []byte("moved"), nil)
		if err != nil {
			t.Fatal(err)
		}
		cts = append(cts, ct)
	}
	c.Close()
	solo.stop()
	eps := strings.Join(ec.Endpoints(), ",")
	out, err := solo.cli(t, "", "store", "migrate", "--from", "bolt:"+filepath.Join(dir, "state"), "--to", "etcd", "--etcd-endpoints", eps)
	if err != nil || !strings.Contains(out, "checked each one") {
		t.Fatalf("migrate into etcd: %v\n%s", err, out)
	}
	t.Log(strings.TrimSpace(out))
	out, err = solo.cli(t, "", "store", "migrate", "--from", "bolt:"+filepath.Join(dir, "state"), "--to", "etcd", "--etcd-endpoints", eps)
	if err == nil || !strings.Contains(out, "not empty") {
		t.Fatalf("a second migration into the same prefix: %v\n%s", err, out)
	}
	n := startNode(t, "A", ec.Endpoints(), "/keywarden/", true)
	if out, err := n.cli(t, "", "unseal", "--passphrase-file", pf); err != nil {
		t.Fatalf("unseal: %v\n%s", err, out)
	}
	ca := n.client(t)
	for i, ct := range cts {
		k, err := ca.Open(ctx, fmt.Sprintf("k%d", i))
		if err != nil {
			t.Fatal(err)
		}
		if pt, err := k.Decrypt(ctx, ct, nil); err != nil || string(pt) != "moved" {
			t.Fatalf("key %d on the cluster: %q %v", i, pt, err)
		}
	}
	n.stop()
	back := filepath.Join(t.TempDir(), "state")
	out, err = n.cli(t, "", "store", "migrate", "--from", "etcd", "--etcd-endpoints", eps, "--to", "bolt:"+back)
	if err != nil {
		t.Fatalf("migrate back: %v\n%s", err, out)
	}
}

// A backup taken on one daemon of the cluster restores the store: the
// restoring daemon is sealed and unseals on the restored store, whose
// header epoch that unseal raises above every one the store had before;
// the others refuse the store's keys once the master record is replaced,
// and unseal on it then, their high-water mark passed.
func TestClusterBackupRestore(t *testing.T) {
	_, nodes := cluster(t)
	a := nodes[0].client(t)
	if _, err := a.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kept"}); err != nil {
		t.Fatal(err)
	}
	bf := filepath.Join(t.TempDir(), "backup")
	if out, err := nodes[0].cli(t, "", "backup", bf); err != nil {
		t.Fatalf("backup: %v\n%s", err, out)
	}
	if _, err := a.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "after"}); err != nil {
		t.Fatal(err)
	}
	b := nodes[1].client(t)
	kb, err := func() (*keywarden.Key, error) {
		var k *keywarden.Key
		var err error
		eventually(t, time.Second, "open on B", func() error { k, err = b.Open(ctx, "kept"); return err })
		return k, err
	}()
	if err != nil {
		t.Fatal(err)
	}
	if out, err := nodes[0].cli(t, "", "restore", "--force", bf); err != nil {
		t.Fatalf("restore: %v\n%s", err, out)
	}
	eventually(t, 2*time.Second, "B refuses after the restore", func() error {
		_, err := kb.Encrypt(ctx, []byte("x"), nil)
		if !errors.Is(err, keywarden.ErrUnavailable) {
			return fmt.Errorf("encrypt on B: %v", err)
		}
		return nil
	})
	pf := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pf, []byte(pass+"\n"), 0o600)
	if out, err := nodes[0].cli(t, "", "unseal", "--passphrase-file", pf); err != nil {
		t.Fatalf("unseal A after the restore: %v\n%s", err, out)
	}
	if _, err := a.Open(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Open(ctx, "after"); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("a key made after the backup: %v", err)
	}
	nodes[1].cli(t, "", "seal")
	if out, err := nodes[1].cli(t, "", "unseal", "--passphrase-file", pf); err != nil {
		t.Fatalf("unseal B after A's: %v\n%s", err, out)
	}
	if _, err := b.Open(ctx, "kept"); err != nil {
		t.Fatal(err)
	}
	if _, err := b.Open(ctx, "after"); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("a key made after the backup, on B: %v", err)
	}
}

// A daemon killed (SIGKILL) while it writes loses nothing it acknowledged
// and tears nothing: the other daemons open every key it acknowledged, and
// a new daemon's unseal, which checks the whole store, passes.
func TestClusterDaemonKilledDuringWrites(t *testing.T) {
	ec, nodes := cluster(t)
	a := nodes[0].client(t)
	var acked []string
	// The kill lands while creations run, one of them in flight.
	go func() {
		time.Sleep(1500 * time.Millisecond)
		nodes[0].cmd.Process.Signal(syscall.SIGKILL)
	}()
	for i := 0; ; i++ {
		name := fmt.Sprintf("w%d", i)
		if _, err := a.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: name}); err != nil {
			break // the daemon is gone; this one may or may not be there
		}
		acked = append(acked, name)
	}
	<-nodes[0].done
	t.Logf("%d creations acknowledged before the kill", len(acked))
	b := nodes[1].client(t)
	for _, name := range acked {
		eventually(t, time.Second, "acknowledged key "+name+" on B", func() error { _, err := b.Open(ctx, name); return err })
	}
	d := startNode(t, "D", ec.Endpoints(), "/keywarden/", true)
	pf := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pf, []byte(pass+"\n"), 0o600)
	if out, err := d.cli(t, "", "unseal", "--passphrase-file", pf); err != nil {
		t.Fatalf("a new daemon's unseal (the full check): %v\n%s", err, out)
	}
	st, err := d.client(t).Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Keys < uint64(len(acked)) {
		t.Fatalf("the store holds %d keys after %d acknowledged", st.Keys, len(acked))
	}
}

// Package etcdtest starts etcd clusters of one or more members on the
// loopback interface for tests, from the etcd binary on PATH (Debian's
// etcd-server package). Tests skip when there is none, unless
// KEYWARDEN_ETCD_TESTS is set, where they fail: the test script installs
// the binary and sets it, so that the cluster tests cannot pass by being
// skipped.
package etcdtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"context"
	"go.etcd.io/etcd/client/pkg/v3/transport"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.uber.org/zap"
)

// Cluster is a running etcd cluster.
type Cluster struct {
	t       testing.TB
	bin     string
	members []*Member
	// With TLS: the CA that signed the members' and the client's
	// certificates, and the client's certificate and key (PEM files).
	CAFile, CertFile, KeyFile string
	serverCert, serverKey     string
}

// Options are StartWith's.
type Options struct {
	// TLS serves clients over TLS, with client certificates required.
	TLS bool
}

// Member is one etcd process.
type Member struct {
	Name      string
	ClientURL string
	peerURL   string
	dir       string
	args      []string
	cmd       *exec.Cmd
	exited    chan struct{}
	log       *os.File
}

// Binary returns the etcd binary's path, skipping (or, with
// KEYWARDEN_ETCD_TESTS set, failing) t if there is none.
func Binary(t testing.TB) string {
	t.Helper()
	bin, err := exec.LookPath("etcd")
	if err != nil {
		if os.Getenv("KEYWARDEN_ETCD_TESTS") != "" {
			t.Fatalf("KEYWARDEN_ETCD_TESTS is set and there is no etcd binary: %v", err)
		}
		t.Skip("no etcd binary (apt-get install etcd-server); set KEYWARDEN_ETCD_TESTS to make this a failure")
	}
	return bin
}

// freePorts returns n ports free on 127.0.0.1 now.
func freePorts(t testing.TB, n int) []int {
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

// Start starts a cluster of n members and waits until it has a leader.
// It is stopped when the test ends.
func Start(t testing.TB, n int) *Cluster { return StartWith(t, n, Options{}) }

// StartWith is Start with options.
func StartWith(t testing.TB, n int, opts Options) *Cluster {
	t.Helper()
	c := &Cluster{t: t, bin: Binary(t)}
	scheme := "http"
	if opts.TLS {
		scheme = "https"
		c.makeCerts()
	}
	ports := freePorts(t, 2*n)
	token := fmt.Sprintf("kw-%d-%d", os.Getpid(), time.Now().UnixNano())
	var initial []string
	for i := range n {
		m := &Member{
			Name:      fmt.Sprintf("m%d", i),
			ClientURL: fmt.Sprintf("%s://127.0.0.1:%d", scheme, ports[2*i]),
			peerURL:   fmt.Sprintf("http://127.0.0.1:%d", ports[2*i+1]),
			dir:       filepath.Join(t.TempDir(), "etcd"),
		}
		c.members = append(c.members, m)
		initial = append(initial, m.Name+"="+m.peerURL)
	}
	for _, m := range c.members {
		m.args = []string{
			"--name", m.Name, "--data-dir", m.dir,
			"--listen-client-urls", m.ClientURL, "--advertise-client-urls", m.ClientURL,
			"--listen-peer-urls", m.peerURL, "--initial-advertise-peer-urls", m.peerURL,
			"--initial-cluster", strings.Join(initial, ","), "--initial-cluster-state", "new",
			"--initial-cluster-token", token,
			// Short heartbeats: a lost leader is replaced within a second.
			"--heartbeat-interval", "50", "--election-timeout", "500",
			"--max-txn-ops", "1024", "--logger", "zap", "--log-level", "warn",
		}
		if opts.TLS {
			m.args = append(m.args, "--cert-file", c.serverCert, "--key-file", c.serverKey,
				"--trusted-ca-file", c.CAFile, "--client-cert-auth")
		}
		c.start(m)
	}
	t.Cleanup(c.Stop)
	c.WaitHealthy(30 * time.Second)
	return c
}

func (c *Cluster) start(m *Member) {
	c.t.Helper()
	var err error
	if m.log == nil {
		m.log, err = os.Create(filepath.Join(filepath.Dir(m.dir), "etcd.log"))
		if err != nil {
			c.t.Fatal(err)
		}
	}
	m.cmd = exec.Command(c.bin, m.args...)
	m.cmd.Stdout, m.cmd.Stderr = m.log, m.log
	m.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := m.cmd.Start(); err != nil {
		c.t.Fatal(err)
	}
	m.exited = make(chan struct{})
	go func(cmd *exec.Cmd, done chan struct{}) { cmd.Wait(); close(done) }(m.cmd, m.exited)
}

// Endpoints are the members' client URLs.
func (c *Cluster) Endpoints() []string {
	var e []string
	for _, m := range c.members {
		e = append(e, m.ClientURL)
	}
	return e
}

// Members are the cluster's members.
func (c *Cluster) Members() []*Member { return c.members }

// Kill kills member i with SIGKILL and waits for it to exit.
func (c *Cluster) Kill(i int) {
	m := c.members[i]
	if m.cmd == nil {
		return
	}
	m.cmd.Process.Signal(syscall.SIGKILL)
	<-m.exited
	m.cmd = nil
}

// Restart starts a killed member again, on its data.
func (c *Cluster) Restart(i int) {
	m := c.members[i]
	if m.cmd != nil {
		return
	}
	// Restarted on its data: the cluster flags are ignored then.
	c.start(m)
}

// Stop kills every member.
func (c *Cluster) Stop() {
	for i := range c.members {
		c.Kill(i)
	}
	for _, m := range c.members {
		if m.log != nil {
			m.log.Close()
		}
	}
}

// WaitHealthy waits until a write through every running member succeeds.
func (c *Cluster) WaitHealthy(d time.Duration) {
	c.t.Helper()
	deadline := time.Now().Add(d)
	for _, m := range c.members {
		if m.cmd == nil {
			continue
		}
		cfg := clientv3.Config{Endpoints: []string{m.ClientURL}, Logger: zap.NewNop()}
		if c.CAFile != "" {
			tc, err := transport.TLSInfo{CertFile: c.CertFile, KeyFile: c.KeyFile, TrustedCAFile: c.CAFile}.ClientConfig()
			if err != nil {
				c.t.Fatal(err)
			}
			cfg.TLS = tc
		}
		cli, err := clientv3.New(cfg)
		if err != nil {
			c.t.Fatal(err)
		}
		for {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			_, err = cli.Put(ctx, "/etcdtest/health", m.Name)
			cancel()
			if err == nil {
				break
			}
			if time.Now().After(deadline) {
				cli.Close()
				log, _ := os.ReadFile(m.log.Name())
				c.t.Fatalf("etcd member %s not healthy after %s: %v\n%s", m.Name, d, err, log)
			}
			time.Sleep(50 * time.Millisecond)
		}
		cli.Close()
	}
}

// makeCerts makes a CA, a certificate for the members (127.0.0.1) and one
// for the client, in files of a temporary directory.
func (c *Cluster) makeCerts() {
	dir := c.t.TempDir()
	write := func(name string, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			c.t.Fatal(err)
		}
		return p
	}
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			c.t.Fatal(err)
		}
		return k
	}
	caKey := newKey()
	ca := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "etcdtest CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, ca, ca, &caKey.PublicKey, caKey)
	if err != nil {
		c.t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	c.CAFile = write("ca.pem", "CERTIFICATE", caDER)
	leaf := func(name string, serial int64, usage ...x509.ExtKeyUsage) (string, string) {
		k := newKey()
		tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), Subject: pkix.Name{CommonName: name},
			NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
			KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: usage,
			IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &k.PublicKey, caKey)
		if err != nil {
			c.t.Fatal(err)
		}
		kd, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			c.t.Fatal(err)
		}
		return write(name+".pem", "CERTIFICATE", der), write(name+"-key.pem", "PRIVATE KEY", kd)
	}
	// The members' certificate serves clients, and is etcd's own when its
	// gateway calls it.
	c.serverCert, c.serverKey = leaf("member", 2, x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth)
	c.CertFile, c.KeyFile = leaf("client", 3, x509.ExtKeyUsageClientAuth)
}

// CPUTime is the processor time (user and system) the running members
// have used so far, from /proc (for measurements; 0 where it cannot be
// read).
func (c *Cluster) CPUTime() time.Duration {
	var d time.Duration
	for _, m := range c.members {
		if m.cmd == nil || m.cmd.Process == nil {
			continue
		}
		d += ProcessCPU(m.cmd.Process.Pid)
	}
	return d
}

// ProcessCPU is the processor time (user and system) process pid has
// used so far, from /proc/pid/stat (0 if it cannot be read).
func ProcessCPU(pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	// The fields after the command's name, which ends with the last ')':
	// utime and stime are the 12th and 13th, in clock ticks (100 a second
	// on Linux).
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0
	}
	var ticks int64
	for _, v := range f[11:13] {
		var n int64
		if _, err := fmt.Sscan(v, &n); err != nil {
			return 0
		}
		ticks += n
	}
	return time.Duration(ticks) * (time.Second / 100)
}

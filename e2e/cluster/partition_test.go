package cluster

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/etcdtest"
)

// proxy is a TCP proxy between one daemon and one etcd member that the
// test can cut (every connection stops carrying bytes, as on a network
// that drops packets, and new ones are accepted and carry nothing) and
// heal (the connections made while cut are closed, so the client dials
// again, and new ones carry bytes again).
type proxy struct {
	ln     net.Listener
	target string

	mu    sync.Mutex
	cut   bool
	conns map[net.Conn]struct{} // both ends of every open connection
	held  []net.Conn            // accepted while cut
}

func newProxy(t *testing.T, target string) *proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &proxy{ln: ln, target: target, conns: map[net.Conn]struct{}{}}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.closeAll() })
	return p
}

// URL is the proxy's client URL.
func (p *proxy) URL() string { return "http://" + p.ln.Addr().String() }

func (p *proxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		if p.cut {
			p.held = append(p.held, c)
			p.mu.Unlock()
			go io.Copy(io.Discard, c) // read and drop
			continue
		}
		p.mu.Unlock()
		go p.forward(c)
	}
}

func (p *proxy) forward(c net.Conn) {
	s, err := net.Dial("tcp", p.target)
	if err != nil {
		c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[s] = struct{}{}, struct{}{}
	p.mu.Unlock()
	pump := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				p.mu.Lock()
				cut := p.cut
				p.mu.Unlock()
				if !cut { // cut: the bytes are lost
					if _, err := dst.Write(buf[:n]); err != nil {
						break
					}
				}
			}
			if err != nil {
				break
			}
		}
		c.Close()
		s.Close()
		p.mu.Lock()
		delete(p.conns, c)
		delete(p.conns, s)
		p.mu.Unlock()
	}
	go pump(s, c)
	go pump(c, s)
}

// Cut stops every byte between the daemon and the member.
func (p *proxy) Cut() {
	p.mu.Lock()
	p.cut = true
	p.mu.Unlock()
}

// Heal lets bytes through again. The connections that lost bytes are
// closed (their streams cannot go on), as a client's keepalive would
// find them dead.
func (p *proxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
	p.closeAll()
}

func (p *proxy) closeAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for c := range p.conns {
		c.Close()
	}
	for _, c := range p.held {
		c.Close()
	}
	p.held = nil
}

// A daemon cut off from etcd (by proxies between it and every member,
// which drop every byte) refuses its keys with UNAVAILABLE once its watch
// has not been confirmed for longer than the staleness bound, and refuses
// writes; the other daemons go on creating and rotating keys meanwhile.
// Healed, it catches up: it opens every key the others made, encrypts
// under the version rotated elsewhere, and nothing it acknowledged before
// the cut is lost.
func TestClusterPartitionedDaemon(t *testing.T) {
	enabled(t)
	ec := etcdtest.Start(t, 3)
	eps := ec.Endpoints()
	var proxies []*proxy
	var viaProxy []string
	for _, ep := range eps {
		p := newProxy(t, ep[len("http://"):])
		proxies = append(proxies, p)
		viaProxy = append(viaProxy, p.URL())
	}
	a := startNode(t, "A", eps, "/keywarden/", true)
	b := startNode(t, "B", append(eps[1:], eps[0]), "/keywarden/", true)
	c := startNode(t, "C", viaProxy, "/keywarden/", true, "--etcd-stale-bound", "1s")
	pf := filepath.Join(t.TempDir(), "pass")
	os.WriteFile(pf, []byte(pass+"\n"), 0o600)
	if out, err := a.cli(t, "", "init", "--passphrase-file", pf, "--time", "1", "--memory", "8192", "--threads", "1"); err != nil {
		t.Fatalf("init: %v\n%s", err, out)
	}
	for _, n := range []*node{b, c} {
		if out, err := n.cli(t, "", "unseal", "--passphrase-file", pf); err != nil {
			t.Fatalf("unseal %s: %v\n%s", n.name, err, out)
		}
	}
	ca, cb, cc := a.client(t), b.client(t), c.client(t)

	// Before the cut: a key made on C, and one made on A in use on C.
	if _, err := cc.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "made-on-c"}); err != nil {
		t.Fatal(err)
	}
	if _, err := ca.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "p"}); err != nil {
		t.Fatal(err)
	}
	var kc *keywarden.Key
	eventually(t, 2*time.Second, "C opens A's key", func() error {
		var err error
		kc, err = cc.Open(ctx, "p")
		return err
	})
	msg := []byte("encrypted on C before the cut")
	ctBefore, err := kc.Encrypt(ctx, msg, nil)
	if err != nil {
		t.Fatal(err)
	}

	for _, p := range proxies {
		p.Cut()
	}
	t0 := time.Now()
	d := eventually(t, 10*time.Second, "C refuses its keys with UNAVAILABLE", func() error {
		_, err := kc.Encrypt(ctx, msg, nil)
		if !errors.Is(err, keywarden.ErrUnavailable) {
			return fmt.Errorf("encrypt on C: %v", err)
		}
		return nil
	})
	t.Logf("C refused its key %s after the cut (bound 1s)", d.Round(time.Millisecond))
	if _, err := cc.Open(ctx, "made-on-c"); !errors.Is(err, keywarden.ErrUnavailable) {
		t.Fatalf("open on C while cut off: %v, want UNAVAILABLE", err)
	}
	if _, err := cc.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "while-cut"}); !errors.Is(err, keywarden.ErrUnavailable) {
		t.Fatalf("create on C while cut off: %v, want UNAVAILABLE", err)
	}
	if st, err := cc.Status(ctx); err != nil {
		t.Fatal(err)
	} else if cs := st.Seal.Cluster; cs == nil || cs.Refused == "" {
		t.Fatalf("C's status while cut off says nothing is refused: %+v", cs)
	}

	// Meanwhile A and B go on: keys made, p rotated.
	var made []string
	for i := range 5 {
		name := fmt.Sprintf("during-%d", i)
		cl := ca
		if i%2 == 1 {
			cl = cb
		}
		if _, err := cl.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: name}); err != nil {
			t.Fatalf("create on A/B while C is cut off: %v", err)
		}
		made = append(made, name)
	}
	kb, err := cb.Open(ctx, "p")
	if err != nil {
		t.Fatal(err)
	}
	if info, err := kb.Rotate(ctx); err != nil || info.Version != 2 {
		t.Fatalf("rotate on B while C is cut off: %v %v", info.Version, err)
	}
	t.Logf("A and B wrote for %s while C was cut off", time.Since(t0).Round(time.Millisecond))

	for _, p := range proxies {
		p.Heal()
	}
	d = eventually(t, 20*time.Second, "C serves again and encrypts under the version rotated on B", func() error {
		k, err := cc.Open(ctx, "p")
		if err != nil {
			return err
		}
		ct, err := k.Encrypt(ctx, msg, nil)
		if err != nil {
			return err
		}
		if ct[6] != 2 {
			return fmt.Errorf("version %d", ct[6])
		}
		pt, err := k.Decrypt(ctx, ctBefore, nil)
		if err != nil || !bytes.Equal(pt, msg) {
			return fmt.Errorf("the ciphertext made before the cut: %q %v", pt, err)
		}
		return nil
	})
	t.Logf("C caught up %s after the heal", d.Round(time.Millisecond))
	for _, name := range append(made, "made-on-c") {
		if _, err := cc.Open(ctx, name); err != nil {
			t.Fatalf("C after the heal: %s: %v", name, err)
		}
		if _, err := ca.Open(ctx, name); err != nil {
			t.Fatalf("A after the heal: %s: %v", name, err)
		}
	}
	if _, err := cc.Open(ctx, "while-cut"); !errors.Is(err, keywarden.ErrNotFound) {
		t.Fatalf("the creation refused while cut off: %v, want NOT_FOUND", err)
	}
	// C writes again, and A sees it.
	if _, err := cc.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "after-heal"}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 2*time.Second, "A opens C's new key", func() error { _, err := ca.Open(ctx, "after-heal"); return err })
}

package transit

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/asn1"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/keywarden/keywarden/internal/server"
)

// Transit over TCP is served only with TLS 1.3 and client certificates
// (mutual TLS): there is no plaintext HTTP on TCP, and no TCP client
// without a certificate. A client certificate's identity is mapped to a
// principal, a uid the client acts as (docs/transit.md, "Mutual TLS"):
// the core's identities are uids, so the keys of a principal are that
// uid's keys, its ACL entries name that uid, and its audit records carry
// the uid with the certificate's identity (audit.Caller.Principal).

// Principal is a client certificate's identity mapped to the uid (and
// gid) the client acts as.
type Principal struct {
	// Name is the certificate's identity: "uri:" a URI SAN (such as a
	// SPIFFE ID), "dns:" a DNS SAN, "email:" an email SAN, or "cn:" the
	// subject's common name.
	Name     string
	UID, GID uint32
}

// overflowID is the kernel's default overflow uid and gid, and noID the
// id that names none: a principal acts as neither (ParsePrincipals).
const (
	overflowID = 65534
	noID       = 1<<32 - 1
)

// Principals maps client certificates to principals. Replace swaps the
// mapping of a running listener (a configuration reload); each lookup
// reads the mapping in force, without a lock.
type Principals struct {
	byName atomic.Pointer[map[string]Principal]
}

// Replace makes next's mapping the one p answers with. A TLS handshake
// after Replace returns is checked against it, and so is every request on
// a connection open before (see ServeTLS).
func (p *Principals) Replace(next *Principals) {
	p.byName.Store(next.byName.Load())
}

// ParsePrincipals reads a mapping: one principal a line, as
//
//	uri:spiffe://example.org/billing  1500
//	dns:batch.example.org             1501:1501
//	cn:legacy client                  1502
//
// the certificate's identity, then the uid (and optionally :gid; default
// the uid) it acts as. Blank lines and lines starting with # are
// ignored. A certificate never acts as root: uid 0 and gid 0 are
// refused, and so are the kernel's overflow id (65534) and -1.
func ParsePrincipals(r io.Reader) (*Principals, error) {
	byName := map[string]Principal{}
	sc := bufio.NewScanner(r)
	n := 0
	for sc.Scan() {
		n++
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexAny(line, " \t")
		if i < 0 {
			return nil, fmt.Errorf("line %d: want an identity and a uid", n)
		}
		name, ids := strings.TrimSpace(line[:i]), line[i+1:]
		kind, _, _ := strings.Cut(name, ":")
		switch kind {
		case "uri", "dns", "email", "cn":
		default:
			return nil, fmt.Errorf("line %d: %q: an identity starts with uri:, dns:, email: or cn:", n, name)
		}
		us, gs, hasG := strings.Cut(ids, ":")
		uid, err := strconv.ParseUint(us, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("line %d: invalid uid %q", n, us)
		}
		gid := uid
		if hasG {
			if gid, err = strconv.ParseUint(gs, 10, 32); err != nil {
				return nil, fmt.Errorf("line %d: invalid gid %q", n, gs)
			}
		}
		if uid == 0 {
			return nil, fmt.Errorf("line %d: %s: a certificate never acts as root (uid 0)", n, name)
		}
		if gid == 0 {
			// Keys shared with the root group are not for certificates
			// either.
			return nil, fmt.Errorf("line %d: %s: a certificate never acts with root's group (gid 0)", n, name)
		}
		if uid == overflowID || gid == overflowID || uid == noID || gid == noID {
			// The kernel names every process whose uid it cannot map (in a
			// user namespace) by the overflow uid: a certificate acting as
			// it would share their keys. -1 is no uid at all.
			return nil, fmt.Errorf("line %d: %s: uid and gid %d (the kernel's overflow id) and %d (none) are not for certificates", n, name, overflowID, noID)
		}
		if _, dup := byName[name]; dup {
			return nil, fmt.Errorf("line %d: %s is mapped twice", n, name)
		}
		byName[name] = Principal{Name: name, UID: uint32(uid), GID: uint32(gid)}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(byName) == 0 {
		return nil, errors.New("no principal")
	}
	p := &Principals{}
	p.byName.Store(&byName)
	return p, nil
}

// All returns the principals of the mapping, by name.
func (p *Principals) All() []Principal {
	byName := *p.byName.Load()
	out := make([]Principal, 0, len(byName))
	for _, pr := range byName {
		out = append(out, pr)
	}
	slices.SortFunc(out, func(a, b Principal) int { return strings.Compare(a.Name, b.Name) })
	return out
}

// Lookup returns the principal of a verified client certificate: the
// first of its URI, DNS and email SANs that the mapping names, or, for a
// certificate with no subject alternative name at all, its subject's
// common name. A CA vouches for the SANs it certifies, but may copy the
// subject from the request: a certificate for an unmapped name never
// acts as whichever principal its common name names. A certificate whose
// names map to different uids or gids is refused: which one it acts as
// would depend on the order of its names.
func (p *Principals) Lookup(cert *x509.Certificate) (Principal, bool) {
	var names []string
	for _, u := range cert.URIs {
		names = append(names, "uri:"+u.String())
	}
	for _, d := range cert.DNSNames {
		names = append(names, "dns:"+d)
	}
	for _, e := range cert.EmailAddresses {
		names = append(names, "email:"+e)
	}
	hasSAN := len(names) > 0 || len(cert.IPAddresses) > 0
	for _, e := range cert.Extensions {
		hasSAN = hasSAN || e.Id.Equal(oidSubjectAltName) // a kind of name Go does not parse (otherName)
	}
	if cn := cert.Subject.CommonName; cn != "" && !hasSAN {
		names = append(names, "cn:"+cn)
	}
	byName := *p.byName.Load()
	var found Principal
	ok := false
	for _, n := range names {
		pr, in := byName[n]
		switch {
		case !in:
		case !ok:
			found, ok = pr, true
		case pr.UID != found.UID || pr.GID != found.GID:
			return Principal{}, false
		}
	}
	return found, ok
}

// oidSubjectAltName is the subject alternative name extension.
var oidSubjectAltName = asn1.ObjectIdentifier{2, 5, 29, 17}

// TLSConfig is what ServeTLS needs: the server's certificate, the CAs
// that sign client certificates, and the mapping of client certificates
// to principals.
type TLSConfig struct {
	Certificate tls.Certificate
	ClientCAs   *x509.CertPool
	Principals  *Principals
}

// errUnmapped refuses a client certificate the mapping does not name.
var errUnmapped = errors.New("transit: the client certificate maps to no principal")

// errRemapped refuses a request on a connection whose certificate the
// mapping, replaced since the connection's session was opened, maps to
// another principal.
var errRemapped = errors.New("transit: the client certificate maps to another principal than its session's")

// ServeTLS accepts TCP connections on l and serves HTTP/1.1 and HTTP/2
// over TLS 1.3 on each, to clients whose certificate a client CA signed
// and the mapping names; any other is refused during the handshake. It
// closes l. Each connection is one core session, opened at its first
// request with the identity of its certificate's principal.
//
// The mapping may be replaced while l is served (Principals.Replace):
// handshakes after it are checked against the new mapping, and so is
// every request on a connection open before, which goes on only while
// its certificate maps to the same principal, uid and gid as its session;
// otherwise the request is refused and the connection closed (HTTP/1.1),
// and the client must connect again.
func (f *Front) ServeTLS(l net.Listener, tc TLSConfig) error {
	if tc.ClientCAs == nil || tc.Principals == nil {
		l.Close()
		return errors.New("transit: TLS needs client CAs and principals")
	}
	cfg := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{tc.Certificate},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    tc.ClientCAs,
		NextProtos:   []string{"h2", "http/1.1"},
		// The chain is verified first (a CA's signature, validity); then
		// the leaf must name a principal.
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errUnmapped
			}
			if _, ok := tc.Principals.Lookup(cs.PeerCertificates[0]); !ok {
				// A CA vouches for the certificate: the refusal is an audit
				// event, at most one per interval (a peer may repeat it).
				if ok, held := f.certLog.Allow(); ok {
					msg := fmt.Sprintf("TLS client refused at the handshake: its certificate (subject %q) maps to no principal; %d more refused since the last record",
						cs.PeerCertificates[0].Subject.String(), held)
					f.log.Info(msg)
					if err := f.cfg.Server.RecordEvent("transit-connection", "PERMISSION_DENIED", msg); err != nil {
						f.log.Error("audit log: cannot record a refused TLS client", "err", err)
					}
				}
				return errUnmapped
			}
			return nil
		},
	}
	hs := f.newHTTPServer()
	hs.TLSConfig = cfg
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetHTTP2(true)
	hs.Protocols = &p
	// The streams of one connection share its session's requests in
	// flight: no more are taken at once, each holding its request.
	hs.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: f.cfg.Server.Limits().MaxInFlight, WriteByteTimeout: writeTimeout}
	hs.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
		h := &tlsHolder{}
		f.tlsConns.Store(c, h)
		return context.WithValue(ctx, tlsKey{}, h)
	}
	hs.ConnState = func(c net.Conn, st http.ConnState) {
		if st != http.StateClosed && st != http.StateHijacked {
			return
		}
		if h, ok := f.tlsConns.LoadAndDelete(c); ok {
			h.(*tlsHolder).close()
		}
	}
	hs.Handler = http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h, _ := r.Context().Value(tlsKey{}).(*tlsHolder)
		if h == nil || r.TLS == nil || len(r.TLS.PeerCertificates) == 0 {
			writeError(w, http.StatusForbidden, "permission denied")
			return
		}
		pr, ok := tc.Principals.Lookup(r.TLS.PeerCertificates[0])
		if !ok {
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusForbidden, "permission denied")
			return
		}
		cc, err := h.get(f, pr)
		if errors.Is(err, errRemapped) {
			// The mapping was replaced since this connection opened its
			// session: it may not go on as the principal it was.
			if ok, held := f.remapLog.Allow(); ok {
				f.log.Info("TLS client refused: its certificate now maps to another principal; it must connect again", "principal", pr.Name, "uid", pr.UID, "refusals_not_logged", held)
			}
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusForbidden, "permission denied")
			return
		}
		if err != nil {
			if ok, held := f.coreLog.Allow(); ok {
				f.log.Info("TLS client refused by the core", "principal", pr.Name, "uid", pr.UID, "err", err, "refusals_not_logged", held)
			}
			writeError(w, http.StatusTooManyRequests, "the daemon refused the connection")
			return
		}
		f.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), connKey{}, cc)))
	})
	f.mu.Lock()
	if f.closed {
		f.mu.Unlock()
		l.Close()
		return ErrClosed
	}
	f.servers[hs] = struct{}{}
	f.mu.Unlock()
	// Peers need no certificate to open connections, and each holds a
	// descriptor until its handshake ends: no more are open at once than
	// the daemon takes connections (the others wait in the kernel's
	// queue), so that peers on the network cannot take the descriptors the
	// daemon's own sockets and store need.
	// One address holds at most MaxConnsPerAddr of them, so that one peer
	// cannot keep all the others waiting.
	ll := &limitListener{Listener: l, slots: make(chan struct{}, f.cfg.Server.Limits().MaxConnections),
		perAddr: f.cfg.MaxConnsPerAddr, byAddr: map[netip.Addr]int{}, refuse: f.refuseAddr}
	err := hs.Serve(tls.NewListener(ll, cfg))
	f.mu.Lock()
	closed := f.closed
	delete(f.servers, hs)
	f.mu.Unlock()
	if closed || errors.Is(err, http.ErrServerClosed) {
		return ErrClosed
	}
	return err
}

// limitListener accepts at most cap(slots) connections open at once, and
// at most perAddr of them from one network address.
type limitListener struct {
	net.Listener
	slots   chan struct{}
	perAddr int
	// refuse is told of a connection closed for its address's limit.
	refuse func(addr netip.Addr)

	// mu guards byAddr, the connections open by address.
	mu     sync.Mutex
	byAddr map[netip.Addr]int
}

func (l *limitListener) Accept() (net.Conn, error) {
	for {
		l.slots <- struct{}{}
		c, err := l.Listener.Accept()
		if err != nil {
			<-l.slots
			return nil, err
		}
		addr := remoteAddr(c)
		l.mu.Lock()
		over := l.byAddr[addr] >= l.perAddr
		if !over {
			l.byAddr[addr]++
		}
		l.mu.Unlock()
		if over {
			c.Close()
			<-l.slots
			if l.refuse != nil {
				l.refuse(addr)
			}
			continue
		}
		return &limitConn{Conn: c, release: sync.OnceFunc(func() {
			l.mu.Lock()
			if l.byAddr[addr]--; l.byAddr[addr] <= 0 {
				delete(l.byAddr, addr)
			}
			l.mu.Unlock()
			<-l.slots
		})}, nil
	}
}

// remoteAddr is a TCP connection's peer address as the per-address cap
// counts it: an IPv4 address (unmapped from IPv6), or the /64 prefix of
// an IPv6 one, since one host may use any address of its /64; the zero
// Addr for another kind of connection.
func remoteAddr(c net.Conn) netip.Addr {
	ta, ok := c.RemoteAddr().(*net.TCPAddr)
	if !ok {
		return netip.Addr{}
	}
	a := ta.AddrPort().Addr().Unmap()
	if a.Is6() {
		if p, err := a.Prefix(64); err == nil {
			return p.Addr()
		}
	}
	return a
}

// refuseAddr records TCP connections closed for their address's limit:
// one audit event and one log line per interval, counting those since the
// last (a peer may connect as often as it likes).
func (f *Front) refuseAddr(addr netip.Addr) {
	ok, held := f.addrLog.Allow()
	if !ok {
		return
	}
	msg := fmt.Sprintf("TCP connection from %s refused: it holds %d, the most one address may (--http-max-conns-per-addr); %d more refused since the last record",
		addr, f.cfg.MaxConnsPerAddr, held)
	f.log.Info(msg)
	if err := f.cfg.Server.RecordEvent("transit-connection", "RESOURCE_EXHAUSTED", msg); err != nil {
		f.log.Error("audit log: cannot record a refused TCP connection", "err", err)
	}
}

// limitConn frees its slot when closed.
type limitConn struct {
	net.Conn
	release func()
}

func (c *limitConn) Close() error {
	err := c.Conn.Close()
	c.release()
	return err
}

type tlsKey struct{}

// tlsHolder is the core session of a TLS connection, opened at its first
// request (after the handshake named its principal).
type tlsHolder struct {
	mu     sync.Mutex
	cc     *clientConn
	closed bool
}

func (h *tlsHolder) get(f *Front, pr Principal) (*clientConn, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil, errSession
	}
	if h.cc != nil {
		if id := h.cc.id; id.UID != pr.UID || id.GID != pr.GID || id.Principal != pr.Name {
			return nil, errRemapped
		}
		return h.cc, nil
	}
	id := server.Identity{UID: pr.UID, GID: pr.GID, Pidfd: -1, Principal: pr.Name}
	ss, err := f.cfg.Server.NewSession(f.ctx, FrontName, id)
	if err != nil {
		return nil, err
	}
	h.cc = newClientConn(f, ss, id)
	return h.cc, nil
}

func (h *tlsHolder) close() {
	h.mu.Lock()
	h.closed = true
	cc := h.cc
	h.mu.Unlock()
	if cc != nil {
		cc.close()
	}
}

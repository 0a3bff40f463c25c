package transit

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
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
// ignored. A certificate never acts as root: uid 0 is refused.
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

// Lookup returns the principal of a verified client certificate: the
// first of its URI, DNS and email SANs, then its subject's common name,
// that the mapping names.
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
	if cn := cert.Subject.CommonName; cn != "" {
		names = append(names, "cn:"+cn)
	}
	byName := *p.byName.Load()
	for _, n := range names {
		if pr, ok := byName[n]; ok {
			return pr, true
		}
	}
	return Principal{}, false
}

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
				f.log.Info("TLS client refused: its certificate maps to no principal", "subject", cs.PeerCertificates[0].Subject.String())
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
			f.log.Info("TLS client refused: its certificate now maps to another principal; it must connect again", "principal", pr.Name, "uid", pr.UID)
			w.Header().Set("Connection", "close")
			writeError(w, http.StatusForbidden, "permission denied")
			return
		}
		if err != nil {
			f.log.Info("TLS client refused by the core", "principal", pr.Name, "uid", pr.UID, "err", err)
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
	err := hs.Serve(tls.NewListener(l, cfg))
	f.mu.Lock()
	closed := f.closed
	delete(f.servers, hs)
	f.mu.Unlock()
	if closed || errors.Is(err, http.ErrServerClosed) {
		return ErrClosed
	}
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

package bench

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"time"

	"github.com/keywarden/keywarden"
)

// The operations and transports of RunTransit.
const (
	// TransitEncrypt is one transit encryption of 256 bytes a request;
	// TransitEncryptBatch a batch_input of 256 of them; TransitSign one
	// Ed25519 signature of 256 bytes.
	TransitEncrypt      = "encrypt"
	TransitEncryptBatch = "encrypt-batch256"
	TransitSign         = "sign-ed25519"

	// TransitUnix is the transit API on its Unix socket; TransitMTLS on
	// TCP with mutual TLS (127.0.0.1); TransitNative the same operation
	// through the daemon's own socket with the client library, the
	// baseline of the transport.
	TransitUnix   = "http-unix"
	TransitMTLS   = "https-mtls"
	TransitNative = "native"
)

// TransitConfig configures RunTransit. Zero values mean defaults.
type TransitConfig struct {
	// Clients are the numbers of concurrent clients, each with its own
	// connection; empty means 1 and 8.
	Clients []int
	// Duration of each measurement, after a short warm-up; 0 means one
	// second.
	Duration time.Duration
	// Runs repeats every measurement and reports medians; 0 means 3.
	Runs int
	// Dir is where the sockets and the audit log go; empty means the
	// temporary directory.
	Dir string
	// Executable and Env are as in Config.
	Executable string
	Env        []string
}

// TransitResult is one measurement of RunTransit: medians over the runs.
type TransitResult struct {
	Op        string `json:"op"`
	Transport string `json:"transport"`
	Clients   int    `json:"clients"`
	Runs      int    `json:"runs"`
	// OpsPerSec counts operations (each item of a batch), over all
	// clients; RequestsPerSec counts HTTP requests.
	OpsPerSec      float64   `json:"ops_per_sec"`
	RequestsPerSec float64   `json:"requests_per_sec"`
	RunsOpsPerSec  []float64 `json:"runs_ops_per_sec"`
	// P50us and P99us are the latency of one request, in microseconds.
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
}

// transitPayload is the plaintext and message size of RunTransit.
const transitPayload = 256

// transitBatch is the batch size of TransitEncryptBatch.
const transitBatch = 256

// RunTransit measures the transit HTTP front of a private development
// daemon (its audit log on, as a daemon runs by default): encryptions of
// 256 bytes one per request and 256 per request (batch_input), and
// Ed25519 signatures, over its Unix socket and over mutual TLS on
// 127.0.0.1, with each number of cfg.Clients concurrent clients, each on
// its own kept-alive connection; and the single operations through the
// daemon's own socket, as the baseline of what HTTP and JSON cost. OpenBao
// is not measured: it is not among the packages this project installs
// (docs/performance.md quotes figures measured elsewhere, and says so).
func RunTransit(ctx context.Context, cfg TransitConfig, progress io.Writer) (_ []TransitResult, err error) {
	if len(cfg.Clients) == 0 {
		cfg.Clients = []int{1, 8}
	}
	if cfg.Duration <= 0 {
		cfg.Duration = time.Second
	}
	if cfg.Runs <= 0 {
		cfg.Runs = 3
	}
	if cfg.Dir == "" {
		cfg.Dir = os.TempDir()
	}
	say := sayer(progress)
	dir, err := os.MkdirTemp(cfg.Dir, "keywarden-bench-transit-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	pki, err := writeBenchPKI(dir)
	if err != nil {
		return nil, err
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	addr := l.Addr().String()
	l.Close()
	sock := filepath.Join(dir, "transit.sock")
	say("starting a private daemon with the transit API on a Unix socket and on %s", addr)
	d, err := startServe(ctx, serveSpec{executable: cfg.Executable, env: cfg.Env,
		args: []string{"--dev", "--audit-log", filepath.Join(dir, "audit.log"), "--http", "unix:" + sock, "--http", "tcp:" + addr,
			"--http-tls-cert", pki.serverCert, "--http-tls-key", pki.serverKey, "--http-client-ca", pki.ca, "--http-principals", pki.principals},
		ready: func(context.Context, *keywarden.Client) error {
			c, err := net.Dial("tcp", addr)
			if err == nil {
				c.Close()
			}
			return err
		}})
	if err != nil {
		return nil, err
	}
	defer func() {
		if serr := d.stop(); err == nil && serr != nil {
			err = serr
		}
	}()

	pt := base64.StdEncoding.EncodeToString(message(transitPayload))
	single := []byte(`{"plaintext":"` + pt + `"}`)
	var bb bytes.Buffer
	bb.WriteString(`{"batch_input":[`)
	for i := range transitBatch {
		if i > 0 {
			bb.WriteByte(',')
		}
		bb.WriteString(`{"plaintext":"` + pt + `"}`)
	}
	bb.WriteString(`]}`)
	batch := bb.Bytes()
	signBody := []byte(`{"input":"` + pt + `"}`)

	newHTTP := func(transport string) (*http.Client, string, error) {
		if transport == TransitUnix {
			return &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1, DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
				var dl net.Dialer
				return dl.DialContext(ctx, "unix", sock)
			}}}, "http://keywarden/v1/transit/", nil
		}
		tc, err := pki.clientTLS()
		if err != nil {
			return nil, "", err
		}
		return &http.Client{Transport: &http.Transport{MaxConnsPerHost: 1, TLSClientConfig: tc, ForceAttemptHTTP2: true}}, "https://" + addr + "/v1/transit/", nil
	}
	post := func(ctx context.Context, c *http.Client, u string, body []byte, want string) error {
		req, err := http.NewRequestWithContext(ctx, "POST", u, bytes.NewReader(body))
		if err != nil {
			return err
		}
		resp, err := c.Do(req)
		if err != nil {
			return err
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			return err
		}
		if resp.StatusCode != 200 || !bytes.Contains(b, []byte(want)) {
			return fmt.Errorf("%s: %d %.200s", u, resp.StatusCode, b)
		}
		return nil
	}
	// The keys, made by each transport's principal: the local uid on the
	// Unix socket, the certificate's on TCP.
	for _, transport := range []string{TransitUnix, TransitMTLS} {
		c, base, err := newHTTP(transport)
		if err != nil {
			return nil, err
		}
		for _, k := range []string{`keys/bench-aes`, `keys/bench-ed25519`} {
			typ := "aes256-gcm96"
			if strings.HasSuffix(k, "ed25519") {
				typ = "ed25519"
			}
			if err := post(ctx, c, base+k, []byte(`{"type":"`+typ+`"}`), `"latest_version"`); err != nil {
				return nil, err
			}
		}
		c.CloseIdleConnections()
	}
	// (The native clients, of this process's uid, use the keys made on
	// the Unix socket.)

	type row struct {
		op, transport string
	}
	var rows []row
	for _, op := range []string{TransitEncrypt, TransitEncryptBatch, TransitSign} {
		for _, t := range []string{TransitNative, TransitUnix, TransitMTLS} {
			if t == TransitNative && op == TransitEncryptBatch {
				continue
			}
			rows = append(rows, row{op, t})
		}
	}
	clientsFor := func(r row, n int) ([]func(context.Context) error, func(), error) {
		var closers []func()
		done := func() {
			for _, c := range closers {
				c()
			}
		}
		ones := make([]func(context.Context) error, n)
		for i := range ones {
			if r.transport == TransitNative {
				c, err := keywarden.Dial(ctx, d.socket)
				if err != nil {
					done()
					return nil, nil, err
				}
				closers = append(closers, func() { c.Close() })
				name := "bench-aes"
				if r.op == TransitSign {
					name = "bench-ed25519"
				}
				k, err := c.Open(ctx, name)
				if err != nil {
					done()
					return nil, nil, err
				}
				msg := message(transitPayload)
				if r.op == TransitSign {
					ones[i] = func(ctx context.Context) error { _, err := k.SignMessageContext(ctx, msg, nil); return err }
				} else {
					ones[i] = func(ctx context.Context) error { _, err := k.Encrypt(ctx, msg, nil); return err }
				}
				continue
			}
			c, base, err := newHTTP(r.transport)
			if err != nil {
				done()
				return nil, nil, err
			}
			closers = append(closers, c.CloseIdleConnections)
			u, body, want := base+"encrypt/bench-aes", single, `"vault:v`
			switch r.op {
			case TransitEncryptBatch:
				body = batch
			case TransitSign:
				u, body = base+"sign/bench-ed25519", signBody
			}
			if err := post(ctx, c, u, body, want); err != nil {
				done()
				return nil, nil, err
			}
			ones[i] = func(ctx context.Context) error { return post(ctx, c, u, body, want) }
		}
		return ones, done, nil
	}

	runs := map[[3]any][]float64{}
	lats := map[[3]any][]int64{}
	for run := range cfg.Runs {
		order := slices.Clone(rows)
		if run%2 == 1 {
			slices.Reverse(order)
		}
		for _, n := range cfg.Clients {
			for _, r := range order {
				say("run %d of %d: %s over %s, %d clients", run+1, cfg.Runs, r.op, r.transport, n)
				ones, done, err := clientsFor(r, n)
				if err != nil {
					return nil, fmt.Errorf("%s over %s: %w", r.op, r.transport, err)
				}
				runtime.GC()
				_, err = measureClients(ctx, ones, min(maxWarmup, cfg.Duration))
				var m measurement
				if err == nil {
					m, err = measureClients(ctx, ones, cfg.Duration)
				}
				done()
				if err != nil {
					return nil, fmt.Errorf("%s over %s: %w", r.op, r.transport, err)
				}
				k := [3]any{r.op, r.transport, n}
				runs[k] = append(runs[k], float64(m.ops)/m.elapsed.Seconds())
				lats[k] = append(lats[k], m.lat...)
			}
		}
	}
	var out []TransitResult
	for _, r := range rows {
		for _, n := range cfg.Clients {
			k := [3]any{r.op, r.transport, n}
			lat := lats[k]
			slices.Sort(lat)
			reqs := median(slices.Clone(runs[k]))
			per := 1.0
			if r.op == TransitEncryptBatch {
				per = transitBatch
			}
			ops := make([]float64, len(runs[k]))
			for i, v := range runs[k] {
				ops[i] = v * per
			}
			out = append(out, TransitResult{Op: r.op, Transport: r.transport, Clients: n, Runs: cfg.Runs,
				OpsPerSec: reqs * per, RequestsPerSec: reqs, RunsOpsPerSec: ops,
				P50us: percentile(lat, 0.50, 1), P99us: percentile(lat, 0.99, 1)})
		}
	}
	return out, nil
}

// benchPKI are the files of RunTransit's mutual TLS: a CA, the daemon's
// certificate for 127.0.0.1, a client's, and the principals file that
// maps the client to this process's uid (or 65534 as root: a
// certificate never acts as root).
type benchPKI struct {
	ca, serverCert, serverKey, clientCert, clientKey, principals string
}

func writeBenchPKI(dir string) (*benchPKI, error) {
	p := &benchPKI{ca: filepath.Join(dir, "ca.pem"), serverCert: filepath.Join(dir, "server.pem"), serverKey: filepath.Join(dir, "server.key"),
		clientCert: filepath.Join(dir, "client.pem"), clientKey: filepath.Join(dir, "client.key"), principals: filepath.Join(dir, "principals")}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "keywarden bench CA"}, IsCA: true,
		BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	ca, _ := x509.ParseCertificate(caDER)
	write := func(path, typ string, der []byte) error {
		return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600)
	}
	if err := write(p.ca, "CERTIFICATE", caDER); err != nil {
		return nil, err
	}
	issue := func(tmpl *x509.Certificate, certPath, keyPath string, serial int64) error {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return err
		}
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(24*time.Hour)
		der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
		if err != nil {
			return err
		}
		kd, err := x509.MarshalPKCS8PrivateKey(k)
		if err != nil {
			return err
		}
		if err := write(certPath, "CERTIFICATE", der); err != nil {
			return err
		}
		return write(keyPath, "PRIVATE KEY", kd)
	}
	if err := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "keywarden"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}, p.serverCert, p.serverKey, 2); err != nil {
		return nil, err
	}
	u, _ := url.Parse("spiffe://bench.invalid/client")
	if err := issue(&x509.Certificate{Subject: pkix.Name{CommonName: "bench client"}, URIs: []*url.URL{u},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}}, p.clientCert, p.clientKey, 3); err != nil {
		return nil, err
	}
	// A uid of its own: never root, nor the daemon's (an administrator's),
	// which the daemon refuses for a certificate.
	uid := 4242
	if os.Getuid() == uid {
		uid = 4243
	}
	if err := os.WriteFile(p.principals, fmt.Appendf(nil, "uri:spiffe://bench.invalid/client %d\n", uid), 0o600); err != nil {
		return nil, err
	}
	return p, nil
}

func (p *benchPKI) clientTLS() (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(p.clientCert, p.clientKey)
	if err != nil {
		return nil, err
	}
	caPEM, err := os.ReadFile(p.ca)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, errors.New("bench: no CA")
	}
	return &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS13}, nil
}

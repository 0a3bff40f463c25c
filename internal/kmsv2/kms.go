package kmsv2

import (
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
	kmsapi "k8s.io/kms/apis/v2"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/unixsock"
	"github.com/keywarden/keywarden/internal/wire"
)

// FrontName is the name of the front in the audit log.
const FrontName = "kms-v2"

// maxQuotedKeyID is how much of a key_id a refusal quotes.
const maxQuotedKeyID = 96

// maxMessage bounds a gRPC message: the API server sends a data
// encryption key seed (32 bytes) and its annotations.
const maxMessage = 64 << 10

// Config configures a Plugin.
type Config struct {
	// Server is the core. Required.
	Server *server.Server
	// Key is the name of the AES-256-GCM key, owned by the API server's
	// uid, that encrypts. Required.
	Key string
	// Logger receives the front's logs; nil discards them.
	Logger *slog.Logger
	// WriteTimeout bounds each write to a connection (default
	// DefaultWriteTimeout): a client that stops reading loses the
	// connection, and its calls, session and buffers go with it.
	WriteTimeout time.Duration
}

// DefaultWriteTimeout is how long a write to a connection may wait for
// the client to read. kube-apiserver gives each call 3 s by default.
const DefaultWriteTimeout = 10 * time.Second

// Plugin serves the KMS v2 service.
type Plugin struct {
	kmsapi.UnimplementedKeyManagementServiceServer
	cfg Config
	log *slog.Logger
	gs  *grpc.Server
	// ctx ends at Close: the core's sessions opened for the front end.
	ctx    context.Context
	cancel context.CancelFunc
	// refusedLog lets a refused connection's log line through once per
	// interval: a uid over its connection limit may connect at will.
	refusedLog unixsock.RateLog
}

// New makes a Plugin.
func New(cfg Config) (*Plugin, error) {
	if cfg.Server == nil || cfg.Key == "" {
		return nil, errors.New("kmsv2: a server and a key name are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.WriteTimeout <= 0 {
		cfg.WriteTimeout = DefaultWriteTimeout
	}
	p := &Plugin{cfg: cfg, log: cfg.Logger.With("front", FrontName)}
	p.ctx, p.cancel = context.WithCancel(context.Background())
	// The calls of one connection are streams, each with its message held
	// while it runs: at most as many as its session's requests in flight.
	p.gs = grpc.NewServer(grpc.Creds(&peerCreds{p: p}), grpc.MaxRecvMsgSize(maxMessage),
		grpc.ConnectionTimeout(10*time.Second), grpc.MaxConcurrentStreams(uint32(cfg.Server.Limits().MaxInFlight)))
	kmsapi.RegisterKeyManagementServiceServer(p.gs, p)
	return p, nil
}

// Listen makes the Unix stream socket at path, with mode, replacing a
// stale socket there (a socket nobody listens on), never another file.
func Listen(path string, mode fs.FileMode) (*net.UnixListener, error) {
	return unixsock.Listen("kms socket", path, mode, unixsock.Options{UnlinkOnClose: true})
}

// Serve serves l until Close. It closes l.
func (p *Plugin) Serve(l net.Listener) error { return p.gs.Serve(l) }

// Close stops serving; the connections' sessions close.
func (p *Plugin) Close() {
	p.cancel()
	p.gs.Stop()
}

// --- the connection's identity ---------------------------------------------

// peerCreds are the transport credentials of a Unix socket: no
// encryption, the kernel's identity of the process that connected, read
// at the handshake, and the core session opened with it.
type peerCreds struct{ p *Plugin }

// conn is a connection with its core session, closed with it.
type conn struct {
	net.Conn
	cc           *client
	writeTimeout time.Duration
}

// Write fails once the client has read nothing for the write timeout;
// gRPC then closes the connection. Without it, a client that never reads
// would hold the connection, its session and the replies queued for it
// as long as it likes.
func (c *conn) Write(b []byte) (int, error) {
	c.Conn.SetWriteDeadline(time.Now().Add(c.writeTimeout))
	return c.Conn.Write(b)
}

func (c *conn) Close() error {
	c.cc.close()
	return c.Conn.Close()
}

// authInfo carries the connection's client to the handlers.
type authInfo struct {
	credentials.CommonAuthInfo
	cc *client
}

func (authInfo) AuthType() string { return "peercred" }

func (pc *peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return nil, nil, errors.New("kmsv2: not a Unix socket")
	}
	id, err := unixsock.PeerIdentity(uc)
	if err != nil {
		return nil, nil, fmt.Errorf("kmsv2: the kernel gave no credentials: %w", err)
	}
	ss, err := pc.p.cfg.Server.NewSession(pc.p.ctx, FrontName, id) // takes id.Pidfd
	if err != nil {
		if ok, held := pc.p.refusedLog.Allow(); ok {
			pc.p.log.Info("connection refused by the core", "uid", id.UID, "pid", id.PID, "err", err, "refusals_not_logged", held)
		}
		return nil, nil, err
	}
	cc := &client{p: pc.p, ss: ss, id: id}
	return &conn{Conn: c, cc: cc, writeTimeout: pc.p.cfg.WriteTimeout}, authInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}, cc: cc}, nil
}

func (pc *peerCreds) ClientHandshake(context.Context, string, net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("kmsv2: server credentials only")
}
func (pc *peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "peercred"}
}
func (pc *peerCreds) Clone() credentials.TransportCredentials { return &peerCreds{p: pc.p} }
func (pc *peerCreds) OverrideServerName(string) error         { return nil }

// --- one connection's client --------------------------------------------------

// client is one connection's core session, and the key open on it.
type client struct {
	p       *Plugin
	ss      *server.Session
	id      server.Identity
	nextReq atomic.Uint64
	once    sync.Once

	// opening is held while the key is opened (again): concurrent calls
	// that find no handle, or the same stale one, open one handle between
	// them, and none is left open unused on the session. Taken before mu.
	opening sync.Mutex
	// mu guards handle; never held across a request to the core.
	mu     sync.Mutex
	handle uint32
	keyID  []byte // the key's persistent id, once open
	open   bool
}

func (c *client) close() { c.once.Do(c.ss.Close) }

func clientOf(ctx context.Context) *client {
	pr, ok := peer.FromContext(ctx)
	if !ok {
		return nil
	}
	ai, ok := pr.AuthInfo.(authInfo)
	if !ok {
		return nil
	}
	return ai.cc
}

// do runs one operation; a request or operation refused is an error
// with its status.
func (c *client) do(ctx context.Context, op *wire.Op) (*wire.Result, error) {
	rep, err := c.ss.Do(ctx, c.id, &wire.Request{Version: wire.ProtocolVersion, Id: c.nextReq.Add(1), Ops: []*wire.Op{op}})
	if err != nil {
		return nil, status.Error(codes.Unavailable, "the connection's session is closed")
	}
	if rep.Status != wire.Status_STATUS_OK {
		return nil, statusError(rep.Status, rep.Message)
	}
	r := rep.Results[0]
	if r.Status != wire.Status_STATUS_OK {
		return r, statusError(r.Status, r.Message)
	}
	return r, nil
}

// statusError is the gRPC error of the core's status.
func statusError(st wire.Status, msg string) error {
	code := codes.Internal
	switch st {
	case wire.Status_STATUS_INVALID_ARGUMENT, wire.Status_STATUS_POLICY_VIOLATION:
		code = codes.InvalidArgument
	case wire.Status_STATUS_NOT_FOUND:
		code = codes.NotFound
	case wire.Status_STATUS_PERMISSION_DENIED:
		code = codes.PermissionDenied
	case wire.Status_STATUS_RESOURCE_EXHAUSTED:
		code = codes.ResourceExhausted
	case wire.Status_STATUS_UNAVAILABLE, wire.Status_STATUS_GENERATION_CHANGED:
		code = codes.Unavailable
	case wire.Status_STATUS_UNIMPLEMENTED:
		code = codes.Unimplemented
	}
	return status.Error(code, msg)
}

// key returns the handle of the configured key on the session, opened
// among the caller's own keys the first time, or again if stale is the
// handle in use (the core no longer knows it).
func (c *client) key(ctx context.Context, stale *uint32) (uint32, []byte, error) {
	c.mu.Lock()
	h, id, ok := c.handle, c.keyID, c.open
	c.mu.Unlock()
	if ok && (stale == nil || *stale != h) {
		return h, id, nil
	}
	c.opening.Lock()
	defer c.opening.Unlock()
	// Another call may have opened it meanwhile.
	c.mu.Lock()
	h, id, ok = c.handle, c.keyID, c.open
	c.mu.Unlock()
	if ok && (stale == nil || *stale != h) {
		return h, id, nil
	}
	if ok {
		c.mu.Lock()
		c.open = false
		c.mu.Unlock()
		c.do(ctx, &wire.Op{Op: &wire.Op_Close{Close: &wire.Close{Handle: h}}})
	}
	r, err := c.do(ctx, &wire.Op{Op: &wire.Op_Open{Open: &wire.Open{Key: &wire.Open_Name{Name: &wire.NameRef{Name: c.p.cfg.Key}}}}})
	if err != nil {
		return 0, nil, err
	}
	kr := r.GetKey()
	if kr.GetInfo().GetType() != wire.KeyType_KEY_TYPE_AES256_GCM {
		c.do(ctx, &wire.Op{Op: &wire.Op_Close{Close: &wire.Close{Handle: kr.GetHandle()}}})
		return 0, nil, status.Errorf(codes.FailedPrecondition, "key %q is not an AES-256-GCM key", c.p.cfg.Key)
	}
	c.mu.Lock()
	c.handle, c.keyID, c.open = kr.GetHandle(), kr.GetInfo().GetId(), true
	c.mu.Unlock()
	return kr.GetHandle(), kr.GetInfo().GetId(), nil
}

// withKey runs the operation mk makes for the key's handle; a handle the
// core no longer knows (the key was destroyed, maybe made again) is
// opened again once.
func (c *client) withKey(ctx context.Context, mk func(h uint32) *wire.Op) (*wire.Result, []byte, error) {
	h, id, err := c.key(ctx, nil)
	if err != nil {
		return nil, nil, err
	}
	r, err := c.do(ctx, mk(h))
	if r != nil && r.Status == wire.Status_STATUS_NOT_FOUND && (r.Message == "no such handle" || r.Message == "key destroyed") {
		if testHookStale != nil {
			testHookStale()
		}
		if h, id, err = c.key(ctx, &h); err != nil {
			return nil, nil, err
		}
		r, err = c.do(ctx, mk(h))
	}
	return r, id, err
}

// testHookStale, if set, runs when a call found its handle stale, before
// it opens the key again (tests make calls meet there).
var testHookStale func()

// keyIDOf is the KMS key_id of version v of the key with persistent id
// id: "keywarden:" id in hex ":v" version.
func keyIDOf(id []byte, v uint32) string {
	return "keywarden:" + hex.EncodeToString(id) + ":v" + strconv.FormatUint(uint64(v), 10)
}

// refuse records a request the front refuses itself, then returns its
// error; if it cannot be recorded, Unavailable.
func (c *client) refuse(ctx context.Context, op string, code codes.Code, reason string) error {
	if err := c.ss.Refuse(ctx, c.id, server.Refusal{Op: op, Request: c.nextReq.Add(1), Status: wire.Status_STATUS_INVALID_ARGUMENT, Reason: reason}); err != nil {
		return status.Error(codes.Unavailable, "the daemon cannot record this request")
	}
	return status.Error(code, reason)
}

// --- the service ---------------------------------------------------------------

// Status answers healthz "ok" only while the daemon is unsealed and the
// key opens, is an AES-256-GCM key and may encrypt; key_id names its
// newest version.
func (p *Plugin) Status(ctx context.Context, _ *kmsapi.StatusRequest) (*kmsapi.StatusResponse, error) {
	c := clientOf(ctx)
	if c == nil {
		return nil, status.Error(codes.Unauthenticated, "no identity")
	}
	resp := &kmsapi.StatusResponse{Version: "v2"}
	if p.cfg.Server.SealState().Sealed {
		resp.Healthz = "the daemon is sealed"
		return resp, nil
	}
	r, id, err := c.withKey(ctx, func(h uint32) *wire.Op { return &wire.Op{Op: &wire.Op_Info{Info: &wire.Info{Handle: h}}} })
	if err != nil {
		resp.Healthz = "key " + p.cfg.Key + ": " + status.Convert(err).Message()
		return resp, nil
	}
	info := r.GetInfo()
	if info.CallerUsage&uint32(wire.Usage_USAGE_ENCRYPT) == 0 || info.CallerUsage&uint32(wire.Usage_USAGE_DECRYPT) == 0 {
		resp.Healthz = "key " + p.cfg.Key + ": it may not encrypt and decrypt"
		return resp, nil
	}
	resp.Healthz = "ok"
	resp.KeyId = keyIDOf(id, info.Version)
	return resp, nil
}

// Encrypt encrypts the API server's data encryption key seed under the
// key's newest version.
func (p *Plugin) Encrypt(ctx context.Context, req *kmsapi.EncryptRequest) (*kmsapi.EncryptResponse, error) {
	c := clientOf(ctx)
	if c == nil {
		return nil, status.Error(codes.Unauthenticated, "no identity")
	}
	if len(req.Plaintext) == 0 {
		return nil, c.refuse(ctx, "encrypt", codes.InvalidArgument, "empty plaintext")
	}
	r, id, err := c.withKey(ctx, func(h uint32) *wire.Op {
		return &wire.Op{Op: &wire.Op_Encrypt{Encrypt: &wire.Encrypt{Handle: h, Plaintext: req.Plaintext}}}
	})
	if err != nil {
		return nil, err
	}
	return &kmsapi.EncryptResponse{Ciphertext: r.Data, KeyId: keyIDOf(id, r.KeyVersion)}, nil
}

// Decrypt decrypts under whichever version made the ciphertext (its
// header names it); key_id must name the key.
func (p *Plugin) Decrypt(ctx context.Context, req *kmsapi.DecryptRequest) (*kmsapi.DecryptResponse, error) {
	c := clientOf(ctx)
	if c == nil {
		return nil, status.Error(codes.Unauthenticated, "no identity")
	}
	if len(req.Ciphertext) == 0 {
		return nil, c.refuse(ctx, "decrypt", codes.InvalidArgument, "empty ciphertext")
	}
	_, id, err := c.key(ctx, nil)
	if err != nil {
		return nil, err
	}
	if want := "keywarden:" + hex.EncodeToString(id) + ":v"; req.KeyId != "" && !strings.HasPrefix(req.KeyId, want) {
		// The caller chooses key_id (up to a message's size): the reason,
		// recorded and sent back, quotes only its start.
		kid := req.KeyId
		if len(kid) > maxQuotedKeyID {
			kid = kid[:maxQuotedKeyID] + "..."
		}
		return nil, c.refuse(ctx, "decrypt", codes.InvalidArgument, fmt.Sprintf("key_id %q names another key than %s", kid, p.cfg.Key))
	}
	r, _, err := c.withKey(ctx, func(h uint32) *wire.Op {
		return &wire.Op{Op: &wire.Op_Decrypt{Decrypt: &wire.Decrypt{Handle: h, Ciphertext: req.Ciphertext}}}
	})
	if err != nil {
		return nil, err
	}
	return &kmsapi.DecryptResponse{Plaintext: r.Data}, nil
}

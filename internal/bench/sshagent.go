package bench

import (
	"bytes"
	"cmp"
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/crypto/ssh/agent"

	"github.com/keywarden/keywarden"
)

// The ways RunSSHAgent signs, in the order of its results.
const (
	// SSHInProcess is ed25519.Sign in the measuring process: the yardstick.
	SSHInProcess = "inprocess"
	// SSHNative is Key.SignMessageContext on the daemon's own socket.
	SSHNative = "native"
	// SSHAgentKeywarden is a sign request on the daemon's ssh-agent
	// socket (serve --ssh-agent).
	SSHAgentKeywarden = "keywarden-agent"
	// SSHAgentKeywardenAdded is the same with a key of its own that was
	// given to the daemon's ssh-agent socket as ssh-add gives one (an
	// ephemeral key of the agent's), as OpenSSH's agent's key is.
	SSHAgentKeywardenAdded = "keywarden-agent-added"
	// SSHAgentOpenSSH is a sign request on OpenSSH's ssh-agent.
	SSHAgentOpenSSH = "openssh-agent"
)

// SSHAgentConfig configures RunSSHAgent. Zero values mean defaults.
type SSHAgentConfig struct {
	// Clients are the numbers of concurrent clients, each on its own
	// connection; empty means 1, 4 and 16.
	Clients []int
	// Duration is how long each measurement lasts, after a short warm-up;
	// 0 means one second.
	Duration time.Duration
	// Runs repeats every measurement and reports medians; 0 means 3.
	Runs int
	// Dir is where the sockets and the daemon's audit log go; empty means
	// the temporary directory. It should be on the disk the audit log
	// would be on in use (not a tmpfs, where fsync costs nothing).
	Dir string
	// OpenSSHAgent is OpenSSH's ssh-agent program; empty means
	// "ssh-agent" looked up in PATH. If it cannot be found, the results
	// have no SSHAgentOpenSSH rows and no ratios to it.
	OpenSSHAgent string
	// Executable and Env are as in Config.
	Executable string
	Env        []string
}

func (c SSHAgentConfig) withDefaults() SSHAgentConfig {
	if len(c.Clients) == 0 {
		c.Clients = []int{1, 4, 16}
	}
	if c.Duration <= 0 {
		c.Duration = time.Second
	}
	if c.Runs <= 0 {
		c.Runs = 3
	}
	if c.Dir == "" {
		c.Dir = os.TempDir()
	}
	return c
}

// SSHAgentResult is one measurement of RunSSHAgent: medians over the
// runs.
type SSHAgentResult struct {
	// Mode is SSHInProcess, SSHNative, SSHAgentKeywarden or
	// SSHAgentOpenSSH.
	Mode    string `json:"mode"`
	Clients int    `json:"clients"`
	Runs    int    `json:"runs"`
	// OpsPerSec counts signatures, over all clients.
	OpsPerSec     float64   `json:"ops_per_sec"`
	RunsOpsPerSec []float64 `json:"runs_ops_per_sec"`
	// P50us and P99us are the latency of one signature (one request and
	// its reply), in microseconds, over every client's.
	P50us float64 `json:"p50_us"`
	P99us float64 `json:"p99_us"`
	// RatioToOpenSSH and RatioToInProcess compare with OpenSSH's agent and
	// with the in-process signature for the same number of clients: the
	// median over the runs of each run's ratio (see
	// AuditResult.RatioToOff). 0 if that was not measured.
	RatioToOpenSSH   float64 `json:"ratio_to_openssh"`
	RatioToInProcess float64 `json:"ratio_to_inprocess"`
}

// sshBenchKey is the name of RunSSHAgent's key in its private daemon.
const sshBenchKey = "bench-ssh-agent"

// RunSSHAgent measures Ed25519 signatures of 64-byte messages, one
// request per round trip for each client, made five ways with one key:
// in-process with ed25519.Sign, through a private development daemon's own
// socket and through its ssh-agent socket (its audit log on, as a daemon
// runs by default), and through OpenSSH's ssh-agent, started for the run
// (ssh-agent -D -a SOCKET). The key is made in this process, imported into
// the daemon, marked for SSH, and added to OpenSSH's agent as ssh-add
// adds one; the daemon's copy dies with the daemon, the agent's with the
// agent. The fifth way is the daemon's ssh-agent socket with a second
// key, made here too and added to it as ssh-add adds one, as OpenSSH's
// agent's is. Each runs with each number of cfg.Clients concurrent clients, on
// a connection each (for the agents, a blocking client like OpenSSH's
// own: see blockingConn), in an order
// reversed on every other run so that a drift of the machine's speed
// favours none.
//
// Without OpenSSH's agent (cfg.OpenSSHAgent not found), RunSSHAgent says
// so to progress and measures the rest: the results have no
// SSHAgentOpenSSH rows, and no ratios to it.
func RunSSHAgent(ctx context.Context, cfg SSHAgentConfig, progress io.Writer) (_ []SSHAgentResult, err error) {
	cfg = cfg.withDefaults()
	say := sayer(progress)
	if fs := fsName(cfg.Dir); fs != "" {
		say("warning: %s is a %s: fsync costs nothing there, and the figures say nothing of a disk (--dir)", cfg.Dir, fs)
	}
	dir, err := os.MkdirTemp(cfg.Dir, "keywarden-bench-ssh-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dir)
	agentSock := filepath.Join(dir, "agent.sock")
	opensshSock := filepath.Join(dir, "openssh.sock")

	say("starting a private daemon with an ssh-agent socket")
	d, err := startServe(ctx, serveSpec{executable: cfg.Executable, env: cfg.Env,
		args: []string{"--dev", "--ssh-agent", agentSock, "--audit-log", filepath.Join(dir, "audit.log")},
		ready: func(context.Context, *keywarden.Client) error {
			_, err := os.Stat(agentSock)
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

	_, priv, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	defer clear(priv)
	pub, err := ssh.NewPublicKey(priv.Public())
	if err != nil {
		return nil, err
	}
	if err := importSSHKey(ctx, d.socket, priv); err != nil {
		return nil, fmt.Errorf("importing the key into the daemon: %w", err)
	}

	// The key added to the daemon's agent is another than the persistent
	// one: the agent would list the same key twice, and sign with one.
	_, added, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		return nil, err
	}
	defer clear(added)
	addedPub, err := ssh.NewPublicKey(added.Public())
	if err != nil {
		return nil, err
	}
	if conn, err := net.Dial("unix", agentSock); err != nil {
		return nil, fmt.Errorf("adding a key to the daemon's ssh-agent socket: %w", err)
	} else {
		err = addAgentKey(conn, added)
		conn.Close()
		if err != nil {
			return nil, fmt.Errorf("adding a key to the daemon's ssh-agent socket: %w", err)
		}
	}

	modes := []string{SSHInProcess, SSHNative, SSHAgentKeywarden, SSHAgentKeywardenAdded}
	socks := map[string]string{SSHAgentKeywarden: agentSock, SSHAgentKeywardenAdded: agentSock, SSHAgentOpenSSH: opensshSock}
	prog, lerr := exec.LookPath(cmp.Or(cfg.OpenSSHAgent, "ssh-agent"))
	if lerr != nil {
		say("OpenSSH's ssh-agent was not found (%v): no comparison with it", lerr)
	} else {
		say("starting OpenSSH's ssh-agent")
		stop, err := startOpenSSHAgent(ctx, prog, opensshSock, priv)
		if err != nil {
			return nil, err
		}
		defer stop()
		modes = append(modes, SSHAgentOpenSSH)
	}

	msg := message(signSize)
	// clientsFor makes n clients of one mode, each with its own
	// connection, and checks a signature from each.
	clientsFor := func(mode string, n int) ([]func(context.Context) error, func(), error) {
		var closers []func()
		done := func() {
			for _, c := range closers {
				c()
			}
		}
		ones := make([]func(context.Context) error, n)
		for i := range ones {
			var err error
			switch mode {
			case SSHInProcess:
				ones[i] = func(context.Context) error {
					sink ^= ed25519.Sign(priv, msg)[0]
					return nil
				}
			case SSHNative:
				var c *keywarden.Client
				if c, err = keywarden.Dial(ctx, d.socket); err != nil {
					break
				}
				closers = append(closers, func() { c.Close() })
				var k *keywarden.Key
				if k, err = c.Open(ctx, sshBenchKey); err != nil {
					break
				}
				var sig []byte
				if sig, err = k.SignMessageContext(ctx, msg, nil); err == nil && !ed25519.Verify(priv.Public().(ed25519.PublicKey), msg, sig) {
					err = errWrongAnswer
				}
				ones[i] = func(ctx context.Context) error {
					_, err := k.SignMessageContext(ctx, msg, nil)
					return err
				}
			default:
				var conn *blockingConn
				if conn, err = dialBlocking(socks[mode]); err != nil {
					break
				}
				closers = append(closers, conn.close)
				if mode == SSHAgentKeywardenAdded {
					ones[i], err = agentSigner(conn, addedPub, msg)
				} else {
					ones[i], err = agentSigner(conn, pub, msg)
				}
			}
			if err != nil {
				done()
				return nil, nil, err
			}
		}
		return ones, done, nil
	}

	runs := map[[2]any][]float64{}
	lats := map[[2]any][]int64{}
	for run := range cfg.Runs {
		order := slices.Clone(modes)
		if run%2 == 1 {
			slices.Reverse(order)
		}
		for _, n := range cfg.Clients {
			for _, mode := range order {
				say("run %d of %d: %s, %d clients", run+1, cfg.Runs, mode, n)
				ones, done, err := clientsFor(mode, n)
				if err != nil {
					return nil, fmt.Errorf("%s, %d clients: %w", mode, n, err)
				}
				runtime.GC()
				_, err = measureClients(ctx, ones, min(maxWarmup, cfg.Duration))
				var m measurement
				if err == nil {
					m, err = measureClients(ctx, ones, cfg.Duration)
				}
				done()
				if err != nil {
					return nil, fmt.Errorf("%s, %d clients: %w", mode, n, err)
				}
				k := [2]any{mode, n}
				runs[k] = append(runs[k], float64(m.ops)/m.elapsed.Seconds())
				lats[k] = append(lats[k], m.lat...)
			}
		}
	}

	var out []SSHAgentResult
	for _, n := range cfg.Clients {
		for _, mode := range modes {
			k := [2]any{mode, n}
			lat := lats[k]
			slices.Sort(lat)
			r := SSHAgentResult{Mode: mode, Clients: n, Runs: cfg.Runs, RunsOpsPerSec: runs[k],
				OpsPerSec: median(slices.Clone(runs[k])), P50us: percentile(lat, 0.50, 1), P99us: percentile(lat, 0.99, 1)}
			if base := runs[[2]any{SSHAgentOpenSSH, n}]; len(base) > 0 {
				r.RatioToOpenSSH = pairedRatio(runs[k], base)
			}
			r.RatioToInProcess = pairedRatio(runs[k], runs[[2]any{SSHInProcess, n}])
			out = append(out, r)
		}
	}
	return out, nil
}

// importSSHKey imports priv into the daemon at socket as a persistent key
// named sshBenchKey, marked for SSH.
func importSSHKey(ctx context.Context, socket string, priv ed25519.PrivateKey) error {
	c, err := keywarden.Dial(ctx, socket)
	if err != nil {
		return err
	}
	defer c.Close()
	der, err := x509.MarshalPKCS8PrivateKey(priv)
	if err != nil {
		return err
	}
	defer clear(der)
	k, err := c.Import(ctx, keywarden.KeySpec{Name: sshBenchKey, Type: keywarden.Ed25519}, keywarden.FormatPKCS8DER, der)
	if err != nil {
		return err
	}
	defer k.Close(ctx)
	yes := true
	_, err = k.SetLifecycle(ctx, keywarden.LifecycleChange{SSH: &yes})
	return err
}

// addAgentKey gives priv to the agent on conn with the agent protocol's
// add-identity message, as ssh-add adds a key file.
func addAgentKey(conn net.Conn, priv ed25519.PrivateKey) error {
	return agent.NewClient(conn).Add(agent.AddedKey{PrivateKey: priv, Comment: sshBenchKey})
}

// agentSigner checks, on conn, that the agent lists pub and makes good
// signatures with it, as ssh does before it signs, and returns one sign
// request of msg on conn.
func agentSigner(conn *blockingConn, pub ssh.PublicKey, msg []byte) (func(context.Context) error, error) {
	blob := pub.Marshal()
	reply, err := conn.call([]byte{agentRequestIdentities})
	if err != nil {
		return nil, err
	}
	if !listsKey(reply, blob) {
		return nil, errors.New("the agent does not list the key")
	}
	req := ssh.Marshal(struct {
		Type  byte
		Blob  []byte
		Data  []byte
		Flags uint32
	}{agentSignRequest, blob, msg, 0})
	sig, err := conn.sign(req)
	if err != nil {
		return nil, err
	}
	if pub.Verify(msg, sig) != nil {
		return nil, errWrongAnswer
	}
	return func(context.Context) error {
		reply, err := conn.call(req)
		if err == nil && reply[0] != agentSignResponse {
			err = errors.New("the agent refused to sign")
		}
		return err
	}, nil
}

// The agent protocol's messages that RunSSHAgent sends and expects.
const (
	agentFailure           = 5
	agentRequestIdentities = 11
	agentIdentitiesAnswer  = 12
	agentSignRequest       = 13
	agentSignResponse      = 14
)

// listsKey reports whether reply, an identities answer, lists blob.
func listsKey(reply, blob []byte) bool {
	var answer struct {
		Type byte
		N    uint32
		Rest []byte `ssh:"rest"`
	}
	if ssh.Unmarshal(reply, &answer) != nil || answer.Type != agentIdentitiesAnswer {
		return false
	}
	rest := answer.Rest
	for range answer.N {
		var k struct {
			Blob    []byte
			Comment string
			Rest    []byte `ssh:"rest"`
		}
		if ssh.Unmarshal(rest, &k) != nil {
			return false
		}
		if bytes.Equal(k.Blob, blob) {
			return true
		}
		rest = k.Rest
	}
	return false
}

// blockingConn is an agent client as OpenSSH's own programs (ssh,
// ssh-add, ssh-keygen) and git are: a blocking socket, a request written
// whole and the reply read in blocking reads, one request at a time. It
// measures the agents rather than a client library: Go's agent.NewClient
// hands each reply from a reader goroutine to the caller through a
// channel and the runtime's poller, which adds about as much time on
// this kind of machine as keywarden's agent takes to sign, and would
// compress every ratio. The buffer is reused: the reply of a call is
// valid until the next.
type blockingConn struct {
	fd  int
	buf []byte
}

func dialBlocking(path string) (*blockingConn, error) {
	fd, err := syscall.Socket(syscall.AF_UNIX, syscall.SOCK_STREAM|syscall.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	if err := syscall.Connect(fd, &syscall.SockaddrUnix{Name: path}); err != nil {
		syscall.Close(fd)
		return nil, fmt.Errorf("connect %s: %w", path, err)
	}
	return &blockingConn{fd: fd, buf: make([]byte, 4<<10)}, nil
}

func (c *blockingConn) close() { syscall.Close(c.fd) }

// call sends req (a message without its length) and returns the reply's
// body, valid until the next call.
func (c *blockingConn) call(req []byte) ([]byte, error) {
	frame := binary.BigEndian.AppendUint32(c.buf[:0], uint32(len(req)))
	frame = append(frame, req...)
	for len(frame) > 0 {
		n, err := syscall.Write(c.fd, frame)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		frame = frame[n:]
	}
	c.buf = c.buf[:cap(c.buf)]
	got := 0
	for got < 4 || got < 4+int(binary.BigEndian.Uint32(c.buf)) {
		if got >= 4 {
			if need := 4 + int(binary.BigEndian.Uint32(c.buf)); need > maxAgentReply {
				return nil, fmt.Errorf("an agent reply of %d bytes", need)
			} else if need > len(c.buf) {
				c.buf = append(c.buf, make([]byte, need-len(c.buf))...)
			}
		}
		n, err := syscall.Read(c.fd, c.buf[got:])
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if n == 0 {
			return nil, io.ErrUnexpectedEOF
		}
		got += n
	}
	body := c.buf[4:got]
	c.buf = c.buf[:got]
	if len(body) == 0 {
		return nil, errors.New("an empty agent reply")
	}
	return body, nil
}

// maxAgentReply bounds a reply, as OpenSSH's clients do.
const maxAgentReply = 256 << 10

// sign makes a signature with req, a sign request.
func (c *blockingConn) sign(req []byte) (*ssh.Signature, error) {
	reply, err := c.call(req)
	if err != nil {
		return nil, err
	}
	var resp struct {
		Type byte
		Sig  []byte
	}
	if reply[0] == agentFailure {
		return nil, errors.New("the agent refused to sign")
	}
	if ssh.Unmarshal(reply, &resp) != nil || resp.Type != agentSignResponse {
		return nil, fmt.Errorf("an agent reply of type %d to a sign request", reply[0])
	}
	var sig ssh.Signature
	if err := ssh.Unmarshal(resp.Sig, &sig); err != nil {
		return nil, err
	}
	return &sig, nil
}

// startOpenSSHAgent starts OpenSSH's agent prog in the foreground on a
// new socket at sock, adds priv to it, and returns the function that
// stops it.
func startOpenSSHAgent(ctx context.Context, prog, sock string, priv ed25519.PrivateKey) (func(), error) {
	cmd := exec.Command(prog, "-D", "-a", sock)
	stderr := &headBuffer{max: 4 << 10}
	cmd.Stdout, cmd.Stderr = io.Discard, stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("start ssh-agent: %w", err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	stop := func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(stopTimeout):
			cmd.Process.Kill()
			<-exited
		}
	}
	deadline := time.Now().Add(startTimeout)
	for {
		conn, err := net.Dial("unix", sock)
		if err == nil {
			err = addAgentKey(conn, priv)
			conn.Close()
			if err != nil {
				stop()
				return nil, fmt.Errorf("adding the key to ssh-agent: %w", err)
			}
			return stop, nil
		}
		select {
		case <-exited:
			return nil, fmt.Errorf("ssh-agent exited during start-up: %s", stderr.line())
		case <-ctx.Done():
			stop()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			stop()
			return nil, fmt.Errorf("ssh-agent did not answer on %s within %v", sock, startTimeout)
		}
	}
}

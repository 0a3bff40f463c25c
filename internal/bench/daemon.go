package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/keywarden/keywarden"
)

const (
	// startTimeout bounds the daemon's start-up, self-tests included.
	startTimeout = 30 * time.Second
	// stopTimeout is how long the daemon may take to stop after SIGTERM
	// before it is killed.
	stopTimeout = 10 * time.Second
)

// daemon is a private keywarden daemon: a child process serving a socket
// in a temporary directory of its own.
type daemon struct {
	socket string
	dir    string
	cmd    *exec.Cmd
	stderr *headBuffer
	exited chan struct{} // closed once cmd.Wait returned
	err    error         // cmd.Wait's result; read after exited is closed
	// started is when the process was started, ready when it first
	// answered.
	started, ready time.Time
}

// startDaemon starts executable as a development-mode daemon with env
// added to its environment, and returns once a client can dial it.
func startDaemon(ctx context.Context, executable string, env []string) (*daemon, error) {
	return startServe(ctx, serveSpec{executable: executable, env: env, args: []string{"--dev"}})
}

// serveSpec says how to start a private daemon.
type serveSpec struct {
	// executable is the keywarden binary; empty means os.Executable.
	executable string
	// env is added to the daemon's environment.
	env []string
	// args are given to "keywarden serve" besides --socket and
	// --log-level.
	args []string
	// poll is how often to try the daemon during start-up; 0 means 10 ms.
	poll time.Duration
	// ready, if not nil, must succeed on a connected client before the
	// daemon counts as started (the default is a successful dial).
	ready func(ctx context.Context, c *keywarden.Client) error
	// privateAudit puts the daemon's audit log in its temporary directory
	// rather than where it would go by default (the state directory).
	privateAudit bool
}

// startServe starts a private daemon as spec says, in a new temporary
// directory holding its socket, and returns once it answers. The
// daemon's started and ready fields say when it was started and when it
// first answered.
func startServe(ctx context.Context, spec serveSpec) (*daemon, error) {
	executable := spec.executable
	if executable == "" {
		var err error
		if executable, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find the keywarden executable: %w", err)
		}
	}
	poll := spec.poll
	if poll <= 0 {
		poll = 10 * time.Millisecond
	}
	dir, err := os.MkdirTemp("", "keywarden-bench-")
	if err != nil {
		return nil, err
	}
	d := &daemon{
		socket: filepath.Join(dir, "kw.sock"),
		dir:    dir,
		stderr: &headBuffer{max: 4 << 10},
		exited: make(chan struct{}),
	}
	args := append([]string{"serve"}, spec.args...)
	args = append(args, "--socket", d.socket, "--log-level", "error")
	if spec.privateAudit {
		args = append(args, "--audit-log", filepath.Join(dir, "audit.log"))
	}
	d.cmd = exec.Command(executable, args...)
	d.cmd.Env = append(os.Environ(), spec.env...)
	d.cmd.Stderr = d.stderr
	// Should this process die without stopping the daemon, the kernel
	// stops it.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	d.started = time.Now()
	if err := d.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start the daemon: %w", err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.exited)
	}()

	deadline := d.started.Add(startTimeout)
	for {
		err := d.try(ctx, spec.ready)
		if err == nil {
			d.ready = time.Now()
			return d, nil
		}
		select {
		case <-d.exited:
			d.stop()
			return nil, fmt.Errorf("the daemon exited during start-up (%v): %s", d.err, d.stderr.line())
		case <-ctx.Done():
			d.stop()
			return nil, ctx.Err()
		case <-time.After(poll):
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("the daemon did not answer on %s within %v: %v", d.socket, startTimeout, err)
		}
	}
}

// try connects to the daemon once and calls ready, if not nil.
func (d *daemon) try(ctx context.Context, ready func(context.Context, *keywarden.Client) error) error {
	dctx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	c, err := keywarden.Dial(dctx, d.socket)
	if err != nil {
		return err
	}
	defer c.Close()
	if ready != nil {
		return ready(dctx, c)
	}
	return nil
}

// pid returns the daemon's process id.
func (d *daemon) pid() int { return d.cmd.Process.Pid }

// stop stops the daemon with SIGTERM (killing it if it does not stop in
// time), reaps it, and removes its directory.
func (d *daemon) stop() error {
	defer os.RemoveAll(d.dir)
	select {
	case <-d.exited:
		return nil // exited on its own; startDaemon reports why
	default:
	}
	if err := d.cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
		d.cmd.Process.Kill()
	}
	select {
	case <-d.exited:
	case <-time.After(stopTimeout):
		d.cmd.Process.Kill()
		<-d.exited
		return fmt.Errorf("the daemon did not stop within %v of SIGTERM and was killed", stopTimeout)
	}
	if d.err != nil {
		return fmt.Errorf("the daemon failed: %v: %s", d.err, d.stderr.line())
	}
	return nil
}

// headBuffer keeps the first max bytes written to it.
type headBuffer struct {
	mu  sync.Mutex
	max int
	b   []byte
}

func (h *headBuffer) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.b = append(h.b, p[:min(len(p), h.max-len(h.b))]...)
	return len(p), nil
}

// line returns what was written, on one line.
func (h *headBuffer) line() string {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := strings.Join(strings.Fields(string(h.b)), " ")
	if s == "" {
		return "(no output)"
	}
	return s
}

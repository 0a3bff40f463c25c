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
}

// startDaemon starts executable as a development-mode daemon with env
// added to its environment, and returns once a client can dial it.
func startDaemon(ctx context.Context, executable string, env []string) (*daemon, error) {
	if executable == "" {
		var err error
		if executable, err = os.Executable(); err != nil {
			return nil, fmt.Errorf("find the keywarden executable: %w", err)
		}
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
	d.cmd = exec.Command(executable, "serve", "--dev", "--socket", d.socket, "--log-level", "error")
	d.cmd.Env = append(os.Environ(), env...)
	d.cmd.Stderr = d.stderr
	// Should this process die without stopping the daemon, the kernel
	// stops it.
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGTERM}
	if err := d.cmd.Start(); err != nil {
		os.RemoveAll(dir)
		return nil, fmt.Errorf("start the daemon: %w", err)
	}
	go func() {
		d.err = d.cmd.Wait()
		close(d.exited)
	}()

	deadline := time.Now().Add(startTimeout)
	for {
		dctx, cancel := context.WithTimeout(ctx, time.Second)
		c, err := keywarden.Dial(dctx, d.socket)
		cancel()
		if err == nil {
			c.Close()
			return d, nil
		}
		select {
		case <-d.exited:
			d.stop()
			return nil, fmt.Errorf("the daemon exited during start-up (%v): %s", d.err, d.stderr.line())
		case <-ctx.Done():
			d.stop()
			return nil, ctx.Err()
		case <-time.After(10 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			d.stop()
			return nil, fmt.Errorf("the daemon did not answer on %s within %v: %v", d.socket, startTimeout, err)
		}
	}
}

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

package bench

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"time"

	"golang.org/x/sys/unix"
)

// ModeFloor is, for ping only, the machine's floor for one request and
// its reply: a message of floorSize bytes sent over a Unix seqpacket socket
// to another process (this binary, started as "keywarden bench-echo"),
// which sends it straight back, one at a time, with blocking system calls
// and nothing else on either side. No daemon can answer a request faster
// on the same machine; ping's round trip less this is what the daemon and
// the client library cost.
const ModeFloor = "floor"

// EchoArg is the argument that starts this binary as the echo process of
// the floor measurement (argv[1]), serving the socket it inherits as fd 3.
const EchoArg = "bench-echo"

// floorSize is the size of the message the floor measurement echoes:
// about what a ping request and its reply take on the wire.
const floorSize = 64

// IsEcho reports whether args (os.Args) start this binary as the echo
// process of the floor measurement.
func IsEcho(args []string) bool { return len(args) == 2 && args[1] == EchoArg }

// EchoMain serves the echo process: every message read from fd 3 is sent
// back, until the other end closes. It returns the exit code.
func EchoMain() int {
	const fd = 3
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFSOCK {
		fmt.Fprintln(os.Stderr, "keywarden: bench-echo is started by keywarden bench, with a socket as fd 3; it is not for interactive use")
		return 2
	}
	buf := make([]byte, 4096)
	for {
		n, err := retryEINTR(func() (int, error) {
			n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
			return n, err
		})
		if err != nil || n == 0 {
			return 0
		}
		if _, err := retryEINTR(func() (int, error) { return 0, unix.Sendmsg(fd, buf[:n], nil, nil, 0) }); err != nil {
			return 0
		}
	}
}

// retryEINTR calls fn until it fails with something other than EINTR (the
// Go runtime's preemption signals interrupt blocking system calls).
func retryEINTR(fn func() (int, error)) (int, error) {
	for {
		n, err := fn()
		if !errors.Is(err, unix.EINTR) {
			return n, err
		}
	}
}

// echo is a running echo process and this side's end of its socket.
type echo struct {
	fd  int
	cmd *exec.Cmd
	buf []byte
}

// startEcho starts executable (os.Executable if empty), with env added to
// its environment, as the echo process.
func startEcho(executable string, env []string) (*echo, error) {
	if executable == "" {
		var err error
		if executable, err = os.Executable(); err != nil {
			return nil, err
		}
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("socket pair: %w", err)
	}
	theirs := os.NewFile(uintptr(fds[1]), "echo")
	defer theirs.Close()
	cmd := exec.Command(executable, EchoArg)
	cmd.Args[0] = "keywarden"
	cmd.Env = append(os.Environ(), env...)
	cmd.ExtraFiles = []*os.File{theirs}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("starting the echo process: %w", err)
	}
	return &echo{fd: fds[0], cmd: cmd, buf: make([]byte, 4096)}, nil
}

// one sends a message and waits for it to come back.
func (e *echo) one(context.Context) error {
	msg := e.buf[:floorSize]
	if _, err := retryEINTR(func() (int, error) { return 0, unix.Sendmsg(e.fd, msg, nil, nil, 0) }); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	n, err := retryEINTR(func() (int, error) {
		n, _, _, _, err := unix.Recvmsg(e.fd, e.buf, nil, 0)
		return n, err
	})
	if err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	if n != floorSize {
		return fmt.Errorf("echo: %d bytes came back, want %d", n, floorSize)
	}
	return nil
}

// close ends the echo process: it exits when its end of the socket reads
// end of file.
func (e *echo) close() error {
	unix.Close(e.fd)
	done := make(chan error, 1)
	go func() { done <- e.cmd.Wait() }()
	select {
	case err := <-done:
		return err
	case <-time.After(stopTimeout):
		e.cmd.Process.Kill()
		return errors.Join(errors.New("the echo process did not exit; killed"), <-done)
	}
}

// measureFloor measures the floor for d after a warm-up.
func measureFloor(ctx context.Context, executable string, env []string, warmup, d time.Duration) (measurement, error) {
	e, err := startEcho(executable, env)
	if err != nil {
		return measurement{}, err
	}
	if _, err := measureRoundTrip(ctx, e.one, warmup); err != nil {
		e.close()
		return measurement{}, err
	}
	m, err := measureRoundTrip(ctx, e.one, d)
	if cerr := e.close(); err == nil && cerr != nil {
		err = cerr
	}
	return m, err
}

package sshagent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/ssh"
	"golang.org/x/sys/unix"
)

// askpassWaitDelay is how long the confirmation's answer waits, once the
// program has exited or been killed, for what still holds its output.
const askpassWaitDelay = time.Second

// confirm asks the configured program whether k may be used now (ssh-add
// -c), as ssh-agent asks SSH_ASKPASS: the program gets the question as its
// argument and SSH_ASKPASS_PROMPT=confirm in its environment, and approves
// by exiting 0. It runs as the key's uid (when the daemon may switch to
// it), with the daemon's DISPLAY and WAYLAND_DISPLAY if set, no other
// environment but PATH and HOME=/, no input, and a time limit; anything
// else refuses.
func (c *conn) confirm(k *added) error {
	prog := *c.a.askpass.Load()
	if prog == "" {
		return errors.New("the key was added with ssh-add -c and no confirmation program is configured (serve --ssh-askpass PROG)")
	}
	ctx, cancel := context.WithTimeout(c.a.ctx, c.a.cfg.AskpassTimeout)
	defer cancel()
	msg := fmt.Sprintf("Allow use of key %s?\nKey fingerprint %s.\nRequested by pid %d (uid %d).",
		k.comment, ssh.FingerprintSHA256(k.pub), c.id.PID, c.id.UID)
	cmd := exec.CommandContext(ctx, prog, msg)
	cmd.Env = []string{"SSH_ASKPASS_PROMPT=confirm", "PATH=/usr/local/bin:/usr/bin:/bin", "HOME=/"}
	for _, v := range []string{"DISPLAY", "WAYLAND_DISPLAY"} {
		if s := os.Getenv(v); s != "" {
			cmd.Env = append(cmd.Env, v+"="+s)
		}
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	// Past the time limit the program's whole session goes (it leads a
	// process group of its own), not the program alone: a child it left
	// (a dialog started by a shell script) would hold its output open, and
	// the answer would wait for it. Whatever still holds the output a
	// moment after the program exits or is killed is cut off too.
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = askpassWaitDelay
	if os.Geteuid() == 0 && c.id.UID != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: c.id.UID, Gid: c.id.GID}
	}
	var stdout bytes.Buffer
	cmd.Stdout = &stdout
	err := startWithoutAmbient(cmd)
	if err == nil {
		err = cmd.Wait()
	}
	out := stdout.Bytes()
	if ctx.Err() != nil {
		// Killed (or its output given up on) at the time limit, or as the
		// agent closes.
		return fmt.Errorf("the confirmation program %s did not answer within %s", prog, c.a.cfg.AskpassTimeout)
	}
	if err != nil {
		return fmt.Errorf("the confirmation program %s refused: %v", prog, err)
	}
	if a := strings.ToLower(strings.TrimSpace(string(out))); a != "" && a != "yes" {
		return fmt.Errorf("the confirmation program %s answered %s", prog, strconv.Quote(a))
	}
	c.a.log.Info("key use confirmed", "uid", c.id.UID, "pid", c.id.PID, "key", ssh.FingerprintSHA256(k.pub))
	return nil
}

// startWithoutAmbient starts cmd with no ambient capabilities. A daemon
// run as an ordinary user with capabilities from its service manager
// (AmbientCapabilities=: CAP_SYS_PTRACE among them in the shipped unit)
// would pass them to every program it starts, and the confirmation
// program needs none: CAP_SYS_PTRACE would let it read any process's
// memory. Capabilities belong to each thread, so cmd is started from a
// thread of its own whose ambient set is cleared first; that thread is
// never given back to the runtime, and ends with its goroutine.
func startWithoutAmbient(cmd *exec.Cmd) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		// EINVAL: a kernel older than ambient capabilities (4.3), which
		// has none to pass.
		if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil && err != unix.EINVAL {
			errc <- fmt.Errorf("clearing the ambient capabilities: %w", err)
			return
		}
		errc <- cmd.Start()
	}()
	return <-errc
}

package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// runSSHAgent prints, as ssh-agent -s and -c do, the shell commands that
// point SSH_AUTH_SOCK at the daemon's ssh-agent socket: the one named by
// --agent-socket, else the first the daemon reports. The socket is shared
// by every user; each connection sees its own uid's keys.
func runSSHAgent(e *env, args []string) error {
	f := newFlags("ssh-agent", e)
	sh := f.Bool("s", false, "Bourne shell commands (the default, unless $SHELL is a csh)")
	csh := f.Bool("c", false, "C shell commands")
	sock := f.String("agent-socket", "", "the agent socket's `path` (default: the first the daemon serves, serve --ssh-agent)")
	pos, err := f.parse(args)
	if err != nil {
		return err
	}
	if err := want(pos, 0, ""); err != nil {
		return err
	}
	if *sh && *csh {
		return usagef("give -s or -c, not both")
	}
	path := *sock
	if path == "" {
		ctx, c, done, err := f.dial()
		if err != nil {
			return err
		}
		defer done()
		st, err := c.Status(ctx)
		if err != nil {
			return err
		}
		if len(st.SSHAgentSockets) == 0 {
			return fmt.Errorf("the daemon serves no ssh-agent socket: start it with serve --ssh-agent PATH")
		}
		path = st.SSHAgentSockets[0]
	}
	if fi, err := os.Stat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		return fmt.Errorf("%s is not a socket", path)
	}
	if !*sh && !*csh && strings.HasSuffix(filepath.Base(e.getenv("SHELL")), "csh") {
		*csh = true
	}
	q := shellQuote(path)
	if *csh {
		fmt.Fprintf(e.stdout, "setenv SSH_AUTH_SOCK %s;\n", q)
	} else {
		fmt.Fprintf(e.stdout, "SSH_AUTH_SOCK=%s; export SSH_AUTH_SOCK;\n", q)
	}
	fmt.Fprintf(e.stdout, "echo keywarden ssh-agent at %s;\n", q)
	return nil
}

// shellQuote quotes s for sh and csh alike where it needs quoting.
func shellQuote(s string) string {
	if s != "" && strings.Trim(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789/._-+@:%,") == "" {
		return s
	}
	return "'" + strings.ReplaceAll(s, "'", `'\''`) + "'"
}

package daemon

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"os"
	"slices"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/systemd"
)

// Names of the sockets a socket unit passes (FileDescriptorName=).
const (
	fdNameMain  = "keywarden"
	fdNameAgent = "ssh-agent"
)

// passed holds the sockets systemd passed (socket activation), sorted by
// what they serve.
type passed struct {
	main   *systemd.Socket
	agents map[string]*systemd.Socket // by path
}

// takeSockets sorts the sockets systemd passed: the SOCK_SEQPACKET one
// named "keywarden", or bound at the configured socket path, is the main
// socket; stream sockets named "ssh-agent", or bound at a configured
// --ssh-agent path, serve the ssh-agent protocol. A passed socket that is
// none of these is an error: the unit and the configuration disagree. The
// main socket's path becomes cfg.SocketPath, and agent sockets not
// configured are added to cfg.SSHAgentSockets.
func takeSockets(cfg *Config, log *slog.Logger) (*passed, error) {
	socks, err := systemd.Sockets()
	if err != nil || len(socks) == 0 {
		return nil, err
	}
	p := &passed{agents: map[string]*systemd.Socket{}}
	for i := range socks {
		s := &socks[i]
		switch {
		case s.Type == unix.SOCK_SEQPACKET && (s.Name == fdNameMain || s.Path == cfg.SocketPath) && p.main == nil:
			if s.Path == "" {
				return nil, fmt.Errorf("the passed socket %q is not bound to a path", s.Name)
			}
			if s.Path != cfg.SocketPath {
				log.Info("serving the socket systemd passed, not the configured one", "socket", s.Path, "configured", cfg.SocketPath)
				cfg.SocketPath = s.Path
			}
			p.main = s
		case s.Type == unix.SOCK_STREAM && s.Path != "" && (s.Name == fdNameAgent || slices.Contains(cfg.SSHAgentSockets, s.Path)):
			if !slices.Contains(cfg.SSHAgentSockets, s.Path) {
				cfg.SSHAgentSockets = append(slices.Clone(cfg.SSHAgentSockets), s.Path)
			}
			p.agents[s.Path] = s
		default:
			return nil, fmt.Errorf("systemd passed a socket the daemon does not serve: %q (%s, %q); "+
				"name the main SOCK_SEQPACKET socket %q and ssh-agent stream sockets %q (FileDescriptorName=)",
				s.Name, systemd.TypeName(s.Type), s.Path, fdNameMain, fdNameAgent)
		}
		if !passCredSet(s.FD) {
			log.Warn("the passed socket lacks SO_PASSCRED: requests sent before the daemon set it carry no credentials and are refused; add PassCredentials=yes to the socket unit",
				"socket", s.Path)
		}
	}
	log.Info("socket activation", "sockets", len(socks))
	return p, nil
}

func passCredSet(fd int) bool {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED)
	return err == nil && v != 0
}

// agentListener returns the passed ssh-agent socket at path, or nil.
func (p *passed) agentListener(path string) (*net.UnixListener, error) {
	if p == nil {
		return nil, nil
	}
	s := p.agents[path]
	if s == nil {
		return nil, nil
	}
	f := os.NewFile(uintptr(s.FD), path)
	defer f.Close() // FileListener dups it
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("ssh-agent socket %s: %w", path, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("ssh-agent socket %s: not a Unix socket", path)
	}
	// The file is systemd's: it stays when the daemon stops.
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

// statusLine says in a few words what the daemon is doing, for systemd's
// STATUS= (systemctl status shows it).
func statusLine(srv *server.Server, dev bool) string {
	n, _ := srv.KeyCounts()
	if dev {
		return fmt.Sprintf("serving %d keys (development mode: in memory only)", n)
	}
	st := srv.SealState()
	switch {
	case !st.Initialized:
		return "no master key yet, waiting for \"keywarden init\""
	case st.Sealed:
		return "sealed, waiting for unseal"
	}
	return fmt.Sprintf("serving %d keys", n)
}

// statusInterval is how often the STATUS= line is brought up to date.
const statusInterval = time.Second

// notifyLoop tells systemd, until ctx is done, what the daemon does
// (STATUS=, when it changes) and that it is alive (WATCHDOG=1, at half
// the interval systemd asked for).
func notifyLoop(ctx context.Context, n *systemd.Notifier, srv *server.Server, dev bool, log *slog.Logger) {
	every := statusInterval
	wd := n.Watchdog()
	if wd > 0 {
		every = min(every, wd/2)
		log.Info("systemd watchdog", "interval", wd)
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if wd > 0 {
			if err := n.Ping(); err != nil {
				log.Warn("systemd watchdog notification failed", "err", err)
			}
		}
		if err := n.Status(statusLine(srv, dev)); err != nil {
			log.Debug("systemd status notification failed", "err", err)
		}
	}
}

package daemon

import (
	"context"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/server"
	"github.com/keywarden/keywarden/internal/systemd"
)

// Names of the sockets a socket unit passes (FileDescriptorName=).
const (
	fdNameMain   = "keywarden"
	fdNameAgent  = "ssh-agent"
	fdNamePKCS11 = "pkcs11"
	fdNameHTTP   = "http"
	fdNameKMS    = "kms-v2"
)

// passed holds the sockets systemd passed (socket activation), sorted by
// what they serve.
type passed struct {
	main   *systemd.Socket
	agents map[string]*systemd.Socket // by path
	pkcs11 map[string]*systemd.Socket // by path
	http   map[string]*systemd.Socket // by --http spec: unix:PATH, tcp:ADDR
	kms    *systemd.Socket
	// modes holds each passed Unix socket's permission bits, by path.
	modes map[string]fs.FileMode
}

// takeSockets sorts the sockets systemd passed (sortSockets) and warns of
// those that lack SO_PASSCRED where the front needs it.
func takeSockets(cfg *Config, log *slog.Logger) (*passed, error) {
	socks, err := systemd.Sockets()
	if err != nil || len(socks) == 0 {
		return nil, err
	}
	p, err := sortSockets(cfg, socks, log)
	if err != nil {
		return nil, err
	}
	if err := checkPassed(cfg, p, socks, log); err != nil {
		return nil, err
	}
	for i := range socks {
		s := &socks[i]
		if s == p.main || p.agents[s.Path] == s || p.pkcs11[s.Path] == s {
			if !passCredSet(s.FD) {
				log.Warn("the passed socket lacks SO_PASSCRED: requests sent before the daemon set it carry no credentials and are refused; add PassCredentials=yes to the socket unit",
					"socket", s.Path)
			}
		}
	}
	log.Info("socket activation", "sockets", len(socks))
	return p, nil
}

// sortSockets sorts socks by the front that serves each: the one named
// by its FileDescriptorName= ("keywarden", "ssh-agent", "pkcs11", "http",
// "kms-v2") or, for another name, the one configured at its path (or, for
// a TCP socket, at its address). The main socket is SOCK_SEQPACKET, the
// others stream sockets; every one but a TCP "http" socket is a Unix
// socket bound to an absolute path. A passed socket that fits none of these, or a
// second main or KMS v2 socket, is an error: the units and the
// configuration disagree. The main and KMS v2 sockets' paths replace the
// configured ones; the others are added to the configuration when it
// does not name them, so that the front serves them.
func sortSockets(cfg *Config, socks []systemd.Socket, log *slog.Logger) (*passed, error) {
	p := &passed{
		agents: map[string]*systemd.Socket{},
		pkcs11: map[string]*systemd.Socket{},
		http:   map[string]*systemd.Socket{},
	}
	for i := range socks {
		s := &socks[i]
		role := s.Name
		switch s.Name {
		case fdNameMain, fdNameAgent, fdNamePKCS11, fdNameHTTP, fdNameKMS:
		default:
			role = configuredRole(cfg, s)
		}
		if role == "" {
			return nil, fmt.Errorf("systemd passed a socket the daemon does not serve: %q (%s, %q); "+
				"name it with FileDescriptorName=: %q for the main SOCK_SEQPACKET socket, or %q, %q, %q or %q for the stream socket of that front",
				s.Name, systemd.TypeName(s.Type), sockAddr(s), fdNameMain, fdNameAgent, fdNamePKCS11, fdNameHTTP, fdNameKMS)
		}
		want, directive := unix.SOCK_STREAM, "ListenStream="
		if role == fdNameMain {
			want, directive = unix.SOCK_SEQPACKET, "ListenSequentialPacket="
		}
		if s.Type != want {
			return nil, fmt.Errorf("the passed socket %q (%q) is a %s socket; the %s socket must be %s (%s in its socket unit)",
				s.Name, sockAddr(s), systemd.TypeName(s.Type), role, systemd.TypeName(want), directive)
		}
		tcp := role == fdNameHTTP && (s.Family == unix.AF_INET || s.Family == unix.AF_INET6)
		// An abstract socket ("@name") has no file whose permissions
		// say who may connect: every process of the network namespace
		// may.
		if !tcp && (s.Family != unix.AF_UNIX || !filepath.IsAbs(s.Path)) {
			return nil, fmt.Errorf("the passed %s socket %q (%q) is not a Unix socket bound to an absolute path; give ListenStream= (ListenSequentialPacket=) a file system path", role, s.Name, s.Path)
		}
		switch role {
		case fdNameMain:
			if p.main != nil {
				return nil, fmt.Errorf("systemd passed two main sockets, %s and %s: the daemon serves one", p.main.Path, s.Path)
			}
			if s.Path != cfg.SocketPath {
				log.Info("serving the socket systemd passed, not the configured one", "socket", s.Path, "configured", cfg.SocketPath)
				cfg.SocketPath = s.Path
			}
			p.main = s
		case fdNameAgent:
			if err := addPassed(p.agents, s.Path, s, &cfg.SSHAgentSockets); err != nil {
				return nil, err
			}
		case fdNamePKCS11:
			if err := addPassed(p.pkcs11, s.Path, s, &cfg.PKCS11Sockets); err != nil {
				return nil, err
			}
		case fdNameHTTP:
			spec := "unix:" + s.Path
			if tcp {
				spec = "tcp:" + s.Addr
				// A configured address that is this socket's is served
				// on it, as it is written.
				for _, c := range cfg.HTTP {
					if a, ok := strings.CutPrefix(c, "tcp:"); ok && sameTCP(a, s.Addr) {
						spec = c
					}
				}
			}
			if err := addPassed(p.http, spec, s, &cfg.HTTP); err != nil {
				return nil, err
			}
		case fdNameKMS:
			if p.kms != nil {
				return nil, fmt.Errorf("systemd passed two KMS v2 sockets, %s and %s: the daemon serves one", p.kms.Path, s.Path)
			}
			if cfg.KMSKey == "" {
				return nil, fmt.Errorf("systemd passed a KMS v2 socket (%s), and serving it needs --kms-key NAME (kms-key in the configuration file): the AES-256-GCM key, owned by the API server's uid, that encrypts", s.Path)
			}
			if cfg.KMSV2 != "" && cfg.KMSV2 != s.Path {
				log.Info("serving the KMS v2 socket systemd passed, not the configured one", "socket", s.Path, "configured", cfg.KMSV2)
			}
			cfg.KMSV2 = s.Path
			p.kms = s
		}
	}
	return p, nil
}

// checkPassed checks every passed Unix socket as the daemon checks the
// sockets it binds itself: its directory must be one that no one else
// could tamper with. It records each socket's permission bits in p.modes
// and logs them; when the configuration sets socket-mode, a socket that
// grants more than it is refused, since the socket unit, not the
// daemon, decides who may connect.
func checkPassed(cfg *Config, p *passed, socks []systemd.Socket, log *slog.Logger) error {
	p.modes = map[string]fs.FileMode{}
	for i := range socks {
		s := &socks[i]
		if s.Family != unix.AF_UNIX {
			continue
		}
		if err := checkDir("socket directory", filepath.Dir(s.Path), true); err != nil {
			return fmt.Errorf("the passed socket %s: %w", s.Path, err)
		}
		fi, err := os.Lstat(s.Path)
		if err != nil {
			return fmt.Errorf("the passed socket %s: %w", s.Path, err)
		}
		if fi.Mode().Type() != fs.ModeSocket {
			return fmt.Errorf("the passed socket's path %s is not a socket (%s): another file replaced it", s.Path, fi.Mode().Type())
		}
		mode := fi.Mode().Perm()
		p.modes[s.Path] = mode
		log.Info("passed socket", "socket", s.Path, "name", s.Name, "mode", fmt.Sprintf("%04o", mode))
		if cfg.SocketMode != 0 && mode&^cfg.SocketMode.Perm() != 0 {
			return fmt.Errorf("the passed socket %s has mode %04o, wider than the configured socket-mode %04o: under socket activation the socket unit decides who may connect; set SocketMode= (and SocketUser=, SocketGroup=) in its unit, or widen socket-mode",
				s.Path, mode, cfg.SocketMode.Perm())
		}
	}
	return nil
}

// modeText is the permission bits of the socket at path, for the log:
// those systemd gave it when it was passed, else mode, those the daemon
// gives it.
func (p *passed) modeText(path string, mode fs.FileMode) string {
	if p != nil {
		if m, ok := p.modes[path]; ok {
			mode = m
		}
	}
	return fmt.Sprintf("%04o", mode)
}

// configuredRole is the front whose configuration names s's path (or
// TCP address), or "".
func configuredRole(cfg *Config, s *systemd.Socket) string {
	if s.Addr != "" {
		for _, c := range cfg.HTTP {
			if a, ok := strings.CutPrefix(c, "tcp:"); ok && sameTCP(a, s.Addr) {
				return fdNameHTTP
			}
		}
		return ""
	}
	switch {
	case s.Path == "":
		return ""
	case s.Path == cfg.SocketPath:
		return fdNameMain
	case slices.Contains(cfg.SSHAgentSockets, s.Path):
		return fdNameAgent
	case slices.Contains(cfg.PKCS11Sockets, s.Path):
		return fdNamePKCS11
	case slices.Contains(cfg.HTTP, "unix:"+s.Path):
		return fdNameHTTP
	case s.Path == cfg.KMSV2:
		return fdNameKMS
	}
	return ""
}

// addPassed records s under key in m, and adds key to the configured
// list *list when it is not there.
func addPassed(m map[string]*systemd.Socket, key string, s *systemd.Socket, list *[]string) error {
	if m[key] != nil {
		return fmt.Errorf("systemd passed two sockets for %s", key)
	}
	m[key] = s
	if !slices.Contains(*list, key) {
		*list = append(slices.Clone(*list), key)
	}
	return nil
}

// sameTCP reports whether the configured address a (host:port, the host
// a literal IP address or empty) is the bound address bound.
func sameTCP(a, bound string) bool {
	ah, ap, err := net.SplitHostPort(a)
	if err != nil {
		return false
	}
	bh, bp, err := net.SplitHostPort(bound)
	if err != nil || ap != bp {
		return false
	}
	aip, bip := net.ParseIP(ah), net.ParseIP(bh)
	if ah == "" {
		return bip != nil && bip.IsUnspecified()
	}
	return aip != nil && bip != nil && aip.Equal(bip)
}

// sockAddr is s's path or TCP address, for messages.
func sockAddr(s *systemd.Socket) string {
	if s.Addr != "" {
		return s.Addr
	}
	return s.Path
}

// closeOnExecInherited marks every descriptor from 3 up close-on-exec.
func closeOnExecInherited() error {
	err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	if err != unix.ENOSYS && err != unix.EINVAL {
		return fmt.Errorf("mark inherited descriptors close-on-exec: %w", err)
	}
	// Before Linux 5.11: one by one.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("mark inherited descriptors close-on-exec: %w", err)
	}
	for _, e := range ents {
		if fd, err := strconv.Atoi(e.Name()); err == nil && fd >= 3 {
			unix.CloseOnExec(fd)
		}
	}
	return nil
}

func passCredSet(fd int) bool {
	v, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_PASSCRED)
	return err == nil && v != 0
}

// unixListener returns the passed socket s as a listener, or nil for no
// socket. what names the front, for errors.
func unixListener(s *systemd.Socket, what string) (*net.UnixListener, error) {
	if s == nil {
		return nil, nil
	}
	f := os.NewFile(uintptr(s.FD), s.Path)
	defer f.Close() // FileListener dups it
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("%s socket %s: %w", what, s.Path, err)
	}
	ul, ok := l.(*net.UnixListener)
	if !ok {
		l.Close()
		return nil, fmt.Errorf("%s socket %s: not a Unix socket", what, s.Path)
	}
	// The file is systemd's: it stays when the daemon stops.
	ul.SetUnlinkOnClose(false)
	return ul, nil
}

// agentListener returns the passed ssh-agent socket at path, or nil.
func (p *passed) agentListener(path string) (*net.UnixListener, error) {
	if p == nil {
		return nil, nil
	}
	return unixListener(p.agents[path], "ssh-agent")
}

// pkcs11Listener returns the passed PKCS #11 socket at path, or nil.
func (p *passed) pkcs11Listener(path string) (*net.UnixListener, error) {
	if p == nil {
		return nil, nil
	}
	return unixListener(p.pkcs11[path], "pkcs11")
}

// kmsListener returns the passed KMS v2 socket, or nil.
func (p *passed) kmsListener() (*net.UnixListener, error) {
	if p == nil {
		return nil, nil
	}
	return unixListener(p.kms, "KMS v2")
}

// httpListener returns the passed socket of the --http spec, or nil.
func (p *passed) httpListener(spec string) (net.Listener, error) {
	if p == nil || p.http[spec] == nil {
		return nil, nil
	}
	s := p.http[spec]
	if s.Family == unix.AF_UNIX {
		return unixListener(s, "transit")
	}
	f := os.NewFile(uintptr(s.FD), s.Addr)
	defer f.Close()
	l, err := net.FileListener(f)
	if err != nil {
		return nil, fmt.Errorf("transit TCP socket %s: %w", s.Addr, err)
	}
	return l, nil
}

// isPassed reports whether path is the path of a socket systemd passed:
// the daemon does not remove it when it stops.
func (p *passed) isPassed(path string) bool {
	if p == nil {
		return false
	}
	return p.agents[path] != nil || p.pkcs11[path] != nil || p.http["unix:"+path] != nil ||
		(p.kms != nil && p.kms.Path == path) || (p.main != nil && p.main.Path == path)
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

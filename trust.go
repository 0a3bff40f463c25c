package keywarden

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keywarden/keywarden/internal/ownfile"

	"github.com/keywarden/keywarden/internal/seqpacket"
)

// DaemonUIDEnv names the environment variable that gives one more uid,
// besides root and the caller's own, whose daemon a client trusts (see
// DialOptions.DaemonUID).
const DaemonUIDEnv = "KEYWARDEN_DAEMON_UID"

// DialOptions configures DialWithOptions. The zero value is what Dial
// uses.
type DialOptions struct {
	// DaemonUID is a uid, besides root and the caller's own, whose daemon
	// the client trusts with its requests: a daemon run as a dedicated
	// user, say. 0 means the uid in $KEYWARDEN_DAEMON_UID if that is set,
	// else none (root is always trusted, so 0 adds nothing).
	DaemonUID uint32
}

// ErrUntrustedSocket matches, with errors.Is, every *UntrustedSocketError.
var ErrUntrustedSocket = errors.New("keywarden: the socket is not served by a daemon this client trusts")

// UntrustedSocketError is Dial's refusal of a socket that another user may
// have put in place to receive what the client sends: passphrases,
// plaintext, passwords. Dial refuses before it sends anything.
//
// A client trusts root, its own uid, the uid DialOptions.DaemonUID (or
// $KEYWARDEN_DAEMON_UID) names, and the owner of the socket's directory
// when root vouches for it (see docs/security.md, "Finding the daemon").
// It refuses a socket whose directory belongs to anyone else or may be
// written by others (unless sticky, as /tmp is), and a daemon whose uid,
// as the kernel reports it (SO_PEERCRED), is anyone else's.
type UntrustedSocketError struct {
	// Socket is the socket's path.
	Socket string
	// Path is what was refused: the socket's directory, or Socket itself
	// when the daemon's uid was.
	Path string
	// UID is the uid found: Path's owner, or the daemon's.
	UID uint32
	// PID is the daemon's pid when its uid was refused, else 0.
	PID int32

	msg string
}

func (e *UntrustedSocketError) Error() string { return e.msg }

// Is makes errors.Is(err, ErrUntrustedSocket) match.
func (e *UntrustedSocketError) Is(target error) bool { return target == ErrUntrustedSocket }

// trust is the set of uids a client trusts to serve its socket.
type trust struct {
	self    uint32
	named   uint32 // DialOptions.DaemonUID or $KEYWARDEN_DAEMON_UID; 0: none
	fromEnv bool   // named came from the environment
	vouched uint32 // the owner of the socket's directory, vouched for by root; 0: none
}

func newTrust(opts *DialOptions) (*trust, error) {
	t := &trust{self: uint32(os.Getuid())}
	if opts != nil && opts.DaemonUID != 0 {
		t.named = opts.DaemonUID
		return t, nil
	}
	if v := os.Getenv(DaemonUIDEnv); v != "" {
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("keywarden: $%s is %q, not a uid: give a number (id -u USER prints it)", DaemonUIDEnv, v)
		}
		t.named, t.fromEnv = uint32(n), true
	}
	return t, nil
}

func (t *trust) trusts(uid uint32) bool {
	return uid == 0 || uid == t.self || (t.named != 0 && uid == t.named) || (t.vouched != 0 && uid == t.vouched)
}

// String names whom t trusts, for error messages.
func (t *trust) String() string {
	who := []string{"root"}
	if t.self != 0 {
		who = append(who, fmt.Sprintf("you (uid %d)", t.self))
	}
	if t.named != 0 && t.named != t.self {
		src := "DialOptions.DaemonUID"
		if t.fromEnv {
			src = "$" + DaemonUIDEnv
		}
		who = append(who, fmt.Sprintf("uid %d (%s)", t.named, src))
	}
	if len(who) == 1 {
		return who[0]
	}
	return strings.Join(who[:len(who)-1], ", ") + " or " + who[len(who)-1]
}

// hint says how to trust uid, if the caller means to.
func (t *trust) hint(uid uint32) string {
	return fmt.Sprintf("if uid %d runs the daemon you mean, set %s=%d", uid, DaemonUIDEnv, uid)
}

// socketDir returns the directory of the socket at path, as connect(2)
// will reach it (symbolic links before it followed, as the kernel does).
func socketDir(path string) string {
	switch i := strings.LastIndexByte(path, '/'); {
	case i < 0:
		return "."
	case i == 0:
		return "/"
	default:
		return path[:i]
	}
}

// checkDir examines the socket's directory before Dial connects: whoever
// made it, or may write to it, could have put a socket of their own there.
// A directory that cannot be examined is left to connect(2) to report.
func (t *trust) checkDir(socket string) error {
	if strings.HasPrefix(socket, "@") {
		return nil // an abstract socket has no directory; its daemon's uid is checked
	}
	dir := socketDir(socket)
	fi, err := os.Lstat(dir)
	if err != nil {
		return nil
	}
	if fi.Mode()&fs.ModeSymlink != 0 {
		if uid := ownfile.Owner(fi); !t.trusts(uid) {
			return t.refuseDir(socket, dir, uid, fmt.Sprintf("is a symbolic link made by uid %d", uid))
		}
		if fi, err = os.Stat(dir); err != nil {
			return nil
		}
	}
	if !fi.IsDir() {
		return nil
	}
	uid := ownfile.Owner(fi)
	if !t.trusts(uid) {
		if !vouched(socket) {
			return t.refuseDir(socket, dir, uid, fmt.Sprintf("belongs to uid %d", uid))
		}
		t.vouched = uid
	}
	if m := fi.Mode(); m.Perm()&0o022 != 0 && m&fs.ModeSticky == 0 {
		return &UntrustedSocketError{Socket: socket, Path: dir, UID: uid, msg: fmt.Sprintf(
			"keywarden: the socket's directory %s is writable by others (mode %04o): anyone could have put the socket %s there; "+
				"refusing to connect (its owner can fix it with chmod go-w %s)", dir, ownfile.ModeBits(m), socket, dir)}
	}
	return nil
}

func (t *trust) refuseDir(socket, dir string, uid uint32, found string) error {
	return &UntrustedSocketError{Socket: socket, Path: dir, UID: uid, msg: fmt.Sprintf(
		"keywarden: the socket's directory %s %s, not to %s: another user may have made it to receive what you send; "+
			"refusing to connect (remove it, or choose another socket; %s)", dir, found, t, t.hint(uid))}
}

// checkPeer checks who serves the socket, as the kernel recorded it when
// the daemon called listen(2).
func (t *trust) checkPeer(socket string, conn *seqpacket.Conn) error {
	cr, err := conn.PeerUcred()
	if err != nil {
		return fmt.Errorf("keywarden: cannot tell who serves %s: %w", socket, err)
	}
	if t.trusts(cr.UID) {
		return nil
	}
	return &UntrustedSocketError{Socket: socket, Path: socket, UID: cr.UID, PID: cr.PID, msg: fmt.Sprintf(
		"keywarden: the socket %s is served by uid %d (pid %d), not by %s: refusing to send anything; %s",
		socket, cr.UID, cr.PID, t, t.hint(cr.UID))}
}

// vouched reports whether root vouches for the owner of the socket's
// directory: the socket's path is absolute and clean, its directory is a
// real directory directly in /run (where only root makes directories),
// that no one but its owner may write to, and its owner is a system
// account (a uid below UID_MIN of /etc/login.defs, 1000 by default), not
// a person's. Only root can then have made the directory and given it to
// that account (as systemd's RuntimeDirectory= does for a daemon run as a
// dedicated user), and only that account or root can have put a socket in
// it. A person's directories (a home, anything under /tmp) never qualify:
// a daemon there is trusted only when named (DialOptions.DaemonUID).
func vouched(socket string) bool {
	if !filepath.IsAbs(socket) || filepath.Clean(socket) != socket {
		return false
	}
	dir := filepath.Dir(socket)
	if filepath.Dir(dir) != "/run" {
		return false
	}
	for _, p := range []string{dir, "/run"} {
		fi, err := os.Lstat(p)
		if err != nil || !fi.IsDir() || fi.Mode().Perm()&0o022 != 0 {
			return false
		}
		if p == "/run" && ownfile.Owner(fi) != 0 {
			return false
		}
		if p == dir && ownfile.Owner(fi) >= firstLoginUID() {
			return false
		}
	}
	return true
}

// firstLoginUID is the first uid of people's accounts: UID_MIN of
// /etc/login.defs, else 1000.
func firstLoginUID() uint32 {
	b, err := os.ReadFile("/etc/login.defs")
	if err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			f := strings.Fields(line)
			if len(f) == 2 && f[0] == "UID_MIN" {
				if n, err := strconv.ParseUint(f[1], 10, 32); err == nil && n > 0 {
					return uint32(n)
				}
			}
		}
	}
	return 1000
}

package keywarden

import (
	"fmt"
	"os"
	"path/filepath"
)

// SystemSocketPath is where a daemon run by root (the system service)
// listens.
const SystemSocketPath = "/run/keywarden/keywarden.sock"

// SocketEnv names the environment variable that overrides the default
// socket path.
const SocketEnv = "KEYWARDEN_SOCKET"

// UserSocketPath is where a daemon run by an ordinary user listens:
// $XDG_RUNTIME_DIR/keywarden/keywarden.sock, or
// $TMPDIR/keywarden-UID/keywarden.sock (TMPDIR defaulting to /tmp) when
// XDG_RUNTIME_DIR is unset.
func UserSocketPath() string {
	if dir := os.Getenv("XDG_RUNTIME_DIR"); dir != "" && filepath.IsAbs(dir) {
		return filepath.Join(dir, "keywarden", "keywarden.sock")
	}
	return filepath.Join(os.TempDir(), fmt.Sprintf("keywarden-%d", os.Getuid()), "keywarden.sock")
}

// DefaultSocketPath is the socket a client uses when none is named: the
// system socket if the caller is root or the system daemon is running,
// else the caller's own UserSocketPath.
func DefaultSocketPath() string {
	if os.Getuid() == 0 {
		return SystemSocketPath
	}
	if fi, err := os.Stat(SystemSocketPath); err == nil && fi.Mode().Type() == os.ModeSocket {
		return SystemSocketPath
	}
	return UserSocketPath()
}

// DefaultServeSocketPath is where a daemon listens when no path is named:
// SystemSocketPath for root, UserSocketPath otherwise.
func DefaultServeSocketPath() string {
	if os.Getuid() == 0 {
		return SystemSocketPath
	}
	return UserSocketPath()
}

// SocketPathFromEnv returns $KEYWARDEN_SOCKET if set, else
// DefaultSocketPath().
func SocketPathFromEnv() string {
	if p := os.Getenv(SocketEnv); p != "" {
		return p
	}
	return DefaultSocketPath()
}

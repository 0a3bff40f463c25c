package daemon

import (
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/systemd"
)

func unixSock(name string, typ int, path string) systemd.Socket {
	return systemd.Socket{Name: name, Type: typ, Family: unix.AF_UNIX, Path: path}
}

// TestSortSockets: each passed socket goes to the front its name, or
// failing that its configured path, says; the configuration gains the
// fronts' sockets it did not name.
func TestSortSockets(t *testing.T) {
	cfg := Config{
		SocketPath:    "/run/kw/configured.sock",
		PKCS11Sockets: []string{"/run/kw/p11-configured.sock"},
		HTTP:          []string{"tcp::8200"},
		KMSV2:         "/run/kw/kms-configured.sock",
		KMSKey:        "kms",
	}
	socks := []systemd.Socket{
		unixSock("keywarden", unix.SOCK_SEQPACKET, "/run/kw/main.sock"),
		unixSock("keywarden-pkcs11.socket", unix.SOCK_STREAM, "/run/kw/p11-configured.sock"),
		unixSock("pkcs11", unix.SOCK_STREAM, "/run/kw/p11.sock"),
		unixSock("http", unix.SOCK_STREAM, "/run/kw/http.sock"),
		{Name: "http", Type: unix.SOCK_STREAM, Family: unix.AF_INET6, Addr: "[::]:8200"},
		unixSock("kms-v2", unix.SOCK_STREAM, "/run/kw/kms.sock"),
	}
	p, err := sortSockets(&cfg, socks, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	if p.main != &socks[0] || cfg.SocketPath != "/run/kw/main.sock" {
		t.Errorf("main socket: %v, configured %s", p.main, cfg.SocketPath)
	}
	if p.pkcs11["/run/kw/p11-configured.sock"] != &socks[1] || p.pkcs11["/run/kw/p11.sock"] != &socks[2] ||
		!slices.Equal(cfg.PKCS11Sockets, []string{"/run/kw/p11-configured.sock", "/run/kw/p11.sock"}) {
		t.Errorf("pkcs11 sockets: %v, configured %q", p.pkcs11, cfg.PKCS11Sockets)
	}
	if p.http["unix:/run/kw/http.sock"] != &socks[3] || p.http["tcp::8200"] != &socks[4] ||
		!slices.Equal(cfg.HTTP, []string{"tcp::8200", "unix:/run/kw/http.sock"}) {
		t.Errorf("http sockets: %v, configured %q", p.http, cfg.HTTP)
	}
	if p.kms != &socks[5] || cfg.KMSV2 != "/run/kw/kms.sock" {
		t.Errorf("KMS v2 socket: %v, configured %s", p.kms, cfg.KMSV2)
	}
	for _, path := range []string{"/run/kw/main.sock", "/run/kw/p11.sock", "/run/kw/http.sock", "/run/kw/kms.sock"} {
		if !p.isPassed(path) {
			t.Errorf("%s is not counted as passed: the daemon would remove it", path)
		}
	}
	if p.isPassed("/run/kw/other.sock") {
		t.Errorf("a socket not passed is counted as passed")
	}
}

// TestSortSocketsRefuses: a socket of the wrong type, a second main or
// KMS socket, one that no front serves and a KMS socket without a key
// stop the daemon, each with an error that says what is wrong.
func TestSortSocketsRefuses(t *testing.T) {
	for _, tc := range []struct {
		name  string
		cfg   Config
		socks []systemd.Socket
		want  string
	}{
		{"unknown name", Config{}, []systemd.Socket{unixSock("metrics", unix.SOCK_STREAM, "/run/kw/m.sock")},
			`does not serve: "metrics"`},
		{"main not seqpacket", Config{}, []systemd.Socket{unixSock("keywarden", unix.SOCK_STREAM, "/run/kw/kw.sock")},
			"must be seqpacket (ListenSequentialPacket="},
		{"pkcs11 not stream", Config{}, []systemd.Socket{unixSock("pkcs11", unix.SOCK_SEQPACKET, "/run/kw/p.sock")},
			"the pkcs11 socket must be stream (ListenStream="},
		{"http datagram", Config{}, []systemd.Socket{unixSock("http", unix.SOCK_DGRAM, "/run/kw/h.sock")},
			"is a datagram socket"},
		{"kms on tcp", Config{KMSKey: "k"}, []systemd.Socket{{Name: "kms-v2", Type: unix.SOCK_STREAM, Family: unix.AF_INET, Addr: "127.0.0.1:1"}},
			"not a Unix socket bound to an absolute path"},
		{"http abstract", Config{}, []systemd.Socket{unixSock("http", unix.SOCK_STREAM, "@keywarden-http")},
			"not a Unix socket bound to an absolute path"},
		{"kms abstract", Config{KMSKey: "k"}, []systemd.Socket{unixSock("kms-v2", unix.SOCK_STREAM, "@kms")},
			"not a Unix socket bound to an absolute path"},
		{"http unbound", Config{}, []systemd.Socket{unixSock("http", unix.SOCK_STREAM, "")},
			"not a Unix socket bound to an absolute path"},
		{"configured path, wrong type", Config{PKCS11Sockets: []string{"/run/kw/p.sock"}},
			[]systemd.Socket{unixSock("unknown", unix.SOCK_SEQPACKET, "/run/kw/p.sock")}, "the pkcs11 socket must be stream"},
		{"two main", Config{}, []systemd.Socket{
			unixSock("keywarden", unix.SOCK_SEQPACKET, "/run/kw/a.sock"),
			unixSock("keywarden", unix.SOCK_SEQPACKET, "/run/kw/b.sock")}, "two main sockets"},
		{"two kms", Config{KMSKey: "k"}, []systemd.Socket{
			unixSock("kms-v2", unix.SOCK_STREAM, "/run/kw/a.sock"),
			unixSock("kms-v2", unix.SOCK_STREAM, "/run/kw/b.sock")}, "two KMS v2 sockets"},
		{"same pkcs11 twice", Config{}, []systemd.Socket{
			unixSock("pkcs11", unix.SOCK_STREAM, "/run/kw/p.sock"),
			unixSock("pkcs11", unix.SOCK_STREAM, "/run/kw/p.sock")}, "two sockets for /run/kw/p.sock"},
		{"kms without key", Config{}, []systemd.Socket{unixSock("kms-v2", unix.SOCK_STREAM, "/run/kw/kms.sock")},
			"needs --kms-key NAME"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := tc.cfg
			_, err := sortSockets(&cfg, tc.socks, slog.New(slog.DiscardHandler))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

// TestCheckPassed: every passed Unix socket's directory is checked as
// one the daemon binds in, its real mode is recorded for the log, and a
// mode wider than an explicitly configured socket-mode is refused.
func TestCheckPassed(t *testing.T) {
	bind := func(t *testing.T, dir string, mode os.FileMode) string {
		path := filepath.Join(dir, "s.sock")
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	log := slog.New(slog.DiscardHandler)
	for _, tc := range []struct {
		name       string
		dirMode    os.FileMode
		sockMode   os.FileMode
		socketMode os.FileMode // configured
		want       string      // "" for no error
	}{
		{"default mode", 0o700, 0o666, 0, ""},
		{"same as configured", 0o755, 0o666, 0o666, ""},
		{"narrower than configured", 0o700, 0o660, 0o666, ""},
		{"wider than configured", 0o700, 0o666, 0o600, "has mode 0666, wider than the configured socket-mode 0600"},
		{"other bits than configured", 0o700, 0o606, 0o660, "has mode 0606, wider than the configured socket-mode 0660"},
		{"directory writable by others", 0o777, 0o600, 0, "is writable by others"},
		{"directory sticky", os.ModeSticky | 0o777, 0o600, 0, ""},
	} {
		for _, name := range []string{fdNameHTTP, fdNameKMS, fdNameAgent} {
			t.Run(tc.name+"/"+name, func(t *testing.T) {
				dir := filepath.Join(t.TempDir(), "d")
				if err := os.Mkdir(dir, 0o700); err != nil {
					t.Fatal(err)
				}
				path := bind(t, dir, tc.sockMode)
				if err := os.Chmod(dir, tc.dirMode); err != nil {
					t.Fatal(err)
				}
				cfg := Config{SocketMode: tc.socketMode, KMSKey: "k"}
				socks := []systemd.Socket{unixSock(name, unix.SOCK_STREAM, path)}
				p, err := sortSockets(&cfg, socks, log)
				if err != nil {
					t.Fatal(err)
				}
				err = checkPassed(&cfg, p, socks, log)
				if tc.want == "" {
					if err != nil {
						t.Fatal(err)
					}
					if got := p.modeText(path, 0o600); got != fmt.Sprintf("%04o", tc.sockMode) {
						t.Errorf("logged mode %s, want the socket's %04o", got, tc.sockMode)
					}
					return
				}
				if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.Contains(err.Error(), path) {
					t.Fatalf("got %v, want an error naming %s and containing %q", err, path, tc.want)
				}
			})
		}
	}
}

func TestSameTCP(t *testing.T) {
	for _, tc := range []struct {
		conf, bound string
		want        bool
	}{
		{":8200", "[::]:8200", true},
		{":8200", "0.0.0.0:8200", true},
		{"127.0.0.1:8200", "127.0.0.1:8200", true},
		{"[::1]:8200", "[::1]:8200", true},
		{"127.0.0.1:8200", "127.0.0.1:8201", false},
		{"localhost:8200", "127.0.0.1:8200", false},
		{":8200", "127.0.0.1:8200", false},
	} {
		if got := sameTCP(tc.conf, tc.bound); got != tc.want {
			t.Errorf("sameTCP(%q, %q) = %v", tc.conf, tc.bound, got)
		}
	}
}

// TestPassedListeners: a passed Unix socket is served where systemd
// bound it and stays when the listener closes; a passed TCP socket for
// the transit front is served as TCP.
func TestPassedListeners(t *testing.T) {
	path := filepath.Join(t.TempDir(), "p11.sock")
	ul, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	ul.SetUnlinkOnClose(false)
	uf, err := ul.File()
	if err != nil {
		t.Fatal(err)
	}
	defer uf.Close()
	ul.Close()
	tl, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tf, err := tl.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer tf.Close()
	addr := tl.Addr().String()
	tl.Close()

	p := &passed{
		pkcs11: map[string]*systemd.Socket{path: {FD: int(uf.Fd()), Name: "pkcs11", Type: unix.SOCK_STREAM, Family: unix.AF_UNIX, Path: path}},
		http:   map[string]*systemd.Socket{"tcp:" + addr: {FD: int(tf.Fd()), Name: "http", Type: unix.SOCK_STREAM, Family: unix.AF_INET, Addr: addr}},
	}
	l, err := p.pkcs11Listener(path)
	if err != nil || l == nil {
		t.Fatalf("pkcs11 listener: %v %v", l, err)
	}
	if c, err := net.Dial("unix", path); err != nil {
		t.Errorf("dial the passed Unix socket: %v", err)
	} else {
		c.Close()
	}
	l.Close()
	if fi, err := os.Lstat(path); err != nil || fi.Mode().Type() != os.ModeSocket {
		t.Errorf("the passed socket's file after close: %v", err)
	}
	if l, err := p.pkcs11Listener(filepath.Join(t.TempDir(), "other.sock")); l != nil || err != nil {
		t.Errorf("a path not passed: %v %v", l, err)
	}

	hl, err := p.httpListener("tcp:" + addr)
	if err != nil || hl == nil {
		t.Fatalf("http TCP listener: %v %v", hl, err)
	}
	defer hl.Close()
	if _, ok := hl.(*net.TCPListener); !ok || hl.Addr().String() != addr {
		t.Errorf("http TCP listener: %T at %s, want TCP at %s", hl, hl.Addr(), addr)
	}
	if c, err := net.Dial("tcp", addr); err != nil {
		t.Errorf("dial the passed TCP socket: %v", err)
	} else {
		c.Close()
	}
	var none *passed
	if l, err := none.kmsListener(); l != nil || err != nil {
		t.Errorf("no passed sockets: %v %v", l, err)
	}
}

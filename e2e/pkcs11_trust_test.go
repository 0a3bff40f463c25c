package e2e_test

import (
	"bufio"
	"bytes"
	binenc "encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

// The module sends the daemon PINs, plaintext and data to sign: like the
// Go client, it must refuse a socket another user may have put in place,
// before it sends a byte; and a program that forks and reuses descriptor
// numbers must keep its own files.

// fakeP11Env makes the test binary a fake PKCS #11 daemon serving the
// socket it names, recording what it receives in the file fakeCaptureEnv
// names (and a line per connection in that file's ".conns").
const fakeP11Env = "KEYWARDEN_E2E_FAKE_P11"

func init() {
	sock := os.Getenv(fakeP11Env)
	if sock == "" {
		return
	}
	err := func() error {
		data, err := os.OpenFile(os.Getenv(fakeCaptureEnv), os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		conns, err := os.OpenFile(os.Getenv(fakeCaptureEnv)+".conns", os.O_WRONLY|os.O_APPEND, 0)
		if err != nil {
			return err
		}
		l, err := net.Listen("unix", sock)
		if err != nil {
			return err
		}
		os.Chmod(sock, 0o777)
		fmt.Println("ready")
		var mu sync.Mutex
		serveFakeP11(l, func(b []byte) {
			mu.Lock()
			defer mu.Unlock()
			if b == nil {
				conns.WriteString("connection\n")
			} else {
				data.Write(b)
			}
		})
		return nil
	}()
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake PKCS #11 daemon:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// serveFakeP11 answers the module as a daemon would, just enough for it to
// go on and send a PIN and a signature to verify (which it says is
// valid). record gets nil for each connection and every byte received.
func serveFakeP11(l net.Listener, record func([]byte)) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		record(nil)
		go func() {
			defer c.Close()
			r := io.TeeReader(c, writerFunc(record))
			var v [1]byte
			if _, err := io.ReadFull(r, v[:]); err != nil {
				return
			}
			c.Write([]byte{0})
			for {
				var h [12]byte
				if _, err := io.ReadFull(r, h[:]); err != nil {
					return
				}
				olen, blen := binenc.BigEndian.Uint32(h[4:]), binenc.BigEndian.Uint32(h[8:])
				if olen+blen > 1<<20 || blen < 4 {
					return
				}
				body := make([]byte, olen+blen)
				if _, err := io.ReadFull(r, body); err != nil {
					return
				}
				id := binenc.BigEndian.Uint32(body[olen:])
				sig, extra := "", []byte(nil)
				switch id {
				case 4: // C_GetSlotList: one slot, with a token
					sig, extra = "au", []byte{1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0}
				case 10: // C_OpenSession
					sig, extra = "u", []byte{0, 0, 0, 0, 0, 0, 0, 7}
				}
				out := binenc.BigEndian.AppendUint32(nil, id)
				out = binenc.BigEndian.AppendUint32(out, uint32(len(sig)))
				out = append(append(out, sig...), extra...)
				reply := append(h[:4:4], 0, 0, 0, 0)
				reply = binenc.BigEndian.AppendUint32(reply, uint32(len(out)))
				if _, err := c.Write(append(reply, out...)); err != nil {
					return
				}
			}
		}()
	}
}

type writerFunc func([]byte)

func (w writerFunc) Write(b []byte) (int, error) {
	w(bytes.Clone(b))
	return len(b), nil
}

// startFakeP11 runs a fake PKCS #11 daemon as cred on sock and waits until
// it listens.
func startFakeP11(t *testing.T, cred *syscall.Credential, sock string) *fake {
	t.Helper()
	capDir := openDir(t)
	f := &fake{capture: filepath.Join(capDir, "capture")}
	for _, p := range []string{f.capture, f.capture + ".conns"} {
		if err := os.WriteFile(p, nil, 0o666); err != nil {
			t.Fatal(err)
		}
		os.Chmod(p, 0o666)
	}
	f.cmd = exec.Command(binary(t))
	f.cmd.Env = append(os.Environ(), fakeP11Env+"="+sock, fakeCaptureEnv+"="+f.capture)
	f.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	var stderr syncBuffer
	f.cmd.Stderr = &stderr
	out, err := f.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := f.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		f.cmd.Process.Kill()
		f.cmd.Wait()
	})
	line, err := bufio.NewReader(out).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("fake PKCS #11 daemon did not start: %q %v\n%s", line, err, &stderr)
	}
	return f
}

// p11Host runs p11client as cred (nil: the test's own) with env added.
func p11Host(t *testing.T, cred *syscall.Credential, env []string, args ...string) (string, int) {
	t.Helper()
	e := &p11Env{dir: openDir(t), mod: pkcs11Module(t), extraEnv: env}
	for _, kv := range env {
		if s, ok := strings.CutPrefix(kv, "KEYWARDEN_PKCS11_SOCKET="); ok {
			e.sock = s
		}
	}
	return e.run(t, cred, p11Client(t), append([]string{e.mod}, args...)...)
}

const p11VictimPIN = "victim pin 4c1e"

// The finding: a fake daemon of another user at a path in a directory
// everyone may write to (KEYWARDEN_PKCS11_SOCKET=/tmp/x.sock). The module
// connects, sees by SO_PEERCRED that another uid serves the socket, and
// sends nothing: no C_Initialize, no PIN, no data; the slot shows no
// token, and the refusal names the uid, not the PIN. Named in
// $KEYWARDEN_DAEMON_UID, the same daemon is trusted.
func TestPKCS11RefusesDaemonOfAnotherUser(t *testing.T) {
	requireRoot(t)
	sock := filepath.Join(sharedDir(t), "x.sock")
	f := startFakeP11(t, attacker, sock)
	for _, who := range []struct {
		name string
		cred *syscall.Credential
	}{{"root", nil}, {"victim", victim}} {
		t.Run(who.name, func(t *testing.T) {
			out, code := p11Host(t, who.cred, []string{"KEYWARDEN_PKCS11_SOCKET=" + sock}, "refused", p11VictimPIN)
			if code != 0 {
				t.Fatalf("p11client refused: exit %d\n%s", code, out)
			}
			if want := fmt.Sprintf("served by uid %d", attacker.Uid); !strings.Contains(out, want) {
				t.Fatalf("the refusal does not say %q:\n%s", want, out)
			}
			if strings.Contains(out, p11VictimPIN) {
				t.Fatalf("the PIN was printed:\n%s", out)
			}
		})
	}
	if conns, data := f.received(t); len(data) != 0 {
		t.Fatalf("the fake daemon received %d bytes on %d connections: %q", len(data), conns, data)
	}

	// Trusted by name, the same daemon gets the module's requests: the
	// refusal above is the uid check's.
	out, _ := p11Host(t, nil, []string{"KEYWARDEN_PKCS11_SOCKET=" + sock, "KEYWARDEN_DAEMON_UID=" + strconv.Itoa(int(attacker.Uid))},
		"refused", p11VictimPIN)
	if _, data := f.received(t); !bytes.Contains(data, []byte(p11VictimPIN)) {
		t.Fatalf("with KEYWARDEN_DAEMON_UID naming it, the daemon got no PIN (%d bytes):\n%s", len(data), out)
	}
}

// A daemon the module would trust (root's, here) behind a directory it
// must not: another user's, one everyone may write to without the sticky
// bit, a symbolic link another user made. The module refuses before it
// connects; a directory another user owns is trusted when named.
func TestPKCS11RefusesSocketDirectory(t *testing.T) {
	requireRoot(t)
	base := openDir(t)
	mkdir := func(name string, mode os.FileMode, uid int) string {
		d := filepath.Join(base, name)
		if err := os.Mkdir(d, 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(d, mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chown(d, uid, uid); err != nil {
			t.Fatal(err)
		}
		return d
	}
	attackers := mkdir("attackers", 0o755, int(attacker.Uid))
	open := mkdir("open", 0o777, 0)
	sticky := mkdir("sticky", 0o777|os.ModeSticky, 0)
	closed := mkdir("closed", 0o755, 0)
	link := filepath.Join(base, "link")
	if err := os.Symlink(closed, link); err != nil {
		t.Fatal(err)
	}
	if err := os.Lchown(link, int(attacker.Uid), int(attacker.Uid)); err != nil {
		t.Fatal(err)
	}
	listen := func(t *testing.T, dir string) (func() (conns, n int), string) {
		sock := filepath.Join(dir, "p11.sock")
		l, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { l.Close() })
		var mu sync.Mutex
		var conns, n int
		go serveFakeP11(l, func(b []byte) {
			mu.Lock()
			defer mu.Unlock()
			if b == nil {
				conns++
			}
			n += len(b)
		})
		return func() (int, int) { mu.Lock(); defer mu.Unlock(); return conns, n }, sock
	}
	for _, c := range []struct {
		name, dir, why string
		env            []string
		refused        bool
	}{
		{"another user's", attackers, fmt.Sprintf("belongs to uid %d", attacker.Uid), nil, true},
		{"writable by all", open, "writable by others (mode 0777)", nil, true},
		{"a link another user made", link, fmt.Sprintf("symbolic link made by uid %d", attacker.Uid), nil, true},
		{"sticky", sticky, "", nil, false},
		{"another user's, named", attackers, "", []string{"KEYWARDEN_DAEMON_UID=" + strconv.Itoa(int(attacker.Uid))}, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := c.dir
			if c.dir == link {
				dir = closed
			}
			got, sock := listen(t, dir)
			if c.dir == link {
				sock = filepath.Join(link, "p11.sock")
			}
			env := append([]string{"KEYWARDEN_PKCS11_SOCKET=" + sock}, c.env...)
			out, code := p11Host(t, nil, env, "refused", p11VictimPIN)
			conns, n := got()
			if !c.refused {
				if code == 0 || n == 0 {
					t.Fatalf("a trusted socket was refused (%d bytes sent):\n%s", n, out)
				}
				return
			}
			if code != 0 || !strings.Contains(out, c.why) {
				t.Fatalf("p11client refused: exit %d, want a refusal saying %q:\n%s", code, c.why, out)
			}
			if conns != 0 || n != 0 {
				t.Fatalf("the module connected %d times and sent %d bytes", conns, n)
			}
		})
	}
}

// $KEYWARDEN_DAEMON_UID must be a number: anything else fails
// C_Initialize, never a silent default.
func TestPKCS11DaemonUIDMustBeANumber(t *testing.T) {
	out, code := p11Host(t, nil, []string{"KEYWARDEN_PKCS11_SOCKET=/nonexistent/p11.sock", "KEYWARDEN_DAEMON_UID=keywarden"}, "nodaemon")
	if code == 0 || !strings.Contains(out, "C_Initialize without a daemon: FAILED (rv 0x7)") ||
		!strings.Contains(out, "KEYWARDEN_DAEMON_UID is not a uid") {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

// A daemon that accepts and never answers does not hang the program: with
// KEYWARDEN_PKCS11_TIMEOUT=1 its slot shows no token after a second.
func TestPKCS11HungDaemon(t *testing.T) {
	sock := filepath.Join(openDir(t), "hung.sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			defer c.Close()
		}
	}()
	out, code := p11Host(t, nil, []string{"KEYWARDEN_PKCS11_SOCKET=" + sock, "KEYWARDEN_PKCS11_TIMEOUT=1"}, "nodaemon")
	if code != 0 {
		t.Fatalf("exit %d:\n%s", code, out)
	}
}

// A forked child that daemonizes: it closes descriptors 3 to 63 and opens
// its own file on them before calling C_Initialize. The module closed its
// parent's connection at the fork, so C_Initialize closes none of the
// child's files: every write through them lands.
func TestPKCS11DaemonizingChildKeepsItsFiles(t *testing.T) {
	e := p11Daemon(t, "ecdsa-p256 ec1")
	file := filepath.Join(e.dir, "child.log")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	e.clientRun(t, "daemonize", file)
	b, _ := os.ReadFile(file)
	for fd := 3; fd < 64; fd++ {
		if !bytes.Contains(b, []byte(fmt.Sprintf("fd %d\n", fd))) {
			t.Fatalf("the child's write through descriptor %d is missing:\n%s", fd, b)
		}
	}
}

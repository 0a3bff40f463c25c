package e2e_test

import (
	be "encoding/binary"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"
)

// FuzzPKCS11ModuleReplies fuzzes the module's decoding of the daemon's
// replies. A proxy between the module and a real daemon corrupts one
// reply as the input says (replaces its body, flips bits in it, cuts it
// short, or announces a body longer than it sends); a C host built with
// AddressSanitizer and UndefinedBehaviorSanitizer, loading the module
// built with them, makes calls of every kind (p11client workload). The
// host may get any return value; it must not crash, read or write out of
// bounds, or hang.
//
// Each input starts a daemon and a sanitized host (a second or more on a
// loaded machine, beyond the fuzzing engine's 10 s hang limit at times),
// so the seeds run with every go test of this package and the fuzzing
// is run by hand, for minutes:
//
//	go test -run=NONE -fuzz=FuzzPKCS11ModuleReplies -fuzztime=10m ./e2e
func FuzzPKCS11ModuleReplies(f *testing.F) {
	mod, host := p11Sanitized(f)
	for _, seed := range [][]byte{
		{0, 0},
		{1, 0, 0, 0, 0, 9, 0, 0, 0, 0}, // GetSlotList: an error reply cut short
		{2, 1, 0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff}, // a length flipped
		{3, 2, 5}, // cut short
		{4, 3},    // a body announced longer than sent
		{5, 0, 0, 0, 0, 7, 0, 0, 0, 3, 'a', 'A', 'u', 0, 0, 0, 9}, // GetTokenInfo answered as GetAttributeValue
		{9, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x7f},
		{12, 0, 0, 0, 0, 0x18, 0, 0, 0, 3, 'a', 'A', 'u', 0xff, 0xff, 0xff, 0xff},
		{14, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff},
		{17, 2, 13},
		{20, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0xff},
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		if len(data) < 2 {
			return
		}
		e := p11Daemon(t, "ecdsa-p256 ec1", "ed25519 ed1")
		sock := filepath.Join(e.dir, "proxy.sock")
		stop := corruptingProxy(t, sock, e.sock, data)
		defer stop()
		cmd := exec.Command(host, mod, "workload")
		cmd.Env = append(os.Environ(), "KEYWARDEN_PKCS11_SOCKET="+sock,
			"ASAN_OPTIONS=detect_leaks=0:abort_on_error=0:exitcode=66", "UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1:exitcode=67")
		done := make(chan struct{})
		timer := time.AfterFunc(30*time.Second, func() { cmd.Process.Kill(); close(done) })
		out, err := cmd.CombinedOutput()
		timer.Stop()
		select {
		case <-done:
			t.Fatalf("the host hung on a corrupted reply (%x)", data)
		default:
		}
		if err != nil || strings.Contains(string(out), "Sanitizer") || strings.Contains(string(out), "runtime error") {
			t.Fatalf("the host failed on a corrupted reply (%x): %v\n%s", data, err, out)
		}
	})
}

// corruptingProxy forwards connections on sock to the daemon's socket at
// target, corrupting the reply numbered data[0] (counting every reply of
// every connection) as data[1] says, with data[2:].
func corruptingProxy(t *testing.T, sock, target string, data []byte) func() {
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	var (
		mu      sync.Mutex
		replies int
		conns   []net.Conn
		wg      sync.WaitGroup
	)
	which, mode, arg := int(data[0]), data[1]%4, data[2:]
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			d, err := net.Dial("unix", target)
			if err != nil {
				c.Close()
				continue
			}
			mu.Lock()
			conns = append(conns, c, d)
			mu.Unlock()
			wg.Add(2)
			go func() { defer wg.Done(); io.Copy(d, c); d.(*net.UnixConn).CloseWrite() }()
			go func() {
				defer wg.Done()
				defer c.Close()
				var v [1]byte
				if _, err := io.ReadFull(d, v[:]); err != nil {
					return
				}
				c.Write(v[:])
				for {
					var h [12]byte
					if _, err := io.ReadFull(d, h[:]); err != nil {
						return
					}
					body := make([]byte, be.BigEndian.Uint32(h[4:])+be.BigEndian.Uint32(h[8:]))
					if _, err := io.ReadFull(d, body); err != nil {
						return
					}
					mu.Lock()
					n := replies
					replies++
					mu.Unlock()
					if n == which {
						switch mode {
						case 0: // another body
							body = append([]byte(nil), arg...)
						case 1: // bits flipped
							for i, x := range arg {
								if i < len(body) {
									body[i] ^= x
								}
							}
						case 2: // cut short
							if len(arg) > 0 && int(arg[0]) < len(body) {
								body = body[:arg[0]]
							}
						case 3: // a longer body announced, then the connection closed
							be.BigEndian.PutUint32(h[8:], uint32(len(body)+100))
							c.Write(h[:])
							c.Write(body)
							return
						}
						be.BigEndian.PutUint32(h[4:], 0)
						be.BigEndian.PutUint32(h[8:], uint32(len(body)))
					}
					if _, err := c.Write(append(h[:], body...)); err != nil {
						return
					}
				}
			}()
		}
	}()
	return func() {
		l.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	}
}

var (
	p11SanOnce            sync.Once
	p11SanMod, p11SanHost string
	p11SanErr             error
)

// p11Sanitized builds the module and the C host with AddressSanitizer and
// UndefinedBehaviorSanitizer.
func p11Sanitized(tb testing.TB) (mod, host string) {
	tb.Helper()
	if _, err := exec.LookPath("cc"); err != nil {
		if os.Getenv("KEYWARDEN_PKCS11_TEST") == "require" {
			tb.Fatal("no C compiler")
		}
		tb.Skip("no C compiler")
	}
	p11SanOnce.Do(func() {
		dir, err := os.MkdirTemp("", "keywarden-p11san-")
		if err != nil {
			p11SanErr = err
			return
		}
		os.Chmod(dir, 0o755)
		_, file, _, _ := runtime.Caller(0)
		root := filepath.Join(filepath.Dir(file), "..")
		san := []string{"-g", "-O1", "-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer",
			"-Wall", "-Wextra", "-Werror", "-I/usr/include/p11-kit-1"}
		p11SanMod = filepath.Join(dir, "libkeywarden-pkcs11.so")
		p11SanHost = filepath.Join(dir, "p11client")
		for _, args := range [][]string{
			append(append([]string{}, san...), "-fPIC", "-shared", "-fvisibility=hidden", "-o", p11SanMod,
				filepath.Join(root, "pkcs11", "keywarden-pkcs11.c"), "-lpthread"),
			append(append([]string{}, san...), "-o", p11SanHost, filepath.Join(root, "e2e", "testdata", "pkcs11", "p11client.c"), "-ldl", "-lpthread"),
		} {
			if out, err := exec.Command("cc", args...).CombinedOutput(); err != nil {
				p11SanErr = fmt.Errorf("cc %s: %v\n%s", strings.Join(args, " "), err, out)
				return
			}
		}
	})
	if p11SanErr != nil {
		tb.Fatal(p11SanErr)
	}
	return p11SanMod, p11SanHost
}

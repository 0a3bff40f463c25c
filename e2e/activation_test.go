package e2e_test

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	kmsapi "k8s.io/kms/apis/v2"

	keywarden "github.com/keywarden/keywarden"
)

// TestSocketActivationFronts: the PKCS #11, transit HTTP and KMS v2
// sockets systemd passes, named pkcs11, http and kms-v2, are served by
// those fronts though no --pkcs11, --http or --kms-v2 names them; each
// answers a request, and each stays when the daemon stops.
func TestSocketActivationFronts(t *testing.T) {
	sa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no systemd-socket-activate (package systemd): scripts/test.sh installs it")
		}
		t.Skip("no systemd-socket-activate (package systemd): scripts/test.sh installs it")
	}
	mod := pkcs11Module(t)
	p11tool := needTool(t, "pkcs11-tool")
	dir := openDir(t)
	main := filepath.Join(dir, "main.sock")
	p11, httpSock, kms := filepath.Join(dir, "p11.sock"), filepath.Join(dir, "http.sock"), filepath.Join(dir, "kms.sock")
	// The outer activator passes the three stream sockets to the inner
	// one, which adds the main socket and names all four.
	cmd := exec.Command(sa, "-l", p11, "-l", httpSock, "-l", kms, "--fdname=pkcs11:http:kms-v2",
		sa, "--seqpacket", "-l", main, "--fdname=pkcs11:http:kms-v2:keywarden", "-E", mainEnv+"=1",
		binary(t), "serve", "--dev", "--socket", main, "--kms-key", "kek", "--log-level", "debug")
	d := startActivated(t, cmd, httpSock, main)
	log := d.log
	cl := d.client(t)
	generate(t, cl, keywarden.KeySpec{Type: keywarden.Ed25519, Name: "activated", Usage: keywarden.UsageSign | keywarden.UsageVerify})
	generate(t, cl, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "kek", Usage: keywarden.UsageEncrypt | keywarden.UsageDecrypt})

	// PKCS #11: the module lists the caller's key.
	p := exec.Command(p11tool, "--module", mod, "-O")
	p.Env = append(os.Environ(), "KEYWARDEN_PKCS11_SOCKET="+p11)
	if out, err := p.CombinedOutput(); err != nil || !strings.Contains(string(out), "activated") {
		t.Errorf("pkcs11-tool -O on the passed socket: %v\n%s\n%s", err, out, log)
	}

	// Transit HTTP: the key's description.
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, "unix", httpSock)
	}}}
	resp, err := hc.Get("http://keywarden/v1/transit/keys/activated")
	if err != nil {
		t.Fatalf("GET over the passed http socket: %v\n%s", err, log)
	}
	var info struct {
		Data struct {
			Name string `json:"name"`
		} `json:"data"`
	}
	err = json.NewDecoder(resp.Body).Decode(&info)
	resp.Body.Close()
	if err != nil || resp.StatusCode != http.StatusOK || info.Data.Name != "activated" {
		t.Errorf("GET keys/activated over the passed socket: %d %v %+v", resp.StatusCode, err, info)
	}
	hc.CloseIdleConnections()

	// KMS v2: Status, healthy with the key.
	cc, err := grpc.NewClient("unix://"+kms, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	st, err := kmsapi.NewKeyManagementServiceClient(cc).Status(ctx, &kmsapi.StatusRequest{})
	cc.Close()
	if err != nil || st.Healthz != "ok" || st.Version != "v2" {
		t.Errorf("KMS v2 Status over the passed socket: %v %v\n%s", st, err, log)
	}

	d.stop()
	for _, p := range []string{main, p11, httpSock, kms} {
		if fi, err := os.Lstat(p); err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("%s after the daemon stopped: %v (systemd's socket must stay)", p, err)
		}
	}
}

// TestSocketActivationRefused: a passed socket that its front cannot
// serve stops the daemon at start, saying what is missing or wrong: a
// KMS v2 socket without --kms-key, a TCP http socket without the TLS
// settings, a pkcs11 socket that is not a stream socket.
func TestSocketActivationRefused(t *testing.T) {
	sa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("no systemd-socket-activate")
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tcpAddr := l.Addr().String()
	l.Close()
	dir := openDir(t)
	for _, tc := range []struct {
		name, listen string
		args         []string
		want         string
		serve        []string // more flags of serve
	}{
		{"kms without key", filepath.Join(dir, "kms.sock"), []string{"--fdname=kms-v2"}, "needs --kms-key NAME", nil},
		{"tcp without tls", tcpAddr, []string{"--fdname=http"}, "needs --http-tls-cert, --http-tls-key, --http-client-ca and --http-principals", nil},
		{"pkcs11 seqpacket", filepath.Join(dir, "p11.sock"), []string{"--seqpacket", "--fdname=pkcs11"}, "the pkcs11 socket must be stream", nil},
		{"http abstract", "@keywarden-e2e-" + strconv.Itoa(os.Getpid()), []string{"--fdname=http"}, "not a Unix socket bound to an absolute path", nil},
		{"mode wider than socket-mode", filepath.Join(dir, "agent.sock"), []string{"--fdname=ssh-agent"}, "wider than the configured socket-mode 0600",
			[]string{"--socket-mode", "0600"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := append(append([]string{"-l", tc.listen}, tc.args...), "-E", mainEnv+"=1",
				binary(t), "serve", "--dev", "--socket", filepath.Join(dir, "kw.sock"))
			// A daemon that wrongly serves the socket is stopped, and fails.
			ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, sa, append(args, tc.serve...)...)
			var out bytes.Buffer
			cmd.Stderr = &out
			if err := cmd.Start(); err != nil {
				t.Fatal(err)
			}
			network := "unix"
			if tc.listen == tcpAddr {
				network = "tcp"
			} else if slices.Contains(tc.args, "--seqpacket") {
				network = "unixpacket"
			}
			for i := 0; i < 200; i++ {
				if c, err := net.Dial(network, tc.listen); err == nil {
					c.Close()
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			err := cmd.Wait()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(out.String(), tc.want) {
				t.Fatalf("want exit 1 saying %q: %v\n%s", tc.want, err, out.String())
			}
		})
	}
}

// TestSocketActivationForeignFDs: descriptors the daemon inherits that
// are not its own (here with $LISTEN_PID naming another process, so the
// daemon takes none of them) are close-on-exec in the daemon, so that
// neither the key derivation workers nor the askpass program inherit
// them.
func TestSocketActivationForeignFDs(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	sock := filepath.Join(openDir(t), "kw.sock")
	d := &daemon{t: t, sock: sock, log: &syncBuffer{}, done: make(chan error, 1)}
	d.cmd = exec.Command(binary(t), "serve", "--dev", "--socket", sock, "--log-level", "debug")
	d.cmd.Env = append(os.Environ(), mainEnv+"=1", "LISTEN_PID=1", "LISTEN_FDS=1", "LISTEN_FDNAMES=keywarden")
	d.cmd.ExtraFiles = []*os.File{w} // descriptor 3, without close-on-exec
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(d.stop)
	d.waitReady()

	pid := strconv.Itoa(d.cmd.Process.Pid)
	target, err := os.Readlink("/proc/" + pid + "/fd/3")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(int(w.Fd())))
	if target != want {
		t.Fatalf("the daemon's descriptor 3 is %s, want the inherited pipe %s", target, want)
	}
	info, err := os.ReadFile("/proc/" + pid + "/fdinfo/3")
	if err != nil {
		t.Fatal(err)
	}
	var flags string
	for line := range strings.Lines(string(info)) {
		if v, ok := strings.CutPrefix(line, "flags:"); ok {
			flags = strings.TrimSpace(v)
		}
	}
	f, err := strconv.ParseUint(flags, 8, 64)
	if err != nil {
		t.Fatalf("fdinfo flags %q: %v", flags, err)
	}
	if f&syscall.O_CLOEXEC == 0 {
		t.Errorf("the inherited descriptor 3 is not close-on-exec in the daemon (flags %s): its children would inherit it", flags)
	}
}

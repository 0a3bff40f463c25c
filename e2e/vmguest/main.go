package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden"
	"github.com/keywarden/keywarden/internal/cli"
	"github.com/keywarden/keywarden/internal/kdf"
)

const (
	socketPath = "/run/keywarden/keywarden.sock"
	agentTTY   = "/dev/ttyS1"

	// A second daemon runs as an ordinary user, without CAP_SYS_ADMIN: it
	// cannot make the kernel re-seed, nor read the kernel log or the VM
	// generation ID. userAdmin may bump its generation, and cannot make
	// the kernel re-seed either.
	userSocket = "/run/kwuser/keywarden.sock"
	userUID    = 1000
	userAdmin  = 1001
)

func main() {
	if os.Getpid() != 1 {
		if kdf.IsWorker(os.Args) {
			os.Exit(kdf.WorkerMain())
		}
		os.Exit(cli.Main(os.Args[1:], os.Stdin, os.Stdout, os.Stderr))
	}
	if err := initMain(); err != nil {
		fmt.Fprintf(os.Stderr, "vmguest: %v\n", err)
	}
	unix.Reboot(unix.LINUX_REBOOT_CMD_POWER_OFF)
}

func logf(format string, args ...any) {
	fmt.Fprintf(os.Stderr, "vmguest: "+format+"\n", args...)
}

func initMain() error {
	for _, m := range []struct{ src, dst, typ string }{
		{"proc", "/proc", "proc"}, {"sysfs", "/sys", "sysfs"}, {"devtmpfs", "/dev", "devtmpfs"},
		{"tmpfs", "/run", "tmpfs"}, {"tmpfs", "/tmp", "tmpfs"},
	} {
		os.MkdirAll(m.dst, 0o755)
		if err := unix.Mount(m.src, m.dst, m.typ, 0, ""); err != nil {
			return fmt.Errorf("mount %s: %w", m.dst, err)
		}
	}
	go reap()
	if f, err := os.Open("/qemu_fw_cfg.ko"); err == nil {
		err := unix.FinitModule(int(f.Fd()), "", 0)
		f.Close()
		logf("loading qemu_fw_cfg: %v", err)
	}
	daemon := exec.Command("/bin/keywarden", "serve", "--dev", "--socket", socketPath, "--log-level", "debug")
	daemon.Stdout, daemon.Stderr = os.Stderr, os.Stderr
	if err := daemon.Start(); err != nil {
		return fmt.Errorf("start the daemon: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(userSocket), 0o711); err != nil {
		return err
	}
	os.Chown(filepath.Dir(userSocket), userUID, userUID)
	user := exec.Command("/bin/keywarden", "serve", "--dev", "--socket", userSocket, "--socket-mode", "0666", "--log-level", "debug",
		"--generation-admin", strconv.Itoa(userAdmin))
	user.Stdout, user.Stderr = os.Stderr, os.Stderr
	user.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: userUID, Gid: userUID}}
	if err := user.Start(); err != nil {
		return fmt.Errorf("start the user's daemon: %w", err)
	}
	tty, err := os.OpenFile(agentTTY, os.O_RDWR|unix.O_NOCTTY, 0)
	if err != nil {
		return err
	}
	if err := rawTTY(int(tty.Fd())); err != nil {
		return err
	}
	a := &agent{out: json.NewEncoder(tty)}
	ctx := context.Background()
	if err := a.connect(ctx); err != nil {
		return err
	}
	a.out.Encode(map[string]any{"event": "ready"})
	in := bufio.NewScanner(tty)
	in.Buffer(make([]byte, 1<<16), 1<<20)
	for in.Scan() {
		line := bytes.TrimSpace(in.Bytes())
		if len(line) == 0 || line[0] != '{' {
			continue
		}
		var req request
		if err := json.Unmarshal(line, &req); err != nil {
			a.out.Encode(reply{Error: "bad request: " + err.Error()})
			continue
		}
		data, err := a.do(ctx, req)
		rep := reply{ID: req.ID, Data: data}
		if err != nil {
			rep.Error = err.Error()
			rep.Code = keywarden.CodeOf(err).String()
		}
		a.out.Encode(rep)
	}
	return in.Err()
}

// reap collects the exit status of orphans, as init must.
func reap() {
	ch := make(chan os.Signal, 16)
	signal.Notify(ch, syscall.SIGCHLD)
	for range ch {
		for {
			var ws unix.WaitStatus
			if pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil); pid <= 0 || err != nil {
				break
			}
		}
	}
}

// rawTTY makes the serial line carry bytes unchanged: no echo, no line
// editing, no newline translation.
func rawTTY(fd int) error {
	t, err := unix.IoctlGetTermios(fd, unix.TCGETS)
	if err != nil {
		return err
	}
	t.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	t.Oflag &^= unix.OPOST
	t.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	t.Cflag &^= unix.CSIZE | unix.PARENB
	t.Cflag |= unix.CS8
	t.Cc[unix.VMIN], t.Cc[unix.VTIME] = 1, 0
	return unix.IoctlSetTermios(fd, unix.TCSETS, t)
}

type request struct {
	ID   int      `json:"id"`
	Cmd  string   `json:"cmd"`
	Args []string `json:"args"`
}

type reply struct {
	ID    int    `json:"id"`
	Data  any    `json:"data,omitempty"`
	Error string `json:"error,omitempty"`
	Code  string `json:"code,omitempty"`
}

// agent holds a client whose state (a key, an open session, the mapped
// generation page) lives through the snapshot; and a client of the user's
// daemon, with a key.
type agent struct {
	out    *json.Encoder
	c      *keywarden.Client
	key    *keywarden.Key
	stream *keywarden.Stream
	page   *keywarden.GenerationPage
	gen0   uint64
	uc     *keywarden.Client
	ukey   *keywarden.Key
}

func (a *agent) connect(ctx context.Context) error {
	var err error
	if a.c, err = dial(ctx, socketPath, 0); err != nil {
		return err
	}
	a.uc, err = dial(ctx, userSocket, userUID)
	return err
}

func dial(ctx context.Context, path string, uid uint32) (*keywarden.Client, error) {
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := keywarden.DialWithOptions(ctx, path, &keywarden.DialOptions{DaemonUID: uid})
		if err == nil {
			return c, nil
		}
		if time.Now().After(deadline) {
			return nil, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// nonce encrypts with k and returns the key version and, in hex, the
// 12-byte nonce the daemon chose.
func nonce(ctx context.Context, k *keywarden.Key) (any, error) {
	pt := []byte("after the restore")
	ct, err := k.Encrypt(ctx, pt, nil)
	if err != nil {
		return nil, err
	}
	// "KW" 1, the version (4 bytes), then the nonce, right before the
	// ciphertext and its 16-byte tag.
	end := len(ct) - len(pt) - 16
	if end != 7+12 || string(ct[:3]) != "KW\x01" {
		return nil, fmt.Errorf("a ciphertext of %d bytes: %x", len(ct), ct)
	}
	return map[string]any{"version": binary.BigEndian.Uint32(ct[3:7]), "nonce": hex.EncodeToString(ct[end-12 : end])}, nil
}

// runCLI runs the command line as uid (0: root) against the daemon at sock.
func runCLI(ctx context.Context, uid int, sock string, daemonUID int, args []string) (any, error) {
	cmd := exec.CommandContext(ctx, "/bin/keywarden", args...)
	cmd.Env = []string{"KEYWARDEN_SOCKET=" + sock}
	if daemonUID != 0 {
		cmd.Env = append(cmd.Env, "KEYWARDEN_DAEMON_UID="+strconv.Itoa(daemonUID))
	}
	if uid != 0 {
		cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}}
	}
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		return nil, err
	}
	return map[string]any{"stdout": out.String(), "stderr": errb.String(), "code": code}, nil
}

func (a *agent) do(ctx context.Context, req request) (any, error) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	arg := func(i int) string {
		if i < len(req.Args) {
			return req.Args[i]
		}
		return ""
	}
	switch req.Cmd {
	case "setup":
		// A persistent AES key, an HMAC stream left open, and the page.
		var err error
		if a.key, err = a.c.Generate(ctx, keywarden.KeySpec{Name: "k", Type: keywarden.AES256GCM}); err != nil {
			return nil, err
		}
		mac, err := a.c.Generate(ctx, keywarden.KeySpec{Name: "m", Type: keywarden.HMACSHA256})
		if err != nil {
			return nil, err
		}
		// The stream keeps its context: one that outlives this command.
		if a.stream, err = mac.NewMAC(context.Background()); err != nil {
			return nil, err
		}
		if _, err := a.stream.Write([]byte("before the snapshot")); err != nil {
			return nil, err
		}
		if a.page, err = a.c.MapGeneration(ctx); err != nil {
			return nil, err
		}
		if a.ukey, err = a.uc.Generate(ctx, keywarden.KeySpec{Name: "u", Type: keywarden.AES256GCM}); err != nil {
			return nil, fmt.Errorf("the user's daemon: %w", err)
		}
		g, err := a.c.Generation(ctx)
		if err != nil {
			return nil, err
		}
		a.gen0 = g.Generation
		// The kernel's generator re-seeds now, so that its next scheduled
		// re-seed (every few seconds this early after boot, a minute later
		// on) is as far as it can be from the restores: in the clones
		// whose kernel does not learn of the restore, getrandom then
		// returns the same bytes for as long as the test needs.
		if f, err := os.OpenFile("/dev/urandom", os.O_WRONLY, 0); err == nil {
			unix.IoctlSetInt(int(f.Fd()), unix.RNDRESEEDCRNG, 0)
			f.Close()
		}
		return g, nil
	case "generation":
		return a.c.Generation(ctx)
	case "wait":
		after, _ := strconv.ParseUint(arg(0), 10, 64)
		d, _ := time.ParseDuration(arg(1))
		wctx, cancel := context.WithTimeout(ctx, d)
		defer cancel()
		return a.c.WatchGeneration(wctx, after, "")
	case "page":
		g, changed, live := a.page.Read()
		return map[string]any{"generation": g, "changed": changed, "live": live}, nil
	case "stream":
		// The session opened before the snapshot.
		if _, err := a.stream.Write([]byte("after")); err != nil {
			return nil, err
		}
		return a.stream.Sum()
	case "pinned":
		// A request pinned to the generation of the setup.
		return a.key.Encrypt(keywarden.WithGeneration(ctx, a.gen0), []byte("pinned"), nil)
	case "encrypt":
		return nonce(ctx, a.key)
	case "newkey":
		k, err := a.c.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
		if err != nil {
			return nil, err
		}
		return k.Info().ID.String(), nil
	case "cli":
		return runCLI(ctx, 0, socketPath, 0, req.Args)
	// The user's daemon.
	case "user-cli":
		// As root, or as the user who may bump its generation.
		if len(req.Args) < 2 {
			return nil, errors.New("user-cli root|admin ARGS...")
		}
		uid := 0
		if arg(0) == "admin" {
			uid = userAdmin
		}
		return runCLI(ctx, uid, userSocket, userUID, req.Args[1:])
	case "user-encrypt":
		return nonce(ctx, a.ukey)
	case "user-newkey":
		k, err := a.uc.Generate(ctx, keywarden.KeySpec{Type: keywarden.AES256GCM, Ephemeral: true})
		if err != nil {
			return nil, err
		}
		return k.Info().ID.String(), nil
	case "user-generation":
		return a.uc.Generation(ctx)
	case "getrandom":
		// What the kernel's generator gives now (equal in two clones until
		// either re-seeds), and the guest's uptime.
		b := make([]byte, 16)
		if _, err := unix.Getrandom(b, 0); err != nil {
			return nil, err
		}
		up, _ := os.ReadFile("/proc/uptime")
		return hex.EncodeToString(b) + " uptime " + string(bytes.TrimSpace(up)), nil
	case "cpu-random":
		b, err := os.ReadFile("/proc/cpuinfo")
		if err != nil {
			return nil, err
		}
		return bytes.Contains(b, []byte(" rdrand")) || bytes.Contains(b, []byte(" rdseed")), nil
	case "kmsg":
		return readKmsg()
	case "file":
		b, err := os.ReadFile(arg(0))
		if err != nil {
			return nil, err
		}
		return base64.StdEncoding.EncodeToString(b), nil
	}
	return nil, fmt.Errorf("unknown command %q", req.Cmd)
}

// readKmsg returns every record in the kernel log, one read each, as the
// daemon sees them.
func readKmsg() ([]string, error) {
	fd, err := unix.Open("/dev/kmsg", unix.O_RDONLY|unix.O_NONBLOCK|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	var recs []string
	buf := make([]byte, 16<<10)
	for {
		n, err := unix.Read(fd, buf)
		if err == unix.EAGAIN {
			return recs, nil
		}
		if err == unix.EPIPE || err == unix.EINTR {
			continue
		}
		if err != nil {
			return recs, err
		}
		recs = append(recs, string(buf[:n]))
	}
}

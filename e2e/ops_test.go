package e2e_test

import (
	"bytes"
	"context"
	"crypto"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/keywarden/keywarden"
)

// notifyListener is a NOTIFY_SOCKET as systemd makes one: a datagram
// socket that collects what the daemon sends.
type notifyListener struct {
	path string
	ch   chan string
}

func newNotifyListener(t *testing.T) *notifyListener {
	t.Helper()
	path := filepath.Join(t.TempDir(), "notify")
	c, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	n := &notifyListener{path: path, ch: make(chan string, 1024)}
	go func() {
		buf := make([]byte, 4096)
		for {
			k, err := c.Read(buf)
			if err != nil {
				close(n.ch)
				return
			}
			n.ch <- string(buf[:k])
		}
	}()
	return n
}

// wait returns the first message containing want, within 10 seconds.
func (n *notifyListener) wait(t *testing.T, want string) string {
	t.Helper()
	deadline := time.After(10 * time.Second)
	var seen []string
	for {
		select {
		case m, ok := <-n.ch:
			if !ok {
				t.Fatalf("notify socket closed before %q; saw %q", want, seen)
			}
			if strings.Contains(m, want) {
				return m
			}
			seen = append(seen, m)
		case <-deadline:
			t.Fatalf("no notification with %q within 10s; saw %q", want, seen)
		}
	}
}

// TestSystemdNotify: started as a Type=notify service, the daemon says
// READY=1 once it serves, keeps STATUS= up to date with its seal state
// and key count, pings the watchdog at half WATCHDOG_USEC, and says
// STOPPING=1 when told to stop.
func TestSystemdNotify(t *testing.T) {
	n := newNotifyListener(t)
	t.Setenv("NOTIFY_SOCKET", n.path)
	t.Setenv("WATCHDOG_USEC", "400000")
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state)
	// The daemon started with no master key.
	if m := n.wait(t, "READY=1"); !strings.Contains(m, "STATUS=no master key yet") {
		t.Errorf("ready: %q", m)
	}
	start := time.Now()
	n.wait(t, "WATCHDOG=1")
	n.wait(t, "WATCHDOG=1")
	if el := time.Since(start); el > 2*time.Second {
		t.Errorf("two watchdog pings took %v with WATCHDOG_USEC=400ms", el)
	}
	initStore(t, d, passFile)
	n.wait(t, "STATUS=serving 0 keys")
	c := d.client(t)
	generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: "k"})
	n.wait(t, "STATUS=serving 1 keys")
	if r := d.runCLI(t, nil, nil, "seal"); r.code != 0 {
		t.Fatalf("seal: %s", r)
	}
	n.wait(t, "STATUS=sealed, waiting for unseal")
	d.stop()
	n.wait(t, "STOPPING=1")
	// The daemon's children are not told to talk to systemd.
	if strings.Contains(d.log.String(), "cannot notify") {
		t.Errorf("notification errors:\n%s", d.log)
	}
}

// TestSocketActivation: systemd-socket-activate passes the main
// SOCK_SEQPACKET socket and an ssh-agent stream socket, as the shipped
// socket units do; the daemon serves both, a client's request succeeds,
// and at exit the daemon leaves the sockets, which are systemd's.
func TestSocketActivation(t *testing.T) {
	sa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no systemd-socket-activate (package systemd): scripts/test.sh installs it")
		}
		t.Skip("no systemd-socket-activate (package systemd): scripts/test.sh installs it")
	}
	dir := openDir(t)
	main, agent := filepath.Join(dir, "main.sock"), filepath.Join(dir, "agent.sock")
	// The outer activator passes the agent socket to the inner one, which
	// adds the main socket; both then reach the daemon, in that order.
	cmd := exec.Command(sa, "-l", agent, "--fdname=ssh-agent",
		sa, "--seqpacket", "-l", main, "--fdname=ssh-agent:keywarden", "-E", mainEnv+"=1",
		binary(t), "serve", "--dev", "--socket", filepath.Join(dir, "configured.sock"), "--log-level", "debug")
	d := startActivated(t, cmd, agent, main)
	log := d.log
	cl := d.client(t)
	k := generate(t, cl, keywarden.KeySpec{Type: keywarden.Ed25519, Name: "activated", Usage: keywarden.UsageSign | keywarden.UsageVerify})
	if _, err := k.SignMessageContext(ctx, []byte("hello"), crypto.Hash(0)); err != nil {
		t.Fatalf("sign through the passed socket: %v", err)
	}
	st := status(t, cl)
	if len(st.SSHAgentSockets) != 1 || st.SSHAgentSockets[0] != agent {
		t.Errorf("ssh-agent sockets: %q, want the passed one", st.SSHAgentSockets)
	}
	if sshAdd, err := exec.LookPath("ssh-add"); err == nil {
		cmd := exec.Command(sshAdd, "-l")
		cmd.Env = append(os.Environ(), "SSH_AUTH_SOCK="+agent)
		out, _ := cmd.CombinedOutput()
		if !strings.Contains(string(out), "no identities") {
			t.Errorf("ssh-add -l on the passed agent socket: %s", out)
		}
	}
	if !strings.Contains(log.String(), "serving the socket systemd passed") {
		t.Errorf("the daemon did not say it serves the passed socket:\n%s", log)
	}
	d.stop()
	for _, p := range []string{main, agent} {
		if fi, err := os.Lstat(p); err != nil || fi.Mode().Type() != os.ModeSocket {
			t.Errorf("%s after the daemon stopped: %v (systemd's socket must stay)", p, err)
		}
	}
	if _, err := os.Lstat(filepath.Join(dir, "configured.sock")); err == nil {
		t.Errorf("the daemon bound the configured socket too")
	}
}

// TestSocketActivationUnknown: a passed socket that is neither the main
// socket nor an ssh-agent one stops the daemon at start, naming it.
func TestSocketActivationUnknown(t *testing.T) {
	sa, err := exec.LookPath("systemd-socket-activate")
	if err != nil {
		t.Skip("no systemd-socket-activate")
	}
	dir := openDir(t)
	other := filepath.Join(dir, "other.sock")
	cmd := exec.Command(sa, "-l", other, "--fdname=metrics", "-E", mainEnv+"=1",
		binary(t), "serve", "--dev", "--socket", filepath.Join(dir, "kw.sock"))
	var out bytes.Buffer
	cmd.Stderr = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		if c, err := net.Dial("unix", other); err == nil {
			c.Close()
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	err = cmd.Wait()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(out.String(), `does not serve: "metrics"`) {
		t.Fatalf("want exit 1 naming the socket: %v\n%s", err, out.String())
	}
}

// serveCheck runs "keywarden serve --check-config" with args.
func serveCheck(t *testing.T, args ...string) cliResult {
	t.Helper()
	d := &daemon{t: t}
	return d.runCLI(t, nil, nil, append([]string{"serve", "--check-config"}, args...)...)
}

func writeConf(t *testing.T, text string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "keywarden.conf")
	if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

// settingLines returns the key = value lines of a printed configuration.
func settingLines(out string) map[string]string {
	m := map[string]string{}
	for _, l := range strings.Split(out, "\n") {
		if k, v, ok := strings.Cut(l, " = "); ok && !strings.HasPrefix(l, "#") {
			m[k] = v
		}
	}
	return m
}

// confValues are values other than the defaults for every serve setting
// but dev and generation-budget-policy (TestConfigRoundTrip checks those
// apart): valid for --check-config together, not for a daemon to start
// with. A setting added to serve needs a line here, or the test fails.
var confValues = map[string]string{
	"admin": `["1000", "1001"]`, "admin-connections": "8", "audit-burst-per-uid": `"2097152"`,
	"audit-log": `"/var/log/keywarden/audit.log"`, "audit-rate-per-uid": `"524288"`, "audit-sync": `"always"`,
	"distrust-cpu-random": "true", "generation-admin": `["1002"]`, "generation-sources": `"kmsg,vmclock"`,
	"generation-watcher": `["1003", "1004"]`, "heavy-slots": "3", "insecure-master-kdf": "true",
	"kdf-cgroup": `"off"`, "kdf-deadline": `"30s"`, "kdf-max-memory": `"262144"`, "kdf-memory-budget": "300000",
	"kdf-nice": "10", "kdf-queue": "32", "kdf-queue-per-uid": "4", "kdf-running-per-uid": "2", "kdf-watchdog": `"2s"`,
	"key-cache-idle": `"5s"`, "log-format": `"json"`, "log-level": `"warn"`, "max-batch-ops": "1024",
	"max-computing-per-uid": "2", "max-connections": "512", "max-connections-per-uid": "32", "max-handles": "2048",
	"max-heavy-per-uid": "1", "max-in-flight": "32", "max-in-flight-per-uid": "128", "max-keys-per-user": "500",
	"max-locked-memory": `"64M"`, "max-long-polls-per-uid": "16", "max-message-bytes": "131072",
	"max-named-watchers-per-uid": "8", "max-request-memory-per-uid": `"8388608"`, "max-sessions": "16",
	"max-sessions-per-uid": "256", "shm-max-bytes": `"33554432"`, "shm-bytes-per-uid": `"134217728"`, "memory-backing": `"mlock"`, "metrics": `"unix:/run/keywarden/metrics.sock"`,
	"socket": `"/run/keywarden/keywarden.sock"`, "socket-mode": `"0660"`, "ssh-agent": `["/run/keywarden/ssh-agent.sock"]`,
	"ssh-askpass": `"/usr/bin/ssh-askpass"`, "state": `"/var/lib/keywarden"`, "unseal-passphrase-file": `"/etc/keywarden/pass"`,
	"store": `"etcd"`, "etcd-endpoints": `"https://10.0.0.1:2379,https://10.0.0.2:2379"`, "etcd-prefix": `"/kw/prod/"`,
	"etcd-ca": `"/etc/keywarden/etcd-ca.pem"`, "etcd-cert": `"/etc/keywarden/etcd-client.pem"`,
	"etcd-key": `"/etc/keywarden/etcd-client-key.pem"`, "etcd-max-request-bytes": "1048576", "etcd-max-txn-ops": "64",
	"etcd-stale-bound": `"2s"`, "etcd-timeout": `"3s"`,
	"http": `["unix:/run/keywarden/transit.sock", "tcp:127.0.0.1:8200"]`, "http-client-ca": `"/etc/keywarden/http-client-ca.pem"`,
	"http-max-batch": "500", "http-max-body": `"2097152"`, "http-max-conns-per-addr": "16", "http-prefix": `"/v1/kw-transit/"`,
	"http-principals": `"/etc/keywarden/http-principals"`, "http-tls-cert": `"/etc/keywarden/http.pem"`,
	"http-tls-key": `"/etc/keywarden/http-key.pem"`, "kms-key": `"kube-secrets"`, "kms-v2": `"/run/keywarden/kms.sock"`,
	"pkcs11": `["/run/keywarden/pkcs11.sock"]`,
}

// TestConfigRoundTrip: every setting written in a config file, each with
// a value other than its default, comes out of --check-config as written,
// and the printed configuration read back prints the same. dev, which
// takes no state, is read from a file of its own; generation-budget-policy,
// removed, is refused from a file as from the command line.
func TestConfigRoundTrip(t *testing.T) {
	def := serveCheck(t)
	if def.code != 0 {
		t.Fatalf("defaults: %s", def)
	}
	all := settingLines(def.stdout)
	if len(all) < 40 {
		t.Fatalf("only %d settings printed:\n%s", len(all), def.stdout)
	}
	var b strings.Builder
	b.WriteString("# every setting\n")
	for k, v := range all {
		if k == "dev" || k == "generation-budget-policy" {
			continue // --dev takes no --state; the removed flag is refused
		}
		cv, ok := confValues[k]
		if !ok || cv == v {
			t.Errorf("setting %s has no value other than its default (%s) in confValues", k, v)
		} else {
			v = cv
		}
		fmt.Fprintf(&b, "%s = %s\n", k, v)
		all[k] = v
	}
	for k := range confValues {
		if _, ok := all[k]; !ok {
			t.Errorf("setting %s is no longer printed", k)
		}
	}
	r := serveCheck(t, "--config", writeConf(t, b.String()))
	if r.code != 0 {
		t.Fatalf("check: %s", r)
	}
	got := settingLines(r.stdout)
	for k, v := range all {
		if k == "dev" || k == "generation-budget-policy" {
			continue
		}
		if got[k] != v {
			t.Errorf("%s: wrote %s, printed %s", k, v, got[k])
		}
	}
	again := serveCheck(t, "--config", writeConf(t, r.stdout))
	if again.code != 0 || settingLines(again.stdout)["max-in-flight"] != "32" {
		t.Fatalf("the printed configuration read back: %s", again)
	}
	if strings.Join(strings.Split(again.stdout, "\n")[1:], "\n") != strings.Join(strings.Split(r.stdout, "\n")[1:], "\n") {
		t.Errorf("read back, the configuration prints differently:\n%s\n---\n%s", r.stdout, again.stdout)
	}

	if all["dev"] != "false" {
		t.Fatalf("dev prints as %q by default", all["dev"])
	}
	if r := serveCheck(t, "--config", writeConf(t, "dev = true\n")); r.code != 0 || settingLines(r.stdout)["dev"] != "true" {
		t.Errorf("dev = true: %s", r)
	}
	if all["generation-budget-policy"] != `""` {
		t.Fatalf("generation-budget-policy prints as %s by default", all["generation-budget-policy"])
	}
	if r := serveCheck(t, "--config", writeConf(t, "generation-budget-policy = \"refuse\"\n")); r.code == 0 ||
		!strings.Contains(r.stderr, "--generation-budget-policy no longer exists") {
		t.Errorf("generation-budget-policy in a file is not refused: %s", r)
	}
}

// TestConfigErrors: an unknown key, a table, a value of the wrong form and
// bad TOML each stop serve with the file, the line and the key; a flag
// given on the command line wins over the file.
func TestConfigErrors(t *testing.T) {
	for _, tc := range []struct{ name, text, want string }{
		{"unknown", "dev = true\n\nmax-inflight = 3\n", `:3: "max-inflight": unknown setting`},
		{"table", "dev = true\n[limits]\nmax-in-flight = 3\n", `:2: "limits": tables are not settings`},
		{"int", "max-in-flight = \"lots\"\n", `:1: "max-in-flight": invalid value "lots" (want an integer)`},
		{"bool", "dev = 1\n", `:1: "dev": want true or false`},
		{"duration", "kdf-deadline = 30\n", `:1: "kdf-deadline": invalid value 30 (want a duration`},
		{"uid", "admin = [\"root\"]\n", `:1: "admin": want a numeric uid, not "root"`},
		{"toml", "dev = true\nmax-in-flight = = 3\n", `:2: not valid TOML`},
		{"not a setting", "check-config = true\n", `"check-config": unknown setting`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := serveCheck(t, "--config", writeConf(t, tc.text))
			if r.code != 1 || !strings.Contains(r.stderr, tc.want) {
				t.Errorf("want exit 1 and %q: %s", tc.want, r)
			}
		})
	}
	t.Run("flag wins", func(t *testing.T) {
		conf := writeConf(t, "max-in-flight = 32\nlog-level = \"warn\"\n")
		r := serveCheck(t, "--config", conf, "--max-in-flight", "16")
		s := settingLines(r.stdout)
		if r.code != 0 || s["max-in-flight"] != "16" || s["log-level"] != `"warn"` {
			t.Errorf("flag over file: %s", r)
		}
	})
	t.Run("validated", func(t *testing.T) {
		// The settings are checked as the flags are.
		r := serveCheck(t, "--config", writeConf(t, "audit-sync = \"sometimes\"\n"))
		if r.code != 2 || !strings.Contains(r.stderr, "--audit-sync") {
			t.Errorf("bad audit-sync: %s", r)
		}
	})
}

// TestConfigReload: SIGHUP applies a new log level, administrators and
// limits at once (a lower connection limit per uid refuses the next
// connection of a uid that already holds one), and refuses a change that
// needs a restart, saying so; that limit stays as it was.
func TestConfigReload(t *testing.T) {
	dir := openDir(t)
	sock := filepath.Join(dir, "kw.sock")
	conf := filepath.Join(t.TempDir(), "keywarden.conf")
	write := func(s string) {
		if err := os.WriteFile(conf, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("dev = true\nlog-level = \"info\"\nmax-in-flight = 32\nmax-connections-per-uid = 4\nsocket-mode = \"0666\"\n")
	d := &daemon{t: t, sock: sock, log: &syncBuffer{}, done: make(chan error, 1)}
	d.cmd = exec.Command(binary(t), "serve", "--config", conf, "--socket", sock)
	d.cmd.Env = append(os.Environ(), mainEnv+"=1")
	d.cmd.Stderr = d.log
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(d.stop)
	d.waitReady()
	if strings.Contains(d.log.String(), "level=DEBUG") {
		t.Fatalf("debug lines at level info:\n%s", d.log)
	}
	// uid 65534 is not an administrator yet.
	if r := d.runCLI(t, nobody, nil, "seal"); r.code == 0 || !strings.Contains(r.stderr, "administrator") {
		t.Fatalf("seal by nobody before the reload: %s", r)
	}
	// An ordinary uid holds one connection and may open a second.
	user := startHelper(t, sock, "pinger", &syscall.Credential{Uid: 4310, Gid: 4310})
	var l latency
	user.next(&l)
	user.send("dial")
	if user.next(&l); l.Err != "" {
		t.Fatalf("a second connection of the uid before the reload: %s", l.Err)
	}
	before := status(t, d.client(t)).Limits

	write("dev = true\nlog-level = \"debug\"\nmax-in-flight = 16\nmax-connections-per-uid = 1\nmax-message-bytes = 131072\nsocket-mode = \"0666\"\nadmin = [65534]\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "reload: done")
	logText := d.log.String()
	if !regexp.MustCompile(`reload: done"? applied="?\[admin log-level max-connections-per-uid max-in-flight\]`).MatchString(logText) {
		t.Errorf("reload did not apply admin, log-level and the limits:\n%s", logText)
	}
	if !regexp.MustCompile(`restart_needed="?\[max-message-bytes\]"? max-message-bytes="sizes`).MatchString(logText) {
		t.Errorf("reload did not name max-message-bytes as needing a restart, with the reason:\n%s", logText)
	}
	// Debug lines now appear (a connection's).
	d.healthy(t)
	waitLog(t, d, "level=DEBUG")
	st := status(t, d.client(t)).Limits
	if st.MaxInFlight != 16 || st.PerUID.Connections != 1 {
		t.Errorf("after the reload: max in flight %d, connections per uid %d; want 16 and 1", st.MaxInFlight, st.PerUID.Connections)
	}
	if st.MaxMessageBytes != before.MaxMessageBytes {
		t.Errorf("max message bytes %d after the reload, want %d until a restart", st.MaxMessageBytes, before.MaxMessageBytes)
	}
	// The uid keeps the connection it holds, and may not open another.
	user.send("dial")
	if user.next(&l); !strings.Contains(l.Err, "too many connections for this user (limit 1)") {
		t.Errorf("a second connection of the uid after the reload: %q", l.Err)
	}
	user.send("measure 10")
	var m latency
	if user.next(&m); m.Errors != 0 || m.Err != "" {
		t.Errorf("the connection the uid held: %d errors %q", m.Errors, m.Err)
	}
	// The new administrator may now seal (dev mode refuses sealing itself,
	// but past the administrator check).
	if r := d.runCLI(t, nobody, nil, "seal"); strings.Contains(r.stderr, "only an administrator") {
		t.Errorf("seal by the new administrator: %s", r)
	}

	// A file that does not load changes nothing and is reported.
	write("dev = true\nlog-level = \"loud\"\n")
	d.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, d, "reload failed")
	if !strings.Contains(d.log.String(), "unknown log level") {
		t.Errorf("a bad reload's reason:\n%s", d.log)
	}
	d.healthy(t)
}

func waitLog(t *testing.T, d *daemon, want string) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if strings.Contains(d.log.String(), want) {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("no %q in the log:\n%s", want, d.log)
}

// scrape reads the metrics endpoint on a Unix socket.
func scrape(t *testing.T, path string) string {
	t.Helper()
	hc := &http.Client{Transport: &http.Transport{DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", path)
	}}, Timeout: 10 * time.Second}
	resp, err := hc.Get("http://keywarden/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("scrape: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// TestMetrics: scraped while clients keep the daemon busy, the metrics
// count operations by op and status, time them, and pass promtool's
// check; no key name or id appears in them.
func TestMetrics(t *testing.T) {
	dir := openDir(t)
	msock := filepath.Join(dir, "metrics.sock")
	d := startDaemon(t, "--metrics", "unix:"+msock)
	c := d.client(t)
	const secretName = "payroll-master-key-7f3a"
	k := generate(t, c, keywarden.KeySpec{Type: keywarden.AES256GCM, Name: secretName})
	ctx, cancel := context.WithTimeout(context.Background(), 1500*time.Millisecond)
	defer cancel()
	var wg sync.WaitGroup
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for ctx.Err() == nil {
				k.Encrypt(context.Background(), []byte("load"), nil)
				c.Open(context.Background(), "no-such-key")
			}
		}()
	}
	var out string
	for ctx.Err() == nil {
		out = scrape(t, msock) // under load
		time.Sleep(100 * time.Millisecond)
	}
	wg.Wait()
	out = scrape(t, msock)
	for _, re := range []string{
		`keywarden_operations_total\{op="encrypt",status="OK"\} [1-9]`,
		`keywarden_operations_total\{op="open",status="NOT_FOUND"\} [1-9]`,
		`keywarden_request_duration_seconds_count\{op="encrypt"\} [1-9]`,
		`keywarden_requests_in_flight 0`,
		`keywarden_keys_live [1-9]`,
		`keywarden_locked_memory_bytes [1-9]`,
		`keywarden_audit_healthy 1`,
		`keywarden_audit_fsync_duration_seconds_count [1-9]`,
		`keywarden_kdf_workers_running 0`,
		`keywarden_generation_changes_total 0`,
		`keywarden_connections [1-9]`,
	} {
		if !regexp.MustCompile(`(?m)^` + re).MatchString(out) {
			t.Errorf("no %s in the metrics", re)
		}
	}
	if strings.Contains(out, secretName) || strings.Contains(out, fmt.Sprintf("%x", k.ID())) {
		t.Errorf("a key name or id in the metrics")
	}
	promtool, err := exec.LookPath("promtool")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no promtool (package prometheus): scripts/test.sh installs it")
		}
		t.Skip("no promtool (package prometheus): scripts/test.sh installs it")
	}
	cmd := exec.Command(promtool, "check", "metrics")
	cmd.Stdin = strings.NewReader(out)
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Errorf("promtool check metrics: %v\n%s", err, b)
	}
}

// TestMetricsAddress: metrics are served on a Unix socket or loopback
// only, never on a key socket.
func TestMetricsAddress(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"0.0.0.0:9613", "not a loopback address"},
		{"192.0.2.1:9613", "not a loopback address"},
		{"unix:relative.sock", "ABSOLUTE"},
		{"9613", "loopback HOST:PORT"},
	} {
		r := serveCheck(t, "--dev", "--metrics", tc.addr)
		if r.code != 2 || !strings.Contains(r.stderr, tc.want) {
			t.Errorf("--metrics %s: %s", tc.addr, r)
		}
	}
	dir := openDir(t)
	sock := filepath.Join(dir, "kw.sock")
	d := &daemon{t: t}
	r := d.runCLI(t, nil, nil, "serve", "--dev", "--socket", sock, "--metrics", "unix:"+sock)
	if r.code != 1 || !strings.Contains(r.stderr, "that socket serves keys") {
		t.Errorf("metrics on the key socket: %s", r)
	}
}

// TestDoctor: doctor reports each check; a state directory others may
// read fails it with the fix, and exit status 1; fixed, that check
// passes.
func TestDoctor(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	if err := os.Mkdir(state, 0o755); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t)
	doctor := func() (map[string]map[string]string, cliResult) {
		r := d.runCLI(t, nil, nil, "doctor", "--json", "--state", state, "--socket", d.sock)
		var out struct {
			Checks []map[string]string `json:"checks"`
			Failed bool                `json:"failed"`
		}
		if err := json.Unmarshal([]byte(r.stdout), &out); err != nil {
			t.Fatalf("doctor --json: %v\n%s", err, r)
		}
		m := map[string]map[string]string{}
		for _, c := range out.Checks {
			m[c["name"]] = c
		}
		return m, r
	}
	m, r := doctor()
	for _, name := range []string{"memfd_secret", "memlock", "runtimesecret", "core dumps", "ptrace scope", "kdf cgroup",
		"state directory", "audit disk space", "clock", "generation sources", "socket"} {
		if m[name]["status"] == "" {
			t.Errorf("no %q check: %s", name, r)
		}
	}
	sd := m["state directory"]
	if r.code != 1 || sd["status"] != "fail" || !strings.Contains(sd["fix"], "chmod 0700") {
		t.Errorf("a 0755 state directory: %s", r)
	}
	// The running daemon's own view: it is non-dumpable.
	if m["core dumps"]["status"] != "ok" || !strings.Contains(m["core dumps"]["detail"], "the daemon is non-dumpable") {
		t.Errorf("core dumps: %v", m["core dumps"])
	}
	os.Chmod(state, 0o700)
	m, r = doctor()
	if m["state directory"]["status"] != "ok" {
		t.Errorf("a 0700 state directory: %s", r)
	}
	txt := d.runCLI(t, nil, nil, "doctor", "--state", state, "--socket", d.sock)
	if !regexp.MustCompile(`(?m)^(ok|warn|fail) +state directory`).MatchString(txt.stdout) {
		t.Errorf("doctor's text output: %s", txt)
	}
}

// TestShippedUnits: the units in packaging/systemd pass systemd-analyze
// verify with no complaint, and the system service's exposure score is
// at most 2.0 (systemd-analyze security, offline: no running systemd is
// needed).
func TestShippedUnits(t *testing.T) {
	sa, err := exec.LookPath("systemd-analyze")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("no systemd-analyze (package systemd): scripts/test.sh installs it")
		}
		t.Skip("no systemd-analyze")
	}
	src := filepath.Join("..", "packaging", "systemd")
	for _, set := range []struct {
		dir   string
		user  bool
		units []string
	}{
		{src, false, []string{"keywarden.service", "keywarden.socket", "keywarden-ssh-agent.socket",
			"keywarden-pkcs11.socket", "keywarden-http.socket", "keywarden-kms-v2.socket"}},
		{filepath.Join(src, "user"), true, []string{"keywarden.service", "keywarden.socket"}},
	} {
		// ExecStart must name an executable that exists: the test binary
		// stands in for the installed one.
		tmp := t.TempDir()
		var paths []string
		for _, u := range set.units {
			b, err := os.ReadFile(filepath.Join(set.dir, u))
			if err != nil {
				t.Fatal(err)
			}
			b = bytes.ReplaceAll(b, []byte("/usr/bin/keywarden"), []byte(binary(t)))
			p := filepath.Join(tmp, u)
			if err := os.WriteFile(p, b, 0o644); err != nil {
				t.Fatal(err)
			}
			paths = append(paths, p)
		}
		args := []string{"verify", "--man=no"}
		cmd := exec.Command(sa, append(args, paths...)...)
		if set.user {
			rt := t.TempDir()
			cmd = exec.Command(sa, append(append(args, "--user"), paths...)...)
			cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+rt)
		}
		out, err := cmd.CombinedOutput()
		if err != nil || len(bytes.TrimSpace(out)) > 0 {
			t.Errorf("systemd-analyze verify %v: %v\n%s", set.units, err, out)
		}
		if set.user {
			continue
		}
		cmd = exec.Command(sa, "security", "--offline=yes", "--threshold=20", paths[0])
		out, err = cmd.CombinedOutput()
		score := regexp.MustCompile(`Overall exposure level for \S+: ([0-9.]+)`).FindSubmatch(out)
		if err != nil || score == nil {
			t.Errorf("systemd-analyze security --threshold=20 (2.0): %v\n%s", err, out)
		} else {
			t.Logf("exposure %s", score[1])
		}
	}
}

// TestExampleConfig: the example config shipped for /etc/keywarden is
// valid and gives the system unit its paths.
func TestExampleConfig(t *testing.T) {
	r := serveCheck(t, "--config", filepath.Join("..", "packaging", "keywarden.conf.example"))
	s := settingLines(r.stdout)
	if r.code != 0 || s["state"] != `"/var/lib/keywarden"` || s["socket"] != `"/run/keywarden/keywarden.sock"` || s["socket-mode"] != `"0666"` {
		t.Fatalf("the example config: %s", r)
	}
}

// TestUnsealCredential: --unseal-passphrase-file credential:NAME unseals
// at start with the systemd credential NAME ($CREDENTIALS_DIRECTORY, as
// LoadCredentialEncrypted= provides it); without the directory, or with a
// name that leaves it, the daemon refuses to start and says why.
func TestUnsealCredential(t *testing.T) {
	sock, state, passFile := persistentSetup(t)
	d := startPersistent(t, sock, state)
	initStore(t, d, passFile)
	d.stop()

	creds := t.TempDir()
	pass, err := os.ReadFile(passFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(creds, "unseal-passphrase"), pass, 0o400); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ name, value, dir, want string }{
		{"no directory", "credential:unseal-passphrase", "", "$CREDENTIALS_DIRECTORY is not set"},
		{"escape", "credential:../unseal-passphrase", creds, "one path element"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cmd := exec.Command(binary(t), "serve", "--socket", sock, "--state", state, "--kdf-max-memory", "65536",
				"--insecure-master-kdf", "--unseal-passphrase-file", tc.value)
			cmd.Env = append(os.Environ(), mainEnv+"=1", "CREDENTIALS_DIRECTORY="+tc.dir)
			out, err := cmd.CombinedOutput()
			if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 || !strings.Contains(string(out), tc.want) {
				t.Errorf("want exit 1 and %q: %v\n%s", tc.want, err, out)
			}
		})
	}

	t.Setenv("CREDENTIALS_DIRECTORY", creds)
	d = startPersistent(t, sock, state, "--unseal-passphrase-file", "credential:unseal-passphrase")
	c := d.client(t)
	for i := 0; i < 500 && status(t, c).Seal.Sealed; i++ {
		time.Sleep(10 * time.Millisecond)
	}
	if st := status(t, c); st.Seal.Sealed {
		t.Fatalf("still sealed with the credential:\n%s", d.log)
	}
}

// TestConfigFileOthersWrote: a config file that another user owns, or
// that group or others may write, or that sits in a directory others may
// write, is refused: its admin line would make its writer an
// administrator.
func TestConfigFileOthersWrote(t *testing.T) {
	requireRoot(t)
	dir := filepath.Join(t.TempDir(), "etc")
	os.Mkdir(dir, 0o755)
	conf := filepath.Join(dir, "keywarden.conf")
	if err := os.WriteFile(conf, []byte("dev = true\nadmin = [65534]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := serveCheck(t, "--config", conf); r.code != 0 {
		t.Fatalf("root's own 0644 file: %s", r)
	}
	os.Chmod(conf, 0o666)
	if r := serveCheck(t, "--config", conf); r.code != 1 || !strings.Contains(r.stderr, "writable by group or others") {
		t.Errorf("a 0666 config file: %s", r)
	}
	os.Chmod(conf, 0o644)
	os.Chown(conf, 65534, 65534)
	if r := serveCheck(t, "--config", conf); r.code != 1 || !strings.Contains(r.stderr, "belongs to uid 65534") {
		t.Errorf("nobody's config file: %s", r)
	}
	os.Chown(conf, 0, 0)
	os.Chmod(dir, 0o777)
	if r := serveCheck(t, "--config", conf); r.code != 1 || !strings.Contains(r.stderr, "directory") {
		t.Errorf("a config file in a directory everyone may write: %s", r)
	}
	// Through a symbolic link to such a directory too.
	link := filepath.Join(t.TempDir(), "keywarden.conf")
	os.Symlink(conf, link)
	if r := serveCheck(t, "--config", link); r.code != 1 || !strings.Contains(r.stderr, "directory") {
		t.Errorf("a link to a config file in a directory everyone may write: %s", r)
	}
}

// TestDaemonWithAmbientCapabilities: a daemon run as an ordinary user
// with ambient capabilities (the shipped unit's AmbientCapabilities=)
// keeps them, and its Argon2id workers, which drop theirs by executing
// themselves again (internal/kdf, TestWorkerDropsCapabilities), still
// serve: a password hash succeeds.
func TestDaemonWithAmbientCapabilities(t *testing.T) {
	requireRoot(t)
	const capSyslog = 34
	dir := filepath.Join(openDir(t), "run")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	os.Chown(dir, int(nobody.Uid), int(nobody.Gid))
	sock := filepath.Join(dir, "kw.sock")
	d := &daemon{t: t, sock: sock, log: &syncBuffer{}, done: make(chan error, 1), uid: nobody.Uid}
	d.cmd = exec.Command(binary(t), "serve", "--dev", "--socket", sock, "--socket-mode", "0666", "--log-level", "debug")
	d.cmd.Env = append(os.Environ(), mainEnv+"=1")
	d.cmd.Stderr = d.log
	d.cmd.SysProcAttr = &syscall.SysProcAttr{Credential: nobody, AmbientCaps: []uintptr{capSyslog}}
	if err := d.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.done <- d.cmd.Wait() }()
	t.Cleanup(d.stop)
	d.waitReady()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.cmd.Process.Pid))
	if err != nil {
		t.Fatal(err)
	}
	var eff uint64
	for _, l := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(l, "CapEff:"); ok {
			fmt.Sscanf(strings.TrimSpace(v), "%x", &eff)
		}
	}
	if eff&(1<<capSyslog) == 0 {
		t.Fatalf("the daemon lost CAP_SYSLOG: CapEff %x", eff)
	}
	r := d.runCLI(t, nil, []byte("correct horse battery staple"), append([]string{"password", "hash", "--passphrase-file", "-"}, cheapKDF...)...)
	if r.code != 0 || !strings.HasPrefix(r.stdout, "$argon2id$") {
		t.Fatalf("password hash through a worker that dropped its capabilities: %s\n%s", r, d.log)
	}
}

// startActivated starts cmd, systemd-socket-activate wrapped around the
// daemon, makes a first connection to the passed socket first (on which
// the activators exec), and returns the daemon serving main once it
// answers. The daemon is killed at the end of the test if still running.
func startActivated(t *testing.T, cmd *exec.Cmd, first, main string) *daemon {
	t.Helper()
	log := &syncBuffer{}
	cmd.Stderr = log
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			<-done
		}
	})
	var c net.Conn
	var err error
	for i := 0; i < 200; i++ {
		if c, err = net.Dial("unix", first); err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("%s: %v\n%s", first, err, log)
	}
	c.Close()
	d := &daemon{t: t, cmd: cmd, sock: main, log: log, done: done}
	d.waitReady()
	return d
}

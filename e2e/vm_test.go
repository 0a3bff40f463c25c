package e2e_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/keywarden/keywarden/internal/audit"
)

// The snapshot test boots the daemon inside a QEMU guest (TCG, Debian's
// kernel, an initramfs holding e2e/vmguest as init and as keywarden),
// saves the running guest, restores it into two new QEMU processes with
// different VM generation IDs, and checks that in each clone the daemon
// saw the change, failed the session opened before it, and that the two
// clones' next nonces and key ids differ (docs/genid.md, "The QEMU test").
//
// It needs qemu-system-x86_64 and a kernel with CONFIG_VMGENID in /boot
// (scripts/test.sh installs qemu-system-x86 and linux-image-amd64). Without
// them it is skipped, unless KEYWARDEN_VM_TEST=require (as in CI), which
// makes it fail instead. KEYWARDEN_VM_KERNEL names another kernel;
// KEYWARDEN_VM_CAPTURE=DIR saves the guest's kernel log and ACPI tables
// there (how internal/genid/testdata was made).

const vmMemory = "256"

func vmSkip(t *testing.T, format string, args ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, args...)
	if os.Getenv("KEYWARDEN_VM_TEST") == "require" {
		t.Fatalf("snapshot test cannot run: %s", msg)
	}
	t.Skipf("snapshot test skipped: %s (scripts/test.sh installs qemu-system-x86 and linux-image-amd64)", msg)
}

// vmKernel finds a kernel whose configuration has the vmgenid driver built
// in, and the release it was built for.
func vmKernel(t *testing.T) (path, release string) {
	t.Helper()
	if p := os.Getenv("KEYWARDEN_VM_KERNEL"); p != "" {
		return p, strings.TrimPrefix(filepath.Base(p), "vmlinuz-")
	}
	kernels, _ := filepath.Glob("/boot/vmlinuz-*")
	for _, k := range kernels {
		rel := strings.TrimPrefix(filepath.Base(k), "vmlinuz-")
		cfg, err := os.ReadFile("/boot/config-" + rel)
		if err == nil && bytes.Contains(cfg, []byte("\nCONFIG_VMGENID=y\n")) {
			return k, rel
		}
	}
	vmSkip(t, "no kernel with CONFIG_VMGENID=y in /boot")
	return "", ""
}

// vmlinux extracts the uncompressed kernel from a bzImage: QEMU boots it
// directly (PVH), which spares the seconds TCG needs to decompress it.
// When it cannot, the bzImage itself is used.
func vmlinux(t *testing.T, bz, dir string) string {
	t.Helper()
	b, err := os.ReadFile(bz)
	if err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(dir, "vmlinux")
	if i := bytes.Index(b, []byte("\xfd7zXZ\x00")); i >= 0 {
		if _, err := exec.LookPath("xz"); err == nil {
			cmd := exec.Command("xz", "--decompress", "--stdout", "--single-stream")
			cmd.Stdin = bytes.NewReader(b[i:])
			if elf, err := cmd.Output(); err == nil && bytes.HasPrefix(elf, []byte("\x7fELF")) {
				if err := os.WriteFile(out, elf, 0o644); err == nil {
					return out
				}
			}
		}
	}
	if i := bytes.Index(b, []byte("\x1f\x8b\x08\x00")); i >= 0 {
		if zr, err := gzip.NewReader(bytes.NewReader(b[i:])); err == nil {
			zr.Multistream(false)
			if elf, err := io.ReadAll(zr); (err == nil || len(elf) > 0) && bytes.HasPrefix(elf, []byte("\x7fELF")) {
				if err := os.WriteFile(out, elf, 0o644); err == nil {
					return out
				}
			}
		}
	}
	t.Logf("booting the compressed kernel (slow under TCG): no way to extract %s", bz)
	return bz
}

// buildGuest builds e2e/vmguest statically.
func buildGuest(t *testing.T, dir string) string {
	t.Helper()
	goCmd, err := exec.LookPath("go")
	if err != nil {
		goCmd = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "keywarden")
	cmd := exec.Command(goCmd, "build", "-o", out, "./e2e/vmguest")
	cmd.Dir = ".."
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the guest: %v\n%s", err, b)
	}
	return out
}

// cpio writes a newc archive, the initramfs format.
type cpio struct {
	buf bytes.Buffer
	ino int
}

func (c *cpio) add(name string, mode uint32, data []byte, rdevMajor, rdevMinor int) {
	c.ino++
	fmt.Fprintf(&c.buf, "070701%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x%08x",
		c.ino, mode, 0, 0, 1, 0, len(data), 0, 0, rdevMajor, rdevMinor, len(name)+1, 0)
	c.buf.WriteString(name)
	c.buf.WriteByte(0)
	c.pad()
	c.buf.Write(data)
	c.pad()
}

func (c *cpio) pad() {
	for c.buf.Len()%4 != 0 {
		c.buf.WriteByte(0)
	}
}

func initramfs(t *testing.T, dir, guest, release string) string {
	t.Helper()
	bin, err := os.ReadFile(guest)
	if err != nil {
		t.Fatal(err)
	}
	var c cpio
	for _, d := range []string{"bin", "dev", "proc", "sys", "run", "tmp"} {
		c.add(d, 0o040755, nil, 0, 0)
	}
	c.add("dev/console", 0o020600, nil, 5, 1)
	c.add("bin/keywarden", 0o100755, bin, 0, 0)
	c.add("init", 0o120777, []byte("/bin/keywarden"), 0, 0)
	// QEMU's fw_cfg files show the VM generation ID (the guid source).
	if ko, err := os.ReadFile("/lib/modules/" + release + "/kernel/drivers/firmware/qemu_fw_cfg.ko"); err == nil {
		c.add("qemu_fw_cfg.ko", 0o100644, ko, 0, 0)
	}
	c.add("TRAILER!!!", 0, nil, 0, 0)
	out := filepath.Join(dir, "initramfs.cpio")
	if err := os.WriteFile(out, c.buf.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	return out
}

// vm is one QEMU process.
type vm struct {
	t      *testing.T
	name   string
	cmd    *exec.Cmd
	dir    string
	qmp    *qmpConn
	agent  *agentConn
	exited chan struct{}
}

type vmImage struct{ kernel, initrd, dir string }

func startVM(t *testing.T, img vmImage, name, guid, incoming string) *vm {
	t.Helper()
	v := &vm{t: t, name: name, dir: img.dir, exited: make(chan struct{})}
	args := []string{"-machine", "q35,accel=tcg", "-m", vmMemory, "-smp", "1", "-nodefaults", "-display", "none", "-no-reboot",
		"-kernel", img.kernel, "-initrd", img.initrd, "-append", "console=ttyS0 panic=-1 mitigations=off",
		"-serial", "file:" + v.path("console.log"),
		"-chardev", "socket,id=agent,path=" + v.path("agent.sock") + ",server=on,wait=off", "-serial", "chardev:agent",
		"-qmp", "unix:" + v.path("qmp.sock") + ",server=on,wait=off",
		"-device", "vmgenid,guid=" + guid}
	if incoming != "" {
		args = append(args, "-incoming", incoming)
	}
	v.cmd = exec.Command("qemu-system-x86_64", args...)
	var stderr syncBuffer
	v.cmd.Stdout, v.cmd.Stderr = &stderr, &stderr
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { v.cmd.Wait(); close(v.exited) }()
	t.Cleanup(func() {
		v.cmd.Process.Kill()
		<-v.exited
		if t.Failed() {
			console, _ := os.ReadFile(v.path("console.log"))
			t.Logf("VM %s: qemu said %q; console (last 6 KiB):\n%s", name, stderr.String(), tail(console, 6<<10))
		}
	})
	v.qmp = dialQMP(t, v.path("qmp.sock"), v.exited)
	return v
}

func tail(b []byte, n int) []byte {
	if len(b) > n {
		return b[len(b)-n:]
	}
	return b
}

func (v *vm) path(f string) string { return filepath.Join(v.dir, v.name+"-"+f) }

// connectAgent connects to the guest's serial line.
func (v *vm) connectAgent() {
	v.t.Helper()
	v.agent = dialAgent(v.t, v.path("agent.sock"), v.exited)
}

// do runs a command in the guest and decodes its data into out (if not
// nil). It returns the error code the guest reported, "" on success.
func (v *vm) do(out any, cmd string, args ...string) (code string) {
	v.t.Helper()
	rep := v.agent.call(cmd, args...)
	if rep.Error != "" && rep.Code == "" {
		v.t.Fatalf("VM %s: %s: %s", v.name, cmd, rep.Error)
	}
	if out != nil && rep.Error == "" {
		if err := json.Unmarshal(rep.Data, out); err != nil {
			v.t.Fatalf("VM %s: %s: %v in %s", v.name, cmd, err, rep.Data)
		}
	}
	if rep.Error != "" {
		return rep.Code
	}
	return ""
}

func (v *vm) must(out any, cmd string, args ...string) {
	v.t.Helper()
	if code := v.do(out, cmd, args...); code != "" {
		v.t.Fatalf("VM %s: %s failed: %s", v.name, cmd, code)
	}
}

// qmpConn speaks QEMU's machine protocol.
type qmpConn struct {
	c   net.Conn
	dec *json.Decoder
}

func dialUnix(t *testing.T, path string, exited chan struct{}) net.Conn {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := net.Dial("unix", path)
		if err == nil {
			return c
		}
		select {
		case <-exited:
			t.Fatalf("QEMU exited before %s was ready", filepath.Base(path))
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("connect %s: %v", path, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func dialQMP(t *testing.T, path string, exited chan struct{}) *qmpConn {
	t.Helper()
	c := dialUnix(t, path, exited)
	t.Cleanup(func() { c.Close() })
	q := &qmpConn{c: c, dec: json.NewDecoder(c)}
	var greeting map[string]any
	if err := q.dec.Decode(&greeting); err != nil {
		t.Fatalf("QMP greeting: %v", err)
	}
	q.cmd(t, "qmp_capabilities", nil)
	return q
}

func (q *qmpConn) cmd(t *testing.T, name string, args map[string]any) map[string]any {
	t.Helper()
	m := map[string]any{"execute": name}
	if args != nil {
		m["arguments"] = args
	}
	if err := json.NewEncoder(q.c).Encode(m); err != nil {
		t.Fatalf("QMP %s: %v", name, err)
	}
	for {
		var r struct {
			Event  string         `json:"event"`
			Return map[string]any `json:"return"`
			Error  map[string]any `json:"error"`
		}
		if err := q.dec.Decode(&r); err != nil {
			if name == "quit" {
				return nil
			}
			t.Fatalf("QMP %s: %v", name, err)
		}
		if r.Event != "" {
			continue
		}
		if r.Error != nil {
			t.Fatalf("QMP %s: %v", name, r.Error)
		}
		return r.Return
	}
}

// waitStatus polls until QEMU's run state satisfies ok.
func (q *qmpConn) waitStatus(t *testing.T, ok func(string) bool) string {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for {
		st, _ := q.cmd(t, "query-status", nil)["status"].(string)
		if ok(st) {
			return st
		}
		if time.Now().After(deadline) {
			t.Fatalf("QEMU stays %q", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// agentConn speaks to e2e/vmguest over the guest's second serial port.
type agentConn struct {
	t    *testing.T
	c    net.Conn
	in   *bufio.Scanner
	next int
	mu   sync.Mutex
}

type agentReply struct {
	ID    int             `json:"id"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
	Error string          `json:"error"`
	Code  string          `json:"code"`
}

func dialAgent(t *testing.T, path string, exited chan struct{}) *agentConn {
	t.Helper()
	c := dialUnix(t, path, exited)
	t.Cleanup(func() { c.Close() })
	in := bufio.NewScanner(c)
	in.Buffer(make([]byte, 1<<16), 8<<20)
	return &agentConn{t: t, c: c, in: in}
}

func (a *agentConn) read(deadline time.Duration) agentReply {
	a.t.Helper()
	a.c.SetReadDeadline(time.Now().Add(deadline))
	for a.in.Scan() {
		line := bytes.TrimSpace(a.in.Bytes())
		if i := bytes.IndexByte(line, '{'); i > 0 {
			line = line[i:] // noise on the line before the guest set it up
		}
		var r agentReply
		if json.Unmarshal(line, &r) == nil {
			return r
		}
	}
	a.t.Fatalf("guest agent: %v", a.in.Err())
	return agentReply{}
}

func (a *agentConn) waitReady() {
	a.t.Helper()
	for {
		if r := a.read(90 * time.Second); r.Event == "ready" {
			return
		}
	}
}

func (a *agentConn) call(cmd string, args ...string) agentReply {
	a.t.Helper()
	a.mu.Lock()
	defer a.mu.Unlock()
	a.next++
	b, _ := json.Marshal(map[string]any{"id": a.next, "cmd": cmd, "args": args})
	if _, err := a.c.Write(append(b, '\n')); err != nil {
		a.t.Fatalf("guest agent: %v", err)
	}
	for {
		if r := a.read(90 * time.Second); r.ID == a.next {
			return r
		}
	}
}

// vmNonce is what the agent's encrypt commands return.
type vmNonce struct {
	Version uint32
	Nonce   string
}

// generation is the agent's view of keywarden.Generation.
type vmGeneration struct {
	Generation uint64
	ChangedBy  []string
	Sources    []struct {
		Name       string
		Active     bool
		Detail     string
		LastReport string
	}
}

// source returns whether a source is active, what it watches and what it
// last reported.
func (g vmGeneration) source(name string) (active bool, detail, last string) {
	for _, s := range g.Sources {
		if s.Name == name {
			return s.Active, s.Detail, s.LastReport
		}
	}
	return false, "", ""
}

func TestVMSnapshotClones(t *testing.T) {
	if runtime.GOARCH != "amd64" {
		vmSkip(t, "the test boots an x86-64 guest")
	}
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		vmSkip(t, "no qemu-system-x86_64")
	}
	if testing.Short() {
		t.Skip("snapshot test skipped in -short mode")
	}
	bz, release := vmKernel(t)
	start := time.Now()
	dir := t.TempDir()
	img := vmImage{dir: dir}
	img.kernel = vmlinux(t, bz, dir)
	img.initrd = initramfs(t, dir, buildGuest(t, dir), release)
	t.Logf("image ready in %v (kernel %s)", time.Since(start).Round(time.Millisecond), release)

	const (
		guidA = "6c3b2f4e-0d1a-4c8b-9e7f-a1b2c3d4e5f6"
		guidB = "0b9e1c2d-3f4a-4b5c-8d6e-7f8091a2b3c4"
		guidC = "d4c3b2a1-9f8e-4d7c-a6b5-c4d3e2f1a0b9"
	)
	// Boot, open a session, map the page, and save the running guest.
	a := startVM(t, img, "a", guidA, "")
	a.connectAgent()
	a.agent.waitReady()
	var g0 vmGeneration
	a.must(&g0, "setup")
	if g0.Generation != 0 {
		t.Fatalf("fresh daemon at generation %d", g0.Generation)
	}
	if on, detail, _ := g0.source("kmsg"); !on {
		t.Fatalf("the kmsg source is not active in the guest: %s", detail)
	}
	if on, detail, _ := g0.source("guid"); !on || !strings.Contains(detail, guidA) {
		t.Logf("the guid source in the guest: active %v, %s", on, detail)
	}
	capture(t, a, "before")
	var probe string
	a.must(&probe, "getrandom")
	t.Logf("guest before the snapshot: getrandom %s", probe)
	t.Logf("guest up in %v", time.Since(start).Round(time.Millisecond))

	state := filepath.Join(dir, "state")
	a.qmp.cmd(t, "stop", nil)
	a.qmp.cmd(t, "migrate", map[string]any{"uri": "exec:cat > " + state})
	for {
		st, _ := a.qmp.cmd(t, "query-migrate", nil)["status"].(string)
		if st == "completed" {
			break
		}
		if st == "failed" || st == "cancelled" {
			t.Fatalf("saving the guest: %s", st)
		}
		time.Sleep(20 * time.Millisecond)
	}
	a.qmp.cmd(t, "quit", nil)
	<-a.exited
	t.Logf("guest saved in %v", time.Since(start).Round(time.Millisecond))

	// Two clones of that one state, each with its own VM generation ID.
	type result struct {
		gen    vmGeneration
		nonce  vmNonce
		keyID  string
		stream string
		pinned string
		page   struct{ Generation uint64 }
		show   struct {
			Stdout string
			Code   int
		}
		audit string // the guest's audit log, base64
	}
	clones := map[string]string{"b": guidB, "c": guidC}
	results := map[string]*result{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	vms := map[string]*vm{}
	for name, guid := range clones {
		vms[name] = startVM(t, img, name, guid, "exec:cat "+state)
	}
	for name, v := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.qmp.waitStatus(t, func(s string) bool { return s != "inmigrate" })
			v.connectAgent()
			v.qmp.cmd(t, "cont", nil)
			r := &result{}
			// The daemon sees the change (the kernel log line, within
			// moments of the resume) ...
			v.must(&r.gen, "wait", "0", "60s")
			// Whichever source saw it first, the other confirms it within
			// moments: the guid source may read the new ID before the
			// guest kernel has handled the ACPI notification and logged.
			for deadline := time.Now().Add(20 * time.Second); ; {
				v.must(&r.gen, "generation")
				guidOn, _, guidLast := r.gen.source("guid")
				if slices.Contains(r.gen.ChangedBy, "kmsg") && (!guidOn || guidLast != "") || time.Now().After(deadline) {
					break
				}
				time.Sleep(50 * time.Millisecond)
			}
			// ... the session opened before the snapshot fails, and so does
			// a request pinned to the old generation ...
			r.stream = v.do(nil, "stream")
			r.pinned = v.do(nil, "pinned")
			v.must(&r.page, "page")
			// ... and what it makes now differs between the clones.
			v.must(&r.nonce, "encrypt")
			v.must(&r.keyID, "newkey")
			v.must(&r.show, "cli", "generation", "show")
			v.must(&r.audit, "file", "/run/keywarden/keywarden.sock.audit.log")
			capture(t, v, "after-"+name)
			mu.Lock()
			results[name] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	if t.Failed() {
		return
	}
	for name, r := range results {
		t.Logf("clone %s: generation %d by %v; session %q; pinned request %q; page %d; encrypted under version %d with nonce %s; new key %s",
			name, r.gen.Generation, r.gen.ChangedBy, r.stream, r.pinned, r.page.Generation, r.nonce.Version, r.nonce.Nonce, r.keyID)
		t.Logf("clone %s: keywarden generation show:\n%s", name, r.show.Stdout)
		if r.gen.Generation < 1 {
			t.Errorf("clone %s: the daemon did not see the restore", name)
		}
		if !strings.Contains(strings.Join(r.gen.ChangedBy, ","), "kmsg") {
			t.Errorf("clone %s: the change was not seen in the kernel log: %v", name, r.gen.ChangedBy)
		}
		if r.stream != "generation changed" {
			t.Errorf("clone %s: the session from before the snapshot: %q, want generation changed", name, r.stream)
		}
		if r.pinned != "generation changed" {
			t.Errorf("clone %s: the request pinned to generation 0: %q, want generation changed", name, r.pinned)
		}
		if r.page.Generation != r.gen.Generation {
			t.Errorf("clone %s: the mapped page says %d, the daemon %d", name, r.page.Generation, r.gen.Generation)
		}
		if on, _, last := r.gen.source("guid"); on && !strings.Contains(last, guidA+" -> "+clones[name]) {
			t.Errorf("clone %s: the guid source reported %q, not the change to %s", name, last, clones[name])
		}
		if !strings.Contains(r.show.Stdout, "generation:  ") || r.show.Code != 0 {
			t.Errorf("clone %s: keywarden generation show: %+v", name, r.show)
		}
		if r.nonce.Version != 2 {
			t.Errorf("clone %s: the key made before the snapshot encrypts under version %d, want a new version 2 (every clone may spend what version 1 had left)",
				name, r.nonce.Version)
		}
	}
	b, c := results["b"], results["c"]
	checkCloneAuditLogs(t, b.audit, c.audit)
	if b.nonce.Nonce == c.nonce.Nonce {
		t.Errorf("both clones chose the nonce %s", b.nonce.Nonce)
	}
	if b.keyID == c.keyID {
		t.Errorf("both clones made key %s", b.keyID)
	}
	t.Logf("clones with new VM generation IDs checked in %v", time.Since(start).Round(time.Millisecond))
	for _, v := range vms {
		v.qmp.cmd(t, "quit", nil)
		<-v.exited
	}

	vmUnawareClones(t, img, guidA, state)
	d := time.Since(start)
	t.Logf("snapshot test took %v", d.Round(time.Millisecond))
	if d > 2*time.Minute {
		t.Logf("warning: the snapshot test took longer than two minutes")
	}
}

// vmUnawareClones restores the state twice more, keeping the VM
// generation ID: the guest kernel does not learn of the restore and does
// not re-seed its generator, so until its scheduled re-seed both clones'
// getrandom return the same bytes. An orchestrator tells the daemon that
// runs as an ordinary user (no CAP_SYS_ADMIN: it cannot make the kernel
// re-seed) of the restore. Told by a user who cannot make the kernel
// re-seed either, on a CPU without random instructions, the daemon must
// refuse to encrypt rather than choose the nonce the other clone chooses;
// told by root, whose command makes the kernel re-seed, it must choose
// different nonces and key ids in each clone.
func vmUnawareClones(t *testing.T, img vmImage, guid, state string) {
	type cliResult struct {
		Stdout, Stderr string
		Code           int
	}
	type result struct {
		cpuRandom         bool
		probe, probeAfter string // getrandom in the guest (and its uptime), before and after the unconfirmed encryption
		adminBump         cliResult
		unconfirmed       vmNonce // the nonce chosen after the unconfirmed bump, if any
		unconfirmedCode   string  // or why it was refused
		rootBump          cliResult
		nonce             vmNonce
		keyID             string
		gen               struct {
			Generation uint64
			Randomness string
		}
	}
	clones := []string{"d", "e"}
	results := map[string]*result{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	vms := map[string]*vm{}
	for _, name := range clones {
		vms[name] = startVM(t, img, name, guid, "exec:cat "+state)
	}
	for name, v := range vms {
		wg.Add(1)
		go func() {
			defer wg.Done()
			v.qmp.waitStatus(t, func(s string) bool { return s != "inmigrate" })
			v.connectAgent()
			v.qmp.cmd(t, "cont", nil)
			r := &result{}
			v.must(&r.probe, "getrandom")
			v.must(&r.cpuRandom, "cpu-random")
			v.must(&r.adminBump, "user-cli", "admin", "generation", "bump")
			if code := v.do(&r.unconfirmed, "user-encrypt"); code != "" {
				r.unconfirmedCode = code
			}
			v.must(&r.probeAfter, "getrandom")
			v.must(&r.rootBump, "user-cli", "root", "generation", "bump")
			v.must(&r.nonce, "user-encrypt")
			v.must(&r.keyID, "user-newkey")
			v.must(&r.gen, "user-generation")
			mu.Lock()
			results[name] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(results) != len(clones) {
		return // a clone failed; it said why
	}
	d, e := results["d"], results["e"]
	bytesOf := func(probe string) string { return strings.Fields(probe + " ")[0] } // "HEX uptime ..."
	stale := bytesOf(d.probe) == bytesOf(e.probe) && bytesOf(d.probeAfter) == bytesOf(e.probeAfter)
	t.Logf("clones with the same VM generation ID: kernel generators alike throughout the unconfirmed bump: %v; CPU random instructions: %v",
		stale, d.cpuRandom)
	for _, name := range clones {
		r := results[name]
		t.Logf("clone %s: getrandom %s, then %s", name, r.probe, r.probeAfter)
		t.Logf("clone %s, the user's daemon: bump by a user %+v; then encrypt: %+v refused %q; bump by root %+v; then %+v, new key %s; generation %d, randomness %q",
			name, r.adminBump, r.unconfirmed, r.unconfirmedCode, r.rootBump, r.nonce, r.keyID, r.gen.Generation, r.gen.Randomness)
		if r.adminBump.Code != 0 || r.rootBump.Code != 0 {
			t.Errorf("clone %s: a bump failed", name)
		}
		if !r.cpuRandom && r.unconfirmedCode != "unavailable" {
			t.Errorf("clone %s: after a bump that confirms nothing, on a CPU without random instructions, the daemon encrypted (%+v, %q) instead of refusing",
				name, r.unconfirmed, r.unconfirmedCode)
		}
		if r.gen.Generation != 2 || !strings.Contains(r.gen.Randomness, "kernel re-seeded") {
			t.Errorf("clone %s: after root's bump: generation %d, randomness %q", name, r.gen.Generation, r.gen.Randomness)
		}
		if r.nonce.Version != 2 {
			t.Errorf("clone %s: the user's key encrypts under version %d after the changes, want a new version 2", name, r.nonce.Version)
		}
	}
	if d.unconfirmed.Nonce != "" && d.unconfirmed.Nonce == e.unconfirmed.Nonce {
		t.Errorf("both clones chose the nonce %s after the unconfirmed bump", d.unconfirmed.Nonce)
	}
	if d.nonce.Nonce == e.nonce.Nonce {
		t.Errorf("both clones chose the nonce %s after root's bump", d.nonce.Nonce)
	}
	if d.keyID == e.keyID {
		t.Errorf("both clones made key %s after root's bump", d.keyID)
	}
}

// capture saves the guest's kernel log and ACPI tables when
// KEYWARDEN_VM_CAPTURE names a directory.
func capture(t *testing.T, v *vm, tag string) {
	dir := os.Getenv("KEYWARDEN_VM_CAPTURE")
	if dir == "" {
		return
	}
	var recs []string
	if v.do(&recs, "kmsg") == "" {
		os.WriteFile(filepath.Join(dir, "kmsg-"+tag+".txt"), []byte(strings.Join(recs, "")), 0o644)
	}
	for _, table := range []string{"SSDT", "DSDT"} {
		var b64 string
		if v.do(&b64, "file", "/sys/firmware/acpi/tables/"+table) == "" {
			if b, err := base64.StdEncoding.DecodeString(b64); err == nil {
				os.WriteFile(filepath.Join(dir, strings.ToLower(table)+"-qemu.aml"), b, 0o644)
			}
		}
	}
}

// checkCloneAuditLogs checks what the audit logs of two clones of one
// snapshot say: each recorded the generation change and started a new
// segment, each verifies on its own, and they diverge from that segment
// on (fresh nonces), having shared everything before the snapshot.
func checkCloneAuditLogs(t *testing.T, b64b, b64c string) {
	t.Helper()
	logs := map[string][]byte{}
	for name, b64 := range map[string]string{"b": b64b, "c": b64c} {
		b, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(b) == 0 {
			t.Errorf("clone %s: no audit log (%v)", name, err)
			return
		}
		logs[name] = b
		var sawEvent, sawSegment bool
		for _, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
			r, err := audit.ParseRecord(line)
			if err != nil {
				t.Errorf("clone %s: audit record %q: %v", name, line, err)
				return
			}
			if r.Kind == audit.KindEvent && r.Op == audit.OpGeneration {
				sawEvent = true
			}
			if r.Kind == audit.KindSegment && strings.HasPrefix(r.Segment.Reason, "generation ") {
				sawSegment = true
			}
		}
		if !sawEvent || !sawSegment {
			t.Errorf("clone %s: the audit log lacks the generation change (event %v, new segment %v)", name, sawEvent, sawSegment)
		}
		rep, err := audit.Verify([]audit.Input{{Name: "clone " + name, R: bytes.NewReader(b)}}, audit.VerifyOptions{})
		if err != nil || !rep.Intact {
			var buf bytes.Buffer
			if rep != nil {
				rep.WriteText(&buf)
			}
			t.Errorf("clone %s: the audit log does not verify: %v\n%s", name, err, buf.String())
		}
	}
	lb, lc := bytes.Split(logs["b"], []byte("\n")), bytes.Split(logs["c"], []byte("\n"))
	shared := 0
	for shared < len(lb) && shared < len(lc) && bytes.Equal(lb[shared], lc[shared]) {
		shared++
	}
	if shared == 0 {
		t.Errorf("the clones' audit logs share nothing: both should hold the records from before the snapshot")
	}
	if shared == len(lb) || shared == len(lc) {
		t.Errorf("the clones' audit logs do not diverge")
	}
	t.Logf("the clones' audit logs share %d records, then diverge", shared)
}

package kdf

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// cgroups puts each worker in its own memory cgroup, a child of one
// parent cgroup that belongs to this daemon (docs/kdf.md, "Memory
// cgroups"). An Argon2id worker that exceeds its limit is killed by the
// kernel inside its cgroup; the daemon is outside it.
//
// cgroup v2 (the unified hierarchy): the worker starts inside its cgroup
// (clone3 with CLONE_INTO_CGROUP, SysProcAttr.UseCgroupFD). v2 forbids
// processes in a cgroup whose children have controllers ("no internal
// processes"), so unless the daemon is in the root cgroup it moves itself
// into a leaf child "daemon" of its own cgroup, enables the memory
// controller there, and makes the parent "kdf" beside it:
//
//	<own>/daemon     the daemon
//	<own>/kdf        memory.max = budget + slack
//	<own>/kdf/w-N    memory.max = the worker's cost + slack, swap 0
//
// That needs the daemon to be alone in its cgroup (systemd: Delegate=yes).
//
// cgroup v1 (legacy or hybrid hierarchies, where the memory controller is
// mounted on its own): <own>/keywarden-kdf-PID/w-N, limits in
// memory.limit_in_bytes; the worker is moved in right after it starts,
// before it is sent its request, so Argon2's memory is charged to it.
type cgroups struct {
	v2     bool
	parent string // the daemon's parent cgroup of the worker cells
	seq    atomic.Uint64
}

// cell is one worker's cgroup.
type cell struct {
	g   *cgroups
	dir string
	fd  int // v2: the directory, for CLONE_INTO_CGROUP; -1 otherwise
}

// Statfs magic numbers of the two cgroup file systems.
const (
	cgroup2Magic = 0x63677270
	cgroup1Magic = 0x27e0eb
)

// setupCgroups prepares the parent cgroup under the cgroup file system
// mounted at root, with a total limit of totalBytes. It fails, saying
// why, where the machine offers no writable memory cgroup.
func setupCgroups(root string, totalBytes int64) (*cgroups, error) {
	var st unix.Statfs_t
	if unix.Statfs(root, &st) == nil && st.Type == cgroup2Magic {
		self, err := ownCgroup("")
		if err != nil {
			return nil, err
		}
		return setupV2(root, self, totalBytes, true)
	}
	mem := filepath.Join(root, "memory")
	if unix.Statfs(mem, &st) == nil && st.Type == cgroup1Magic {
		self, err := ownCgroup("memory")
		if err != nil {
			return nil, err
		}
		return setupV1(mem, self, totalBytes)
	}
	return nil, fmt.Errorf("no cgroup v2 hierarchy at %s and no cgroup v1 memory controller at %s", root, mem)
}

// ownCgroup returns this process's cgroup path: in the unified hierarchy
// for controller "", else in the v1 hierarchy that has the controller.
func ownCgroup(controller string) (string, error) {
	f, err := os.Open("/proc/self/cgroup")
	if err != nil {
		return "", err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		parts := strings.SplitN(sc.Text(), ":", 3)
		if len(parts) != 3 {
			continue
		}
		if controller == "" && parts[0] == "0" && parts[1] == "" {
			return parts[2], nil
		}
		if controller != "" {
			for _, c := range strings.Split(parts[1], ",") {
				if c == controller {
					return parts[2], nil
				}
			}
		}
	}
	if controller == "" {
		return "", errors.New("this process has no cgroup v2 path in /proc/self/cgroup")
	}
	return "", fmt.Errorf("this process has no cgroup v1 %s path in /proc/self/cgroup", controller)
}

// setupV2 prepares the v2 layout described on cgroups. requireMemory is
// false only in tests, on hierarchies without the memory controller, to
// check the placement of workers.
func setupV2(mount, self string, totalBytes int64, requireMemory bool) (*cgroups, error) {
	own := filepath.Join(mount, self)
	ctrls, err := os.ReadFile(filepath.Join(own, "cgroup.controllers"))
	if err != nil {
		return nil, err
	}
	if requireMemory && !hasWord(string(ctrls), "memory") {
		return nil, fmt.Errorf("the memory controller is not available in the daemon's cgroup %s (under systemd: Delegate=yes)", self)
	}
	var parent string
	if self == "/" {
		// The root cgroup may hold processes and delegate controllers.
		parent = filepath.Join(own, fmt.Sprintf("keywarden-kdf-%d", os.Getpid())+instanceSuffix())
		cleanStale(own)
	} else {
		if err := moveToLeaf(own); err != nil {
			return nil, err
		}
		parent = filepath.Join(own, "kdf"+instanceSuffix())
	}
	if requireMemory {
		if err := enable(own, "memory"); err != nil {
			return nil, err
		}
	}
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	removeCells(parent)
	if requireMemory {
		if err := enable(parent, "memory"); err != nil {
			os.Remove(parent)
			return nil, err
		}
		if err := writeFile(filepath.Join(parent, "memory.max"), strconv.FormatInt(totalBytes, 10)); err != nil {
			os.Remove(parent)
			return nil, err
		}
	}
	return &cgroups{v2: true, parent: parent}, nil
}

// moveToLeaf moves the daemon from its cgroup own into own/daemon, so
// that own may enable controllers for its children. It refuses if own
// holds other processes: they are not the daemon's to move.
func moveToLeaf(own string) error {
	procs, err := os.ReadFile(filepath.Join(own, "cgroup.procs"))
	if err != nil {
		return err
	}
	me := strconv.Itoa(os.Getpid())
	for _, p := range strings.Fields(string(procs)) {
		if p != me {
			return fmt.Errorf("the daemon's cgroup %s holds other processes (pid %s), so it cannot give its children the memory controller (under systemd: Delegate=yes)", own, p)
		}
	}
	leaf := filepath.Join(own, "daemon")
	if err := os.Mkdir(leaf, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return err
	}
	if err := writeFile(filepath.Join(leaf, "cgroup.procs"), me); err != nil {
		return fmt.Errorf("move the daemon into %s: %w", leaf, err)
	}
	return nil
}

// enable enables a controller for the children of the cgroup dir.
func enable(dir, controller string) error {
	sub, err := os.ReadFile(filepath.Join(dir, "cgroup.subtree_control"))
	if err == nil && hasWord(string(sub), controller) {
		return nil
	}
	if err := writeFile(filepath.Join(dir, "cgroup.subtree_control"), "+"+controller); err != nil {
		return fmt.Errorf("enable the %s controller in %s: %w", controller, dir, err)
	}
	return nil
}

func setupV1(mount, self string, totalBytes int64) (*cgroups, error) {
	own := filepath.Join(mount, self)
	cleanStale(own)
	parent := filepath.Join(own, fmt.Sprintf("keywarden-kdf-%d", os.Getpid())+instanceSuffix())
	if err := os.Mkdir(parent, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, err
	}
	if err := writeFile(filepath.Join(parent, "memory.limit_in_bytes"), strconv.FormatInt(totalBytes, 10)); err != nil {
		os.Remove(parent)
		return nil, err
	}
	return &cgroups{parent: parent}, nil
}

// instances counts the cgroup parents this process made: the daemon
// makes one; a process with several supervisors (tests) gets one each.
var instances atomic.Uint64

// instanceSuffix is "" for the process's first parent, "-N" after.
func instanceSuffix() string {
	if n := instances.Add(1); n > 1 {
		return fmt.Sprintf("-%d", n)
	}
	return ""
}

// cleanStale removes the parents (and their empty cells) that daemons
// which are gone left in dir: keywarden-kdf-PID where PID is not running.
func cleanStale(dir string) {
	ents, _ := os.ReadDir(dir)
	for _, e := range ents {
		rest, ok := strings.CutPrefix(e.Name(), "keywarden-kdf-")
		if !ok || !e.IsDir() {
			continue
		}
		pid, _, _ := strings.Cut(rest, "-")
		if n, err := strconv.Atoi(pid); err != nil || n == os.Getpid() || processExists(n) {
			continue
		}
		p := filepath.Join(dir, e.Name())
		removeCells(p)
		os.Remove(p)
	}
}

func processExists(pid int) bool {
	return unix.Kill(pid, 0) != unix.ESRCH
}

// removeCells removes the empty worker cells w-N under parent (left by a
// daemon that was killed; its workers died with it).
func removeCells(parent string) {
	ents, _ := os.ReadDir(parent)
	for _, e := range ents {
		if e.IsDir() && strings.HasPrefix(e.Name(), "w-") {
			os.Remove(filepath.Join(parent, e.Name()))
		}
	}
}

// newCell creates the cgroup of one worker, limited to limit bytes.
func (g *cgroups) newCell(limit int64) (*cell, error) {
	c := &cell{g: g, dir: filepath.Join(g.parent, fmt.Sprintf("w-%d", g.seq.Add(1))), fd: -1}
	if err := os.Mkdir(c.dir, 0o755); err != nil {
		return nil, err
	}
	var err error
	lim := strconv.FormatInt(limit, 10)
	if g.v2 {
		if _, statErr := os.Stat(filepath.Join(c.dir, "memory.max")); statErr == nil {
			err = writeFile(filepath.Join(c.dir, "memory.max"), lim)
			writeFile(filepath.Join(c.dir, "memory.swap.max"), "0") // absent without swap accounting
			writeFile(filepath.Join(c.dir, "memory.oom.group"), "1")
		}
		if err == nil {
			c.fd, err = unix.Open(c.dir, unix.O_PATH|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
		}
	} else {
		err = writeFile(filepath.Join(c.dir, "memory.limit_in_bytes"), lim)
		writeFile(filepath.Join(c.dir, "memory.memsw.limit_in_bytes"), lim) // absent without swap accounting
	}
	if err != nil {
		c.remove()
		return nil, err
	}
	return c, nil
}

// prepare makes the worker start inside the cell (v2).
func (c *cell) prepare(attr *syscall.SysProcAttr) {
	if c.fd >= 0 {
		attr.UseCgroupFD = true
		attr.CgroupFD = c.fd
	}
}

// started moves a started worker into the cell where it could not start
// inside it (v1).
func (c *cell) started(pid int) error {
	if c.fd >= 0 {
		return nil
	}
	return writeFile(filepath.Join(c.dir, "cgroup.procs"), strconv.Itoa(pid))
}

// oomKills returns how many processes of the cell the kernel's OOM
// killer killed, whether at the cell's limit or for the whole machine
// (the kernel counts a kill in the victim's cgroup either way); -1 if
// the kernel does not count them (before Linux 4.13).
func (c *cell) oomKills() int64 {
	if c.g.v2 {
		return counter(filepath.Join(c.dir, "memory.events"), "oom_kill")
	}
	return counter(filepath.Join(c.dir, "memory.oom_control"), "oom_kill")
}

// machineOOMKills returns how many processes the kernel's OOM killer has
// killed on the machine since boot (/proc/vmstat oom_kill); -1 if the
// kernel does not count them.
func machineOOMKills() int64 {
	b, err := os.ReadFile("/proc/vmstat")
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			if n, err := strconv.ParseInt(v, 10, 64); err == nil {
				return n
			}
		}
	}
	return -1
}

// closeFD gives up starting workers inside the cell: started then moves
// them in.
func (c *cell) closeFD() {
	if c.fd >= 0 {
		unix.Close(c.fd)
		c.fd = -1
	}
}

// remove deletes the cell once its worker has been reaped. The kernel
// may take a moment to see the cgroup empty.
func (c *cell) remove() {
	c.closeFD()
	for i := 0; i < 50; i++ {
		err := os.Remove(c.dir)
		if err == nil || errors.Is(err, fs.ErrNotExist) || !errors.Is(err, unix.EBUSY) {
			return
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// close removes the parent cgroup; every cell must be removed already.
func (g *cgroups) close() {
	removeCells(g.parent)
	os.Remove(g.parent)
}

func (g *cgroups) version() string {
	if g.v2 {
		return "v2"
	}
	return "v1"
}

// counter reads "name N" from a flat-keyed cgroup file; -1 if absent.
func counter(path, name string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return -1
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, name+" "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err == nil {
				return n
			}
		}
	}
	return -1
}

func hasWord(s, w string) bool {
	for _, f := range strings.Fields(s) {
		if f == w {
			return true
		}
	}
	return false
}

// writeFile writes a cgroup control file (which must exist).
func writeFile(path, value string) error {
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		return err
	}
	_, err = f.WriteString(value)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

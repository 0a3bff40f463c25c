package audit

import (
	"bytes"
	"errors"
	"os"
	"strconv"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Resolver reads what an audit record says about a caller beyond what the
// kernel attests with each message: the caller's executable and cgroup.
// It is safe for concurrent use.
//
// A pid alone names whatever process has that number when it is looked
// up, which after the caller exits can be another process. A pidfd names
// one process for good. So Fill reads /proc/PID first and then asks the
// pidfd whether its process is still there: if it is, the pid could not
// have been reused in between, and what was read is the caller's; if it
// is gone, nothing read is kept and the caller is recorded as exited.
//
// FillNamespaces says, the same way, whether the process is in another
// user or pid namespace than the daemon.
type Resolver struct {
	mu      sync.Mutex
	exes    map[string]string // interned executable paths
	cgroups map[uint64]string // cgroup id -> path
	noInfo  atomic.Bool       // the kernel lacks PIDFD_GET_INFO (before 6.13)
	procDir string            // "/proc/", for tests
	self    selfNS            // the daemon's own namespaces
}

// Bounds of the caches; past them a cache starts afresh.
const (
	maxExes    = 4096
	maxCgroups = 4096
)

// NewResolver returns a Resolver.
func NewResolver() *Resolver {
	r := &Resolver{exes: map[string]string{}, cgroups: map[uint64]string{}, procDir: "/proc/"}
	r.self = r.readSelfNS()
	return r
}

var pathPool = sync.Pool{New: func() any { b := make([]byte, 0, 4096); return &b }}

// Fill sets c.Exe, c.Cgroup, c.ExeError, c.Exited and c.Unverified for the
// process c.PID. pidfd refers to the process that sent the message
// (SCM_PIDFD), or is -1 where the kernel gives none; Fill does not close
// it.
func (r *Resolver) Fill(c *Caller, pidfd int) {
	c.Exe, c.Cgroup, c.ExeError, c.Exited, c.Unverified = "", "", "", false, false
	if c.PID <= 0 {
		c.ExeError = "no pid"
		return
	}
	bp := pathPool.Get().(*[]byte)
	defer pathPool.Put(bp)
	buf := *bp

	// 1. Read what /proc says about the pid now.
	exe, exeErr := r.readExe(c.PID, buf[:cap(buf)])
	if pidfd < 0 {
		c.Unverified = true
		if exeErr == unix.ENOENT || exeErr == unix.ESRCH {
			c.Exited = true
			return
		}
		c.Exe, c.ExeError = exe, errText(exeErr)
		c.Cgroup = r.readCgroup(c.PID, buf[:cap(buf)])
		return
	}

	// 2. Is the process the pidfd names still there? Then the pid is
	// still its own, and step 1 read the caller.
	cgid, alive, haveID := r.check(pidfd)
	if !alive || exeErr == unix.ENOENT || exeErr == unix.ESRCH {
		// Gone (or a zombie, which has no executable any more).
		c.Exited = true
		return
	}
	c.Exe, c.ExeError = exe, errText(exeErr)

	// 3. The cgroup: from the cache by cgroup id when the kernel gives one
	// (a cheap ioctl), else read, and checked the same way.
	if haveID {
		r.mu.Lock()
		cg, ok := r.cgroups[cgid]
		r.mu.Unlock()
		if ok {
			c.Cgroup = cg
			return
		}
	}
	cg := r.readCgroup(c.PID, buf[:cap(buf)])
	cgid2, alive, haveID2 := r.check(pidfd)
	if !alive {
		c.Exe, c.ExeError, c.Exited = "", "", true
		return
	}
	c.Cgroup = cg
	if haveID && haveID2 && cgid == cgid2 && cg != "" {
		r.mu.Lock()
		if len(r.cgroups) >= maxCgroups {
			clear(r.cgroups)
		}
		r.cgroups[cgid] = cg
		r.mu.Unlock()
	}
}

// check asks whether the pidfd's process is still alive (not reaped), and
// returns its cgroup id where the kernel tells it.
func (r *Resolver) check(pidfd int) (cgid uint64, alive, haveID bool) {
	if !r.noInfo.Load() {
		info := unix.PidfdInfo{Mask: unix.PIDFD_INFO_CGROUPID}
		err := unix.IoctlPidfdInfo(pidfd, &info)
		switch {
		case err == nil:
			return info.Cgroupid, true, info.Mask&unix.PIDFD_INFO_CGROUPID != 0
		case err == unix.ESRCH:
			return 0, false, false
		case err == unix.ENOTTY || err == unix.EINVAL || err == unix.EOPNOTSUPP:
			r.noInfo.Store(true)
		default:
			// Not a pidfd, or some other trouble: do not vouch for it.
			return 0, false, false
		}
	}
	err := unix.PidfdSendSignal(pidfd, 0, nil, 0)
	return 0, err == nil || err == unix.EPERM, false
}

func errText(err error) string {
	switch {
	case err == nil:
		return ""
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return "permission denied"
	}
	return err.Error()
}

func (r *Resolver) procPath(dst []byte, pid int32, name string) []byte {
	dst = append(dst[:0], r.procDir...)
	dst = strconv.AppendInt(dst, int64(pid), 10)
	dst = append(dst, '/')
	return append(dst, name...)
}

// readExe reads /proc/PID/exe. The path is interned, so a caller seen
// before costs no allocation.
func (r *Resolver) readExe(pid int32, buf []byte) (string, error) {
	p := r.procPath(buf[:0], pid, "exe")
	path := string(p)
	n, err := unix.Readlink(path, buf[:cap(buf)])
	if err != nil {
		return "", err
	}
	b := buf[:n]
	r.mu.Lock()
	defer r.mu.Unlock()
	if s, ok := r.exes[string(b)]; ok {
		return s, nil
	}
	if len(r.exes) >= maxExes {
		clear(r.exes)
	}
	s := string(b)
	r.exes[s] = s
	return s, nil
}

// readCgroup reads the process's cgroup v2 path from /proc/PID/cgroup
// (the "0::" line), or, on a v1 or hybrid system, all its lines joined
// with ";".
func (r *Resolver) readCgroup(pid int32, buf []byte) string {
	fd, err := unix.Open(string(r.procPath(buf[:0], pid, "cgroup")), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return ""
	}
	defer unix.Close(fd)
	n := 0
	for n < cap(buf) {
		k, err := unix.Read(fd, buf[n:cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil || k == 0 {
			break
		}
		n += k
	}
	b := bytes.TrimRight(buf[:n], "\n")
	for _, line := range bytes.Split(b, []byte{'\n'}) {
		if p, ok := bytes.CutPrefix(line, []byte("0::")); ok {
			return string(p)
		}
	}
	return string(bytes.ReplaceAll(b, []byte{'\n'}, []byte{';'}))
}

// FillNamespaces sets c.OtherUserNS and c.OtherPIDNS for the process
// c.PID: whether it is in another user namespace, and another pid
// namespace, than the daemon. As in Fill, what /proc says is read first
// and kept only if pidfd (-1: none) still names a live process. A caller
// that Fill found exited, or whose namespaces cannot be read, is left in
// the daemon's. It costs two system calls more than Fill.
func (r *Resolver) FillNamespaces(c *Caller, pidfd int) {
	c.OtherUserNS, c.OtherPIDNS = false, false
	if c.PID <= 0 || c.Exited {
		return
	}
	bp := pathPool.Get().(*[]byte)
	defer pathPool.Put(bp)
	user, pid := r.namespaces(c.PID, (*bp)[:cap(*bp)])
	if pidfd >= 0 {
		if _, alive, _ := r.check(pidfd); !alive {
			return
		}
	}
	c.OtherUserNS, c.OtherPIDNS = user, pid
}

// selfNS identifies the daemon's own namespaces, as namespaces compares
// them: the targets of /proc/self/ns/user and ns/pid ("user:[4026531837]"),
// and, for processes whose links the daemon may not read, its uid_map and
// the depth of its pid namespace as /proc shows it (the fields of NSpid).
// An empty link means it could not be read: nothing is compared then.
type selfNS struct {
	user, pid string
	uidMap    string
	pidDepth  int
}

func (r *Resolver) readSelfNS() selfNS {
	var s selfNS
	s.user, _ = os.Readlink(r.procDir + "self/ns/user")
	s.pid, _ = os.Readlink(r.procDir + "self/ns/pid")
	if b, err := os.ReadFile(r.procDir + "self/uid_map"); err == nil {
		s.uidMap = string(b)
	}
	buf := make([]byte, 4096)
	s.pidDepth = r.pidDepth(int32(os.Getpid()), buf)
	return s
}

// namespaces reports whether process pid is in another user namespace, and
// in another pid namespace, than the daemon.
//
// /proc/PID/ns/user and ns/pid name a process's namespaces, but only to a
// reader that may ptrace it (root, or its own uid). For other processes
// the answer comes from files anyone may read: /proc/PID/uid_map, which
// shows the process's user namespace's mapping as seen from the daemon's
// (another namespace maps otherwise, unless a privileged process made it
// map exactly as the daemon's does), and the NSpid line of
// /proc/PID/status, which has one pid per level of pid namespace, from the
// one /proc belongs to down to the process's own.
func (r *Resolver) namespaces(pid int32, buf []byte) (otherUser, otherPID bool) {
	if r.self.user != "" {
		same, err := r.sameLink(pid, "ns/user", r.self.user, buf)
		switch {
		case err == nil:
			otherUser = !same
		case isDenied(err) && r.self.uidMap != "":
			if m, err := r.readSmall(pid, "uid_map", buf); err == nil {
				otherUser = string(m) != r.self.uidMap
			}
		}
	}
	if r.self.pid != "" {
		same, err := r.sameLink(pid, "ns/pid", r.self.pid, buf)
		switch {
		case err == nil:
			otherPID = !same
		case isDenied(err) && r.self.pidDepth > 0:
			if d := r.pidDepth(pid, buf); d > 0 {
				otherPID = d != r.self.pidDepth
			}
		}
	}
	return otherUser, otherPID
}

func isDenied(err error) bool { return err == unix.EACCES || err == unix.EPERM }

// sameLink reports whether /proc/PID/name links to want.
func (r *Resolver) sameLink(pid int32, name, want string, buf []byte) (bool, error) {
	p := string(r.procPath(buf[:0], pid, name))
	n, err := unix.Readlink(p, buf[:cap(buf)])
	if err != nil {
		return false, err
	}
	return string(buf[:n]) == want, nil
}

// readSmall reads /proc/PID/name, at most len(buf) bytes, into buf.
func (r *Resolver) readSmall(pid int32, name string, buf []byte) ([]byte, error) {
	fd, err := unix.Open(string(r.procPath(buf[:0], pid, name)), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	n := 0
	for n < cap(buf) {
		k, err := unix.Read(fd, buf[n:cap(buf)])
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return nil, err
		}
		if k == 0 {
			break
		}
		n += k
	}
	return buf[:n], nil
}

// pidDepth returns the number of pids on the NSpid line of
// /proc/PID/status, 0 if it cannot tell.
func (r *Resolver) pidDepth(pid int32, buf []byte) int {
	b, err := r.readSmall(pid, "status", buf)
	if err != nil {
		return 0
	}
	return nspidDepth(b)
}

// nspidDepth returns the number of pids on the NSpid line of a
// /proc/PID/status, 0 if it has none. (The process chooses its own Name,
// which the kernel escapes, so that no line but the kernel's can begin
// with "NSpid:".)
func nspidDepth(status []byte) int {
	for line := range bytes.SplitSeq(status, []byte{'\n'}) {
		if rest, ok := bytes.CutPrefix(line, []byte("NSpid:")); ok {
			return len(bytes.Fields(rest))
		}
	}
	return 0
}

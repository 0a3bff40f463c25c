package audit

import (
	"bytes"
	"errors"
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
type Resolver struct {
	mu      sync.Mutex
	exes    map[string]string // interned executable paths
	cgroups map[uint64]string // cgroup id -> path
	noInfo  atomic.Bool       // the kernel lacks PIDFD_GET_INFO (before 6.13)
	procDir string            // "/proc/", for tests
}

// Bounds of the caches; past them a cache starts afresh.
const (
	maxExes    = 4096
	maxCgroups = 4096
)

// NewResolver returns a Resolver.
func NewResolver() *Resolver {
	return &Resolver{exes: map[string]string{}, cgroups: map[uint64]string{}, procDir: "/proc/"}
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

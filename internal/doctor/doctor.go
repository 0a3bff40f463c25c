package doctor

import (
	"bufio"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/genid"
	"github.com/keywarden/keywarden/internal/ownfile"
	"github.com/keywarden/keywarden/internal/secmem"
)

// Level is a check's verdict.
type Level string

const (
	OK   Level = "ok"
	Warn Level = "warn"
	Fail Level = "fail"
)

// Check is one finding.
type Check struct {
	Name   string `json:"name"`
	Level  Level  `json:"status"`
	Detail string `json:"detail"`
	// Fix says what to do; empty when Level is OK.
	Fix string `json:"fix,omitempty"`
}

// Daemon is what a running daemon says of itself (keywarden status), when
// one answers: its view beats this process's, whose limits and
// capabilities may differ from the service's.
type Daemon struct {
	Backing       string
	LimitBytes    uint64
	RuntimeSecret bool
	Mlockall      bool
	Dumpable      bool
	Keys          uint64
}

// Config says where the daemon keeps its files.
type Config struct {
	StateDir   string
	SocketPath string
	// AuditLog is the audit log's path ("" : audit.log in StateDir).
	AuditLog string
	// DaemonUID is the uid the daemon runs as (its files' owner).
	DaemonUID int
	// Daemon, if not nil, is the running daemon's own report.
	Daemon *Daemon
	// ProcRoot is /proc/ (tests change it), SysRoot /sys/.
	ProcRoot, SysRoot string
	// RuntimeSecret is whether this binary was built with runtime/secret.
	RuntimeSecret bool
	Now           func() time.Time
}

// Run runs every check.
func Run(c Config) []Check {
	if c.ProcRoot == "" {
		c.ProcRoot = "/proc/"
	}
	if c.SysRoot == "" {
		c.SysRoot = "/sys/"
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.AuditLog == "" && c.StateDir != "" {
		c.AuditLog = filepath.Join(c.StateDir, "audit.log")
	}
	return []Check{
		checkMemfdSecret(c),
		checkMemlock(c),
		checkRuntimeSecret(c),
		checkCoreDumps(c),
		checkPtrace(c),
		checkCgroup(c),
		checkStateDir(c),
		checkAuditSpace(c),
		checkClock(c),
		checkGeneration(c),
		checkSocket(c),
	}
}

// Failed reports whether any check failed.
func Failed(cs []Check) bool {
	for _, c := range cs {
		if c.Level == Fail {
			return true
		}
	}
	return false
}

func checkMemfdSecret(c Config) Check {
	ch := Check{Name: "memfd_secret"}
	if c.Daemon != nil && c.Daemon.Backing != "" {
		if c.Daemon.Backing == "memfd_secret" {
			ch.Level, ch.Detail = OK, "the daemon keeps key bytes in memfd_secret memory (out of the kernel's direct map)"
			return ch
		}
	} else if secmem.SecretAvailable() {
		ch.Level, ch.Detail = OK, "the kernel offers memfd_secret: key bytes live out of the kernel's direct map"
		return ch
	}
	ch.Level = Warn
	ch.Detail = "no memfd_secret: key bytes live in mlock'ed memory, which the kernel (and a root process through /proc/kcore or a kernel exploit) can still map"
	ch.Fix = "boot Linux 5.14 or later with secretmem.enable=1 on the kernel command line (6.5+ enables it by default); under systemd, SystemCallFilter must allow memfd_secret (the shipped unit does)"
	return ch
}

func checkMemlock(c Config) Check {
	ch := Check{Name: "memlock"}
	if c.Daemon != nil {
		switch {
		case c.Daemon.Mlockall:
			ch.Level, ch.Detail = OK, "the daemon locked all its memory (mlockall): no transient copy of a key reaches swap"
		case c.Daemon.LimitBytes > 0:
			ch.Level = Warn
			ch.Detail = fmt.Sprintf("the daemon's key memory is bounded at %d bytes (about %d AES keys) and it could not mlockall: transient copies may reach swap", c.Daemon.LimitBytes, c.Daemon.LimitBytes/48)
			ch.Fix = "LimitMEMLOCK=infinity in the unit (the shipped one has it), or CAP_IPC_LOCK"
		default:
			ch.Level, ch.Detail = OK, "the daemon's key memory is unbounded"
		}
		return ch
	}
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil {
		return Check{Name: "memlock", Level: Warn, Detail: "cannot read RLIMIT_MEMLOCK: " + err.Error()}
	}
	switch {
	case secmem.CanLockAll():
		ch.Level, ch.Detail = OK, "RLIMIT_MEMLOCK is unlimited (or CAP_IPC_LOCK is held): keys are bounded by RAM only, and the daemon locks all its memory"
	case rl.Cur < 1<<20:
		ch.Level = Fail
		ch.Detail = fmt.Sprintf("RLIMIT_MEMLOCK is %d bytes: room for about %d keys, and the daemon cannot lock its own memory", rl.Cur, rl.Cur/48)
		ch.Fix = "LimitMEMLOCK=infinity in the service unit (the shipped one has it), or raise memlock in /etc/security/limits.conf for a daemon started by hand"
	default:
		ch.Level = Warn
		ch.Detail = fmt.Sprintf("RLIMIT_MEMLOCK is %d bytes: about %d AES keys fit, and the daemon cannot mlockall (transient copies may reach swap)", rl.Cur, rl.Cur/48)
		ch.Fix = "LimitMEMLOCK=infinity in the service unit (the shipped one has it)"
	}
	ch.Detail += " (this process's limit: the service's may differ; run doctor while the daemon runs to see its own)"
	return ch
}

func checkRuntimeSecret(c Config) Check {
	rs := c.RuntimeSecret
	who := "this binary was"
	if c.Daemon != nil {
		rs, who = c.Daemon.RuntimeSecret, "the daemon was"
	}
	if rs {
		return Check{Name: "runtimesecret", Level: OK, Detail: who + " built with GOEXPERIMENT=runtimesecret: temporary copies of key bytes are erased"}
	}
	return Check{Name: "runtimesecret", Level: Warn,
		Detail: who + " built without GOEXPERIMENT=runtimesecret: copies of key bytes made by the cryptographic libraries are not erased when freed",
		Fix:    "build with GOEXPERIMENT=runtimesecret (make build does), or install the packaged binary"}
}

func checkCoreDumps(c Config) Check {
	pattern := strings.TrimSpace(readFile(c.ProcRoot + "sys/kernel/core_pattern"))
	suid := strings.TrimSpace(readFile(c.ProcRoot + "sys/fs/suid_dumpable"))
	detail := fmt.Sprintf("core_pattern %q, fs.suid_dumpable %s", pattern, orUnknown(suid))
	if c.Daemon != nil {
		if c.Daemon.Dumpable {
			return Check{Name: "core dumps", Level: Fail, Detail: "the daemon is dumpable: a crash could write its memory to disk; " + detail,
				Fix: "restart the daemon (it makes itself non-dumpable at start); check nothing resets PR_SET_DUMPABLE"}
		}
		return Check{Name: "core dumps", Level: OK, Detail: "the daemon is non-dumpable and its core limit is 0; " + detail}
	}
	return Check{Name: "core dumps", Level: OK, Detail: "the daemon makes itself non-dumpable and sets RLIMIT_CORE to 0 at start (LimitCORE=0 in the unit too); " + detail}
}

func checkPtrace(c Config) Check {
	v := strings.TrimSpace(readFile(c.ProcRoot + "sys/kernel/yama/ptrace_scope"))
	switch v {
	case "":
		return Check{Name: "ptrace scope", Level: Warn, Detail: "no Yama LSM (kernel.yama.ptrace_scope missing): processes may trace others of their uid",
			Fix: "the daemon refuses tracing by being non-dumpable; enable Yama (CONFIG_SECURITY_YAMA) for defence in depth"}
	case "0":
		return Check{Name: "ptrace scope", Level: Warn, Detail: "kernel.yama.ptrace_scope is 0: any process may trace others of its uid (the daemon is non-dumpable, so only root can trace it)",
			Fix: "sysctl -w kernel.yama.ptrace_scope=1 (and in /etc/sysctl.d/)"}
	}
	return Check{Name: "ptrace scope", Level: OK, Detail: "kernel.yama.ptrace_scope is " + v}
}

func checkCgroup(c Config) Check {
	ch := Check{Name: "kdf cgroup"}
	if _, err := os.Stat(c.SysRoot + "fs/cgroup/cgroup.controllers"); err == nil {
		self := ""
		for _, l := range strings.Split(readFile(c.ProcRoot+"self/cgroup"), "\n") {
			if p, ok := strings.CutPrefix(l, "0::"); ok {
				self = p
			}
		}
		own := filepath.Join(c.SysRoot+"fs/cgroup", self)
		ctrls := readFile(filepath.Join(own, "cgroup.controllers"))
		if !hasWord(ctrls, "memory") {
			ch.Level = Warn
			ch.Detail = fmt.Sprintf("cgroup v2, but the memory controller is not delegated to %s: Argon2id workers run without a memory cgroup (they still make themselves the OOM killer's first choice)", orUnknown(self))
			ch.Fix = "run the daemon under the shipped unit (Delegate=yes)"
			return ch
		}
		if unix.Access(own, unix.W_OK) != nil {
			ch.Level = Warn
			ch.Detail = fmt.Sprintf("cgroup v2 with the memory controller, but %s is not writable by this user: workers run without a memory cgroup", self)
			ch.Fix = "Delegate=yes in the unit gives the service's user its cgroup"
			return ch
		}
		ch.Level, ch.Detail = OK, "cgroup v2 with the memory controller delegated ("+self+"): each Argon2id worker gets a memory cgroup"
		return ch
	}
	if _, err := os.Stat(c.SysRoot + "fs/cgroup/memory"); err == nil {
		if unix.Access(c.SysRoot+"fs/cgroup/memory", unix.W_OK) == nil || os.Geteuid() == 0 {
			ch.Level, ch.Detail = OK, "cgroup v1 memory controller: each Argon2id worker gets a memory cgroup"
			return ch
		}
	}
	ch.Level = Warn
	ch.Detail = "no usable memory cgroup: Argon2id workers run without one (they still make themselves the OOM killer's first choice)"
	ch.Fix = "use cgroup v2 and the shipped unit (Delegate=yes)"
	return ch
}

func checkStateDir(c Config) Check {
	ch := Check{Name: "state directory"}
	if c.StateDir == "" {
		return Check{Name: "state directory", Level: OK, Detail: "none (development mode)"}
	}
	fi, err := os.Lstat(c.StateDir)
	if os.IsNotExist(err) {
		ch.Level, ch.Detail = Warn, c.StateDir+" does not exist yet: the daemon creates it (0700) at its first start"
		ch.Fix = "nothing, or StateDirectory=keywarden in the unit (the shipped one has it)"
		return ch
	}
	if err != nil {
		return Check{Name: "state directory", Level: Fail, Detail: err.Error(), Fix: "check the path and its parents' permissions"}
	}
	owner := ownfile.Owner(fi)
	switch {
	case fi.Mode()&fs.ModeSymlink != 0 || !fi.IsDir():
		ch.Level, ch.Detail = Fail, c.StateDir+" is not a directory"
		ch.Fix = "move it away; the daemon creates the directory"
	case owner != uint32(c.DaemonUID) && owner != 0:
		ch.Level, ch.Detail = Fail, fmt.Sprintf("%s belongs to uid %d, neither the daemon's (%d) nor root", c.StateDir, owner, c.DaemonUID)
		ch.Fix = fmt.Sprintf("chown %d %s", c.DaemonUID, c.StateDir)
	case fi.Mode().Perm()&0o077 != 0:
		ch.Level, ch.Detail = Fail, fmt.Sprintf("%s has mode %04o: the daemon refuses a state directory others may access", c.StateDir, fi.Mode().Perm())
		ch.Fix = "chmod 0700 " + c.StateDir
	default:
		ch.Level, ch.Detail = OK, fmt.Sprintf("%s: mode %04o, owner uid %d", c.StateDir, fi.Mode().Perm(), owner)
	}
	return ch
}

// Free space below these is a warning, and a failure.
const (
	auditWarnBytes = 1 << 30
	auditFailBytes = 64 << 20
)

func checkAuditSpace(c Config) Check {
	ch := Check{Name: "audit disk space"}
	if c.AuditLog == "" {
		return Check{Name: "audit disk space", Level: OK, Detail: "no audit log configured"}
	}
	dir := filepath.Dir(c.AuditLog)
	for {
		if _, err := os.Stat(dir); err == nil || dir == "/" {
			break
		}
		dir = filepath.Dir(dir)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		return Check{Name: "audit disk space", Level: Warn, Detail: "cannot stat " + dir + ": " + err.Error()}
	}
	free := st.Bavail * uint64(st.Bsize)
	ch.Detail = fmt.Sprintf("%d MiB free for the audit log in %s (%s)", free>>20, dir, filepath.Base(c.AuditLog))
	switch {
	case free < auditFailBytes:
		ch.Level = Fail
		ch.Detail += ": when the disk fills the audit log fails closed and every request is refused"
		ch.Fix = "free space on that file system, or move the log (--audit-log) to one with room; rotated segments (audit.log.*) may be archived once verified"
	case free < auditWarnBytes:
		ch.Level = Warn
		ch.Fix = "keep at least 1 GiB free: a full disk stops the daemon serving (the audit log is fail-closed)"
	default:
		ch.Level = OK
	}
	return ch
}

func checkClock(c Config) Check {
	now := c.Now()
	if now.Year() < 2024 {
		return Check{Name: "clock", Level: Fail, Detail: "the clock says " + now.UTC().Format(time.RFC3339) + ": audit records and key rotation dates would be wrong",
			Fix: "set the time and run a time daemon (systemd-timesyncd, chrony)"}
	}
	var tx unix.Timex
	state, err := unix.Adjtimex(&tx)
	if err != nil {
		return Check{Name: "clock", Level: Warn, Detail: "cannot read the clock's synchronisation state: " + err.Error()}
	}
	if state == unix.TIME_ERROR || tx.Status&unix.STA_UNSYNC != 0 {
		return Check{Name: "clock", Level: Warn, Detail: "the clock is not synchronised (adjtimex reports it unsynchronised): audit times and rotation dates drift",
			Fix: "run a time daemon (systemd-timesyncd, chrony)"}
	}
	return Check{Name: "clock", Level: OK, Detail: "synchronised, " + now.UTC().Format(time.RFC3339)}
}

func checkGeneration(Config) Check {
	srcs, err := genid.NewSources("auto")
	if err != nil {
		return Check{Name: "generation sources", Level: Fail, Detail: err.Error()}
	}
	var active, inactive []string
	for _, s := range srcs {
		if _, err := s.Open(); err != nil {
			inactive = append(inactive, s.Name()+" ("+err.Error()+")")
			continue
		}
		s.Close()
		active = append(active, s.Name())
	}
	if len(active) == 0 {
		return Check{Name: "generation sources", Level: Warn,
			Detail: "no source of VM generation changes is active here: a restored snapshot or a clone is seen only through keywarden generation bump; " + strings.Join(inactive, "; "),
			Fix:    "on a VM: a vmgenid device (and CAP_SYSLOG or kernel.dmesg_restrict=0 for /dev/kmsg) or a vmclock device; on bare metal nothing is needed; orchestrators can run keywarden generation bump after a restore"}
	}
	d := "active: " + strings.Join(active, ", ")
	if len(inactive) > 0 {
		d += "; not active: " + strings.Join(inactive, "; ")
	}
	return Check{Name: "generation sources", Level: OK, Detail: d}
}

func checkSocket(c Config) Check {
	ch := Check{Name: "socket"}
	if c.SocketPath == "" {
		return Check{Name: "socket", Level: Warn, Detail: "no socket path"}
	}
	dir := filepath.Dir(c.SocketPath)
	if fi, err := os.Lstat(dir); err == nil {
		owner := ownfile.Owner(fi)
		if !fi.IsDir() || fi.Mode()&fs.ModeSymlink != 0 {
			return Check{Name: "socket", Level: Fail, Detail: dir + " is not a directory", Fix: "remove it; the daemon (or systemd) creates it"}
		}
		if owner != 0 && owner != uint32(c.DaemonUID) {
			return Check{Name: "socket", Level: Fail, Detail: fmt.Sprintf("%s belongs to uid %d: clients refuse a daemon whose socket directory another user controls", dir, owner),
				Fix: "remove it; RuntimeDirectory=keywarden in the unit makes it"}
		}
		if fi.Mode().Perm()&0o022 != 0 && fi.Mode()&fs.ModeSticky == 0 {
			return Check{Name: "socket", Level: Fail, Detail: fmt.Sprintf("%s has mode %04o: others could replace the socket", dir, fi.Mode().Perm()),
				Fix: "chmod go-w " + dir}
		}
	}
	fi, err := os.Lstat(c.SocketPath)
	if os.IsNotExist(err) {
		ch.Level, ch.Detail = Warn, c.SocketPath+" does not exist: no daemon serves there now"
		ch.Fix = "systemctl enable --now keywarden.socket keywarden.service"
		return ch
	}
	if err != nil {
		return Check{Name: "socket", Level: Fail, Detail: err.Error()}
	}
	if fi.Mode().Type() != fs.ModeSocket {
		return Check{Name: "socket", Level: Fail, Detail: c.SocketPath + " is not a socket", Fix: "remove it"}
	}
	owner := ownfile.Owner(fi)
	if owner != 0 && owner != uint32(c.DaemonUID) {
		return Check{Name: "socket", Level: Fail, Detail: fmt.Sprintf("%s belongs to uid %d, neither root nor the daemon's", c.SocketPath, owner),
			Fix: "stop whatever made it and remove it"}
	}
	ch.Level, ch.Detail = OK, fmt.Sprintf("%s: a socket of uid %d, mode %04o", c.SocketPath, owner, fi.Mode().Perm())
	if c.Daemon == nil {
		ch.Level = Warn
		ch.Detail += ", but no daemon answered on it"
		ch.Fix = "start the daemon (systemctl start keywarden), or check its log (journalctl -u keywarden)"
	}
	return ch
}

func readFile(p string) string {
	b, _ := os.ReadFile(p)
	return string(b)
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func hasWord(s, w string) bool {
	sc := bufio.NewScanner(strings.NewReader(s))
	sc.Split(bufio.ScanWords)
	for sc.Scan() {
		if sc.Text() == w {
			return true
		}
	}
	return false
}

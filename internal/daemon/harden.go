package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/secmem"
)

// hardening is what Harden achieved.
type hardening struct {
	mlockall bool
}

// errTraced is returned when the daemon finds itself under a debugger.
var errTraced = errors.New("refusing to run: this process is being traced (ptrace); a tracer can read every key")

// harden makes the process as hard to read as Linux allows without
// privileges the daemon does not need:
//
//   - it refuses to run while traced (a debugger attached at start could
//     read every key);
//   - PR_SET_DUMPABLE 0: no core dumps, and neither ptrace nor
//     /proc/PID/mem for processes of the same uid, only for root;
//   - RLIMIT_CORE 0, in case something makes it dumpable again;
//   - mlockall, where the locked-memory limit allows locking everything,
//     so that transient copies of secrets (buffers, stacks) never reach
//     swap. MCL_ONFAULT locks pages as they are touched, not the runtime's
//     large reservations.
func harden(log *slog.Logger) (hardening, error) {
	var h hardening
	if pid := tracerPID(); pid != 0 {
		return h, fmt.Errorf("%w (tracer pid %d)", errTraced, pid)
	}
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return h, fmt.Errorf("prctl(PR_SET_DUMPABLE, 0): %w", err)
	}
	if err := unix.Setrlimit(unix.RLIMIT_CORE, &unix.Rlimit{}); err != nil {
		return h, fmt.Errorf("setrlimit(RLIMIT_CORE, 0): %w", err)
	}
	if secmem.CanLockAll() {
		if err := unix.Mlockall(unix.MCL_CURRENT | unix.MCL_FUTURE | unix.MCL_ONFAULT); err != nil {
			log.Warn("cannot lock the daemon's memory; transient copies of key material could reach swap", "err", err)
		} else {
			h.mlockall = true
		}
	} else {
		var rl unix.Rlimit
		unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl)
		log.Warn("not locking the daemon's memory: the locked-memory limit is too small (run as root, grant CAP_IPC_LOCK, or raise RLIMIT_MEMLOCK, e.g. LimitMEMLOCK=infinity); transient copies of key material could reach swap",
			"rlimit_memlock", rl.Cur)
	}
	return h, nil
}

// tracerPID returns the pid tracing this process, or 0.
func tracerPID() int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "TracerPid:"); ok {
			pid, _ := strconv.Atoi(strings.TrimSpace(v))
			return pid
		}
	}
	return 0
}

// dumpable reports PR_GET_DUMPABLE.
func dumpable() bool {
	v, err := unix.PrctlRetInt(unix.PR_GET_DUMPABLE, 0, 0, 0, 0)
	return err == nil && v != 0
}

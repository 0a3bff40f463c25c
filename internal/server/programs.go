package server

import (
	"crypto/sha256"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/keystore"
	"github.com/keywarden/keywarden/internal/policy"
)

// Keys that only some programs may use (policy.CheckProgram). The program
// is the executable of the process that sent the request, read from
// /proc/PID/exe and kept only if the request's pidfd still names a live
// process after the reading: then the pid was still the sender's when it
// was read. Every front gives the core a pidfd where the kernel offers
// one; without it (Linux before 6.5) a restricted key is refused.

// checkProgram refuses id the use of o if o may be used only by some
// programs and id's is not one of them.
func (ss *Session) checkProgram(o *keystore.Object, id Identity) error {
	k := o.Policy()
	if !k.Restricted() {
		return nil
	}
	name := o.Name
	if name == "" {
		name = o.ID.String()
	}
	d := policy.CheckProgram(k, name, readProcess(id, k))
	if !d.Allowed() {
		ss.log.Warn("key use refused to a program not allowed", "key", o.ID.String(), "reason", d.Reason, "uid", id.UID, "pid", id.PID)
	}
	return d.Err()
}

// readProcess reads the program of the process that sent a request, and
// the hash of its file if an entry of k for its path asks for one.
func readProcess(id Identity, k policy.Key) policy.Process {
	if id.Pidfd < 0 {
		return policy.Process{Unknown: "the kernel gave no pidfd with the request (Linux 6.5 or later gives one)"}
	}
	if id.PID <= 0 {
		return policy.Process{Unknown: "no pid"}
	}
	dir := "/proc/" + strconv.Itoa(int(id.PID)) + "/"
	exe, err := os.Readlink(dir + "exe")
	if err != nil {
		return policy.Process{Unknown: "its executable could not be read: " + errText(err)}
	}
	p := policy.Process{Exe: exe}
	if policy.NeedsHash(k, exe) {
		p.SHA256, err = exeHashes.sum(dir + "exe")
		if err != nil {
			p.Unknown = "its file could not be hashed: " + errText(err)
		}
	}
	user, err := os.Readlink(dir + "ns/user")
	if err != nil {
		return policy.Process{Unknown: "its user namespace could not be read: " + errText(err)}
	}
	p.OtherUserNS = user != ownUserNS()
	// Still alive: the pid was the sender's when it was read.
	if err := unix.PidfdSendSignal(id.Pidfd, 0, nil, 0); err != nil && err != unix.EPERM {
		return policy.Process{Unknown: "it exited"}
	}
	return p
}

func errText(err error) string {
	if pe, ok := err.(*os.PathError); ok {
		err = pe.Err
	} else if le, ok := err.(*os.LinkError); ok {
		err = le.Err
	}
	return err.Error()
}

// ownUserNS is the daemon's user namespace, as /proc shows it.
var ownUserNS = sync.OnceValue(func() string {
	s, _ := os.Readlink("/proc/self/ns/user")
	return s
})

// exeHashes caches the SHA-256 of executables by the identity of the
// file: device, inode, size, and modification and change times. Writing a
// file changes its ctime, which its owner cannot set back, so a file
// changed since it was hashed is hashed again.
var exeHashes = hashCache{sums: map[fileID][]byte{}}

type fileID struct {
	dev, ino, size       uint64
	mtime, ctime         int64
	mtimeNsec, ctimeNsec int64
}

type hashCache struct {
	mu   sync.Mutex
	sums map[fileID][]byte // guarded by mu
}

const (
	maxHashed   = 256     // entries kept; past them the cache starts afresh
	maxExeBytes = 1 << 30 // a larger executable is not hashed
)

// sum returns the SHA-256 of the file that link (/proc/PID/exe) points to,
// opened through the link: the file the process runs, even if another has
// since taken its path.
func (c *hashCache) sum(link string) ([]byte, error) {
	f, err := os.Open(link)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var st unix.Stat_t
	if err := unix.Fstat(int(f.Fd()), &st); err != nil {
		return nil, err
	}
	id := fileID{dev: st.Dev, ino: st.Ino, size: uint64(st.Size), mtime: st.Mtim.Sec, mtimeNsec: st.Mtim.Nsec,
		ctime: st.Ctim.Sec, ctimeNsec: st.Ctim.Nsec}
	c.mu.Lock()
	s, ok := c.sums[id]
	c.mu.Unlock()
	if ok {
		return s, nil
	}
	if st.Size > maxExeBytes {
		return nil, unix.EFBIG
	}
	h := sha256.New()
	if _, err := io.Copy(h, f); err != nil {
		return nil, err
	}
	s = h.Sum(nil)
	c.mu.Lock()
	if len(c.sums) >= maxHashed {
		clear(c.sums)
	}
	c.sums[id] = s
	c.mu.Unlock()
	return s, nil
}

// programsText writes a list of programs for the log ("any" for none).
func programsText(ps []key.Program) string {
	if len(ps) == 0 {
		return "any"
	}
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

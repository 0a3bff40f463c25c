package genid

import (
	"errors"
	"fmt"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/shm"
	"github.com/keywarden/keywarden/internal/wire"
)

// page is the generation page (wire.GenPage*): a memfd the daemon maps
// writable, sealed so that nobody else can ever write it, and handed to
// clients as a read-only descriptor.
type page struct {
	mu  sync.Mutex // serializes writers
	mem []byte     // the daemon's shared writable mapping
	fd  int        // read-only descriptor for clients
}

func newPage(started time.Time) (*page, error) {
	fd, err := unix.MemfdCreate("keywarden-generation", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING|unix.MFD_NOEXEC_SEAL)
	if errors.Is(err, unix.EINVAL) { // before Linux 6.3
		fd, err = unix.MemfdCreate("keywarden-generation", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	}
	if err != nil {
		return nil, fmt.Errorf("memfd_create: %w", err)
	}
	defer unix.Close(fd)
	if err := unix.Ftruncate(fd, wire.GenPageSize); err != nil {
		return nil, fmt.Errorf("ftruncate: %w", err)
	}
	mem, err := unix.Mmap(fd, 0, wire.GenPageSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap: %w", err)
	}
	p := &page{mem: mem, fd: -1}
	shm.Store32(mem, wire.GenPageOffMagic, wire.GenPageMagic)
	shm.Store32(mem, wire.GenPageOffLayout, wire.GenPageLayout)
	shm.Store64(mem, wire.GenPageOffStarted, uint64(started.UnixNano()))
	shm.Store32(mem, wire.GenPageOffFlags, wire.GenPageFlagLive)
	// From now on no one can write the file or map it writable, grow or
	// shrink it: only the mapping made above can change it.
	seals := unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_FUTURE_WRITE | unix.F_SEAL_SEAL
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, seals); err != nil {
		unix.Munmap(mem)
		return nil, fmt.Errorf("seal: %w", err)
	}
	// Hand out a read-only open file as well: it cannot be mapped writable
	// whatever the kernel's handling of the seals.
	ro, err := unix.Open(fmt.Sprintf("/proc/self/fd/%d", fd), unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		if ro, err = unix.Dup(fd); err != nil {
			unix.Munmap(mem)
			return nil, fmt.Errorf("dup: %w", err)
		}
		unix.CloseOnExec(ro)
	}
	p.fd = ro
	return p, nil
}

// publish writes a new generation under the sequence lock.
func (p *page) publish(gen uint64, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mem == nil {
		return
	}
	seq := shm.Load32(p.mem, wire.GenPageOffSeq)
	shm.Store32(p.mem, wire.GenPageOffSeq, seq+1) // odd: being written
	shm.Store64(p.mem, wire.GenPageOffGeneration, gen)
	shm.Store64(p.mem, wire.GenPageOffChanged, uint64(at.UnixNano()))
	shm.Store32(p.mem, wire.GenPageOffSeq, seq+2)
}

// close marks the page as no longer live (mapped pages of clients stay
// readable and say so) and releases it.
func (p *page) close() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mem == nil {
		return nil
	}
	seq := shm.Load32(p.mem, wire.GenPageOffSeq)
	shm.Store32(p.mem, wire.GenPageOffSeq, seq+1)
	shm.Store32(p.mem, wire.GenPageOffFlags, 0)
	shm.Store32(p.mem, wire.GenPageOffSeq, seq+2)
	err := unix.Munmap(p.mem)
	p.mem = nil
	unix.Close(p.fd)
	p.fd = -1
	return err
}

// PageFD returns the read-only descriptor of the generation page, which
// the Tracker owns (send it, do not close it), or an error saying why
// there is none.
func (t *Tracker) PageFD() (int, error) {
	if t.page == nil {
		return -1, t.pageErr
	}
	t.page.mu.Lock()
	defer t.page.mu.Unlock()
	if t.page.fd < 0 {
		return -1, errors.New("the tracker is closed")
	}
	return t.page.fd, nil
}

package server

// Shared memory for large messages (docs/protocol.md, "Shared memory").
// A client registers one memfd per connection (ShmRegister, the
// descriptor passed with the request); the data operations then name
// regions of it for their input and output instead of carrying bytes.
//
// What the daemon trusts of the mapping: nothing but its size. The seals
// the registration demands (no shrinking, no growing, no further seals)
// mean that every byte below the size checked stays mapped for as long as
// the daemon maps it, so no access can fault (SIGBUS). The contents can
// change at any instant, so an operation reads its input region exactly
// once: into the daemon's own memory, computing from that copy, or, for an
// operation that reads its input in a single pass (an AES-GCM encryption,
// a hash: readsOnce), in place as it computes. It computes its output in
// its own memory and copies it out once, never reading the output region
// back. Keys never enter the mapping.

import (
	"runtime/debug"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/key"
	"github.com/keywarden/keywarden/internal/shm"
	"github.com/keywarden/keywarden/internal/wire"
)

// Defaults of the shared-memory limits (Limits.ShmMaxBytes,
// Limits.ShmBytesPerUID).
const (
	DefaultShmMaxBytes    = 64 << 20
	DefaultShmBytesPerUID = 256 << 20
)

// shmSeals are the seals a registered memfd must carry.
const shmSeals = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW | unix.F_SEAL_SEAL

var (
	errShmNoFD     = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "no descriptor came with the request")
	errShmNotMemfd = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the descriptor is not a sealed memfd open for reading and writing")
	errShmTwice    = wire.Errorf(wire.Status_STATUS_ALREADY_EXISTS, "the connection has shared memory already")
	errShmNone     = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the connection has no shared memory")
	errRegion      = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "a region lies outside the shared memory")
	errRegionBoth  = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "both the data and an input region are given")
	errRegionOut   = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "an input region needs an output region")
	errRegionOver  = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the input and output regions overlap")
	errRegionSmall = wire.Errorf(wire.Status_STATUS_INVALID_ARGUMENT, "the output region is too small")
)

// shmMapping is a connection's registered shared memory, mapped.
type shmMapping struct {
	mem []byte
	// scratch holds an operation's copy of its input and its output, and
	// is kept for the next (wiped); scratchMu says it is in use.
	scratchMu sync.Mutex
	scratch   []byte
}

// takePassed hands over the descriptor that came with the request being
// run (the front's), or -1.
func (ss *Session) takePassed() int {
	fd := ss.passed
	if fd >= 0 {
		ss.passed = -1
	}
	return fd
}

// dropPassed closes the descriptor that came with the request, if no
// operation took it.
func (ss *Session) dropPassed() {
	if fd := ss.takePassed(); fd >= 0 {
		unix.Close(fd)
	}
}

// checkMemfd returns the size of fd if it is a memfd the daemon can map
// safely: a regular file of shared memory, open for reading and writing,
// between 1 byte and max bytes, sealed against shrinking, growing and
// further seals (so not against writing). Only memfds made with
// MFD_ALLOW_SEALING can take those seals: other files of shared memory
// are born with F_SEAL_SEAL, and other files, pipes and sockets have no
// seals at all (F_GET_SEALS fails).
func checkMemfd(fd int, max int) (int, error) {
	// The seals first: once the size can no longer change, the size read
	// after them is the size for good. (Read before them, a client could
	// shrink the file and seal it between the two reads, and the daemon
	// would map pages that are not there.)
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err != nil {
		return 0, errShmNotMemfd.WithDetail("F_GET_SEALS: %v", err)
	}
	if seals&shmSeals != shmSeals {
		return 0, errShmNotMemfd.WithDetail("seals %#x lack %#x", seals, shmSeals&^seals)
	}
	if seals&(unix.F_SEAL_WRITE|unix.F_SEAL_FUTURE_WRITE) != 0 {
		return 0, errShmNotMemfd.WithDetail("sealed against writing (seals %#x)", seals)
	}
	// Only ordinary shared memory (tmpfs): a hugetlb memfd takes the
	// seals too, but a hole punched in it frees its page, and a client
	// that then takes every free huge page makes the daemon's next read
	// of it fault.
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return 0, errShmNotMemfd.WithDetail("fstatfs: %v", err)
	}
	if fs.Type != unix.TMPFS_MAGIC {
		return 0, errShmNotMemfd.WithDetail("not ordinary shared memory (file system %#x)", fs.Type)
	}
	fl, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
	if err != nil {
		return 0, errShmNotMemfd.WithDetail("F_GETFL: %v", err)
	}
	if fl&unix.O_ACCMODE != unix.O_RDWR {
		return 0, errShmNotMemfd.WithDetail("not open for reading and writing")
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, errShmNotMemfd.WithDetail("fstat: %v", err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return 0, errShmNotMemfd.WithDetail("not a regular file (mode %#o)", st.Mode)
	}
	if st.Size <= 0 || st.Size > int64(max) {
		return 0, wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED,
			"shared memory of %d bytes: a connection's must be 1 to %d bytes", st.Size, max)
	}
	return int(st.Size), nil
}

// opShmRegister maps the memfd that came with the request as the
// connection's shared memory.
func (ss *Session) opShmRegister() error {
	fd := ss.takePassed()
	if fd < 0 {
		return errShmNoFD
	}
	defer unix.Close(fd) // the mapping keeps the file
	ss.mu.Lock()
	had := ss.shm != nil
	ss.mu.Unlock()
	if had {
		return errShmTwice
	}
	l := ss.s.lims()
	size, err := checkMemfd(fd, l.ShmMaxBytes)
	if err != nil {
		return err
	}
	if !ss.acct.holdShm(size, l.ShmBytesPerUID) {
		return wire.Errorf(wire.Status_STATUS_RESOURCE_EXHAUSTED, "too much shared memory for this user (limit %d bytes)", l.ShmBytesPerUID)
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		ss.acct.unholdShm(size)
		return errShmNotMemfd.WithDetail("mmap: %v", err)
	}
	ss.mu.Lock()
	if ss.shm != nil || ss.closed {
		ss.mu.Unlock()
		unix.Munmap(mem)
		ss.acct.unholdShm(size)
		return errShmTwice
	}
	ss.shm = &shmMapping{mem: mem}
	ss.mu.Unlock()
	return nil
}

// unmapShm releases the connection's shared memory (Close, once no
// request runs).
func (ss *Session) unmapShm() {
	ss.mu.Lock()
	m := ss.shm
	ss.shm = nil
	ss.mu.Unlock()
	if m == nil {
		return
	}
	if err := unix.Munmap(m.mem); err != nil {
		ss.log.Error("cannot unmap the connection's shared memory", "err", err)
	}
	ss.acct.unholdShm(len(m.mem))
}

// operands returns where op's input data lives (the field an input
// region stands for), its input and output regions, and whether op may
// name an output region. has is false for an operation that names no
// region.
func operands(op *wire.Op) (data *[]byte, in, out *wire.Region, outputs, has bool) {
	switch o := op.GetOp().(type) {
	case *wire.Op_Encrypt:
		e := o.Encrypt
		return &e.Plaintext, e.Input, e.Output, true, e.Input != nil || e.Output != nil
	case *wire.Op_Decrypt:
		d := o.Decrypt
		return &d.Ciphertext, d.Input, d.Output, true, d.Input != nil || d.Output != nil
	case *wire.Op_Hash:
		return &o.Hash.Data, o.Hash.Input, nil, false, o.Hash.Input != nil
	case *wire.Op_Mac:
		return &o.Mac.Data, o.Mac.Input, nil, false, o.Mac.Input != nil
	case *wire.Op_MacVerify:
		return &o.MacVerify.Data, o.MacVerify.Input, nil, false, o.MacVerify.Input != nil
	case *wire.Op_Sign:
		return &o.Sign.Data, o.Sign.Input, nil, false, o.Sign.Input != nil
	case *wire.Op_Verify:
		return &o.Verify.Data, o.Verify.Input, nil, false, o.Verify.Input != nil
	}
	return nil, nil, nil, false, false
}

// namesRegion reports whether op names a region of shared memory.
func namesRegion(op *wire.Op) bool {
	_, _, _, _, has := operands(op)
	return has
}

// spans checks op's regions against a mapping of size bytes and returns
// their bounds (ilo == ihi == -1 with no input region, olo == ohi == -1
// with no output region).
func spans(op *wire.Op, size int) (ilo, ihi, olo, ohi int, err error) {
	data, in, out, outputs, _ := operands(op)
	ilo, ihi, olo, ohi = -1, -1, -1, -1
	if out != nil && !outputs {
		return 0, 0, 0, 0, errRegion
	}
	if in != nil {
		if len(*data) > 0 {
			return 0, 0, 0, 0, errRegionBoth
		}
		var ok bool
		if ilo, ihi, ok = shm.Span(size, in.Offset, in.Length); !ok {
			return 0, 0, 0, 0, errRegion
		}
		if outputs && out == nil {
			return 0, 0, 0, 0, errRegionOut
		}
	}
	if out != nil {
		var ok bool
		if olo, ohi, ok = shm.Span(size, out.Offset, out.Length); !ok {
			return 0, 0, 0, 0, errRegion
		}
		if in != nil && shm.Overlap(ilo, ihi, olo, ohi) {
			return 0, 0, 0, 0, errRegionOver
		}
	}
	return ilo, ihi, olo, ohi, nil
}

// readsOnce reports whether op reads its input in one pass, each byte
// once, and computes its output in the daemon's memory from what that pass
// read: an AES-GCM encryption (the counter mode's pass over the plaintext
// writes the ciphertext, which the tag is then computed from) and a hash.
// Such an operation may read its input region in place: a client that
// rewrites the region meanwhile only changes what it asked for. A
// decryption checks its tag before it decrypts (two passes), and a
// signature may hash its message twice (Ed25519): they run on a copy.
func (ss *Session) readsOnce(op *wire.Op) bool {
	switch o := op.GetOp().(type) {
	case *wire.Op_Encrypt:
		obj, err := ss.object(o.Encrypt.Handle)
		return err == nil && obj.Spec.Family == key.FamilyAES && o.Encrypt.Hash == wire.HashAlg_HASH_ALG_UNSPECIFIED
	case *wire.Op_Hash:
		return true
	}
	return false
}

// dispatchShared runs op, which names regions of the connection's shared
// memory: its input region is copied once into a's memory and the
// operation runs on that copy, as if the client had sent those bytes, or,
// for an operation that reads its input once (readsOnce), it reads the
// region in place; its output, computed in a's memory, is copied once into
// the output region.
func (ss *Session) dispatchShared(r *opRow, op *wire.Op, id Identity, a *arena, out *wire.Result) ([]byte, *wire.Result, error) {
	ss.mu.Lock()
	m := ss.shm
	ss.mu.Unlock()
	if m == nil {
		return nil, nil, errShmNone
	}
	ilo, ihi, olo, ohi, err := spans(op, len(m.mem))
	if err != nil {
		return nil, nil, err
	}
	// A fault reading or writing the mapping becomes a panic that
	// safeDispatch turns into INTERNAL, not the end of the daemon. The
	// seals and the file system checked at registration rule out the
	// faults a client could cause by resizing; a hole punched in tmpfs can
	// still fault when memory accounting refuses the page it then needs.
	defer debug.SetPanicOnFault(debug.SetPanicOnFault(true))
	// The input's copy and the output are made in the mapping's scratch
	// buffer, one operation at a time per connection (requests running
	// concurrently wait for it): fresh megabytes for every operation would
	// cost a page fault every 4 KiB, and copies of their own would let
	// concurrent requests hold memory no limit counts. So a connection
	// holds at most one scratch buffer, of at most twice its mapping.
	m.scratchMu.Lock()
	defer m.scratchMu.Unlock()
	once := ilo >= 0 && ss.readsOnce(op)
	// Room for the input (unless read in place) and the output, and what
	// an encryption adds (encryptOverhead) when the output region is too
	// small.
	need := max(ohi-olo, 0) + 4096
	if !once {
		need += max(ihi-ilo, 0)
	}
	if cap(m.scratch) < need {
		m.scratch = make([]byte, 0, need)
	}
	sa := &arena{buf: m.scratch[:0]}
	_, enc := op.GetOp().(*wire.Op_Encrypt)
	_, dec := op.GetOp().(*wire.Op_Decrypt)
	// public is how many bytes at the start of the scratch hold nothing
	// secret: a decryption's copy of its input, a ciphertext.
	public := 0
	defer func() {
		switch {
		case once && enc:
			// Only the ciphertext was made here, which the output region
			// gets anyway: there is nothing of the client's to wipe.
			return
		case public > 0 && len(sa.spent) == 0:
			// The plaintext that follows the ciphertext is wiped.
			clear(sa.buf[public:])
			sa.reset()
		default:
			sa.wipe() // inputs and outputs are the client's secrets
		}
	}()
	data, _, _, _, _ := operands(op)
	if ilo >= 0 {
		if once {
			*data = m.mem[ilo:ihi]
		} else {
			own := sa.take(ihi - ilo)[:ihi-ilo]
			copy(own, m.mem[ilo:ihi])
			*data = own
			if dec {
				public = len(own)
			}
		}
		// The request is recycled after the reply: it must not keep a
		// slice of the arena or of the mapping.
		defer func() { *data = nil }()
	}
	res, full, err := ss.dispatchRow(r, op, id, sa, out)
	if err != nil || full != nil || olo < 0 {
		if len(res) > 0 {
			// A result returned in the reply must outlive the scratch.
			res = append(a.take(len(res)), res...)
		}
		return res, full, err
	}
	if len(res) > ohi-olo {
		return nil, nil, errRegionSmall.WithDetail("%d bytes needed, %d given", len(res), ohi-olo)
	}
	copy(m.mem[olo:], res)
	out.OutputLength = uint64(len(res))
	return nil, nil, nil
}

package keywarden

import (
	"context"
	"errors"
	"sort"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/keywarden/keywarden/internal/wire"
)

// SharedThreshold is the payload size from which Encrypt, Decrypt, Hash
// and MAC send their data through the connection's shared memory rather
// than in the request, when the daemon takes shared memory
// (Limits.SharedMemory): the data is copied into a region of a sealed
// memfd the client registered, and the daemon reads it there and writes
// its output to another region (docs/protocol.md, "Shared memory"). Data
// of that size then needs no stream, up to about half of the shared
// memory for an encryption or decryption.
const SharedThreshold = 64 << 10

// sharedSize is the size of the memfd a client registers (at most the
// daemon's limit): room for a few megabyte-sized calls in flight at once.
const sharedSize = 16 << 20

// sharedAlign aligns regions, so that two never share a cache line.
const sharedAlign = 64

// sharedMem is the client's shared memory with the daemon: made and
// registered on first use, and handed out in regions, one or two per call
// in flight, so that concurrent calls never share one.
type sharedMem struct {
	once sync.Once
	mu   sync.Mutex
	mem  []byte // nil: none (err says why)
	err  error
	// used are the allocated regions, sorted by offset; busy counts
	// those a goroutine still touches (the others were lost to cancelled
	// calls, whose replies may still write them).
	used   []span
	busy   int
	closed bool
}

type span struct{ off, end int }

// sharedMem returns the client's shared memory, registering it on first
// use; nil when the daemon takes none or it could not be made.
func (c *Client) sharedMem(ctx context.Context) *sharedMem {
	m := &c.shm
	m.once.Do(func() { m.mem, m.err = c.registerShared(ctx) })
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.mem == nil || m.closed {
		return nil
	}
	return m
}

// registerShared makes a sealed memfd, maps it and registers it with the
// daemon.
func (c *Client) registerShared(ctx context.Context) ([]byte, error) {
	size := min(c.limits.SharedMemory, sharedSize)
	if size <= 0 {
		return nil, errors.New("the daemon takes no shared memory")
	}
	fd, err := unix.MemfdCreate("keywarden-shared", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd) // the mapping and the daemon's copy keep the file
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		return nil, err
	}
	// The daemon maps only a memfd that can neither shrink nor grow, so
	// that no access of its can fault.
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		return nil, err
	}
	mem, err := unix.Mmap(fd, 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, err
	}
	cl, err := c.startCallFDs(ctx, []*wire.Op{{Op: &wire.Op_ShmRegister{ShmRegister: &wire.ShmRegister{}}}}, false, []int{fd})
	if err == nil {
		var rep *wire.Reply
		if rep, err = c.finish(ctx, "shm-register", cl); err == nil {
			if len(rep.Results) != 1 {
				err = errors.New("no result")
			} else {
				err = resultErr("shm-register", rep.Results[0].Status, rep.Results[0].Message)
			}
		}
	}
	if err != nil {
		unix.Munmap(mem)
		return nil, err
	}
	return mem, nil
}

// alloc hands out a region of n bytes; false when none is free.
func (m *sharedMem) alloc(n int) (int, bool) {
	n = (n + sharedAlign - 1) &^ (sharedAlign - 1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return 0, false
	}
	at := 0
	for i, u := range m.used {
		if u.off-at >= n {
			m.used = append(m.used[:i], append([]span{{at, at + n}}, m.used[i:]...)...)
			m.busy++
			return at, true
		}
		at = u.end
	}
	if len(m.mem)-at < n {
		return 0, false
	}
	m.used = append(m.used, span{at, at + n})
	m.busy++
	return at, true
}

// free gives back the region at off, or only forgets that a goroutine
// touches it when lost (its call was cancelled before its reply, which
// may still write it: it is never handed out again). It is not wiped: it
// holds what the caller's own memory holds, and only this process and
// the daemon map it.
func (m *sharedMem) free(off int, lost bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	i := sort.Search(len(m.used), func(i int) bool { return m.used[i].off >= off })
	if i < len(m.used) && m.used[i].off == off && !lost {
		m.used = append(m.used[:i], m.used[i+1:]...)
	}
	m.busy--
	m.unmapIfDone()
}

// release unmaps the memory once no call touches it (Close).
func (m *sharedMem) release() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closed = true
	m.unmapIfDone()
}

func (m *sharedMem) unmapIfDone() {
	if m.closed && m.busy == 0 && m.mem != nil {
		unix.Munmap(m.mem)
		m.mem = nil
	}
}

// doShared runs op, whose input is data, through shared memory: it copies
// data into a region and names it (with out, when the operation has
// output, a region of outLen bytes after it). It returns the result with
// the output appended to dst in Result.data (dst may be data itself, cut
// to its start: data is in the region before anything is appended), and
// false when the path is not available (no shared memory, no room), for
// the caller to send the data in the request.
func (c *Client) doShared(ctx context.Context, opName string, dst, data []byte, outLen int, op *wire.Op, name func(in, out *wire.Region)) (*wire.Result, bool, error) {
	m := c.sharedMem(ctx)
	if m == nil {
		return nil, false, nil
	}
	inLen := (len(data) + sharedAlign - 1) &^ (sharedAlign - 1)
	off, ok := m.alloc(inLen + outLen)
	if !ok {
		return nil, false, nil
	}
	copy(m.mem[off:], data)
	in := &wire.Region{Offset: uint64(off), Length: uint64(len(data))}
	var out *wire.Region
	if outLen > 0 {
		out = &wire.Region{Offset: uint64(off + inLen), Length: uint64(outLen)}
	}
	name(in, out)
	rep, err := c.roundTrip(ctx, opName, op)
	if err != nil {
		// Without its reply the daemon may still be at work on the
		// regions: they are not handed out again.
		m.free(off, rep == nil && ctx.Err() != nil)
		return nil, true, err
	}
	defer m.free(off, false)
	if len(rep.Results) != 1 {
		return nil, true, &Error{Code: CodeInternal, Op: opName, Message: "the daemon sent a reply without a result"}
	}
	res := rep.Results[0]
	if err := resultErr(opName, res.Status, res.Message); err != nil {
		return nil, true, err
	}
	if out != nil {
		if res.OutputLength > out.Length {
			return nil, true, &Error{Code: CodeInternal, Op: opName, Message: "the daemon wrote past the output region"}
		}
		// One copy out, into the caller's buffer when it has room: a
		// fresh megabyte costs a page fault every 4 KiB once the runtime
		// has given it back to the kernel.
		res.Data = append(dst, m.mem[out.Offset:out.Offset+res.OutputLength]...)
	}
	return res, true, nil
}

// aesOverhead is what AES-GCM encryption adds: the version header, the
// nonce and the tag.
const aesOverhead = 7 + 12 + 16

func (k *Key) encryptShared(ctx context.Context, dst, plaintext, aad []byte) ([]byte, bool, error) {
	e := &wire.Encrypt{Handle: k.handle, Aad: aad}
	res, ok, err := k.c.doShared(ctx, "encrypt", dst, plaintext, len(plaintext)+aesOverhead, &wire.Op{Op: &wire.Op_Encrypt{Encrypt: e}},
		func(in, out *wire.Region) { e.Input, e.Output = in, out })
	return res.GetData(), ok, err
}

func (k *Key) decryptShared(ctx context.Context, dst, ciphertext, aad []byte) ([]byte, bool, error) {
	d := &wire.Decrypt{Handle: k.handle, Aad: aad}
	res, ok, err := k.c.doShared(ctx, "decrypt", dst, ciphertext, len(ciphertext), &wire.Op{Op: &wire.Op_Decrypt{Decrypt: d}},
		func(in, out *wire.Region) { d.Input, d.Output = in, out })
	return res.GetData(), ok, err
}

func (c *Client) hashShared(ctx context.Context, alg wire.HashAlg, data []byte) ([]byte, bool, error) {
	h := &wire.Hash{Alg: alg}
	res, ok, err := c.doShared(ctx, "hash", nil, data, 0, &wire.Op{Op: &wire.Op_Hash{Hash: h}},
		func(in, _ *wire.Region) { h.Input = in })
	return res.GetData(), ok, err
}

func (k *Key) macShared(ctx context.Context, data []byte) ([]byte, bool, error) {
	mc := &wire.Mac{Handle: k.handle}
	res, ok, err := k.c.doShared(ctx, "mac", nil, data, 0, &wire.Op{Op: &wire.Op_Mac{Mac: mc}},
		func(in, _ *wire.Region) { mc.Input = in })
	return res.GetData(), ok, err
}

package audit

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/keywarden/keywarden/internal/ownfile"

	"golang.org/x/sys/unix"
)

// Files of a log: the active file at Options.Path, and the files rotation
// moved aside, named PATH.NNNNNNNNNNNNNNNNNNNN after the seq of their first
// record (20 digits, so that names sort in chain order).

const rotatedDigits = 20

func rotatedName(path string, firstSeq uint64) string {
	return fmt.Sprintf("%s.%0*d", path, rotatedDigits, firstSeq)
}

// rotatedSeq returns the first seq encoded in a rotated file's name.
func rotatedSeq(path, name string) (uint64, bool) {
	suffix, ok := strings.CutPrefix(name, filepath.Base(path)+".")
	if !ok || len(suffix) != rotatedDigits {
		return 0, false
	}
	n, err := strconv.ParseUint(suffix, 10, 64)
	return n, err == nil
}

// latestRotated finds the rotated file of path whose first record has
// the highest seq, or "". The seq is read from the files, not from their
// names, which anyone who can write the directory can swap; a file whose
// first record cannot be read counts by its name.
func latestRotated(path string) (string, error) {
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		return "", err
	}
	best, found := uint64(0), ""
	for _, e := range ents {
		n, ok := rotatedSeq(path, e.Name())
		if !ok || !e.Type().IsRegular() {
			continue
		}
		name := filepath.Join(filepath.Dir(path), e.Name())
		if fd, err := unix.Open(name, unix.O_RDONLY|unix.O_CLOEXEC, 0); err == nil {
			n = firstSeq(fd, n)
			unix.Close(fd)
		}
		if found == "" || n > best {
			best, found = n, name
		}
	}
	return found, nil
}

// openOwn opens a file of the log with flags, never through a symbolic
// link, and only if it is a regular file of this process's uid or root:
// where others can create files, they could otherwise make the daemon
// write through a link of theirs or into a file of theirs.
func openOwn(path string, flags int, perm uint32) (int, error) {
	return ownfile.Open("audit file", path, flags, perm, "")
}

func syncDir(dir string) error {
	fd, err := unix.Open(dir, unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	return retryEINTR(func() error { return unix.Fsync(fd) })
}

func retryEINTR(f func() error) error {
	for {
		if err := f(); err != unix.EINTR {
			return err
		}
	}
}

func pwriteAll(fd int, b []byte, off int64) error {
	for len(b) > 0 {
		n, err := unix.Pwrite(fd, b, off)
		if err == unix.EINTR {
			continue
		}
		if err != nil {
			return err
		}
		if n == 0 {
			return io.ErrShortWrite
		}
		b, off = b[n:], off+int64(n)
	}
	return nil
}

func fileSize(fd int) (int64, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return 0, err
	}
	return st.Size, nil
}

// tail is what the end of a log file says.
type tail struct {
	last      *Record // the last complete record, or nil if the file has none
	lastLine  []byte
	prevHash  [32]byte // the chain hash before last
	hasPrev   bool     // prevHash is known (from the line before, or last is a segment)
	goodSize  int64    // the size up to and including the last newline
	tornBytes int64    // bytes after the last newline but before any trailing zeros: an incomplete line
}

var errDamaged = errors.New("the end of the file is not a valid record")

// readTail reads the last two lines of the file open at fd, of the given
// size, and checks that the last one is a record whose chain hash follows
// from the one before.
func readTail(fd int, size int64) (*tail, error) {
	t := &tail{}
	size, err := zeroTailStart(fd, size)
	if err != nil {
		return nil, err
	}
	const maxScan = 2*MaxLineBytes + 2
	start := max(size-maxScan, 0)
	buf := make([]byte, size-start)
	if _, err := unix.Pread(fd, buf, start); err != nil && len(buf) > 0 {
		return nil, err
	}
	nl := bytes.LastIndexByte(buf, '\n')
	if nl < 0 {
		if start > 0 {
			return nil, errDamaged
		}
		// No complete line at all: everything is an incomplete first line.
		t.tornBytes = size
		return t, nil
	}
	t.goodSize = start + int64(nl) + 1
	t.tornBytes = size - t.goodSize
	body := buf[:nl]
	lineStart := bytes.LastIndexByte(body, '\n') + 1
	if lineStart == 0 && start > 0 {
		return nil, errDamaged // a line longer than the limit
	}
	line := body[lineStart:]
	r, err := ParseRecord(line)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errDamaged, err)
	}
	t.last, t.lastLine = r, bytes.Clone(line)
	switch {
	case r.Kind == KindSegment:
		t.prevHash, t.hasPrev = r.Segment.Prev, true
	case lineStart > 0:
		prevBody := body[:lineStart-1]
		prev, err := ParseRecord(prevBody[bytes.LastIndexByte(prevBody, '\n')+1:])
		if err != nil {
			return nil, fmt.Errorf("%w: the line before the last: %v", errDamaged, err)
		}
		if prev.Seq+1 != r.Seq {
			return nil, fmt.Errorf("%w: seq %d follows seq %d", errDamaged, r.Seq, prev.Seq)
		}
		t.prevHash, t.hasPrev = prev.Hash, true
	}
	if t.hasPrev {
		prefix, _ := rawParts(line, r)
		if chainHashOf(newDigest(), &t.prevHash, line[:prefix]) != r.Hash {
			return nil, fmt.Errorf("%w: the chain hash of seq %d does not match", errDamaged, r.Seq)
		}
	}
	return t, nil
}

// zeroTailStart returns where the trailing zero bytes of the file open at
// fd, of the given size, begin: size if it does not end with a zero.
func zeroTailStart(fd int, size int64) (int64, error) {
	buf := make([]byte, 64<<10)
	for size > 0 {
		n := min(int64(len(buf)), size)
		b := buf[:n]
		if _, err := unix.Pread(fd, b, size-n); err != nil {
			return 0, err
		}
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != 0 {
				return size - n + int64(i) + 1, nil
			}
		}
		size -= n
	}
	return 0, nil
}

// zeroTail reads r without the zero bytes at its end. A log file with
// --audit-sync always is extended ahead of its records (see
// extendReserve) and reads as zeros past them until they are cut off: the
// records end where the zeros to the end of the file begin. Zeros followed
// by anything else are passed on, for the reader to find them damaged.
type zeroTail struct {
	r     io.Reader
	zeros int64  // zeros held back: passed on only if data follows them
	data  []byte // data that followed them, passed on after them
	after int64  // zeros that followed data, held back once it is passed on
	buf   []byte // data's storage
	err   error  // from r, returned once what came before it is passed on
}

func newZeroTail(r io.Reader) *zeroTail { return &zeroTail{r: r} }

func (z *zeroTail) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	for {
		if len(z.data) > 0 {
			if z.zeros > 0 {
				n := int(min(int64(len(p)), z.zeros))
				clear(p[:n])
				z.zeros -= int64(n)
				return n, nil
			}
			n := copy(p, z.data)
			if z.data = z.data[n:]; len(z.data) == 0 {
				z.zeros, z.after = z.after, 0
			}
			return n, nil
		}
		if z.err != nil {
			return 0, z.err // zeros still held are the end of the file
		}
		n, err := z.r.Read(p)
		z.err = err
		i := n // p[:i] ends with its last nonzero byte
		for i > 0 && p[i-1] == 0 {
			i--
		}
		switch {
		case i == 0:
			z.zeros += int64(n)
		case z.zeros == 0:
			z.zeros = int64(n - i)
			return i, nil
		default:
			// Data after zeros held back: they were not the end.
			z.buf = append(z.buf[:0], p[:i]...)
			z.data, z.after = z.buf, int64(n-i)
		}
	}
}

// lastGood scans a damaged file from the start and returns the last
// record up to which the file is a valid chain, or nil, and where its
// line ends.
func lastGood(path string) (*Record, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer f.Close()
	var good *Record
	var h [32]byte
	var off, end int64
	d := newDigest()
	err = scanLines(f, func(line []byte, _ int) error {
		if len(line) == 0 || line[len(line)-1] != '\n' {
			return errStop
		}
		off += int64(len(line))
		line = line[:len(line)-1]
		r, err := ParseRecord(line)
		if err != nil {
			return errStop
		}
		if good == nil {
			if r.Kind != KindSegment {
				return errStop
			}
			h = r.Segment.Prev
		} else if r.Seq != good.Seq+1 {
			return errStop
		}
		prefix, _ := rawParts(line, r)
		if chainHashOf(d, &h, line[:prefix]) != r.Hash {
			return errStop
		}
		h, good, end = r.Hash, r, off
		return nil
	})
	if err != nil && err != errStop {
		return nil, 0, err
	}
	return good, end, nil
}

var errStop = errors.New("stop")

// scanLines calls fn with each line of r, newline included (the last line
// may lack it), and its 1-based number. A line longer than MaxLineBytes
// is passed cut to MaxLineBytes+1 bytes, without a newline. Zeros at the
// end of r are not read (see zeroTail).
func scanLines(r io.Reader, fn func(line []byte, n int) error) error {
	r = newZeroTail(r)
	buf := make([]byte, 0, 64<<10)
	rd := make([]byte, 64<<10)
	n := 0
	skipping := false
	for {
		k, err := r.Read(rd)
		chunk := rd[:k]
		for len(chunk) > 0 {
			i := bytes.IndexByte(chunk, '\n')
			if i < 0 {
				if !skipping {
					buf = append(buf, chunk...)
					if len(buf) > MaxLineBytes {
						n++
						if ferr := fn(buf[:MaxLineBytes+1], n); ferr != nil {
							return ferr
						}
						buf, skipping = buf[:0], true
					}
				}
				break
			}
			if skipping {
				skipping = false
			} else {
				buf = append(buf, chunk[:i+1]...)
				if len(buf) > MaxLineBytes+1 {
					n++
					if ferr := fn(buf[:MaxLineBytes+1], n); ferr != nil {
						return ferr
					}
				} else {
					n++
					if ferr := fn(buf, n); ferr != nil {
						return ferr
					}
				}
			}
			buf = buf[:0]
			chunk = chunk[i+1:]
		}
		if err == io.EOF {
			if len(buf) > 0 {
				n++
				return fn(buf, n)
			}
			return nil
		}
		if err != nil {
			return err
		}
	}
}

func readBootID() string {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func monotonicNow() int64 {
	var ts unix.Timespec
	if err := unix.ClockGettime(unix.CLOCK_MONOTONIC, &ts); err != nil {
		return 0
	}
	return ts.Nano()
}

package audit

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// waitFor polls cond until it holds; the generous limit only bounds a
// broken test.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

func countOps(t *testing.T, path, op string) int {
	t.Helper()
	n := 0
	files, _ := LogFiles(path)
	ScanFiles(files, Filter{Op: op}, func(*Record) error { n++; return nil })
	return n
}

// TestFailClosedWriteError: a write that fails half way leaves no partial
// line, fails the appends of its group, and the log refuses at once until
// writing works again; then it records that it resumed, and the chain has
// no gap.
func TestFailClosedWriteError(t *testing.T) {
	for _, mode := range []SyncMode{SyncGrouped, SyncAlways} {
		t.Run(mode.String(), func(t *testing.T) {
			var failing atomic.Bool
			l := openLog(t, Options{Sync: mode, Keys: testKeys(t), RetryInterval: 5 * time.Millisecond})
			l.hookWrite = func(fd int, b []byte, off int64) error {
				if failing.Load() {
					pwriteAll(fd, b[:len(b)/2], off) // a torn write
					return unix.EIO
				}
				return pwriteAll(fd, b, off)
			}
			appendN(t, l, 5)
			failing.Store(true)
			err := l.Append(request(100))
			var e *Error
			if !errors.Is(err, ErrUnavailable) || !errors.Is(err, unix.EIO) || !errors.As(err, &e) || e.Op != "write" {
				t.Fatalf("append during failure: %v", err)
			}
			if l.Ready() == nil {
				t.Fatal("Ready during failure")
			}
			for range 3 {
				if err := l.Append(request(101)); !errors.Is(err, ErrUnavailable) {
					t.Fatalf("append while failed: %v", err)
				}
			}
			if st := l.Status(); st.Healthy || st.Refused < 3 || st.FailedSince.IsZero() {
				t.Fatalf("status %+v", st)
			}
			failing.Store(false)
			waitFor(t, "recovery", func() bool { return l.Ready() == nil })
			appendN(t, l, 5)
			if err := l.Close(); err != nil {
				t.Fatal(err)
			}
			mustIntact(t, verifyPath(t, l.opts.Path, strict(t)))
			if countOps(t, l.opts.Path, OpAuditResumed) != 1 {
				t.Fatal("the resumption is not recorded")
			}
			// No record of a failed append reached the log.
			n := 0
			ScanFiles([]string{l.opts.Path}, Filter{HasKind: true, Kind: KindRequest}, func(r *Record) error {
				if r.Request >= 100 {
					t.Errorf("a refused record is in the log: %+v", r)
				}
				n++
				return nil
			})
			if n != 10 {
				t.Fatalf("%d requests in the log, want 10", n)
			}
		})
	}
}

// fsImmutableFL is FS_IMMUTABLE_FL (linux/fs.h).
const fsImmutableFL = 0x10

// TestFailClosedImmutable: the log file stops being writable under the
// daemon (here: made immutable, which ext4 enforces on open descriptors
// too), and becomes writable again.
func TestFailClosedImmutable(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to set the immutable attribute")
	}
	path := filepath.Join(t.TempDir(), "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t), RetryInterval: 5 * time.Millisecond, Reserve: -1})
	defer l.Close()
	appendN(t, l, 3)
	probe, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer probe.Close()
	setImmutable := func(on bool) error {
		f, err := os.Open(path)
		if err != nil {
			return err
		}
		defer f.Close()
		flags, err := unix.IoctlGetUint32(int(f.Fd()), unix.FS_IOC_GETFLAGS)
		if err != nil {
			return err
		}
		if on {
			flags |= fsImmutableFL
		} else {
			flags &^= fsImmutableFL
		}
		return unix.IoctlSetPointerInt(int(f.Fd()), unix.FS_IOC_SETFLAGS, int(flags))
	}
	if err := setImmutable(true); err != nil {
		t.Skipf("cannot set the immutable attribute here: %v", err)
	}
	defer setImmutable(false)
	if _, err := probe.WriteAt(nil, 0); err == nil {
		if _, err := probe.WriteAt([]byte{}, 0); err == nil {
			// Zero-length writes prove nothing; try a real one past the end.
			if _, err := probe.WriteAt([]byte("x"), 1<<30); err == nil {
				t.Skip("this file system lets open descriptors write to an immutable file")
			}
		}
	}
	if err := l.Append(request(50)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("append to an immutable file: %v", err)
	}
	if err := l.Append(request(51)); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("append while failed: %v", err)
	}
	if err := setImmutable(false); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "recovery", func() bool { return l.Ready() == nil })
	appendN(t, l, 3)
	l.Close()
	mustIntact(t, verifyPath(t, path, strict(t)))
	if countOps(t, path, OpAuditResumed) != 1 {
		t.Fatal("the resumption is not recorded")
	}
}

// TestFailClosedFullDisk runs the log on a tiny tmpfs, fills it, and frees
// it again: Ready refuses as soon as the reserve cannot be kept, appends
// already admitted still land in the reserve, appends fail with ENOSPC
// once even that is gone, and the log comes back by itself when space
// returns.
func TestFailClosedFullDisk(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount a tmpfs")
	}
	// With SyncAlways the reserve is zeros the file is extended over.
	for _, mode := range []SyncMode{SyncGrouped, SyncAlways} {
		t.Run(mode.String(), func(t *testing.T) { testFailClosedFullDisk(t, mode) })
	}
}

func testFailClosedFullDisk(t *testing.T, mode SyncMode) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=256k,mode=0700"); err != nil {
		t.Skipf("cannot mount a tmpfs: %v", err)
	}
	defer unix.Unmount(dir, unix.MNT_DETACH)
	path := filepath.Join(dir, "audit.log")
	l := openLog(t, Options{Path: path, Keys: testKeys(t), RetryInterval: 5 * time.Millisecond,
		Reserve: 16 << 10, CheckpointEvery: 1 << 30, Sync: mode})
	defer l.Close()
	appendN(t, l, 3)
	// Fill the file system.
	filler := filepath.Join(dir, "filler")
	f, err := os.Create(filler)
	if err != nil {
		t.Fatal(err)
	}
	chunk := bytes.Repeat([]byte{'x'}, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			break
		}
	}
	f.Close()
	readyFailedAt, appendFailedAt := -1, -1
	for i := 0; i < 10000 && appendFailedAt < 0; i++ {
		if readyFailedAt < 0 && l.Ready() != nil {
			readyFailedAt = i
		}
		if err := l.Append(request(1000 + i)); err != nil {
			if !errors.Is(err, ErrUnavailable) || !errors.Is(err, unix.ENOSPC) {
				t.Fatalf("append on a full disk: %v", err)
			}
			appendFailedAt = i
		}
	}
	if readyFailedAt < 0 || appendFailedAt < 0 || readyFailedAt >= appendFailedAt {
		t.Fatalf("Ready failed at append %d, Append at %d: Ready must refuse first", readyFailedAt, appendFailedAt)
	}
	t.Logf("Ready refused from append %d on, Append failed at %d", readyFailedAt, appendFailedAt)
	if st := l.Status(); st.Healthy || !errors.Is(st.Err, unix.ENOSPC) {
		t.Fatalf("status %+v", st)
	}
	os.Remove(filler)
	waitFor(t, "recovery", func() bool { return l.Ready() == nil })
	appendN(t, l, 3)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	mustEndWithRecord(t, path)
	rep := verifyPath(t, path, strict(t))
	mustIntact(t, rep)
	if countOps(t, path, OpAuditResumed) != 1 {
		t.Fatal("the resumption is not recorded")
	}
	var msg string
	ScanFiles([]string{path}, Filter{Op: OpAuditResumed}, func(r *Record) error { msg = r.Msg; return nil })
	if !strings.Contains(msg, "no space") {
		t.Fatalf("resumption record: %q", msg)
	}
}

package audit

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Filter selects records, for `keywarden audit query` and `tail`. A zero
// field matches everything; a record must match every field that is set.
type Filter struct {
	// Key is a key id in hex, or a prefix of one: it matches the record's
	// key or the key of any operation of a batch.
	Key string
	// UID matches the caller's uid.
	UID    uint32
	HasUID bool
	// Op matches the record's operation or that of any operation of a
	// batch.
	Op string
	// Status matches the status ("OK", "PERMISSION_DENIED", ...);
	// Failed matches every status but OK (and requests with no status).
	Status string
	Failed bool
	Kind   Kind
	// HasKind: only records of Kind.
	HasKind      bool
	Since, Until time.Time // Since <= Time < Until
}

// Match reports whether r passes f.
func (f *Filter) Match(r *Record) bool {
	if f.HasKind && r.Kind != f.Kind {
		return false
	}
	if f.HasUID && (r.Kind != KindRequest || r.Caller.UID != f.UID) {
		return false
	}
	if !f.Since.IsZero() && r.Time.Before(f.Since) {
		return false
	}
	if !f.Until.IsZero() && !r.Time.Before(f.Until) {
		return false
	}
	if f.Status != "" && !r.anyStatus(func(s string) bool { return s == f.Status }) {
		return false
	}
	if f.Failed && !r.anyStatus(func(s string) bool { return s != "OK" }) {
		return false
	}
	if f.Op != "" && r.Op != f.Op && !slices.ContainsFunc(r.Ops, func(e OpEntry) bool { return e.Op == f.Op }) {
		return false
	}
	if f.Key != "" {
		want := strings.ToLower(f.Key)
		match := func(id KeyID) bool { return !id.IsZero() && strings.HasPrefix(id.String(), want) }
		if !match(r.Key) && !slices.ContainsFunc(r.Ops, func(e OpEntry) bool { return match(e.Key) }) {
			return false
		}
	}
	return true
}

func (r *Record) anyStatus(f func(string) bool) bool {
	if r.Kind != KindRequest && r.Kind != KindEvent {
		return false
	}
	if r.Status != "" && f(r.Status) {
		return true
	}
	return slices.ContainsFunc(r.Ops, func(e OpEntry) bool { return f(e.Status) })
}

// Scan calls fn for each record of r that f matches, in order, until fn
// returns an error (ErrStopScan ends it without one). An incomplete last
// line is ignored; any other line that is not a record is an error: run
// Verify to learn more.
func Scan(r io.Reader, f Filter, fn func(*Record) error) error {
	err := scanLines(r, func(line []byte, n int) error {
		if line[len(line)-1] != '\n' {
			if len(line) > MaxLineBytes {
				return fmt.Errorf("line %d: longer than %d bytes", n, MaxLineBytes)
			}
			return nil
		}
		rec, err := ParseRecord(line)
		if err != nil {
			return fmt.Errorf("line %d: %w", n, err)
		}
		if f.Match(rec) {
			return fn(rec)
		}
		return nil
	})
	if err == ErrStopScan {
		return nil
	}
	return err
}

// ErrStopScan, returned by a Scan callback, ends the scan without error.
var ErrStopScan = errors.New("audit: stop scan")

// LogFiles returns the files of the log whose active file is path: the
// rotated ones in chain order, then path itself if it exists.
func LogFiles(path string) ([]string, error) {
	ents, err := os.ReadDir(filepath.Dir(path))
	if err != nil {
		return nil, err
	}
	type rf struct {
		name string
		seq  uint64
	}
	var rot []rf
	active := false
	for _, e := range ents {
		if !e.Type().IsRegular() {
			continue
		}
		if e.Name() == filepath.Base(path) {
			active = true
		} else if seq, ok := rotatedSeq(path, e.Name()); ok {
			rot = append(rot, rf{filepath.Join(filepath.Dir(path), e.Name()), seq})
		}
	}
	slices.SortFunc(rot, func(a, b rf) int {
		if a.seq < b.seq {
			return -1
		}
		if a.seq > b.seq {
			return 1
		}
		return 0
	})
	out := make([]string, 0, len(rot)+1)
	for _, r := range rot {
		out = append(out, r.name)
	}
	if active {
		out = append(out, path)
	}
	return out, nil
}

// ScanFiles scans files in the order given.
func ScanFiles(paths []string, f Filter, fn func(*Record) error) error {
	stop := false
	wrapped := func(r *Record) error {
		if err := fn(r); err == ErrStopScan {
			stop = true
			return ErrStopScan
		} else {
			return err
		}
	}
	for _, p := range paths {
		fh, err := os.Open(p)
		if err != nil {
			return err
		}
		err = Scan(fh, f, wrapped)
		fh.Close()
		if err != nil {
			return fmt.Errorf("%s: %w", p, err)
		}
		if stop {
			return nil
		}
	}
	return nil
}

// Last returns the last n records of the log whose active file is path
// that f matches, oldest first, and the seq of the last record of the log
// (from which Follow can go on), also when n is 0 or the active file is
// still empty (a crash right after a rotation).
func Last(path string, n int, f Filter) (recs []*Record, lastSeq uint64, err error) {
	n = max(n, 0)
	files, err := LogFiles(path)
	if err != nil {
		return nil, 0, err
	}
	for i := len(files) - 1; i >= 0 && (len(recs) < n || lastSeq == 0); i-- {
		var got []*Record
		var fileLast uint64
		err := ScanFiles(files[i:i+1], Filter{}, func(r *Record) error {
			fileLast = max(fileLast, r.Seq)
			if n > 0 && f.Match(r) {
				got = append(got, r)
				if len(got) > n {
					got = got[1:]
				}
			}
			return nil
		})
		if err != nil {
			return nil, 0, err
		}
		if lastSeq == 0 {
			lastSeq = fileLast
		}
		recs = append(got, recs...)
	}
	if len(recs) > n {
		recs = recs[len(recs)-n:]
	}
	return recs, lastSeq, nil
}

func sameFile(name string, ino uint64) bool {
	var st unix.Stat_t
	return unix.Stat(name, &st) == nil && st.Ino == ino
}

// Follow calls fn, in order, for each record of the log at path with a
// seq above after that f matches: those already in the active file, then
// each one as it is written, across rotations, until ctx is done (nil) or
// fn fails. It polls every poll (default 200ms).
func Follow(ctx context.Context, path string, after uint64, f Filter, poll time.Duration, fn func(*Record) error) error {
	if poll <= 0 {
		poll = 200 * time.Millisecond
	}
	fl := &follower{path: path, f: f, fn: fn, seen: after}
	defer fl.close()
	fl.start = fl.holder(after + 1)
	fl.buf = make([]byte, 64<<10)
	for {
		if fl.fh == nil {
			name := fl.start
			if name == "" {
				name = path
			}
			fl.start = ""
			if err := fl.open(name); err != nil && !errors.Is(err, os.ErrNotExist) {
				return err
			}
		}
		progressed, err := fl.read()
		if err != nil {
			return err
		}
		if fl.fh == nil && fl.start != "" {
			continue
		}
		if fl.fh != nil && !progressed {
			// At the end of the file. Rotation finishes a file before the
			// next one appears, so once the next one exists, one more pass
			// over this one is enough.
			if name := fl.next(); name != "" {
				if fl.rotated {
					if err := fl.open(name); err != nil && !errors.Is(err, os.ErrNotExist) {
						return err
					}
					fl.rewind = fl.fh != nil
					continue
				}
				fl.rotated = true
				continue
			}
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(poll):
		}
	}
}

// follower is the state of Follow: the file it reads and where, and the
// last record passed on.
type follower struct {
	path string
	f    Filter
	fn   func(*Record) error

	fh   *os.File
	ino  uint64
	off  int64
	part []byte // what was read past the last whole line
	buf  []byte
	seen uint64
	// start names the file to open next instead of the active one.
	start   string
	rotated bool   // the next file exists: read the current one once more
	jumped  uint64 // the seq last looked for in another file
	// rewind: the current file replaced the one followed (a rotation, or
	// records set aside when the daemon got its keys, which renumbers
	// what follows the cut). Records from its last recovery segment at or
	// below seen on are new: pending holds them until the file shows
	// whether the chain reaches past seen again.
	rewind  bool
	pending []*Record
}

func (fl *follower) close() {
	if fl.fh != nil {
		fl.fh.Close()
	}
}

// open makes name the file followed, read from its start.
func (fl *follower) open(name string) error {
	g, err := os.Open(name)
	if err != nil {
		return err
	}
	var st unix.Stat_t
	if err := unix.Fstat(int(g.Fd()), &st); err != nil {
		g.Close()
		return err
	}
	if fl.fh != nil {
		fl.fh.Close()
	}
	fl.fh, fl.ino, fl.off, fl.part, fl.rotated, fl.rewind, fl.pending = g, st.Ino, 0, fl.part[:0], false, false, nil
	return nil
}

// flush passes on the records pending after a rewind.
func (fl *follower) flush() error {
	rs := fl.pending
	fl.pending, fl.rewind = nil, false
	for _, r := range rs {
		fl.seen = r.Seq
		if fl.f.Match(r) {
			if err := fl.fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}

// next names the file that follows the current one, if it exists: the
// rotated file that starts after the last record seen (when the follower
// fell behind several rotations), else the active file if it is another
// file now.
func (fl *follower) next() string {
	for _, name := range []string{rotatedName(fl.path, fl.seen+1), fl.path} {
		var st unix.Stat_t
		if err := unix.Stat(name, &st); err == nil && st.Ino != fl.ino {
			return name
		}
	}
	return ""
}

// holder names the rotated file that holds seq, if any: the one with the
// highest first seq not above it.
func (fl *follower) holder(seq uint64) string {
	files, _ := LogFiles(fl.path)
	found := ""
	for _, name := range files {
		if first, ok := rotatedSeq(fl.path, filepath.Base(name)); ok && first <= seq {
			found = name
		}
	}
	return found
}

// read reads the file followed to its end for now, passing each record
// on (record); it reports whether it read a whole line. It closes the
// file (fh nil, start set) when the records that come next are in
// another.
func (fl *follower) read() (bool, error) {
	progressed := false
	for fl.fh != nil {
		n, err := fl.fh.ReadAt(fl.buf, fl.off)
		if i := slices.Index(fl.buf[:n], 0); i >= 0 {
			// Zeros past the records, which a daemon with --audit-sync
			// always writes over (see zeroTail): the end for now.
			n, err = i, io.EOF
		}
		fl.off += int64(n)
		fl.part = append(fl.part, fl.buf[:n]...)
		done := 0
		for {
			i := slices.Index(fl.part[done:], '\n')
			if i < 0 {
				break
			}
			line := fl.part[done : done+i+1]
			done += i + 1
			progressed = true
			if err := fl.record(line); err != nil {
				return progressed, err
			}
			if fl.fh == nil {
				break
			}
		}
		if fl.fh == nil {
			break
		}
		if fl.rewind && (err == io.EOF || n == 0) {
			// The end of what the new file holds: the chain has not
			// reached seen again, and what is pending is new.
			if err := fl.flush(); err != nil {
				return progressed, err
			}
		}
		fl.part = fl.part[:copy(fl.part, fl.part[done:])]
		if len(fl.part) > MaxLineBytes {
			return progressed, fmt.Errorf("%s: a line longer than %d bytes", fl.path, MaxLineBytes)
		}
		if err == io.EOF || n == 0 {
			break
		}
		if err != nil {
			return progressed, err
		}
	}
	return progressed, nil
}

// record handles one line of the file followed: it passes the record on
// if it is new and f matches it, holds it while the file rewinds, or
// closes the file to go to the one that holds the records missing before
// it.
func (fl *follower) record(line []byte) error {
	r, perr := ParseRecord(line)
	if perr != nil {
		return fmt.Errorf("%s: %w", fl.path, perr)
	}
	if fl.rewind && r.Seq <= fl.seen {
		if r.Kind == KindSegment && r.Segment.Reason == "recovery" {
			fl.pending = append(fl.pending[:0], r)
		} else if len(fl.pending) > 0 {
			fl.pending = append(fl.pending, r)
		}
		return nil
	}
	if err := fl.flush(); err != nil {
		return err
	}
	if r.Seq > fl.seen+1 && fl.jumped != fl.seen+1 {
		// Records missing: the file was opened after the log rotated past
		// them. Go to the file that holds them (once: if they are not
		// there, they are gone).
		fl.jumped = fl.seen + 1
		if name := fl.holder(fl.seen + 1); name != "" && !sameFile(name, fl.ino) {
			fl.start = name
			fl.fh.Close()
			fl.fh = nil
			return nil
		}
	}
	if r.Seq > fl.seen {
		fl.seen = r.Seq
		if fl.f.Match(r) {
			if err := fl.fn(r); err != nil {
				return err
			}
		}
	}
	return nil
}
